"""steepest.advise: the budgeted race, its accounting, determinism, errors and the CLI."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import steepest
from steepest.advise import DEFAULT_BUDGET, Advice, Candidate, advise
from steepest.cli import build_parser, main


class Quadratic(nn.Module):
    """f(x) = 0.5 x^T H x with H passed as the target: a loss whose curvature is known."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(x0.clone())

    def forward(self, _: torch.Tensor) -> torch.Tensor:
        return self.x


def quad_loss(x: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    return 0.5 * x @ H @ x


def quad_problem(diag: list[float]) -> tuple[Quadratic, tuple[torch.Tensor, torch.Tensor]]:
    H = torch.diag(torch.tensor(diag, dtype=torch.float64))
    x0 = torch.ones(len(diag), dtype=torch.float64)
    return Quadratic(x0), (torch.zeros(1, dtype=torch.float64), H)


def sgd(lr: float, **kw: float) -> Candidate:
    return Candidate(lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr, **kw), lr, "l2")


def regression(seed: int = 0, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return x, x @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)


def test_race_picks_the_clearly_better_candidate() -> None:
    # GD at a step near 1/L against the same update shrunk 10^4 times: the second barely moves,
    # whatever lr of its bracket is used
    model, data = quad_problem([1.0, 2.0, 4.0])
    cands = {
        "slow": Candidate(lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr * 1e-4), 0.25),
        "gd": sgd(0.25),
    }
    adv = advise(model, quad_loss, data, steps_total=100, budget=1.0, candidates=cands,
                 explain=False, method="race")
    assert adv.winner == "gd"
    # the winner's score is the lowest of the final rung, and below the initial loss 3.5
    final = [e for e in adv.table if len(e.scores) == len(adv.rungs)]
    assert adv.score == min(e.score for e in final) < 3.5


def test_race_prefers_the_stable_step_on_a_known_quadratic() -> None:
    # L = 4: lr = 0.6 > 2/L diverges, lr = 0.2 converges (rate |1 - 4 * 0.2| = 0.2)
    model, data = quad_problem([1.0, 4.0])
    adv = advise(model, quad_loss, data, steps_total=60, budget=1.0,
                 candidates={"gd": sgd(0.2)}, lrs=[1 / 3, 1.0, 3.0], extend=0, explain=False, method="race")
    assert adv.winner == "gd" and adv.lr == pytest.approx(0.2)
    # the step past 2/L grows the loss above its initial value 0.5 (1 + 4) = 2.5
    diverged = [e for e in adv.table if e.lr == pytest.approx(0.6)]
    assert diverged and diverged[0].scores[0] > 2.5


def test_budget_accounting() -> None:
    x, y = regression()
    cands = {"gd": sgd(0.05), "heavy": sgd(0.01, momentum=0.9)}
    adv = advise(lambda: nn.Linear(5, 1), nn.functional.mse_loss, (x, y), steps_total=200,
                 budget=0.5, candidates=cands, explain=False, method="race")
    assert adv.steps_used == sum(e.steps for e in adv.table)
    assert 0 < adv.steps_used <= math.floor(0.5 * 200)
    assert adv.budget_used == adv.steps_used / 200
    # successive halving: fewer configurations, each trained longer, rung after rung
    sizes = [n for n, _ in adv.rungs]
    steps = [s for _, s in adv.rungs]
    assert sizes == sorted(sizes, reverse=True) and steps == sorted(steps)
    assert sizes[0] == len(adv.table)
    assert f"{adv.steps_used} steps" in str(adv) and "budget" in str(adv)


def test_too_small_budget_names_the_minimum() -> None:
    x, y = regression()
    with pytest.raises(ValueError, match=r"budget >= "):
        advise(lambda: nn.Linear(5, 1), nn.functional.mse_loss, (x, y), steps_total=10,
               budget=0.1, candidates={"gd": sgd(0.05)}, explain=False, method="race")


def test_same_seed_same_advice_and_same_batches_for_every_configuration() -> None:
    x, y = regression(n=96)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16,
                                         shuffle=True)
    # two identical candidates under different names: same initialisation and the same batch
    # order (whatever the interleaving of their steps), hence identical scores (same kernels on
    # the same data: bitwise)
    cands = {"a": sgd(0.05), "b": sgd(0.05), "c": sgd(0.01, momentum=0.9)}

    def go(seed: int) -> Advice:
        return advise(lambda: nn.Linear(5, 1), nn.functional.mse_loss, loader, steps_total=120,
                      budget=1.0, candidates=cands, seed=seed, explain=False, extend=0, method="race")

    a1, a2 = go(0), go(0)
    assert [(e.candidate, e.lr, e.scores) for e in a1.table] == \
           [(e.candidate, e.lr, e.scores) for e in a2.table]
    assert (a1.winner, a1.lr) == (a2.winner, a2.lr)
    by = {(e.candidate, e.lr): e.scores for e in a1.table}
    for lr in {e.lr for e in a1.table if e.candidate == "a"}:
        n = min(len(by[("a", lr)]), len(by[("b", lr)]))
        assert by[("a", lr)][:n] == by[("b", lr)][:n]


@pytest.mark.parametrize("method", ["race", "search"])
def test_a_loader_with_its_own_generator_gives_the_same_advice_and_is_left_as_it_was(method: str) -> None:
    """A DataLoader(generator=g) shuffles with g, not the global RNG: each configuration gets its
    own copy of g seeded from ``seed`` (same batches, same order, for every configuration and on
    every call), and the user's g is where it was. Two identical candidates score identically."""
    x, y = regression(n=96)
    g = torch.Generator().manual_seed(7)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16,
                                         shuffle=True, generator=g)
    cands = {"a": sgd(0.05), "b": sgd(0.05)}
    before = g.get_state()

    def go() -> Advice:
        return advise(lambda: nn.Linear(5, 1), nn.functional.mse_loss, loader, steps_total=40,
                      budget=4.0, candidates=cands, lrs={"a": [0.05], "b": [0.05]}, seed=0,
                      explain=True, extend=0, method=method)

    a1, a2 = go(), go()
    # exact: the generator's state bytes; the scores below are the same kernels on the same data
    # in one process (the point of the test: the same batches), as in the test above
    assert torch.equal(g.get_state(), before)
    assert [(e.candidate, e.lr, e.scores) for e in a1.table] == [(e.candidate, e.lr, e.scores) for e in a2.table]
    sa = [e.scores for e in a1.table if e.candidate == "a"]
    sb = [e.scores for e in a1.table if e.candidate == "b"]
    assert sa == sb


def test_empty_data_is_a_clear_error() -> None:
    for data in ([], iter(())):
        with pytest.raises(ValueError, match="no batches"):
            advise(lambda: nn.Linear(5, 1), nn.functional.mse_loss, data, steps_total=20, explain=False)


class _Attention(nn.Module):
    """One attention layer through F.scaled_dot_product_attention (or its definition, ``math``)."""

    def __init__(self, math: bool = False) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12, dtype=torch.float64)
        self.out = nn.Linear(4, 1, dtype=torch.float64)
        self.math = math

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.math:
            a = torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1) @ v  # scale 1/sqrt(4)
        else:
            a = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(a).mean(dim=(1, 2, 3))


def test_hessian_of_a_model_with_sdpa_equals_its_definitions() -> None:
    """The geometry's Hessian-vector products differentiate the forward twice; torch's fused
    CPU attention kernel has no double backward, so the forward runs on the math backend: the
    same H v as the same layer written out (float64, rounding only)."""
    from steepest.geometry.models import HessianOperator

    torch.manual_seed(0)
    a, b = _Attention(), _Attention(math=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, 2, 5, 4, dtype=torch.float64)  # (batch, heads, tokens, dim): torch's fused kernel
    y = torch.randn(8, dtype=torch.float64)
    ha = HessianOperator(a, nn.functional.mse_loss, (x, y))
    hb = HessianOperator(b, nn.functional.mse_loss, (x, y))
    v = torch.randn(ha.dim, 3, dtype=torch.float64)
    torch.testing.assert_close(ha.matmat(v), hb.matmat(v), rtol=1e-9, atol=1e-12)


def test_advise_explains_a_model_with_sdpa_and_survives_a_failed_explanation() -> None:
    x = torch.randn(16, 2, 5, 4, dtype=torch.float64)
    y = torch.randn(16, dtype=torch.float64)
    cands = {"a": sgd(0.05)}
    adv = advise(lambda: _Attention(), nn.functional.mse_loss, (x, y), steps_total=10, budget=2.0,
                 candidates=cands, lrs={"a": [0.05]}, extend=0, geometry_examples=4)
    assert adv.geometry is not None and "[BPL20] geometry" in str(adv)

    class Once(torch.autograd.Function):  # no double backward, as a fused kernel without one
        @staticmethod
        def forward(ctx, t):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(t)
            return t * t

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            if torch.is_grad_enabled():  # create_graph=True: a second derivative is wanted
                raise RuntimeError("derivative for Once's backward is not implemented")
            (t,) = ctx.saved_tensors
            return 2 * t * g

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 1, dtype=torch.float64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return Once.apply(self.lin(x)).mean(dim=(1, 2, 3))

    with pytest.warns(UserWarning, match="geometry explanation failed.*no-explain"):
        adv = advise(lambda: Net(), nn.functional.mse_loss, (x, y), steps_total=10, budget=2.0,
                     candidates=cands, lrs={"a": [0.05]}, extend=0, geometry_examples=4)
    assert adv.winner == "a" and adv.geometry is None


def test_edge_extension_goes_past_the_winning_edge() -> None:
    # on f = 0.5 |x|^2 (L = 1) GD's best constant step is 1; a bracket around 0.01 is far too small
    model, data = quad_problem([1.0, 1.0])
    adv = advise(model, quad_loss, data, steps_total=50, budget=2.0,
                 candidates={"gd": sgd(0.01)}, extend=2, explain=False, method="race")
    ext = [e for e in adv.table if e.extension]
    assert len(ext) == 2 and all(e.lr > 0.03 for e in ext)


def test_all_diverged_gives_no_winner() -> None:
    model, data = quad_problem([1.0, 4.0])
    adv = advise(model, quad_loss, data, steps_total=40, budget=1.0,
                 candidates={"gd": sgd(10.0)}, extend=0, explain=False, method="race")
    assert adv.winner is None
    with pytest.raises(RuntimeError, match="diverged"):
        adv.create_optimizer(model)


def test_create_optimizer_builds_the_winner() -> None:
    model, data = quad_problem([1.0, 2.0])
    adv = advise(model, quad_loss, data, steps_total=60, budget=1.0,
                 candidates={"gd": sgd(0.3)}, explain=False, method="race")
    opt = adv.create_optimizer(model)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == adv.lr


def test_theory_method_uses_the_one_step_guarantees() -> None:
    # diagonal H = diag(1, 1, 1, 50): L_2 = 50 and L_inf = ||H||_inf,1 = sum |H_ii| = 53
    # ([BPL20] Eq. 19: for a diagonal H every sign vector gives the same ||H s||_1)
    model, data = quad_problem([1.0, 1.0, 1.0, 50.0])
    adv = advise(model, quad_loss, data, steps_total=100, method="theory",
                 geometry_options={"mode": "dense", "sdp_max": 0})
    assert adv.method == "theory" and adv.steps_used == 0
    assert adv.geometry is not None and adv.geometry.L2 == pytest.approx(50.0)
    expected = {"sgd": 1 / 50.0, "scaled_sign": 1 / 53.0}
    assert adv.winner in expected and adv.lr == pytest.approx(expected[adv.winner])
    assert "theory" in str(adv)


def test_explanation_reports_the_geometry() -> None:
    model, data = quad_problem([1.0, 1.0, 1.0, 50.0])
    adv = advise(model, quad_loss, data, steps_total=100, budget=1.0,
                 candidates={"gd": sgd(0.02)}, geometry_options={"mode": "dense", "sdp_max": 0}, method="race")
    rep = adv.geometry
    assert rep is not None
    assert rep.rho_diag == pytest.approx(1.0)  # a diagonal Hessian (Prop. 4)
    text = str(adv)
    assert "rho_diag" in text and "L_inf / (d L_2)" in text and "density" in text


@pytest.mark.parametrize("kwargs, match", [
    ({"steps_total": 0}, "steps_total"),
    ({"steps_total": 10.5}, "steps_total"),
    ({"budget": -0.1}, "budget"),
    ({"budget": float("nan")}, "budget"),
    ({"method": "oracle"}, "method"),
    ({"lrs": [0.5, -1.0]}, "lrs"),
    ({"lrs": {"nope": [0.1]}}, "unknown candidate"),
    ({"eta": 1}, "eta"),
    ({"candidates": {}}, "at least one"),
    ({"candidates": {"raw": lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr)}}, "raw"),
    ({"seed": 1.5}, "seed"),
])
def test_bad_input_is_a_clear_error(kwargs: dict, match: str) -> None:
    model, data = quad_problem([1.0, 2.0])
    args = {"steps_total": 100, "budget": 1.0, "candidates": {"gd": sgd(0.1)}, "explain": False}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        advise(model, quad_loss, data, **args)


def test_bad_model_and_data() -> None:
    _, data = quad_problem([1.0, 2.0])
    with pytest.raises(ValueError, match="model_fn"):
        advise(42, quad_loss, data, steps_total=10, method="race")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="data"):
        advise(nn.Linear(2, 1), nn.functional.mse_loss, 3.0, steps_total=10, method="race")


def test_plain_callable_with_absolute_lrs() -> None:
    model, data = quad_problem([1.0, 2.0])
    raw = {"raw": lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr)}
    adv = advise(model, quad_loss, data, steps_total=60, budget=1.0, candidates=raw,
                 lrs={"raw": [0.1, 0.3]}, extend=0, explain=False, method="race")
    assert adv.winner == "raw" and adv.lr in (0.1, 0.3)


def test_package_exports_advise() -> None:
    assert steepest.advise is advise


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "--list"]) == 0
    assert "quadratic" in capsys.readouterr().out
    assert main(["advise"]) == 2
    assert main(["advise", "no-such-problem"]) == 2
    assert "unknown problem" in capsys.readouterr().err
    assert main(["advise", "quadratic", "--candidates", "adamw,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["advise", "quadratic", "--lrs", "a,b"]) == 2
    # too small a budget for the race: exit 2 with the smallest budget that works
    assert main(["advise", "quadratic", "--steps", "10", "--budget", "0.1", "--method", "race",
                 "--no-explain"]) == 2
    assert "budget >=" in capsys.readouterr().err
    rc = main(["advise", "quadratic", "--dim", "4", "--steps", "40", "--budget", "2",
               "--method", "race", "--candidates", "sgd,adamw", "--no-explain"])
    out = capsys.readouterr().out
    assert rc == 0 and "advice (race)" in out and "runs of 40 steps (allowed 2)" in out


def test_default_is_the_validated_search(capsys: pytest.CaptureFixture[str]) -> None:
    # the default method and budget are the setting that passed the pre-registered validation
    # (docs/results/advise-validation-v2/criterion.json: search, budget 20 runs)
    import inspect
    import json
    from pathlib import Path

    sig = inspect.signature(advise)
    assert sig.parameters["method"].default == "search" and sig.parameters["budget"].default is None
    crit = json.loads((Path(__file__).parents[1] / "docs/results/advise-validation-v2/criterion.json")
                      .read_text())["criterion"]
    assert DEFAULT_BUDGET["search"] == crit["primary_budget"]
    model, data = quad_problem([1.0, 10.0])
    adv = advise(model, quad_loss, data, steps_total=30, explain=False)
    # search at budget 20: the 10 initial configurations each ran the whole 30 steps
    assert adv.method == "search" and adv.budget == 20.0
    assert all(e.steps == 30 for e in adv.table) and adv.steps_used <= 20 * 30
    assert main(["advise", "quadratic", "--dim", "4", "--steps", "20", "--no-explain"]) == 0
    out = capsys.readouterr().out
    assert "advice (search)" in out and "runs of 20 steps (allowed 20)" in out


@pytest.mark.parametrize(("option", "bad", "accepted"), [
    ("--steps", "0", "an integer >= 1"),
    ("--steps", "1.5", "an integer >= 1"),
    ("--budget", "0", "a finite number > 0"),
    ("--budget", "nan", "a finite number > 0"),
    ("--budget", "inf", "a finite number > 0"),
    ("--seed", "-1", "an integer >= 0"),
    ("--examples", "0", "an integer >= 1"),
    ("--batch", "-1", "an integer >= 0"),
    ("--eta", "1", "an integer >= 2"),
    ("--dim", "1", "an integer >= 2"),
    ("--lam-max", "-1", "a finite number > 0"),
    ("--lam-max", "inf", "a finite number > 0"),
    ("--theta", "1.5", "a finite number >= 0 and <= 1"),
    ("--theta", "nan", "a finite number >= 0 and <= 1"),
])
def test_cli_refuses_bad_numbers_naming_the_option_and_range(
    capsys: pytest.CaptureFixture[str], option: str, bad: str, accepted: str
) -> None:
    # argparse rejects the value before any problem is built: exit code 2, no traceback
    with pytest.raises(SystemExit) as exc:
        main(["advise", "quadratic", option, bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must be {accepted}, got {bad!r}" in err
    assert "Traceback" not in err


def test_cli_accepts_the_ends_of_each_range() -> None:
    args = build_parser().parse_args(
        ["advise", "quadratic", "--steps", "1", "--budget", "1e-9", "--seed", "0", "--examples",
         "1", "--batch", "0", "--eta", "2", "--dim", "2", "--lam-max", "1e-9", "--theta", "1"])
    assert (args.steps, args.seed, args.examples, args.batch, args.eta, args.dim) == (1, 0, 1, 0, 2, 2)
    assert (args.budget, args.lam_max, args.theta) == (1e-9, 1e-9, 1.0)
    assert build_parser().parse_args(["advise", "quadratic", "--theta", "0"]).theta == 0.0


def test_validation_hit_is_within_one_percent_of_the_tuned_winner() -> None:
    from steepest.experiments.advise_validation import _is_hit

    assert _is_hit(1.0099, 1.0) and not _is_hit(1.0101, 1.0)
    assert _is_hit(0.5, 1.0)  # better than the tuned winner is a hit
    assert _is_hit(1e-13, 0.0) and not _is_hit(1e-11, 0.0)  # the absolute floor at L* = 0
    assert not _is_hit(math.inf, 1.0) and not _is_hit(math.nan, 1.0)


def test_validation_tiny_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from steepest.experiments.harness import run_experiment

    opts = {"lam_max": "5", "thetas": "0.5", "problems": [], "steps": 20, "budgets": "5",
            "restricted": 0}
    s = run_experiment("advise-validation", quick=True, out_dir=tmp_path, options=opts,
                       progress=False, echo=False)
    assert [c["id"] for c in s["claims"]] == ["advise-race-hit-rate"]
    summary = json.loads((tmp_path / "summary.json").read_text())["settings"]["summary"]
    assert summary["cases"] == 1 and summary["criterion_fixed_at"]
    row = (tmp_path / "results.csv").read_text().splitlines()
    assert len(row) == 2
    # the race spends at most its budget: 5 x 20 steps
    assert 0 < summary["race_budget_used"]["5"] <= 5.0
    assert (tmp_path / "advise_hit_rates.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------
# method="search": every configuration run for the judged horizon, lr searched until bracketed
# ------------------------------------------------------------------------------------------
def gd_final_loss(diag: list[float], lr: float, steps: int) -> float:
    """Closed form of GD on 0.5 sum h_i x_i^2 from x0 = 1: x_i(T) = (1 - lr h_i)^T."""
    return 0.5 * sum(h * (1 - lr * h) ** (2 * steps) for h in diag)


def test_next_lr_follows_the_tuning_rule() -> None:
    from steepest.advise import _next_lr

    assert _next_lr({1.0: 5.0, 3.0: 4.0, 9.0: 3.0}, 3.0) == pytest.approx(27.0)  # past the top
    assert _next_lr({1.0: 1.0, 3.0: 2.0, 9.0: 3.0}, 3.0) == pytest.approx(1 / 3)  # below
    assert _next_lr({1.0: 2.0, 3.0: 1.0, 9.0: 3.0}, 3.0) is None  # bracketed
    assert _next_lr({1.0: 0.0, 3.0: 2.0, 9.0: 3.0}, 3.0) is None  # 0: nothing left to gain
    assert _next_lr({1.0: 1.0}, 1.0) is None  # one lr: no direction
    # a tie goes to the lr nearest the centre (interior here: done), as log_grid_search does
    assert _next_lr({1.0: 1.0, 3.0: 1.0, 9.0: 3.0}, 3.0) is None


def test_search_scores_every_configuration_at_the_full_horizon() -> None:
    diag, T = [1.0, 4.0], 30
    model, data = quad_problem(diag)
    adv = advise(model, quad_loss, data, steps_total=T, budget=20.0, method="search",
                 candidates={"gd": sgd(0.05)}, explain=False)
    assert adv.method == "search" and adv.rungs == [(len(adv.table), T)]
    for e in adv.table:  # the final loss after T steps, against the closed form (float64)
        assert e.steps == T and len(e.scores) == 1
        assert e.score == pytest.approx(gd_final_loss(diag, e.lr, T), rel=1e-9, abs=1e-300)
    best = min(adv.table, key=lambda e: e.score)
    assert (adv.winner, adv.lr, adv.score) == ("gd", best.lr, best.score)
    assert adv.steps_used == sum(e.steps for e in adv.table) <= 20 * T
    assert "advice (search)" in str(adv) and "final loss" in str(adv)


def test_search_tries_the_lrs_that_log_grid_search_tries() -> None:
    from steepest.experiments.harness import log_grid_search

    # the optimum constant step for T = 40 on h in {1, 2} lies far above the bracket around 1e-3
    diag, T, centre = [1.0, 2.0], 40, 1e-3
    model, data = quad_problem(diag)
    adv = advise(model, quad_loss, data, steps_total=T, budget=50.0, method="search",
                 candidates={"gd": sgd(centre)}, explain=False)
    _, tried = log_grid_search(lambda lr: gd_final_loss(diag, lr, T), centre, n_grid=5,
                               factor=3.0, max_extend=8)
    assert sorted(e.lr for e in adv.table) == pytest.approx([lr for lr, _ in tried], rel=1e-9)
    assert sum(e.extension for e in adv.table) == len(tried) - 5


def test_search_extensions_stop_at_the_budget_and_take_turns() -> None:
    model, data = quad_problem([1.0, 2.0])
    T = 20
    # 10 grid points + 2 extensions fit in budget 12: one each, in turn
    adv = advise(model, quad_loss, data, steps_total=T, budget=12.0, method="search",
                 candidates={"a": sgd(1e-4), "b": sgd(1e-4)}, explain=False)
    assert adv.steps_used == 12 * T
    assert [e.candidate for e in adv.table if e.extension] == ["a", "b"]
    assert "edge of what was tried" in adv.note


def test_search_shortens_the_horizon_when_the_budget_is_small() -> None:
    model, data = quad_problem([1.0, 2.0])
    adv = advise(model, quad_loss, data, steps_total=100, budget=2.0, method="search",
                 candidates={"gd": sgd(0.1)}, explain=False)
    # 5 grid points in 200 steps: 40 steps each, said in the note
    assert adv.rungs[0][1] == 40 and all(e.steps == 40 for e in adv.table)
    assert "40 of the 100 steps" in adv.note
    with pytest.raises(ValueError, match=r"budget >= 0\.05"):
        advise(model, quad_loss, data, steps_total=100, budget=0.04, method="search",
               candidates={"gd": sgd(0.1)}, explain=False)


def test_search_default_candidates_are_the_shortlist() -> None:
    from steepest.advise import SEARCH_SHORTLIST

    x, y = regression()
    adv = advise(lambda: nn.Linear(5, 1), nn.functional.mse_loss, (x, y), steps_total=5,
                 budget=10.0, method="search", explain=False, extend=0)
    assert sorted({e.candidate for e in adv.table}) == sorted(SEARCH_SHORTLIST)
    assert len(adv.table) == 5 * len(SEARCH_SHORTLIST)


def test_cli_method_search(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["advise", "quadratic", "--dim", "4", "--steps", "10", "--budget", "12",
               "--method", "search", "--no-explain"])
    out = capsys.readouterr().out
    assert rc == 0 and "advice (search)" in out and "runs of 10 steps (allowed 12)" in out


def test_cli_entry_point_needs_steps_and_threads_are_restored(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """A user's model has no run length of its own (a silent 1,000 was surprising: issue 20's
    new-user trial); ``--threads`` (default 1) applies while advising only."""
    f = tmp_path / "mine.py"
    f.write_text("import torch\nfrom torch import nn\n\n\ndef make(seed=0):\n    torch.manual_seed(seed)\n"
                 "    x = torch.randn(32, 5)\n    return nn.Linear(5, 1), nn.functional.mse_loss, (x, x.sum(1, keepdim=True))\n")
    assert main(["advise", f"{f}:make"]) == 2
    assert "--steps is needed" in capsys.readouterr().err
    threads = torch.get_num_threads()
    assert main(["advise", f"{f}:make", "--steps", "10", "--no-explain", "--threads", "1"]) == 0
    assert "advising for a 10-step run" in capsys.readouterr().out
    assert torch.get_num_threads() == threads


def test_candidates_by_name_and_candidate_checks() -> None:
    x, y = regression(n=32)
    adv = advise(lambda: nn.Linear(5, 1), nn.functional.mse_loss, (x, y), steps_total=10, budget=8.0,
                 candidates=["sgd", "adamw"], explain=False, extend=0)
    assert set(adv.candidates) == {"sgd", "adamw"}
    with pytest.raises(ValueError, match=r"unknown name\(s\) \['adam'\]"):
        advise(lambda: nn.Linear(5, 1), nn.functional.mse_loss, (x, y), steps_total=10, candidates=["adam"])
    with pytest.raises(ValueError, match="family must be one of"):
        Candidate(lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr), 0.1, family="adam")
    with pytest.raises(ValueError, match="make must be a callable"):
        Candidate(3, 0.1)  # type: ignore[arg-type]
