"""The reproduction harness: registry, options, outputs, CLI, step-size search."""

from __future__ import annotations

import json
import math

import pytest
import torch

from steepest.cli import main
from steepest.experiments import harness
from steepest.experiments import reproduce as reproduce_command
from steepest.experiments.harness import (
    Claim,
    Context,
    Experiment,
    Result,
    Statement,
    _convert,
    log_grid_search,
    run_experiment,
    torch_threads,
)

FIVE = {"quadratic-2d", "quadratic-grid", "adam-ablation", "scaled-sign-toy", "scaled-sign-logreg"}


def test_registry_has_the_five_experiments():
    exps = harness.registry()
    assert FIVE <= set(exps)
    for name in FIVE:
        exp = exps[name]
        assert exp.name == name and exp.source and exp.description and callable(exp.run)


def test_list_command_prints_them(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in FIVE:
        assert name in out


STATEMENTS = (
    Statement("s1", "[BPL20, Fig. 1]", "words one", primary="data set one", criterion="c a",
              criterion_source="ours", fixed_at="abc1234"),
    Statement("s2", "[Liu25, abstract]", "words two", primary="data set one", criterion="c b",
              criterion_source="paper", fixed_at="def5678", revised="fails (x < 1)"),
)


def _fake(ctx: Context) -> Result:
    steps = ctx.opt("steps", 3)
    rows = [{"seed": s, "step": k, "value": float(s + k)} for s in ctx.seed_list() for k in range(steps)]
    claims = [Claim("a", "first", "[BPL20, Fig. 1]: 'paper a'", "m a", True, criterion="c a",
                    statement="s1", reading="primary"),
              Claim("b", "second", "[Liu25, abstract]: 'p b'", "m b", 0, criterion="c b",
                    statement="s2", reading="primary"),
              Claim("r", "first, another data set", "[BPL20, Fig. 1]: 'paper a'", "m r", True,
                    verdict="inconclusive", criterion="c a", statement="s1",
                    reading="other: data set two"),
              Claim("s", "identity", "eq 1", "m s", False, kind="sanity", criterion="c s"),
              Claim("g", "ours", "-", "m g", True, kind="diagnostic", criterion="c g")]
    return Result(rows=rows, claims=claims, settings={"steps": steps, "arr": torch.tensor(2.0)})


@pytest.fixture
def fake_registry(monkeypatch):
    exp = Experiment("fake", "a fake experiment", "[BPL20, Fig. 1]", _fake, default_seeds=2,
                     quick_seeds=1, statements=STATEMENTS)
    monkeypatch.setattr(harness, "registry", lambda: {"fake": exp})
    monkeypatch.setattr(reproduce_command, "registry", lambda: {"fake": exp})
    return exp


def test_run_experiment_writes_tidy_outputs(tmp_path, fake_registry, capsys):
    summary = run_experiment("fake", out_dir=tmp_path, options={"steps": "4"}, progress=False)
    # the headline counts statements (primary readings); other readings, sanity checks and
    # diagnostics are counted apart
    assert summary["seeds"] == 2 and summary["seed_list"] == [0, 1]
    assert (summary["holds"], summary["fails"], summary["inconclusive"], summary["total"]) == \
        (1, 1, 0, 2)
    assert summary["readings_total"] == 1
    assert (summary["sanity_holds"], summary["sanity_total"]) == (0, 1)
    assert (summary["diagnostic_holds"], summary["diagnostic_total"]) == (1, 1)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["experiment"] == "fake"
    keys = {"id", "claim", "paper", "measured", "holds", "kind", "criterion", "statement",
            "reading", "verdict", "criterion_fixed_at", "revised"}
    assert [set(c) for c in on_disk["claims"]] == [keys] * 5
    assert [c["kind"] for c in on_disk["claims"]] == ["paper", "paper", "paper", "sanity",
                                                      "diagnostic"]
    b = on_disk["claims"][1]
    assert b["holds"] is False and b["verdict"] == "fails" and b["criterion"] == "c b"
    # the declaration fixes the commit and the revision note
    assert b["criterion_fixed_at"] == "def5678" and b["revised"] == "fails (x < 1)"
    assert on_disk["claims"][2]["holds"] is False  # inconclusive is not 'holds'
    st = {s["id"]: s for s in on_disk["statements"]}
    assert st["s1"]["verdict"] == "holds" and st["s1"]["readings"] == ["r"]
    assert st["s2"]["paper_key"] == "" and st["s1"]["paper_key"] == "[BPL20]"
    assert on_disk["settings"] == {"steps": 4, "arr": 2.0}
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0] == "seed,step,value" and len(lines) == 1 + 2 * 4
    out = capsys.readouterr().out
    assert "2 statement(s): 1 hold, 1 fail, 0 inconclusive" in out
    assert "(revised after a run; first verdict: fails (x < 1))" in out
    # readings and sanity checks are printed under their own headings, after the statements
    assert out.index(" b [s2, primary]") < out.index("-- other readings") < out.index("-- sanity")


def test_a_paper_claim_must_name_a_declared_statement(tmp_path, monkeypatch):
    def bad(kind: str) -> Experiment:
        def run(ctx: Context) -> Result:
            c = [Claim("a", "x", "[BPL20]", "m", True, criterion="c", statement="s1",
                       reading="primary")]
            if kind == "undeclared":
                c = [Claim("a", "x", "[BPL20]", "m", True, criterion="c", statement="zz",
                           reading="primary")]
            elif kind == "two-primaries":
                c.append(Claim("b", "x", "[BPL20]", "m", True, criterion="c", statement="s1",
                               reading="primary"))
            elif kind == "no-reading":
                c[0].reading = ""
            return Result(rows=[], claims=c)
        return Experiment("bad", "d", "[BPL20]", run, statements=STATEMENTS)

    for kind, msg in (("undeclared", "no declared statement"), ("two-primaries", "two primary"),
                      ("no-reading", "no reading")):
        monkeypatch.setattr(harness, "registry", lambda kind=kind: {"bad": bad(kind)})
        with pytest.raises(ValueError, match=msg):
            run_experiment("bad", out_dir=tmp_path, echo=False)
    with pytest.raises(ValueError, match="reading must be"):
        Claim("a", "x", "p", "m", True, criterion="c", reading="secondary")
    with pytest.raises(ValueError, match="verdict must be"):
        Claim("a", "x", "p", "m", True, criterion="c", verdict="maybe")
    with pytest.raises(ValueError, match="fixed_at"):
        Statement("s", "[BPL20]", "q", primary="p", criterion="c", criterion_source="ours",
                  fixed_at="yesterday")
    with pytest.raises(ValueError, match="criterion_source"):
        Statement("s", "[BPL20]", "q", primary="p", criterion="c", criterion_source="mine",
                  fixed_at="abc1234")


def test_rule_two_verdicts_against_hand_computed_intervals():
    # diffs 1, 2, 3: mean 2, s.d. 1, t(0.95, 2 dof) = 2.919986: half width 2.919986 / sqrt(3)
    mean, lo, hi = harness.t_interval([1.0, 2.0, 3.0])
    assert math.isclose(mean - lo, hi - mean)
    assert mean == 2.0 and math.isclose(hi - mean, 2.919986 / math.sqrt(3), rel_tol=1e-5)
    assert harness.verdict_direction([1.0, 2.0, 3.0])[0] == "holds"
    assert harness.verdict_direction([-1.0, -2.0, -3.0])[0] == "fails"
    assert harness.verdict_direction([-1.0, 2.0, 3.0])[0] == "inconclusive"  # lo < 0 < hi
    assert harness.verdict_direction([5.0])[0] == "inconclusive"  # one seed: no spread to judge
    assert harness.verdict_direction([0.5, 0.5, 0.5])[0] == "holds"  # no spread, all above 0
    # "alike" within a tolerance: inside holds, outside fails, straddling is inconclusive
    assert harness.verdict_within([0.10, 0.12, 0.09], 0.2)[0] == "holds"
    assert harness.verdict_within([1.0, 1.1, 0.9], 0.2)[0] == "fails"
    assert harness.verdict_within([0.1, 0.3, 0.2], 0.2)[0] == "inconclusive"
    assert "90% t-interval" in harness.verdict_within([0.1, 0.3], 0.2)[1]
    assert harness.combine("holds", "inconclusive") == "inconclusive"
    assert harness.combine("inconclusive", "fails", "holds") == "fails"
    assert harness.combine("holds", "holds") == "holds"


def test_paper_keys():
    assert harness.paper_key("[BPL20, Fig. 3]") == "[BPL20]"
    assert harness.paper_key("[BPL20-TLDR]") == "[BPL20-TLDR]"
    assert harness.paper_key("[ScaledSign, Ex. 5]: 'words'") == "[ScaledSign]"
    assert harness.paper_key("[Liu25, abstract]") == ""  # outside the seeds
    assert harness.paper_key("seed 000 Fig. 3") == ""


def test_fresh_seeds_rerun_on_a_disjoint_range_and_compare(tmp_path, fake_registry, capsys):
    run_experiment("fake", out_dir=tmp_path / "committed", echo=False, progress=False)
    capsys.readouterr()
    assert main(["reproduce", "fake", "--fresh-seeds", "--out", str(tmp_path / "fresh"),
                 "--against", str(tmp_path / "committed"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    fresh = json.loads((tmp_path / "fresh" / "summary.json").read_text())
    assert fresh["seed_list"] == [harness.FRESH_SEED_START, harness.FRESH_SEED_START + 1]
    rows = (tmp_path / "fresh" / "results.csv").read_text().splitlines()[1:]
    assert {int(r.split(",")[0]) for r in rows} == {1000, 1001}
    report = json.loads((tmp_path / "fresh" / "fresh_seeds.json").read_text())
    assert [(r["statement"], r["committed"], r["fresh"], r["agrees"]) for r in report] == [
        ("s1", "holds", "holds", True), ("s2", "fails", "fails", True)]
    assert "s1" in out and "agrees" in out


def test_rejudge_applies_a_new_declaration_to_committed_rows(tmp_path, monkeypatch, capsys):
    def judge(rows, settings, ctx):
        up = sum(r["value"] for r in rows) > settings["bar"]
        return [Claim("a", "x", "[BPL20]", "m", up, criterion="c", statement="s1",
                      reading="primary"),
                Claim("b", "y", "[Liu25]", "m", True, criterion="c", statement="s2",
                      reading="primary")]

    def run(ctx: Context) -> Result:
        rows = [{"seed": s, "value": 1.0} for s in ctx.seed_list()]
        settings = {"bar": 1.5}
        return Result(rows=rows, claims=judge(rows, settings, ctx), settings=settings)

    exp = Experiment("j", "d", "[BPL20]", run, default_seeds=2, statements=STATEMENTS,
                     judge=judge)
    monkeypatch.setattr(harness, "registry", lambda: {"j": exp})
    monkeypatch.setattr(reproduce_command, "registry", lambda: {"j": exp})
    run_experiment("j", out_dir=tmp_path, echo=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    s["settings"]["bar"] = 5.0  # the declaration changes: judged again from the same rows
    (tmp_path / "summary.json").write_text(json.dumps(s))
    assert main(["reproduce", "j", "--rejudge", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    v = {c["id"]: c["verdict"] for c in s["claims"]}
    assert v["a"] == "fails" and "rejudged" in s
    # s2 was revised after a run: on that run's seeds it cannot become 'holds'
    assert v["b"] == "inconclusive"
    assert main(["reproduce", "nope", "--rejudge", str(tmp_path)]) == 2


def test_claim_kind_is_validated():
    with pytest.raises(ValueError, match=r"'x'.*kind"):
        Claim("x", "c", "p", "m", True, kind="evidence")


def test_claim_without_criterion_is_named(tmp_path, monkeypatch):
    def bare(ctx: Context) -> Result:
        return Result(rows=[], claims=[Claim("ok", "c", "p", "m", True, criterion="mine"),
                                       Claim("no-criterion", "c", "p", "m", True)])

    exp = Experiment("bare", "a claim without criterion", "nowhere", bare)
    monkeypatch.setattr(harness, "registry", lambda: {"bare": exp})
    with pytest.raises(ValueError, match=r"bare.*'no-criterion'.*criterion"):
        run_experiment("bare", out_dir=tmp_path, echo=False, progress=False)


def test_quick_seeds_and_unknown_option_is_an_error(tmp_path, fake_registry, capsys):
    summary = run_experiment("fake", quick=True, out_dir=tmp_path, options={"steps": 1},
                             progress=False, echo=False)
    assert summary["seeds"] == 1
    assert summary["options"] == {"steps": 1}  # the --set keys, as the user types them
    # a typo is refused before the run, naming the keys that are accepted (issue 14)
    with pytest.raises(ValueError, match=r"\['stpes'\].*accepts --set .*steps"):
        run_experiment("fake", out_dir=tmp_path, options={"stpes": 1}, progress=False, echo=False)
    assert main(["reproduce", "fake", "--out", str(tmp_path), "--set", "stpes=1"]) == 2
    assert "steps" in capsys.readouterr().err.split("accepts --set")[1]


def test_undeclared_computed_option_names_are_checked_after_the_run(tmp_path, monkeypatch):
    def computed(ctx: Context) -> Result:
        getattr(ctx, "opt")("st" + "eps", 2)  # noqa: B009 (a name the source scan cannot see)
        return Result(rows=[], claims=[])

    exp = Experiment("computed", "computed option names", "nowhere", computed)
    monkeypatch.setattr(harness, "registry", lambda: {"computed": exp})
    # where the accepted keys cannot be listed before the run, the check after it refuses
    declared = Experiment("declared", "declared options", "nowhere", computed, options=("steps",))
    assert harness.accepted_options(declared) == ["steps"]
    monkeypatch.setattr(harness, "accepted_options", lambda e: None)
    with pytest.raises(ValueError, match=r"did not use option\(s\) \['stpes'\]; it read steps"):
        run_experiment("computed", out_dir=tmp_path, options={"stpes": 1}, progress=False,
                       echo=False)


@pytest.mark.parametrize("seeds", [0, -1, 1.5])
def test_bad_seeds_raise(tmp_path, fake_registry, seeds):
    with pytest.raises(ValueError, match="seeds"):
        run_experiment("fake", seeds=seeds, out_dir=tmp_path, echo=False)


def test_unknown_experiment_raises(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment"):
        run_experiment("no-such-thing", out_dir=tmp_path)
    assert main(["reproduce", "no-such-thing"]) == 2


def test_cli_set_options_reach_the_experiment(tmp_path, fake_registry):
    assert main(["reproduce", "fake", "--out", str(tmp_path), "--set", "steps=5",
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["settings"]["steps"] == 5
    assert main(["reproduce", "fake", "--out", str(tmp_path), "--set", "oops"]) == 2


def test_option_conversion():
    assert _convert("n", "12", 3) == 12
    assert _convert("x", "0.5", 1.0) == 0.5
    assert _convert("b", "no", True) is False and _convert("b", "1", False) is True
    assert _convert("l", "a,b", ["x"]) == ["a", "b"]
    assert _convert("l", "1,2.5", [1.0]) == [1.0, 2.5]
    assert _convert("s", "text", "default") == "text"
    assert _convert("n", 7, 3) == 7  # programmatic values pass through
    with pytest.raises(ValueError, match="option n"):
        _convert("n", "twelve", 3)
    with pytest.raises(ValueError, match="option b"):
        _convert("b", "maybe", True)


def test_log_grid_search_brackets_the_minimum():
    calls = []

    def score(x: float) -> float:
        calls.append(x)
        return (math.log10(x) - 3.0) ** 2  # minimum at 1000, far right of the start grid

    best, tried = log_grid_search(score, 1.0, n_grid=3, factor=10.0, max_extend=6)
    assert best == pytest.approx(1000.0)
    assert [t[0] for t in tried] == pytest.approx([0.1, 1, 10, 100, 1000, 10000])
    assert len(calls) == len(tried)  # every value scored once


def test_log_grid_search_stops_extending_and_handles_divergence():
    best, tried = log_grid_search(lambda x: math.inf if x > 1 else -x, 1.0, 3, 2.0, max_extend=6)
    assert best == 1.0 and len(tried) == 3
    best, tried = log_grid_search(lambda x: x, 1.0, 3, 2.0, max_extend=2)
    assert len(tried) == 5 and best == pytest.approx(0.125)  # still on the edge: budget spent
    with pytest.raises(ValueError):
        log_grid_search(lambda x: x, 0.0)


def test_torch_threads_restores():
    old = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == old


def test_options_read_as_a_dict_count_as_used(tmp_path, monkeypatch, capsys):
    def dict_style(ctx: Context) -> Result:
        n = int(ctx.options.get("n", 1))
        return Result(rows=[{"n": n}], claims=[])

    exp = Experiment("dict", "reads ctx.options", "nowhere", dict_style)
    monkeypatch.setattr(harness, "registry", lambda: {"dict": exp})
    s = run_experiment("dict", out_dir=tmp_path, options={"n": "3"}, echo=False)
    assert "'n'" not in capsys.readouterr().err and s["total"] == 0
    with pytest.raises(ValueError, match=r"\['m'\].*accepts --set n"):  # the literal key counts
        run_experiment("dict", out_dir=tmp_path, options={"n": "3", "m": 1}, echo=False)


def test_summarize_prints_markdown_tables(tmp_path, fake_registry, capsys):
    run_experiment("fake", out_dir=tmp_path / "fake", echo=False, progress=False)
    capsys.readouterr()
    assert main(["reproduce", "--summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "**fake**" in out and "2 statement(s): 1 hold, 1 fail, 0 inconclusive" in out
    assert "| s1 / `a`: first | primary | [BPL20, Fig. 1]: 'paper a' | c a (abc1234) | m a | holds |" \
        in out
    assert "**fails (revised after a run; first verdict: fails (x < 1))**" in out
    assert "| `s`: identity | eq 1 | c s | m s | **fails** |" in out
    assert out.index("*paper statements") < out.index("`b`") < out.index("*other readings") \
        < out.index("`r`") < out.index("*sanity checks") < out.index("`s`")
    # per paper: [BPL20] 1 statement held (1 other reading); Liu25 counted outside the seeds
    assert "| [BPL20] Balles, Pedregosa, Le Roux 2020, The Geometry of Sign Gradient Descent " \
           "| 1 | 1 | 0 | 0 | 0 | 1 | 1 | 1 |" in out
    assert "| outside the seeds (counted apart) | 1 | 0 | 1 | 0 | 1 | 0 | 0 | 0 |" in out
    assert "no experiment of its own" in out
    assert main(["reproduce", "--summarize", str(tmp_path), "--counts"]) == 0
    assert "**fake**" not in capsys.readouterr().out
    assert main(["reproduce", "--summarize", str(tmp_path / "empty")]) == 2
    # a benchmark's summary.json in the same folder is skipped, not a crash
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "summary.json").write_text(json.dumps({"grid": [1, 2]}))
    assert main(["reproduce", "--summarize", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err
    # a second copy and a quick run of the same experiment are shown but not counted again
    run_experiment("fake", out_dir=tmp_path / "fake2", echo=False, progress=False)
    run_experiment("fake", out_dir=tmp_path / "fake3", quick=True, echo=False, progress=False)
    capsys.readouterr()
    assert main(["reproduce", "--summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("**fake**") == 1
    assert "| **seed papers** | **1** | **1** | **0** | **0** |" in out
    assert "fake2 (another run of fake)" in out and "fake3 (quick run)" in out


def test_claims_markdown_escapes_pipes():
    summary = {"experiment": "x", "claims": [
        {"id": "i", "claim": "||x||", "paper": "p", "measured": "m", "holds": True,
         "kind": "sanity"}]}
    assert "\\|\\|x\\|\\|" in harness.claims_markdown(summary)


def test_seed_ranges_writes_runs_of_consecutive_seeds():
    from steepest.experiments.harness import seed_ranges

    assert seed_ranges([0, 4, 5, 6]) == "0, 4-6"  # a tuning seed, then fresh report seeds
    assert seed_ranges([2, 0, 1]) == "0-2"
    assert seed_ranges([1, 3, 5]) == "1, 3, 5"
    assert seed_ranges([7]) == "7"
