"""``scaled-sign-logreg``: l2-regularized logistic regression ([ScaledSign, Ex. 5, Fig. 2-3]).

Objective ([ScaledSign, Ex. 5])::

    f(x) = 1/n sum_i log(1 + exp(-b_i a_i^T x)) + 1/(2n) ||x||_2^2,   b_i in {-1, +1}

minimized from ``x_0 ~ N(0, I)`` with minibatch gradients (``batch`` examples drawn i.i.d.
with replacement each step, the same stream for every method of a seed) by

* SGD (``torch.optim.SGD``), signSGD (:class:`steepest.SignSGD`), Signum
  (``SignSGD(momentum=0.9)``), EF-signSGD (:class:`steepest.EFSignSGD`, Eq. 12) and scaled
  signSGD (:class:`steepest.ScaledSignSGD`, Alg. 2), each with a constant step (Fig. 2a) and a
  diminishing step ``a_k = a_0 / (k + 1)`` (Fig. 2b, and the form of Theorem 2.2, O(1/k));
* distributed scaled signSGD by majority vote (Alg. 3) with M = 1 and M = 3 workers, each worker
  drawing its own minibatch (Fig. 3). The workers' signs are packed into bits and voted with
  :func:`steepest.distributed.bits.majority_vote` (the wire format of the DDP hook),
  **simulated in one process**; the scale is the mean of the workers' ``||g_m||_1``.

Data: the paper's epsilon set (400 000 x 2000) is not available offline. We use (i) a synthetic
set of the same kind scaled down (``n = 4000, d = 200`` by default: dense Gaussian features, rows
normalized to unit l2 norm as in epsilon, labels drawn from a logistic model), and (ii)
scikit-learn's bundled breast-cancer data (569 x 30; standardized, rows normalized). ``f*`` is
computed with scikit-learn's ``LogisticRegression(C=1, fit_intercept=False)`` (the paper's
baseline; its objective is ``n f``) polished by Newton steps to machine precision.

Step sizes: the paper's caption gives (a) a constant a = 2 and (b) a_k = c/(k+1) with c garbled
in the text, and does not say how either was chosen. Here each method's constant step comes from
a log grid (factor 2, 7 values around a theory-based centre: ``1/L_2`` for SGD/EF, ``1/L_inf``
with the Prop. 4 bound for scaled signSGD, an equal-first-step-length value for signSGD/Signum),
tuned on the first seed for the lowest run-averaged ``log10(f - f*)`` and grown past an edge (up
to ``max_extend`` times) until the optimum is bracketed. For the paper claim "constant converges
faster than diminishing", scaled signSGD's ``a_0`` of ``a_0 / (k + 1)`` is tuned on its own grid
the same way; the schedules **tied** to the constant step, ``a_0 = a`` (and, for scaled signSGD,
also ``a_0 = 3a``, the caption's other plausible reading "6/(k+1)" vs "2"), are a sanity check
(they cannot lose) and the figure's Fig. 2b panel. The batch size (32) is ours: the paper does not state
it. Claims compare the run-averaged ``log10(f - f*)`` (the curves the paper plots), not the
final noise floor, which is reported beside. All runs are float64.

Options (``--set``): ``datasets`` (``synthetic,breast-cancer``), ``steps`` (4000; quick 600),
``batch`` (32), ``n`` and ``d`` of the synthetic set (4000, 200; quick 2000, 100),
``grid`` (7; quick 3; odd), ``grid_factor`` (2; quick 4), ``log_points`` (100),
``decay_k0`` (1: the diminishing step ``a_0 k0 / (k + k0)``), ``decay_start`` (the readings
``a_0 / a``, ``1,3``), ``max_extend`` (12: grid extensions past an edge).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from steepest import EFSignSGD, ScaledSignSGD, SignSGD
from steepest.experiments.harness import (
    Claim,
    Context,
    Experiment,
    Result,
    Statement,
    combine,
    log_grid_search,
    torch_threads,
    verdict_direction,
    verdict_within,
)

METHODS = ("SGD", "signSGD", "Signum", "EF-signSGD", "scaled signSGD")
SIMILAR = 3.0  # "similar performance": run-averaged gaps (geometric) within this factor
DECAY_READINGS = (1.0, 3.0)  # a_0 / a of the diminishing step: tied (a_0 = a), and 3a (caption)
TUNED = "diminishing tuned"  # the diminishing schedule with a_0 tuned on its own grid

# Pre-registration (issue 19). The primary reading of every statement is the synthetic
# epsilon-like set (the stand-in for the paper's epsilon); breast cancer, which the paper does
# not use, is another reading (reported, not voted). The metric (run-averaged log10 gap instead of
# the final floor) and the diminishing schedule were changed after the first run (251bb51, seeds
# 0-2), so every statement is judged on seeds 100-104 only, which no earlier run used.
NEW = "940b57c"  # the commit that declared these criteria, before their run
_QUOTE = ("Fig. 2 indicates that [scaled] SIGNSGD has a similar performance to SGD and performs "
          "better than SIGNSGD and SIGNSGDM")
STATEMENTS = (
    Statement(
        "ex5-scaled-like-sgd", "[ScaledSign, Ex. 5, Fig. 2]", _QUOTE,
        primary="synthetic epsilon-like set, constant steps, run-averaged log10(f - f*)",
        criterion="per seed, scaled signSGD's minus SGD's run-averaged log10 gap; rule 2 with "
                  "tolerance log10(3) = 0.48 decades (the paper's 'similar' has no number)",
        criterion_source="ours", fixed_at=NEW, seeds="100-104 (fresh)",
        revised="holds on the primary reading (first criterion: final floor within x3, fixed "
                "at 1b89d2f; synthetic 1.5x on seeds 0-2, run 251bb51; breast cancer failed, "
                "3.3x)"),
    Statement(
        "ex5-scaled-beats-sign", "[ScaledSign, Ex. 5, Fig. 2]", _QUOTE,
        primary="synthetic epsilon-like set, constant steps (each tuned), run-averaged "
                "log10(f - f*)",
        criterion="per seed, signSGD's and Signum's run-averaged log10 gaps minus scaled "
                  "signSGD's; rule 2 on each, both must hold (the paper's ordering, no margin)",
        criterion_source="paper", fixed_at=NEW, seeds="100-104 (fresh)",
        revised="fails (first criterion: the final floor, fixed at 1b89d2f; Signum's was lower "
                "on both sets, seeds 0-2, run 251bb51)"),
    Statement(
        "ex5-constant-faster", "[ScaledSign, Ex. 5, Fig. 2a-b]",
        "the case in Fig. 2(a) with a constant learning rate converges faster than that in "
        "Fig. 2(b) with a diminishing learning rate",
        primary="synthetic epsilon-like set, scaled signSGD, constant step vs a_0/(k+1) with "
                "each step tuned on its own grid, run-averaged log10(f - f*)",
        criterion="per seed, the tuned diminishing schedule's run-averaged log10 gap minus the "
                  "constant step's; rule 2 (the paper's ordering, no margin)",
        criterion_source="paper", fixed_at=NEW, seeds="100-104 (fresh)",
        revised="fails (each schedule tuned, seeds 0-2, run 251bb51: the diminishing schedule "
                "won on both sets, -2.47 vs -2.04 and -3.56 vs -3.01; the tied version that "
                "replaced it cannot fail and is now a sanity check)"),
    Statement(
        "fig3-more-workers", "[ScaledSign, Fig. 3]",
        "Fig. 3 shows that more workers can improve the performance",
        primary="synthetic epsilon-like set, distributed scaled signSGD M = 3 vs M = 1, "
                "run-averaged log10(f - f*)",
        criterion="per seed, M = 1's run-averaged log10 gap minus M = 3's; rule 2 (the paper's "
                  "ordering, no margin)",
        criterion_source="paper", fixed_at=NEW, seeds="100-104 (fresh)",
        revised="holds (first criterion: the final floor, fixed at 1b89d2f; seeds 0-2, run "
                "251bb51)"),
)


# ------------------------------------------------------------------------------ data
@dataclass
class LogRegData:
    """Features ``A`` (n, d), labels ``b`` in {-1, +1}, and the optimum of Ex. 5's objective."""

    name: str
    A: Tensor
    b: Tensor
    x_star: Tensor
    f_star: float
    note: str

    @property
    def n(self) -> int:
        return self.A.shape[0]

    @property
    def d(self) -> int:
        return self.A.shape[1]


def objective(A: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """Seed 004, Ex. 5: mean logistic loss + ||x||^2 / (2n)."""
    n = A.shape[0]
    return torch.nn.functional.softplus(-b * (A @ x)).mean() + (x @ x) / (2 * n)


def minibatch_gradient(A: Tensor, b: Tensor, x: Tensor, idx: Tensor) -> Tensor:
    """Unbiased estimate of grad f: the batch-mean logistic gradient plus the full regularizer
    gradient x/n (its exact term, as in the paper's stochastic oracle)."""
    Ab, bb = A[idx], b[idx]
    s = torch.sigmoid(-bb * (Ab @ x))
    return -(Ab.T @ (bb * s)) / idx.numel() + x / A.shape[0]


def full_gradient(A: Tensor, b: Tensor, x: Tensor) -> Tensor:
    return minibatch_gradient(A, b, x, torch.arange(A.shape[0]))


def solve(A: Tensor, b: Tensor) -> tuple[Tensor, float]:
    """The minimizer: scikit-learn (C = 1, no intercept: objective n f), then Newton steps."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0, fit_intercept=False, tol=1e-12, max_iter=10_000)
    clf.fit(A.numpy(), b.numpy())
    x = torch.as_tensor(clf.coef_[0], dtype=torch.float64).clone()
    n = A.shape[0]
    for _ in range(30):
        g = full_gradient(A, b, x)
        p = torch.sigmoid(A @ x) * torch.sigmoid(-(A @ x))
        H = (A.T * p) @ A / n + torch.eye(A.shape[1], dtype=A.dtype) / n
        x = x - torch.linalg.solve(H, g)
        if float(g.norm()) < 1e-15:
            break
    return x, float(objective(A, b, x))


def _normalize_rows(X: np.ndarray) -> np.ndarray:
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def synthetic_epsilon(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An epsilon-like set: dense Gaussian features with unit-norm rows, labels from a logistic
    model ``P(b = 1) = sigmoid(a^T w)`` with ``||w||`` set so margins have std 2 (about 20%
    of labels disagree with sign(a^T w), so the set is not separable)."""
    rng = np.random.default_rng(seed)
    A = _normalize_rows(rng.standard_normal((n, d)))
    w = rng.standard_normal(d)
    w *= 2.0 / np.std(A @ w)
    b = np.where(rng.random(n) < 1 / (1 + np.exp(-(A @ w))), 1.0, -1.0)
    return A, b


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    import sklearn.datasets

    ds = sklearn.datasets.load_breast_cancer()
    X = ds.data.astype(np.float64)
    X = (X - X.mean(0)) / X.std(0)
    return _normalize_rows(X), np.where(ds.target == 1, 1.0, -1.0)


def load(name: str, n: int, d: int) -> LogRegData:
    if name == "synthetic":
        A, b = synthetic_epsilon(n, d)
        note = f"synthetic epsilon-like, n = {n}, d = {d} (epsilon: n = 400000, d = 2000)"
    elif name == "breast-cancer":
        A, b = breast_cancer()
        note = ("scikit-learn breast cancer, n = 569, d = 30, standardized, unit-norm rows "
                "(a data set the paper does not use)")
    else:
        raise ValueError(f"datasets: unknown data set {name!r}; use synthetic or breast-cancer")
    At = torch.as_tensor(A, dtype=torch.float64)
    bt = torch.as_tensor(b, dtype=torch.float64)
    x_star, f_star = solve(At, bt)
    return LogRegData(name, At, bt, x_star, f_star, note)


# ------------------------------------------------------------------------------ methods
def make_optimizer(method: str, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    if method == "SGD":
        return torch.optim.SGD(params, lr=lr)
    if method == "signSGD":
        return SignSGD(params, lr=lr)
    if method == "Signum":
        return SignSGD(params, lr=lr, momentum=0.9)
    if method == "EF-signSGD":
        return EFSignSGD(params, lr=lr)
    if method == "scaled signSGD":
        return ScaledSignSGD(params, lr=lr)
    raise ValueError(f"unknown method {method!r}")


def simulated_vote(grads: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Seed 004, Alg. 3 on the server, simulated in one process: the workers' signs travel as
    packed bits and are voted on the packed words (:mod:`steepest.distributed.bits`, the DDP
    hook's code path). Returns ``(sign(sum_m sign(g_m)), mean_m ||g_m||_1)``."""
    from steepest.distributed.bits import majority_vote, pack_signs, unpack_ternary

    n = grads[0].numel()
    pos, neg = majority_vote(torch.stack([pack_signs(g) for g in grads]))
    vote = unpack_ternary(pos, neg, n, dtype=grads[0].dtype)
    scale = torch.stack([g.abs().sum() for g in grads]).mean()
    return vote, scale


def schedule(kind: str, lr0: float, k0: float = 1.0) -> Callable[[int], float]:
    """Constant ``a_k = a_0`` or diminishing ``a_k = a_0 k0 / (k + k0)`` (``k0 = 1``: the
    ``a_0 / (k + 1)`` of [ScaledSign, Fig. 2b and Theorem 2.2])."""
    if kind == "constant":
        return lambda k: lr0
    return lambda k: lr0 * k0 / (k + k0)


def run_config(
    data: LogRegData,
    method: str,
    kind: str,
    lr0: float,
    steps: int,
    batch: int,
    seed: int,
    log_at: np.ndarray,
    workers: int = 0,
    k0: float = 1.0,
) -> np.ndarray:
    """One run; returns ``f(x_k) - f*`` at the steps ``log_at``. ``workers > 0`` runs Alg. 3
    with that many workers (then ``method`` is ignored)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    x0 = torch.randn(data.d, generator=gen, dtype=torch.float64)
    x = x0.clone().requires_grad_(False)
    lr_of = schedule(kind, lr0, k0)
    opt = torch.optim.SGD([x], lr=lr0) if workers else make_optimizer(method, [x], lr0)
    out = np.empty(len(log_at))
    j = 0
    with torch.no_grad():
        for k in range(steps + 1):
            if j < len(log_at) and k == log_at[j]:
                gap = float(objective(data.A, data.b, x)) - data.f_star
                out[j] = gap if math.isfinite(gap) else np.inf
                j += 1
                if not math.isfinite(gap) or gap > 1e12:
                    out[j:] = np.inf
                    break
            if k == steps:
                break
            for group in opt.param_groups:
                group["lr"] = lr_of(k)
            if workers:
                grads = [
                    minibatch_gradient(data.A, data.b, x,
                                       torch.randint(data.n, (batch,), generator=gen))
                    for _ in range(workers)
                ]
                vote, scale = simulated_vote(grads)
                x.grad = scale * vote  # x -= a M_k sign(vote) (Alg. 3, on each worker)
            else:
                idx = torch.randint(data.n, (batch,), generator=gen)
                x.grad = minibatch_gradient(data.A, data.b, x, idx)
            opt.step()
    return out


def smoothness(data: LogRegData) -> tuple[float, float]:
    """Upper bounds on L_2 and L_inf of f: the Hessian is A^T D A / n + I/n with D <= 1/4, so
    with M = A^T A / (4n) + I/n, L_2 <= ||M||_2 and L_inf <= ||M||_{inf,1} <= sum(lambda)/rho_diag
    ([BPL20, Prop. 4]; :func:`steepest.geometry.prop4_bound`)."""
    from steepest.geometry import l2_smoothness, prop4_bound

    n = data.n
    M = (data.A.T @ data.A / (4 * n) + torch.eye(data.d, dtype=torch.float64) / n).numpy()
    return l2_smoothness(M), prop4_bound(M)


def grid_centre(
    method: str, kind: str, data: LogRegData, L2: float, Linf: float, steps: int, k0: float
) -> float:
    """Centre of the step-size grid. Constant steps: ``1/L_2`` (SGD, EF), ``1/L_inf`` (scaled
    signSGD), and for signSGD/Signum the step whose length ``a sqrt(d)`` equals GD's first step
    ``||g_0||/L_2``. Diminishing steps: the same value reached at ``k = steps/10``."""
    if method in ("SGD", "EF-signSGD"):
        c = 1.0 / L2
    elif method == "scaled signSGD":
        c = 1.0 / Linf
    else:
        gen = torch.Generator().manual_seed(10_000)
        x0 = torch.randn(data.d, generator=gen, dtype=torch.float64)
        c = float(full_gradient(data.A, data.b, x0).norm()) / (L2 * math.sqrt(data.d))
    if kind == "diminishing":
        c *= (steps / 10 + k0) / k0
    return c


def tail_gap(curve: np.ndarray, frac: float = 0.1) -> float:
    """Mean suboptimality over the last ``frac`` of the logged points (inf if diverged)."""
    k = max(1, int(round(frac * len(curve))))
    tail = curve[-k:]
    return float(np.mean(tail)) if np.all(np.isfinite(tail)) else math.inf


def geo_mean(vals: list[float]) -> float:
    v = np.asarray(vals, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        return math.inf
    return float(np.exp(np.mean(np.log(np.maximum(v, 1e-300)))))


def mean_log_gap(curves: list[np.ndarray]) -> float:
    """Mean over the run and the seeds of log10(f - f*): lower means faster convergence."""
    c = np.asarray(curves)
    if not np.all(np.isfinite(c)):
        return math.inf
    return float(np.mean(np.log10(np.maximum(c, 1e-300))))


def similar(a: float, b: float, factor: float = SIMILAR) -> bool:
    return math.isfinite(a) and math.isfinite(b) and max(a, b) <= factor * min(a, b)


# ------------------------------------------------------------------------------ experiment
def run(ctx: Context) -> Result:
    with torch_threads(1):
        return _run(ctx)


def _run(ctx: Context) -> Result:
    datasets = ctx.opt("datasets", ["synthetic", "breast-cancer"])
    steps = ctx.opt("steps", 600 if ctx.quick else 4000)
    batch = ctx.opt("batch", 32)
    n_syn = ctx.opt("n", 2000 if ctx.quick else 4000)
    d_syn = ctx.opt("d", 100 if ctx.quick else 200)
    n_grid = ctx.opt("grid", 3 if ctx.quick else 7)
    factor = ctx.opt("grid_factor", 4.0 if ctx.quick else 2.0)
    n_log = ctx.opt("log_points", 50 if ctx.quick else 100)
    k0 = ctx.opt("decay_k0", 1.0)
    decay_readings = tuple(ctx.opt("decay_start", list(DECAY_READINGS)))
    max_extend = ctx.opt("max_extend", 12)
    if steps < 10 or batch < 1 or n_grid < 1 or n_grid % 2 == 0 or n_log < 2 or k0 <= 0 \
            or factor <= 1 or max_extend < 0 or not decay_readings \
            or min(decay_readings) <= 0:
        raise ValueError(
            "need steps >= 10, batch >= 1, an odd grid >= 1, grid_factor > 1, log_points >= 2, "
            "decay_k0 > 0, max_extend >= 0, decay_start a non-empty list of values > 0"
        )
    log_at = np.unique(np.linspace(0, steps, n_log + 1).round().astype(int))
    seed0 = ctx.seed_list()[0]  # the tuning seed
    plt = ctx.pyplot()
    rows: list[dict] = []
    claims: list[Claim] = []
    figures: list[str] = []
    settings: dict = {"steps": steps, "batch": batch,
                      "batch_note": "the paper does not state its batch size; ours",
                      "x0": "N(0, I)", "grid_factor": factor, "max_extend": max_extend,
                      "tuning": "constant steps on seed 0, lowest run-averaged log10 gap",
                      "diminishing": f"a_k = a_0 k0/(k + k0), k0 = {k0:g}, a_0 = r a (a = the "
                                     f"tuned constant step), r in {list(decay_readings)}; "
                                     "figure and all methods: r = "
                                     f"{decay_readings[0]:g}",
                      "vote": "majority vote on packed sign bits, simulated in one process",
                      "datasets": {}}
    for ds_name in datasets:
        data = load(ds_name, n_syn, d_syn)
        L2, Linf = smoothness(data)
        ds_settings: dict = {"note": data.note, "n": data.n, "d": data.d, "f_star": data.f_star,
                             "L2_bound": L2, "Linf_bound": Linf, "lr": {}}
        # --- constant steps tuned on seed 0 for the run-averaged log gap (the curves the
        # paper plots); the diminishing schedules are tied to them, not tuned (Fig. 2 caption:
        # (a) a = 2, (b) a_k = c/(k+1)) ---
        chosen: dict[tuple[str, str], float] = {}
        for m in ctx.track(METHODS, desc=f"{ds_name}: tuning"):
            def score(lr: float, m: str = m, data: LogRegData = data) -> float:
                return mean_log_gap([run_config(data, m, "constant", lr, steps, batch, seed0,
                                                log_at)])

            centre = grid_centre(m, "constant", data, L2, Linf, steps, k0)
            lr, sc = log_grid_search(score, centre, n_grid, factor, max_extend=max_extend)
            chosen[(m, "constant")] = lr
            chosen[(m, "diminishing")] = lr * decay_readings[0]
            edge = lr in (sc[0][0], sc[-1][0])
            ds_settings["lr"][m] = {
                "lr": lr, "grid": [t[0] for t in sc], "mean_log10_gap": [t[1] for t in sc],
                "at_grid_edge": edge,
            }
            if edge:
                print(f"warning: {ds_name}/{m}: tuned step {lr:.3g} on the grid edge after "
                      f"{max_extend} extensions", file=sys.stderr)
        # the fair reading of 'constant converges faster than diminishing': a_0 of the
        # diminishing schedule tuned on its own grid, as the constant step is
        def score_dim(lr: float, data: LogRegData = data) -> float:
            return mean_log_gap([run_config(data, "scaled signSGD", "diminishing", lr, steps,
                                            batch, seed0, log_at, k0=k0)])

        centre = grid_centre("scaled signSGD", "diminishing", data, L2, Linf, steps, k0)
        lr, sc = log_grid_search(score_dim, centre, n_grid, factor, max_extend=max_extend)
        chosen[("scaled signSGD", TUNED)] = lr
        ds_settings["lr"]["scaled signSGD, diminishing (tuned a_0)"] = {
            "lr": lr, "grid": [t[0] for t in sc], "mean_log10_gap": [t[1] for t in sc],
            "at_grid_edge": lr in (sc[0][0], sc[-1][0])}
        ds_settings["diminishing_a0"] = {f"x{r:g}": {m: chosen[(m, "constant")] * r
                                                     for m in METHODS}
                                         for r in decay_readings}
        # --- the runs ---
        curves: dict[tuple[str, str, int], list[np.ndarray]] = {}
        jobs: list[tuple[str, str, int, float]] = [
            (m, kind, 0, chosen[(m, kind)]) for kind in ("constant", "diminishing")
            for m in METHODS]
        # the other readings of the caption's diminishing start, for scaled signSGD only
        jobs += [("scaled signSGD", f"diminishing x{r:g}", 0,
                  chosen[("scaled signSGD", "constant")] * r) for r in decay_readings[1:]]
        jobs += [("scaled signSGD", TUNED, 0, chosen[("scaled signSGD", TUNED)])]
        jobs += [("scaled signSGD", "constant", w, chosen[("scaled signSGD", "constant")])
                 for w in (1, 3)]
        for m, kind, w, lr in ctx.track(jobs, desc=f"{ds_name}: runs"):
            label = m if not w else f"distributed scaled signSGD, M={w}"
            sched = "constant" if kind == "constant" else "diminishing"
            for seed in ctx.seed_list():
                curve = run_config(data, m, sched, lr, steps, batch, seed, log_at, workers=w,
                                   k0=k0)
                curves.setdefault((m, kind, w), []).append(curve)
                for k, g in zip(log_at, curve):
                    rows.append({"dataset": ds_name, "method": label, "schedule": kind,
                                 "workers": w if w else 1, "seed": seed, "lr0": lr,
                                 "step": int(k), "suboptimality": g})
        settings["datasets"][ds_name] = ds_settings
        # per-seed run-averaged log10 gaps (rule 2 pairs them by seed)
        per_seed = {k: [mean_log_gap([c]) for c in cs] for k, cs in curves.items()}

        def paired(a: tuple, b: tuple, per_seed: dict = per_seed) -> list[float]:
            return [x - y for x, y in zip(per_seed[a], per_seed[b])]
        reading = ("primary" if ds_name == "synthetic" else
                   f"other: {ds_name}, a data set the paper does not use")

        # --- claims: run-averaged log10 gap (mean over the run and the seeds), the final
        # gap (mean of the last 10%, geometric mean over seeds) beside it ---
        avg = {key: mean_log_gap(cs) for key, cs in curves.items()}
        final = {key: geo_mean([tail_gap(c) for c in cs]) for key, cs in curves.items()}
        C = "constant"
        key = {m: (m, C, 0) for m in METHODS}
        tag = (f"[{ds_name}{' (not in the paper)' if ds_name != 'synthetic' else ''}, "
               f"n = {data.n}, d = {data.d}, batch {batch}, {ctx.seeds} seed(s)]")

        def both(*ms: str, keys: dict = key, avg: dict = avg, final: dict = final) -> str:
            return ", ".join(f"{m} {avg[keys[m]]:.2f} (final {final[keys[m]]:.1e})" for m in ms)

        sim = math.log10(SIMILAR)
        d_sc = avg[key["scaled signSGD"]] - avg[key["SGD"]]
        like_v, like_txt = verdict_within(paired(key["scaled signSGD"], key["SGD"]), sim,
                                          "scaled signSGD - SGD (decades)")
        vs_sign = verdict_direction(paired(key["signSGD"], key["scaled signSGD"]),
                                    "signSGD - scaled signSGD (decades)")
        vs_signum = verdict_direction(paired(key["Signum"], key["scaled signSGD"]),
                                      "Signum - scaled signSGD (decades)")
        claims.append(Claim(
            f"{ds_name}/scaled-like-sgd",
            "scaled signSGD performs similarly to SGD (constant steps)",
            "[ScaledSign, Ex. 5, Fig. 2]: 'Fig. 2 indicates that [scaled] SIGNSGD has a "
            "similar performance to SGD' (the symbol of the scaled method is lost in the text; "
            "[scaled] is ours)",
            f"{tag} mean log10(f - f*) over the run: {both('scaled signSGD', 'SGD')}; "
            f"difference {d_sc:+.2f} decades; " + like_txt,
            True, verdict=like_v, statement="ex5-scaled-like-sgd", reading=reading,
            criterion=f"ours: per seed, run-averaged log10 gaps within log10({SIMILAR:g}) = "
                      f"{sim:.2f} decades, rule 2 (the paper's 'similar' has no number; a "
                      "factor 3 is well inside the spread of its Fig. 2 curves)",
        ))
        claims.append(Claim(
            f"{ds_name}/scaled-beats-sign",
            "scaled signSGD performs better than signSGD and Signum (constant steps)",
            "[ScaledSign, Ex. 5, Fig. 2]: '[scaled] SIGNSGD ... performs better than SIGNSGD "
            "and SIGNSGDM' ([scaled] is ours: the symbol is lost in the text)",
            f"{tag} mean log10(f - f*) over the run: "
            f"{both('scaled signSGD', 'signSGD', 'Signum')}; {vs_sign[1]}; {vs_signum[1]}",
            True, verdict=combine(vs_sign[0], vs_signum[0]),
            statement="ex5-scaled-beats-sign", reading=reading,
            criterion="paper's ordering: per seed, a lower run-averaged log10 gap than signSGD "
                      "and than Signum, each with its own tuned constant step (no margin); rule "
                      "2 on each, both must hold",
        ))
        d_ef = avg[key["EF-signSGD"]] - avg[key["SGD"]]
        claims.append(Claim(
            f"{ds_name}/ef-like-sgd",
            "EF-signSGD is comparable to SGD (constant steps)",
            "[ScaledSign, Ex. 5, Fig. 2 and Remark 2]: 'EF-SIGNSGD is comparable to SGD'",
            f"{tag} mean log10(f - f*) over the run: {both('EF-signSGD', 'SGD')}; difference "
            f"{d_ef:+.2f} decades",
            math.isfinite(d_ef) and abs(d_ef) <= sim,
            kind="sanity",  # Remark 2: EF-signSGD's update is SGD's up to a bounded error
            criterion=f"ours: within {sim:.2f} decades, as scaled-like-sgd; near-identical by "
                      "construction (Remark 2 of [ScaledSign]), so not evidence",
        ))
        readings = []
        for r in decay_readings:
            dkey = ("scaled signSGD", "diminishing" if r == decay_readings[0]
                    else f"diminishing x{r:g}", 0)
            readings.append((r, avg[dkey], final[dkey]))
        cst = avg[key["scaled signSGD"]]
        claims.append(Claim(
            f"{ds_name}/constant-faster-tied",
            "scaled signSGD with a constant step converges faster than with a diminishing step "
            "tied to it",
            "[ScaledSign, Ex. 5]: 'the case in Fig. 2(a) with a constant learning rate converges "
            "faster than that in Fig. 2(b) with a diminishing learning rate' (caption: (a) "
            "a = 2, (b) a_k = c/(k+1), c garbled); the fair version is constant-faster",
            f"{tag} mean log10(f - f*) over the run: constant (a = "
            f"{chosen[key['scaled signSGD'][:2]]:.3g}) {cst:.2f} (final "
            f"{final[key['scaled signSGD']]:.1e}); "
            + "; ".join(f"diminishing a_0 = {r:g} a: {v:.2f} (final {f:.1e})"
                        for r, v, f in readings),
            all(cst < v for _, v, _ in readings),
            # tied to the constant step, a/(k+1) sums to ~9a over 4000 steps against 4000a:
            # it cannot lose, so a sanity check of the protocol, not evidence (issue 19)
            kind="sanity",
            criterion="ours: a lower run-averaged log10 gap with the constant step than with "
                      "a_k = a_0/(k+1) tied to it: "
                      + ", ".join(f"a_0 = {r:g} a" for r in decay_readings)
                      + " (nearly automatic: the tied steps sum to ~9a against 4000a)",
        ))
        tk = ("scaled signSGD", TUNED, 0)
        cf_v, cf_txt = verdict_direction(paired(tk, key["scaled signSGD"]),
                                         "diminishing (tuned) - constant (decades)")
        claims.append(Claim(
            f"{ds_name}/constant-faster",
            "scaled signSGD with a constant step converges faster than with a diminishing step "
            "a_0/(k+1), each step tuned on its own grid",
            "[ScaledSign, Ex. 5]: 'the case in Fig. 2(a) with a constant learning rate converges "
            "faster than that in Fig. 2(b) with a diminishing learning rate'",
            f"{tag} mean log10(f - f*) over the run: constant (a = "
            f"{chosen[key['scaled signSGD'][:2]]:.3g}) {cst:.2f} (final "
            f"{final[key['scaled signSGD']]:.1e}); diminishing (a_0 = "
            f"{chosen[('scaled signSGD', TUNED)]:.3g}, tuned) {avg[tk]:.2f} (final "
            f"{final[tk]:.1e}); {cf_txt}",
            True, verdict=cf_v, statement="ex5-constant-faster", reading=reading,
            criterion="paper's ordering: per seed, a lower run-averaged log10 gap with the "
                      "constant step than with a_0/(k+1), each tuned on its own grid (factor "
                      f"{factor:g}, grown past an edge) on the first seed; rule 2, no margin",
        ))
        m1, m3 = ("scaled signSGD", C, 1), ("scaled signSGD", C, 3)
        mw_v, mw_txt = verdict_direction(paired(m1, m3), "M = 1 - M = 3 (decades)")
        claims.append(Claim(
            f"{ds_name}/more-workers",
            "distributed scaled signSGD with 3 workers (majority vote) beats 1 worker",
            "[ScaledSign, Fig. 3]: 'Fig. 3 shows that more workers can improve the "
            "performance' (M = 1, 3)",
            f"{tag} mean log10(f - f*) over the run: M = 1 {avg[m1]:.2f} (final "
            f"{final[m1]:.1e}), M = 3 {avg[m3]:.2f} (final {final[m3]:.1e}) (vote simulated in "
            "one process); " + mw_txt,
            True, verdict=mw_v, statement="fig3-more-workers", reading=reading,
            criterion="paper's ordering: per seed, a lower run-averaged log10 gap with M = 3 "
                      "than M = 1 (no margin); rule 2",
        ))

        # --- figure (Fig. 2a, 2b, 3) ---
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), sharey=True)
        for ax, kind in zip(axes[:2], ("constant", "diminishing")):
            for i, m in enumerate(METHODS):
                _band(ax, log_at, curves[(m, kind, 0)], f"C{i}",
                      f"{m} (a{'0' if kind != 'constant' else ''} = {chosen[(m, kind)]:.2g})")
            ax.set_title(f"{ds_name}: {kind} step" + (" (Fig. 2a)" if kind == "constant"
                                                      else " (Fig. 2b)"))
        for i, w in enumerate((1, 3)):
            _band(axes[2], log_at, curves[("scaled signSGD", "constant", w)], f"C{i + 5}",
                  f"M = {w} worker{'s' if w > 1 else ''}")
        axes[2].set_title(f"{ds_name}: distributed scaled signSGD (Fig. 3, simulated vote)")
        for ax in axes:
            ax.set_yscale("log")
            ax.set_xlabel("iteration k")
            ax.legend(fontsize=7)
        axes[0].set_ylabel("f(x_k) - f*")
        figures.append(ctx.save_figure(fig, f"logreg_{ds_name}"))
    return Result(rows=rows, claims=claims, settings=settings, figures=figures)


def _band(ax, x: np.ndarray, curves: list[np.ndarray], color: str, label: str) -> None:
    """Geometric mean over seeds, with the min-max band."""
    c = np.asarray(curves)
    c = np.where(np.isfinite(c), np.maximum(c, 1e-300), np.nan)
    ax.plot(x, np.exp(np.nanmean(np.log(c), axis=0)), color=color, label=label)
    if c.shape[0] > 1:
        ax.fill_between(x, np.nanmin(c, axis=0), np.nanmax(c, axis=0), color=color, alpha=0.15)


EXPERIMENT = Experiment(
    name="scaled-sign-logreg",
    description="logistic regression: SGD vs (scaled/EF/momentum) signSGD, 1 vs 3 workers",
    source="[ScaledSign, Ex. 5, Fig. 2-3]",
    run=run,
    statements=STATEMENTS,
    seed_start=100,
    default_seeds=5,
    quick_seeds=1,
)
