"""Does the geometry advisor pick the winner? ``steepest geometry``'s recommendation vs tuned runs.

The advisor (:meth:`steepest.geometry.GeometryReport.recommend`) turns [BPL20]'s progress ratio
``R = phi d L_2 / L_inf`` (Eq. 31) at the starting point into a choice between gradient descent
(l_2) and norm-scaled sign descent (l_inf). This experiment checks that choice against what
happens: on each case, gradient descent (``torch.optim.SGD``) and sign descent are each tuned on
a logarithmic learning-rate grid (:func:`~steepest.experiments.harness.log_grid_search`, centred
on the advisor's starting learning rate and extended until the optimum is bracketed), run for the
same number of full-batch steps, and the one that ends lower wins.

Cases: the rotated quadratics of [BPL20] (App. D.2, ``H = R^theta diag(1,...,1,lam_max)
(R^theta)^T``, ``x0 ~ N(0, I)``, scored by ``||x_T - x*||^2`` as in Sec. 5) and the built-in
problems of :mod:`steepest.problems` that need no data files (scored by the training loss on a
fixed subset, full batch, float64: the deterministic setting the guarantees are about).

"Sign descent" has two readings, both run: norm-scaled sign descent ``ScaledSignSGD``
(``x -= lr ||g||_1 sign(g)``, the l_inf steepest descent of Eq. 29, whose guarantee R compares;
the primary reading) and plain ``SignSGD`` (``x -= lr sign(g)``, what practitioners run).

Options (``--set``): ``d`` (quadratic dimension, 20; quick 10), ``lam_max`` (list, 10,100,1000),
``thetas`` (list, 0,0.1,0.3,1), ``steps`` (100, the paper's T; quick 40), ``examples`` (subset size
of the built-in problems, 128; quick 64), ``problems`` (list of problem names), ``problem_seeds``
(seeds of the built-in problems, 1; the quadratics use ``--seeds``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from steepest.experiments.harness import (
    Claim,
    Context,
    Experiment,
    Result,
    log_grid_search,
    torch_threads,
)

# The built-in problems that need no data files, as registered when this was written (a fixed
# list keeps reruns comparable when problems are added). The full-width 2c2d CNNs (325k-677k
# parameters) are replaced by their narrowed "-small" versions to fit the CPU budget; the
# character-level problems are left out (their token inputs cannot be cast to float64).
PROBLEMS = ["breast-cancer-logreg", "digits-logreg", "digits-mlp", "digits-cnn", "mnist1d-mlp",
            "mnist1d-cnn", "digits-2c2d-small", "mnist1d-2c2d-small"]
QUICK_PROBLEMS = ["breast-cancer-logreg", "digits-logreg"]
TIE = 0.01  # ours, fixed before the run: final values within 1% are a tie (neither wins)

Make = Callable[[list[torch.Tensor], float], torch.optim.Optimizer]


def _optimizers() -> dict[str, Make]:
    import steepest

    return {
        "gd": lambda p, lr: torch.optim.SGD(p, lr=lr),
        "scaled_sign": lambda p, lr: steepest.ScaledSignSGD(p, lr=lr),
        "signsgd": lambda p, lr: steepest.SignSGD(p, lr=lr),
    }


class _Quadratic(nn.Module):
    """A parameter vector ``x``; the "loss" ``0.5 x^T H x`` takes ``H`` as the target."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(x0.clone())

    def forward(self, _: torch.Tensor) -> torch.Tensor:
        return self.x


def _quad_loss(x: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    return 0.5 * x @ H @ x


def _squared_distance(model: nn.Module) -> float:
    """``||x||^2`` of a :class:`_Quadratic`: its squared distance to the minimizer 0."""
    return float((model.get_parameter("x").detach() ** 2).sum())


def _case(model: nn.Module, loss_fn: Any, data: tuple[torch.Tensor, torch.Tensor],
          score: Callable[[nn.Module], float], steps: int, seed: int) -> dict[str, Any]:
    """The advisor's report at the start, then each optimizer tuned around its advised lr."""
    from steepest.geometry.report import geometry_report

    # The mode by parameter count, not by `auto`'s timing, so that a rerun on another machine (or
    # under load) measures the same quantities: dense (exact) up to 2,000 parameters.
    d = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mode = "dense" if d <= 2000 else "matrix-free"
    rep = geometry_report(model, loss_fn, data, seed=seed, check_deterministic=False, mode=mode)
    rec = rep.recommend()
    lo, hi = rep.advantage
    state0 = copy.deepcopy(model.state_dict())
    x, y = data

    def run(make: Make, lr: float) -> float:
        model.load_state_dict(state0)
        opt = make(list(model.parameters()), lr)
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                return math.inf
            loss.backward()
            opt.step()
        val = score(model)
        return val if math.isfinite(val) else math.inf

    centres = {"gd": rec.lr_gd, "scaled_sign": rec.lr_scaled_sign, "signsgd": rec.signsgd_lr}
    row: dict[str, Any] = {
        "d": rep.dim, "mode": rep.mode, "R_lo": lo, "R_hi": hi, "density": rep.density,
        "linf_over_dl2_lo": rep.linf_lower / (rep.dim * rep.L2),
        "linf_over_dl2_hi": rep.linf_upper / (rep.dim * rep.L2),
        "choice": rec.choice, "confidence": rec.confidence, "report_seconds": rep.seconds,
    }
    for name, make in _optimizers().items():
        c = centres[name]
        if not (math.isfinite(c) and c > 0):
            c = 1e-2
        best_lr, tried = log_grid_search(partial(run, make), c, n_grid=5, factor=3.0,
                                         max_extend=8)
        row[f"{name}_lr"] = best_lr
        row[f"{name}_advised_lr"] = c
        row[f"{name}_final"] = min(v for _, v in tried)
    for reading in ("scaled_sign", "signsgd"):
        a, b = row["gd_final"], row[f"{reading}_final"]
        if math.isfinite(a) and math.isfinite(b) and abs(math.log(max(a, 1e-300) / max(b, 1e-300))) < math.log1p(TIE):
            winner = "tie"
        else:
            winner = "gd" if a < b else "sign"
        row[f"winner_{reading}"] = winner
    return row


def _quadratic_rows(ctx: Context, d: int, lams: list[float], thetas: list[float],
                    steps: int) -> list[dict[str, Any]]:
    from steepest.geometry.dense import rotated_quadratic

    rows = []
    cases = [(lam, th, s) for lam in lams for th in thetas for s in ctx.seed_list()]
    for lam, th, s in ctx.track(cases, desc="rotated quadratics"):
        H = torch.as_tensor(rotated_quadratic(d, lam, th, seed=s))
        x0 = torch.as_tensor(np.random.default_rng(1000 + s).standard_normal(d))
        model = _Quadratic(x0)
        row = _case(model, _quad_loss, (torch.zeros(1, dtype=torch.float64), H),
                    _squared_distance, steps, s)
        lam_bar = (d - 1 + lam) / d
        rows.append({"case": f"quadratic lam_max={lam:g} theta={th:g} seed={s}",
                     "family": "quadratic", "lam_max": lam, "theta": th, "seed": s,
                     "outlier_ratio": lam / lam_bar, **row})
    return rows


def _problem_rows(ctx: Context, names: list[str], examples: int, steps: int,
                  seeds: int) -> list[dict[str, Any]]:
    from steepest.problems import get_problem

    rows = []
    cases = [(n, s) for n in names for s in range(seeds)]
    for name, s in ctx.track(cases, desc="built-in problems"):
        inst = get_problem(name).build(seed=s, dtype=torch.float64)
        x, y = inst.train.tensors
        data = (x[:examples], y[:examples])
        model, loss_fn = inst.model, inst.loss_fn

        def score(m: nn.Module, loss_fn: Any = loss_fn, data: Any = data) -> float:
            with torch.no_grad():
                return float(loss_fn(m(data[0]), data[1]))

        row = _case(model, loss_fn, data, score, steps, s)
        rows.append({"case": f"{name} seed={s}", "family": "problem", "problem": name, "seed": s,
                     **row})
    return rows


def _hits(rows: list[dict[str, Any]], reading: str, predict: Callable[[dict[str, Any]], str]
          ) -> tuple[int, int]:
    """(hits, decided cases): ties and cases without a prediction are left out."""
    hit = n = 0
    for r in rows:
        w, p = r[f"winner_{reading}"], predict(r)
        if w == "tie" or p not in ("gd", "sign"):
            continue
        n += 1
        hit += p == w
    return hit, n


def _rate(h: int, n: int) -> str:
    return f"{h}/{n} ({100 * h / n:.0f}%)" if n else "0/0"


def run(ctx: Context) -> Result:
    q = ctx.quick
    d = ctx.opt("d", 10 if q else 20)
    lams = [float(v) for v in ctx.opt("lam_max", [10.0, 1000.0] if q else [10.0, 100.0, 1000.0])]
    thetas = [float(v) for v in ctx.opt("thetas", [0.0, 1.0] if q else [0.0, 0.1, 0.3, 1.0])]
    steps = ctx.opt("steps", 40 if q else 100)
    examples = ctx.opt("examples", 64 if q else 128)
    names = list(ctx.opt("problems", QUICK_PROBLEMS if q else PROBLEMS))
    p_seeds = ctx.opt("problem_seeds", 1)
    if d < 2 or steps < 1 or examples < 2 or p_seeds < 0:
        raise ValueError(f"need d >= 2, steps >= 1, examples >= 2, problem_seeds >= 0; got {d}, "
                         f"{steps}, {examples}, {p_seeds}")
    with torch_threads(1):
        rows = (_quadratic_rows(ctx, d, lams, thetas, steps)
                + _problem_rows(ctx, names, examples, steps, p_seeds))

    adv = lambda r: r["choice"]  # noqa: E731
    claims: list[Claim] = []
    summary: dict[str, Any] = {}
    for reading, label in (("scaled_sign", "ScaledSignSGD"), ("signsgd", "SignSGD")):
        h, n = _hits(rows, reading, adv)
        hg, _ = _hits(rows, reading, lambda r: "gd")
        hs, _ = _hits(rows, reading, lambda r: "sign")
        decisive = [r for r in rows if r["confidence"] in ("high", "medium")]
        hd, nd = _hits(decisive, reading, adv)
        by_family = {f: _rate(*_hits([r for r in rows if r["family"] == f], reading, adv))
                     for f in ("quadratic", "problem")}
        ties = sum(r[f"winner_{reading}"] == "tie" for r in rows)
        summary[reading] = {"hits": h, "cases": n, "decisive_hits": hd, "decisive_cases": nd,
                            "always_gd": hg, "always_sign": hs, "ties": ties, **by_family}
        best_const = max(hg, hs)
        claims.append(Claim(
            id=f"hit-rate-{reading}",
            claim=f"the advisor's choice (GD vs sign descent read as {label}) matches the tuned "
                  "winner more often than always answering the same",
            paper="Sec. 5 / Fig. 3: 'sign gradient descent is preferable for problems with high "
                  "lambda_max/lambda_bar, given that they have some degree of axis-alignment'; "
                  "abstract: 'sign-based methods [are] preferable over gradient descent if (i) the "
                  "Hessian is to some degree concentrated on its diagonal, and (ii) its maximal "
                  "eigenvalue is much larger than the average eigenvalue'",
            measured=(f"hit rate {_rate(h, n)} (quadratics {by_family['quadratic']}, problems "
                      f"{by_family['problem']}); decisive (high/medium confidence) "
                      f"{_rate(hd, nd)}; always-GD {_rate(hg, n)}, always-sign {_rate(hs, n)}; "
                      f"{ties} tie(s) left out"),
            holds=n > 0 and h > best_const,
            kind="diagnostic",
            criterion="ours, fixed before the run: the advisor must beat the better constant "
                      "predictor on the same cases (ties, |log ratio| < 1%, left out), since a "
                      "hit rate alone is uninformative when one method wins almost everywhere",
        ))
    # [BPL20] Fig. 3, with tuned step sizes instead of 1/L: the corners of the grid
    quad = [r for r in rows if r["family"] == "quadratic"]
    hi_axis = [r for r in quad if r["lam_max"] == max(lams) and r["theta"] == min(thetas)]
    lo_rot = [r for r in quad if r["lam_max"] == min(lams) and r["theta"] == max(thetas)]
    sign_wins = sum(r["winner_scaled_sign"] == "sign" for r in hi_axis)
    gd_wins = sum(r["winner_scaled_sign"] == "gd" for r in lo_rot)
    claims.append(Claim(
        id="fig3-corners-tuned",
        claim="tuned sign descent wins at high lambda_max and no rotation; tuned GD wins at low "
              "lambda_max and full rotation",
        paper="[BPL20, Fig. 3]: 'GD drastically ... outperforms signGD for mildly-conditioned (small "
              "lambda_max/lambda_bar) and non-axis-aligned (large theta) problems. However, sign "
              "gradient descent is preferable for problems with high lambda_max/lambda_bar, given "
              "that they have some degree of axis-alignment (small theta).'",
        measured=(f"lam_max={max(lams):g}, theta={min(thetas):g}: ScaledSignSGD wins "
                  f"{sign_wins}/{len(hi_axis)} seeds; lam_max={min(lams):g}, theta={max(thetas):g}: "
                  f"GD wins {gd_wins}/{len(lo_rot)} seeds"),
        holds=bool(hi_axis and lo_rot and sign_wins == len(hi_axis) and gd_wins == len(lo_rot)),
        # the same statement as quadratic-grid's fig3-sign-wins / fig3-gd-wins, counted there
        # (issue 19): here a check that tuning step sizes does not undo it, not evidence
        kind="sanity",
        criterion="paper's direction (Fig. 3), read at the two opposite corners of our grid; "
                  "ours: every seed must agree (step sizes tuned on a x3 grid, not 1/L)",
    ))
    # how far the advised learning rate is from the tuned one (a diagnostic of the lr advice)
    ratios = {k: [r[f"{k}_lr"] / r[f"{k}_advised_lr"] for r in rows] for k in ("gd", "scaled_sign")}
    spread = {k: (float(np.min(v)), float(np.median(v)), float(np.max(v))) for k, v in ratios.items()}
    claims.append(Claim(
        id="advised-lr",
        claim="the advised starting learning rates (1/L_2, 1/L_inf) are within a factor 10 of "
              "the tuned ones on most cases",
        paper="Eq. 28-29: the steps 1/L_2 and 1/L_inf give the one-step progress guarantees",
        measured="; ".join(f"{k}: tuned/advised min {a:.3g}, median {m:.3g}, max {b:.3g}"
                           for k, (a, m, b) in spread.items()),
        holds=all(np.mean([0.1 <= x <= 10 for x in v]) >= 0.5 for v in ratios.values()),
        kind="diagnostic",
        criterion="ours, fixed before the run: median case within 10x (a lr search of a few x3 "
                  "steps around the advice then finds the optimum)",
    ))

    figures = [_figure(ctx, rows)]
    settings = {"d": d, "lam_max": lams, "thetas": thetas, "steps": steps, "examples": examples,
                "problems": names, "problem_seeds": p_seeds, "tie": TIE, "grid": "log_grid_search(n_grid=5, factor=3, "
                "max_extend=8) centred on the advised lr", "summary": summary}
    return Result(rows=rows, claims=claims, settings=settings, figures=figures)


def _figure(ctx: Context, rows: list[dict[str, Any]]) -> str:
    """log(final GD / final ScaledSignSGD) against the advisor's R bracket, one point a case."""
    plt = ctx.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for fam, marker in (("quadratic", "o"), ("problem", "s")):
        rs = [r for r in rows if r["family"] == fam]
        if not rs:
            continue
        mid = np.sqrt(np.array([r["R_lo"] for r in rs]) * np.array([r["R_hi"] for r in rs]))
        lo = mid - np.array([r["R_lo"] for r in rs])
        hi = np.array([r["R_hi"] for r in rs]) - mid
        # final values of exactly 0 (separable logistic regression) would dominate: floor them
        adv = np.log10(np.maximum([r["gd_final"] for r in rs], 1e-12)) - np.log10(
            np.maximum([r["scaled_sign_final"] for r in rs], 1e-12))
        ax.errorbar(mid, np.clip(adv, -8, 8), xerr=[lo, hi], fmt=marker, ms=4, alpha=0.7,
                    label=fam)
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.axhline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(plt.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xticks([0.25, 0.5, 1, 2, 4])
    ax.set_xlabel("R = phi d L_2 / L_inf at the start (bracket; > 1 predicts sign descent)")
    ax.set_ylabel("log10(final GD / final ScaledSignSGD), tuned\n(> 0: sign wins; floor 1e-12, "
                  "clipped to +-8)")
    ax.set_title("advisor prediction vs tuned outcome")
    ax.legend()
    return ctx.save_figure(fig, "advisor_vs_outcome")


EXPERIMENT = Experiment(
    name="advisor-validation",
    description="steepest geometry's GD-vs-sign recommendation against tuned runs (hit rate)",
    source="[BPL20, Sec. 4-5, Eq. 31, Fig. 3]",
    run=run,
    default_seeds=2,
    quick_seeds=1,
)
