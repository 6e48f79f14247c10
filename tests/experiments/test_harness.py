"""The reproduction harness: registry, options, outputs, CLI, step-size search."""

from __future__ import annotations

import json
import math

import pytest
import torch

from steepest.cli import main
from steepest.experiments import cli as experiments_cli
from steepest.experiments import harness
from steepest.experiments.harness import (
    Claim,
    Context,
    Experiment,
    Result,
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


def _fake(ctx: Context) -> Result:
    steps = ctx.opt("steps", 3)
    rows = [{"seed": s, "step": k, "value": float(s + k)} for s in ctx.seed_list() for k in range(steps)]
    claims = [Claim("a", "first", "paper a", "m a", True, criterion="c a"),
              Claim("b", "second", "p b", "m b", 0, criterion="c b"),
              Claim("s", "identity", "eq 1", "m s", False, kind="sanity", criterion="c s"),
              Claim("g", "ours", "-", "m g", True, kind="diagnostic", criterion="c g")]
    return Result(rows=rows, claims=claims, settings={"steps": steps, "arr": torch.tensor(2.0)})


@pytest.fixture
def fake_registry(monkeypatch):
    exp = Experiment("fake", "a fake experiment", "nowhere", _fake, default_seeds=2, quick_seeds=1)
    monkeypatch.setattr(harness, "registry", lambda: {"fake": exp})
    monkeypatch.setattr(experiments_cli, "registry", lambda: {"fake": exp})
    return exp


def test_run_experiment_writes_tidy_outputs(tmp_path, fake_registry, capsys):
    summary = run_experiment("fake", out_dir=tmp_path, options={"steps": "4"}, progress=False)
    # headline counts are paper claims only; sanity checks and diagnostics are counted apart
    assert summary["seeds"] == 2 and summary["holds"] == 1 and summary["total"] == 2
    assert (summary["sanity_holds"], summary["sanity_total"]) == (0, 1)
    assert (summary["diagnostic_holds"], summary["diagnostic_total"]) == (1, 1)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["experiment"] == "fake"
    keys = {"id", "claim", "paper", "measured", "holds", "kind", "criterion"}
    assert [set(c) for c in on_disk["claims"]] == [keys] * 4
    assert [c["kind"] for c in on_disk["claims"]] == ["paper", "paper", "sanity", "diagnostic"]
    assert on_disk["claims"][1]["holds"] is False and on_disk["claims"][1]["criterion"] == "c b"
    assert on_disk["settings"] == {"steps": 4, "arr": 2.0}
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0] == "seed,step,value" and len(lines) == 1 + 2 * 4
    out = capsys.readouterr().out
    assert "1/2 paper claims hold (0/1 sanity, 1/1 diagnostic apart)" in out
    assert "DOES NOT HOLD" in out and "criterion: c b" in out
    # the sanity check is printed under its own heading, after the paper claims
    assert out.index("[DOES NOT HOLD] b") < out.index("-- sanity") < out.index("] s: identity")


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
    assert "**fake**" in out and "1/2 paper claims hold" in out
    assert "| `a`: first | paper a | c a | m a | holds |" in out
    assert "| `b`: second | p b | c b | m b | **does not hold** |" in out
    assert "| `s`: identity | eq 1 | c s | m s | **does not hold** |" in out
    assert out.index("*paper claims*") < out.index("`b`") < out.index("*sanity checks") < out.index("`s`")
    assert "1/2 paper claims hold** (sanity checks apart: 0/1 pass; 1 diagnostic(s))" in out
    assert main(["reproduce", "--summarize", str(tmp_path / "empty")]) == 2
    # a benchmark's summary.json in the same folder is skipped, not a crash
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "summary.json").write_text(json.dumps({"grid": [1, 2]}))
    assert main(["reproduce", "--summarize", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "**1 experiment(s), full runs: 1/2 paper claims hold**" in captured.out
    # a second copy and a quick run of the same experiment are shown but not counted again
    run_experiment("fake", out_dir=tmp_path / "fake2", echo=False, progress=False)
    run_experiment("fake", out_dir=tmp_path / "fake3", quick=True, echo=False, progress=False)
    capsys.readouterr()
    assert main(["reproduce", "--summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("**fake**") == 3
    assert "**1 experiment(s), full runs: 1/2 paper claims hold**" in out
    assert "fake2 (another run of fake)" in out and "fake3 (quick run)" in out


def test_claims_markdown_counts_old_summaries_as_paper_claims():
    # summaries written before claims had a kind: every claim counts as a paper claim
    summary = {"experiment": "x", "claims": [
        {"id": "i", "claim": "c", "paper": "p", "measured": "m", "holds": True},
        {"id": "j", "claim": "c", "paper": "p", "measured": "m", "holds": False}]}
    assert "1/2 paper claims hold" in harness.claims_markdown(summary)


def test_claims_markdown_escapes_pipes():
    summary = {"experiment": "x", "claims": [
        {"id": "i", "claim": "||x||", "paper": "p", "measured": "m", "holds": True}]}
    assert "\\|\\|x\\|\\|" in harness.claims_markdown(summary)
