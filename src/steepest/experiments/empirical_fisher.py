"""``empirical-fisher``: Fisher vs "empirical Fisher" ([Bal21], Ch. 7 and App. D.3).

Three parts, all full-batch and float64, built on :mod:`steepest.fisher`:

1. **Vector fields (Fig. 7.1, App. D.3.1).** Linear regression on ``N = 1000`` samples of
   Eq. D.29, ``x ~ Lognormal(0, 3/4)``, ``y = 2 + 2x + eps``, ``eps ~ N(0, 1)``, features
   ``[1, x]`` (``theta = (intercept, slope)``), mean loss (App. D.3). The fields of GD (Eq. D.30),
   NGD (Eq. D.31) and EFGD (Eq. D.32) with damping ``1e-8`` on a grid, drawn rescaled by 1/3, 1
   and 3 as in the paper, and trajectories from the paper's four starting points. Step size:
   the paper's ``gamma = 1e-4`` for 50 000 iterations, and the authors' code's ``1e-3`` (their
   ``vecfield/runner.py``) as a second reading.
2. **Quadratic approximations at the minimum (Fig. 7.2, App. D.3.2, Tables D.1-D.2).** For the
   correct and the two misspecified linear and logistic models (``N = 1000``), the Fisher and
   the EF at the exact minimum (least squares / Newton), compared by the generalized
   eigenvalues of ``(EF, F)`` (all 1 iff the two quadratics coincide). Ambiguities, each run
   as a named reading: ``N(0, 2)`` in Table D.2 as variance 2 or as standard deviation 2 (the
   authors' code draws ``2 * randn``); the covariances of Table D.1 as printed, or applied as
   the authors' code does (``mean + randn @ M``: covariance ``M^T M``).
3. **Optimization (Fig. 7.3, App. D.3.3).** GD, NGD and EFGD from ``theta_0 = 0`` for 100
   iterations on logistic regression (scikit-learn's bundled breast cancer, 569 x 30),
   softmax regression (scikit-learn's wine, 178 x 13, 3 classes) and least squares
   (scikit-learn's diabetes, 442 x 10), each with a bias column, **in place of** the paper's
   LIBSVM/UCI sets (a1a, BreastCancer, Boston; Boston was removed from scikit-learn and
   nothing is downloaded). Hyper-parameters from Table D.4's grid (step sizes
   ``10^k, k = -20, -19.875, ..., 10``; damping ``10^k, k = -10, -9.5, ..., 10``), best by the
   loss after 100 iterations (App. D.3.3), a run stopped as diverged once its loss exceeds
   100x the initial loss (the authors' code). The grid is searched coarse-to-fine by default
   (every 8th step size x every 4th damping, then finer strides around the best, ending at
   the grid's full resolution; see :func:`search`); ``--set grid=full`` searches all
   241 x 41 points (~25x the time). Along the chosen EFGD path, the cosine
   similarity between the undamped EF and NGD directions (pseudo-inverses). Features are used
   raw (as the authors' code does) and standardized: two readings.

Options (``--set``): ``parts`` (``field,misspec,optim``), ``field_steps`` (50000; quick 5000),
``field_lrs`` (paper and code readings: ``1e-4,1e-3``; quick ``1e-3``), ``field_grid`` (17),
``n`` (1000), ``iters`` (100), ``grid`` (``coarse`` / ``full``), ``preprocessing``
(``raw,standardized``; quick ``raw``), ``datasets`` (``breast-cancer,wine,diabetes``).
"""

from __future__ import annotations

import math
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import Tensor

from steepest.experiments.harness import (
    Claim,
    Context,
    Experiment,
    Result,
    Statement,
    combine,
    torch_threads,
    verdict_direction,
    verdict_within,
)
from steepest.fisher import GLM, cosine_similarity

__all__ = [
    "DAMPINGS",
    "EXPERIMENT",
    "LRS",
    "direction",
    "field_claims",
    "fit",
    "generalized_eigenvalues",
    "infimum",
    "linear_problem",
    "linearly_separable",
    "logistic_problem",
    "misspec_claims",
    "optim_claims",
    "run_grid",
    "search",
    "vecfield_problem",
]

D64 = torch.float64
METHODS = ("GD", "NGD", "EFGD")
CURV = {"NGD": "fisher", "EFGD": "empirical"}
LRS = np.logspace(-20, 10, 241)  # Table D.4 (log10 grid, step 0.125)
DAMPINGS = np.logspace(-10, 10, 41)  # Table D.4 (log10 grid, step 0.5)
FIELD_STARTS = ((2.0, 4.5), (1.0, 0.0), (4.5, 3.0), (-0.5, 3.0))  # App. D.3.1
FIELD_DAMPING = 1e-8  # App. D.3.1
FIELD_SCALE = {"GD": 1 / 3, "NGD": 1.0, "EFGD": 3.0}  # App. D.3.1, display only
DIVERGE = 100.0  # a run whose loss exceeds 100x the initial loss is stopped (authors' code)
# Criteria fixed before the first run (ours; the paper gives no numbers):
CLOSE = (0.8, 1.25)  # "EF closely approximates F": every generalized eigenvalue in this band
FAR = 1.5  # "EF can be arbitrarily wrong": some generalized eigenvalue off by >= 1.5x
FAR_WORSE = 10.0  # "far worse": >= 10x NGD's excess loss ...
VISIBLE = 0.01  # ... and >= 1% of the initial excess loss (a visible gap, not 1e-12 vs 1e-14)
ACC_TOL = 0.03  # paper's accuracies +- 3 points (2 binomial standard errors at N = 1000)

# Pre-registration (issue 19). Primary readings: Fig. 7.1 at the paper's step 1e-4; Fig. 7.2 in
# the authors'-code reading of Table D.1 (N(0, 2) as a standard deviation, covariance M^T M:
# the code produced the paper's figure and numbers), the printed reading where the code has
# none; Fig. 7.3 on raw features (as the authors' code). Fig. 7.2's statements were judged with
# 'every reading' / 'any reading' rules before; under the one rule they are revised, so they are
# judged on data sets drawn from seeds 200-204 (data seeds 300-304), which no earlier run used.
NEW = "72cb663"  # the commit that declared these criteria, before their run
STATEMENTS = (
    Statement(
        "fig7.1-distorted-field", "[Bal21, Fig. 7.1]",
        "preconditioning with the empirical Fisher results in a distorted gradient field",
        primary="the linear regression of Eq. D.29, cosines of the update with theta* - theta "
                "over the grid",
        criterion="EFGD's median cosine over the grid is below GD's (NGD's is 1)",
        criterion_source="ours", fixed_at="2d68749", seeds="data seed 0 (deterministic)"),
    Statement(
        "sec7.1-worse-updates", "[Bal21, Sec. 7.1, Fig. 7.1]",
        "the empirical Fisher distorts the gradient field in a way that lead to worse updates "
        "than gradient descent",
        primary="the paper's step size 1e-4, 50,000 steps, from the 4 starts; the authors' "
                "code's 1e-3 is another reading (in the record, not voted)",
        criterion="EFGD's final R - R* exceeds GD's from >= 3 of the 4 starts",
        criterion_source="ours", fixed_at="2d68749", seeds="deterministic"),
    Statement(
        "fig7.2-correct-close", "[Bal21, Fig. 7.2]",
        "The EF closely approximates the Fisher if the model captures the true data-generating "
        "process",
        primary="the correctly specified linear and logistic models, Table D.1 as the authors' "
                "code reads it (printed where the code has no other reading), N = 1000",
        criterion=f"per data set, the largest |log mu| of the generalized eigenvalues of (EF, F) "
                  f"over those models; rule 2 on log({CLOSE[1]}) minus it (band "
                  f"[{CLOSE[0]}, {CLOSE[1]}]: sampling error at N = 1000 is ~5-10%)",
        criterion_source="ours", fixed_at=NEW, seeds="200-204 (fresh)",
        revised="fails (every reading had to hold, criterion fixed at 2d68749: the printed "
                "logistic reading reached 0.79 against 0.80, data seeds 100-104)"),
    Statement(
        "fig7.2-misspecified-far", "[Bal21, Fig. 7.2]",
        "can be arbitrarily wrong if that assumption is violated, even though we are at the "
        "exact minimum and use a very large number of data points",
        primary="the misspecified linear and logistic models, the authors'-code reading as "
                "above; 'can be': the farthest of them",
        criterion=f"per data set, the largest log max(mu_max, 1/mu_min) over the misspecified "
                  f"models; rule 2 on it minus log({FAR})",
        criterion_source="ours", fixed_at=NEW, seeds="200-204 (fresh)",
        revised="fails (every misspecified model and reading had to be >= 1.5x off, criterion "
                "fixed at 2d68749; data seeds 100-104)"),
    Statement(
        "sec7.4.2-accuracies", "[Bal21, Sec. 7.4.2]",
        "we achieve classification accuracies of >= 85% in the misspecified cases compared to "
        "73% in the well-specified case",
        primary="the logistic models, the authors'-code reading, training accuracy at the "
                "minimum",
        criterion=f"per data set: well-specified accuracy within {100 * ACC_TOL:.0f} points of "
                  f"73% (rule 2, tolerance form) and the lower misspecified accuracy above "
                  f"{100 * (0.85 - ACC_TOL):.0f}% (rule 2); both must hold",
        criterion_source="paper", fixed_at=NEW, seeds="200-204 (fresh)",
        revised="holds (any reading could match, criterion fixed at 2d68749: the code reading "
                "matched, the printed one did not; data seeds 100-104)"),
    Statement(
        "fig7.3-efgd-unfavorable", "[Bal21, Sec. 7.4.3, Fig. 7.3]",
        "EF-preconditioned gradient descent compares unfavorably to NGD even on simple linear "
        "regression and classification tasks",
        primary="raw features (as the authors' code), scikit-learn breast cancer, wine and "
                "diabetes in place of a1a, BreastCancer and Boston, each method's best step "
                "and damping on Table D.4's grid; standardized features are another reading",
        criterion=f"on some data set EFGD's excess loss is >= {FAR_WORSE:g}x NGD's and >= "
                  f"{100 * VISIBLE:g}% of the initial excess loss (the caption: 'not guaranteed')",
        criterion_source="ours", fixed_at="2d68749", seeds="deterministic"),
    Statement(
        "fig7.3-opposite-directions", "[Bal21, Fig. 7.3]",
        "the EF can lead to update directions that are opposite to the natural gradient (see "
        "Boston)",
        primary="raw features, cosine of the undamped EF and NGD directions along EFGD's path",
        criterion="the cosine is < 0 somewhere on the path of at least one data set (weaker "
                  "than the text's 'almost opposite'; the minimum is reported)",
        criterion_source="ours", fixed_at="2d68749", seeds="deterministic"),
)


# ============================================================================ helpers
def direction(m: GLM, theta: Tensor, method: str, damping: float) -> Tensor:
    """The update direction of ``method`` (``theta <- theta - lr * direction``), batched:
    ``grad R`` (Eq. D.30), ``(F + damping I)^{-1} grad R`` (Eq. D.31) or the EF form (D.32).
    A singular system (possible far out, where the logistic Fisher vanishes) gives NaN rows
    instead of an exception, so a batch of runs is never stopped by one of them."""
    g = m.gradient(theta)
    if method == "GD":
        return g
    M = m.curvature(theta, CURV[method])
    eye = torch.eye(m.num_params, dtype=M.dtype)
    sol, info = torch.linalg.solve_ex(M + damping * eye, g.unsqueeze(-1))
    sol = sol.squeeze(-1)
    bad = info != 0
    if bool(bad.any()):
        sol = torch.where(bad.unsqueeze(-1), torch.full_like(sol, math.nan), sol)
    return sol


def generalized_eigenvalues(E: Tensor, F: Tensor) -> np.ndarray:
    """Eigenvalues of ``F^{-1/2} E F^{-1/2}`` (i.e. of ``E v = mu F v``), ascending: all 1 iff
    the quadratics ``v^T E v`` and ``v^T F v`` coincide; ``mu`` is their ratio along ``v``."""
    L = torch.linalg.cholesky(F)
    Li = torch.linalg.inv(L)
    return torch.linalg.eigvalsh(Li @ E @ Li.T).numpy()


def _targets(m: GLM) -> Tensor:
    """``m.targets``, which every GLM of this experiment has (a GLM may be built without)."""
    if m.targets is None:
        raise ValueError("this experiment needs a GLM with targets")
    return m.targets


def fit(m: GLM, iters: int = 100) -> Tensor:
    """The minimizer of ``m.loss``: least squares exactly; otherwise Newton's method (the
    Fisher is the Hessian for these GLMs) with a tiny relative damping and a backtracking
    line search (plain Newton diverges from 0 on badly scaled data)."""
    X = m.features
    if m.likelihood == "gaussian":
        return torch.linalg.lstsq(X, _targets(m).unsqueeze(-1).to(X.dtype)).solution.squeeze(-1)
    theta = torch.zeros(m.num_params, dtype=X.dtype)
    loss = float(m.loss(theta))
    for _ in range(iters):
        g = m.gradient(theta)
        F = m.fisher(theta)
        lam = 1e-12 * float(F.diagonal().max()) + 1e-300
        d = torch.linalg.solve(F + lam * torch.eye(m.num_params, dtype=X.dtype), g)
        step, slope = 1.0, float(g @ d)
        while step > 1e-12:
            cand = theta - step * d
            new = float(m.loss(cand))
            if math.isfinite(new) and new <= loss - 1e-4 * step * slope:
                break
            step /= 2
        else:
            break
        theta, loss = cand, new
        if float(g.norm()) < 1e-13:
            break
    return theta


def linearly_separable(m: GLM) -> bool:
    """Whether a classification GLM's data are linearly separable (then the loss has no
    minimizer and its infimum is 0): the linear program ``find theta with margins >= 1``
    (``f_{n, y_n} - f_{n, c} >= 1`` for every other class ``c``) is feasible."""
    from scipy.optimize import linprog

    X = m.features.numpy()
    y = _targets(m).numpy()
    if m.likelihood == "bernoulli":
        A = -((2 * y - 1)[:, None] * X)
    elif m.likelihood == "categorical":
        C = m.num_classes
        rows = []
        for c in range(C):
            other = y != c
            e = np.zeros((other.sum(), C))
            e[np.arange(other.sum()), y[other].astype(int)] = 1.0
            e[:, c] -= 1.0
            rows.append(-(X[other][:, :, None] * e[:, None, :]).reshape(other.sum(), -1))
        A = np.concatenate(rows)
    else:
        return False
    res = linprog(np.zeros(A.shape[1]), A_ub=A, b_ub=-np.ones(A.shape[0]),
                  bounds=[(None, None)] * A.shape[1], method="highs")
    return res.status == 0


def infimum(m: GLM) -> tuple[float, str]:
    """``inf R``: 0 for separable classification data (no minimizer), else the loss at
    :func:`fit`'s minimizer. Returns the value and how it was found."""
    if m.likelihood != "gaussian" and linearly_separable(m):
        return 0.0, "0 (linearly separable: no minimizer, the infimum is 0)"
    theta = fit(m, iters=200)
    return float(m.loss(theta)), "minimizer (least squares / Newton)"


# ============================================================================ part 1: Fig. 7.1
def vecfield_problem(n: int = 1000, seed: int = 0) -> GLM:
    """Eq. D.29: ``x ~ Lognormal(0, 3/4)`` (sigma = 3/4, as ``np.random.lognormal(0, 0.75)`` in
    the authors' code), ``y = 2 + 2x + eps``; features ``[1, x]``, mean loss."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(0.0, 0.75, n)
    y = 2 + 2 * x + rng.standard_normal(n)
    X = torch.tensor(np.stack([np.ones(n), x], 1), dtype=D64)
    return GLM(X, torch.tensor(y, dtype=D64), "gaussian", reduction="mean")


def field_trajectories(m: GLM, lrs: list[float], steps: int, log_every: int,
                       damping: float = FIELD_DAMPING) -> dict[float, dict[str, np.ndarray]]:
    """Eq. D.30-D.32 from the four starting points of App. D.3.1, every step size at once (one
    batch of ``4 len(lrs)`` rows, each with its own step size). Returns
    ``lr -> method -> (logged steps, starts, 2)``."""
    k = len(FIELD_STARTS)
    lr = torch.tensor(lrs, dtype=D64).repeat_interleave(k).unsqueeze(-1)
    out: dict[float, dict[str, np.ndarray]] = {v: {} for v in lrs}
    for method in METHODS:
        theta = torch.tensor(FIELD_STARTS, dtype=D64).repeat(len(lrs), 1)
        logged = [theta.numpy().copy()]
        for t in range(1, steps + 1):
            theta = theta - lr * direction(m, theta, method, damping)
            if t % log_every == 0 or t == steps:
                logged.append(theta.numpy().copy())
        arr = np.stack(logged)
        for i, v in enumerate(lrs):
            out[v][method] = arr[:, i * k:(i + 1) * k]
    return out


def field_stats(m: GLM, theta_star: Tensor, lims: tuple[float, float, float, float],
                n_grid: int) -> dict[str, Any]:
    """The three fields on an ``n_grid x n_grid`` grid and, per method, the cosine between the
    update ``-direction`` and the way to the minimum ``theta* - theta``."""
    a = torch.linspace(lims[0], lims[1], n_grid, dtype=D64)
    b = torch.linspace(lims[2], lims[3], n_grid, dtype=D64)
    A, B = torch.meshgrid(a, b, indexing="xy")
    pts = torch.stack([A.reshape(-1), B.reshape(-1)], 1)
    to_min = theta_star - pts
    stats: dict[str, Any] = {"grid": pts.numpy(), "shape": tuple(A.shape)}
    for method in METHODS:
        d = direction(m, pts, method, FIELD_DAMPING)
        stats[method] = {"field": (-d).numpy(),
                         "cos": cosine_similarity(-d, to_min).numpy()}
    return stats


def field_claims(cos: dict[str, np.ndarray], final_gap: dict[str, dict[str, np.ndarray]],
                 paper_lr: str) -> list[Claim]:
    """Claims of Fig. 7.1 from the grid cosines (method -> array) and the suboptimality
    ``R - R*`` at the end of each trajectory (reading -> method -> per start)."""
    claims = []
    ngd_min = float(np.min(cos["NGD"]))
    claims.append(Claim(
        id="fig7.1-ngd-points-at-minimum",
        claim="NGD's field points straight at the minimum everywhere (F is the Hessian of "
              "least squares)",
        paper="[Bal21, Fig. 7.1]: 'NGD successfully adapts to the curvature'",
        measured=f"min cosine(NGD update, theta* - theta) over the grid = {ngd_min:.6f}",
        holds=ngd_min > 0.999,
        kind="sanity",
        criterion="true by construction for a quadratic loss (Newton step); min cosine > 0.999",
    ))
    med = {k: float(np.median(v)) for k, v in cos.items()}
    frac = float(np.mean(cos["EFGD"] < cos["GD"]))
    claims.append(Claim(
        id="fig7.1-ef-distorts-field",
        claim="the EF-preconditioned field is distorted: its updates point less towards the "
              "minimum than the plain gradient's",
        paper="[Bal21, Fig. 7.1]: 'preconditioning with the empirical Fisher results in a distorted "
              "gradient field'; Sec. 7.1: 'distorts the gradient field in a way that lead to "
              "worse updates than gradient descent'",
        measured=f"median cosine with theta* - theta over the grid: EFGD {med['EFGD']:.3f}, "
                 f"GD {med['GD']:.3f}, NGD {med['NGD']:.3f}; EFGD below GD at "
                 f"{100 * frac:.0f}% of the grid points",
        holds=med["EFGD"] < med["GD"],
        statement="fig7.1-distorted-field", reading="primary",
        criterion="ours, fixed before the run: EFGD's median cosine over the grid is below "
                  "GD's (NGD's is 1)",
    ))
    parts, ok = [], True
    for reading, gaps in final_gap.items():
        worse = int(np.sum(gaps["EFGD"] > gaps["GD"]))
        parts.append(f"{reading}: EFGD ends with a larger R - R* than GD from {worse}/4 starts "
                     f"(EFGD {_fmt_list(gaps['EFGD'])}; GD {_fmt_list(gaps['GD'])}; NGD "
                     f"{_fmt_list(gaps['NGD'])})")
        if reading == paper_lr:
            ok = worse >= 3
    claims.append(Claim(
        id="fig7.1-efgd-worse-than-gd",
        claim="with the paper's step size and budget, EFGD ends farther from the minimum than "
              "GD",
        paper="[Bal21, Sec. 7.1, Fig. 7.1]: 'the empirical Fisher distorts the gradient field in a way "
              "that lead to worse updates than gradient descent'",
        measured="; ".join(parts),
        holds=ok,
        statement="sec7.1-worse-updates", reading="primary",
        criterion=f"ours, fixed before the run: EFGD's final R - R* exceeds GD's from >= 3 of "
                  f"the 4 starting points, in the paper's reading ({paper_lr})",
    ))
    return claims


def _fmt_list(v: np.ndarray) -> str:
    return ", ".join(f"{x:.2g}" for x in v)


# ============================================================================ part 2: Fig. 7.2
READINGS = ("printed", "code")
LINEAR_CASES = ("correct", "misspecified-A", "misspecified-B")
LOGISTIC_TABLE = {  # Table D.1: (mean, matrix) for y = 0 and y = 1
    "correct": (((1, 1), ((2, 0), (0, 2))), ((-1, -1), ((2, 0), (0, 2)))),
    "misspecified-A": (((1.5, 1.5), ((3, 0), (0, 3))), ((-1.5, -1.5), ((1, 0), (0, 1)))),
    "misspecified-B": (((-1, -1), ((1.5, -0.9), (-0.9, 1.5))),
                       ((1, 1), ((1.5, 0.9), (0.9, 1.5)))),
}


def linear_problem(case: str, n: int, seed: int, reading: str) -> GLM:
    """Table D.2: ``x ~ N(0, 1)``; correct ``y = x + eps``; (A) ``eps ~ N(0, 2)``, read as
    variance 2 (``printed``) or standard deviation 2 (``code``); (B) ``y = x + x^2/2 + eps``.
    The model ``y ~ N(theta x + b, 1)``: features ``[x, 1]``, mean loss."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    eps = rng.standard_normal(n)
    if case == "misspecified-A":
        eps = eps * (math.sqrt(2.0) if reading == "printed" else 2.0)
    y = x + eps + (0.5 * x**2 if case == "misspecified-B" else 0.0)
    X = torch.tensor(np.stack([x, np.ones(n)], 1), dtype=D64)
    return GLM(X, torch.tensor(y, dtype=D64), "gaussian", reduction="mean")


def logistic_problem(case: str, n: int, seed: int, reading: str) -> GLM:
    """Table D.1: ``n/2`` points per class from ``N(mean_y, Sigma_y)``; ``printed`` reads the
    matrix as the covariance (drawn with its Cholesky factor), ``code`` applies it as the
    authors' code does, ``mean + randn @ M`` (covariance ``M^T M``). Logistic model without
    bias (the plots are 2-d), mean loss."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, (mean, mat) in enumerate(LOGISTIC_TABLE[case]):
        M = np.array(mat, dtype=float)
        z = rng.standard_normal((n // 2, 2))
        x = np.array(mean) + (z @ np.linalg.cholesky(M).T if reading == "printed" else z @ M)
        xs.append(x)
        ys.append(np.full(n // 2, float(label)))
    X = torch.tensor(np.concatenate(xs), dtype=D64)
    return GLM(X, torch.tensor(np.concatenate(ys), dtype=D64), "bernoulli", reduction="mean")


def misspec_row(m: GLM) -> dict[str, Any]:
    theta = fit(m)
    F, E = m.fisher(theta), m.empirical_fisher(theta)
    H = torch.func.hessian(m.loss)(theta)
    mu = generalized_eigenvalues(E, F)
    row = {"theta_star": theta.numpy().round(4).tolist(), "ef_eig_min": float(mu[0]),
           "ef_eig_max": float(mu[-1]),
           "fisher_vs_hessian": float((F - H).abs().max() / H.abs().max()),
           "grad_norm": float(m.gradient(theta).norm()), "F": F.numpy(), "E": E.numpy(),
           "theta": theta}
    if m.likelihood == "bernoulli":
        row["accuracy"] = float(m.accuracy(theta))
    return row


def misspec_claims(rows: list[dict[str, Any]]) -> list[Claim]:
    """Claims of Fig. 7.2 from rows ``{"model", "case", "reading", "seed", "ef_eig_min",
    "ef_eig_max", "fisher_vs_hessian", ["accuracy"]}``."""
    def group(model: str, case: str, reading: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["model"] == model and r["case"] == case
                and r["reading"] == reading]

    def span(rs: list[dict[str, Any]]) -> str:
        lo, hi = min(r["ef_eig_min"] for r in rs), max(r["ef_eig_max"] for r in rs)
        return f"[{lo:.2f}, {hi:.2f}]"

    n_seeds = len({r["seed"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    present = {(r["model"], r["case"], r["reading"]) for r in rows}
    claims: list[Claim] = []
    for label, pick in (("primary", "code"), ("other: Table D.1 as printed", "printed")):
        # the models of this reading: the picked reading where it exists, else the printed one
        avail: dict[tuple[str, str], set[str]] = {}
        for m, c, rd in present:
            avail.setdefault((m, c), set()).add(rd)
        sel = sorted({(m, c, pick if pick in rds else "printed" if "printed" in rds
                       else min(rds)) for (m, c), rds in avail.items()})
        suffix = "" if label == "primary" else "-printed"

        def per_seed(f: Any, cases: tuple[str, ...], sel: list = sel) -> list[float]:
            return [max(f(r) for r in rows if r["seed"] == sd
                        and (r["model"], r["case"], r["reading"]) in sel and r["case"] in cases)
                    for sd in seeds]

        close_parts = [f"{m} {c} ({rd}): {span(group(m, c, rd))}" for m, c, rd in sel
                       if c == "correct"]
        far_parts = [f"{m} {c} ({rd}): {span(group(m, c, rd))}" for m, c, rd in sel
                     if c != "correct"]
        dev = per_seed(lambda r: max(abs(math.log(r["ef_eig_min"])),
                                     abs(math.log(r["ef_eig_max"]))), ("correct",))
        close_v, close_txt = verdict_direction([math.log(CLOSE[1]) - x for x in dev],
                                               f"log({CLOSE[1]}) - max |log mu|")
        off = per_seed(lambda r: math.log(max(r["ef_eig_max"], 1 / r["ef_eig_min"])),
                       ("misspecified-A", "misspecified-B"))
        far_v, far_txt = verdict_direction([x - math.log(FAR) for x in off],
                                           f"max log(off) - log({FAR})")
        claims += [
            Claim(
                id=f"fig7.2-correct-model-ef-close{suffix}",
                claim="at the minimum of a correctly specified model the EF is close to the "
                      "Fisher",
                paper="[Bal21, Fig. 7.2]: 'The EF closely approximates the Fisher if the model "
                      "captures the true data-generating process'; Eq. 7.20-7.21",
                measured=f"range of the generalized eigenvalues of (EF, F) over {n_seeds} data "
                         f"sets: " + "; ".join(close_parts) + f"; {close_txt}",
                holds=True, verdict=close_v, statement="fig7.2-correct-close", reading=label,
                criterion=f"ours: per data set the largest |log mu| over the correctly "
                          f"specified models of this reading below log({CLOSE[1]}) (band "
                          f"[{CLOSE[0]}, {CLOSE[1]}]; sampling error at N = 1000 is ~5-10%); "
                          "rule 2",
            ),
            Claim(
                id=f"fig7.2-misspecified-ef-far{suffix}",
                claim="at the minimum of a misspecified model the EF can be far from the Fisher",
                paper="[Bal21, Fig. 7.2]: the EF 'can be arbitrarily wrong if that assumption is "
                      "violated, even though we are at the exact minimum and use a very large "
                      "number of data points'",
                measured="range of the generalized eigenvalues of (EF, F): "
                         + "; ".join(far_parts) + f"; {far_txt}",
                holds=True, verdict=far_v, statement="fig7.2-misspecified-far", reading=label,
                criterion=f"ours: per data set some eigenvalue of a misspecified model of this "
                          f"reading is off by >= {FAR}x (mu >= {FAR} or mu <= 1/{FAR}): 'can "
                          "be', so the farthest model; rule 2",
            ),
        ]
        if not any(m == "logistic" for m, _, _ in sel):
            continue
        acc = {c: [float(np.mean([r["accuracy"] for r in rows if r["seed"] == sd
                                  and r["model"] == "logistic" and r["case"] == c
                                  and (r["model"], r["case"], r["reading"]) in sel]))
                   for sd in seeds] for c in LINEAR_CASES}
        v_ok, v_txt = verdict_within([a - 0.73 for a in acc["correct"]], ACC_TOL,
                                     "well-specified accuracy - 73%")
        m_ok, m_txt = verdict_direction(
            [min(a, b) - (0.85 - ACC_TOL) for a, b in zip(acc["misspecified-A"],
                                                          acc["misspecified-B"])],
            f"lower misspecified accuracy - {100 * (0.85 - ACC_TOL):.0f}%")
        claims.append(Claim(
            id=f"fig7.2-accuracies{suffix}",
            claim="training accuracy at the minimum: >= 85% on the misspecified logistic "
                  "problems, 73% on the well-specified one",
            paper="[Bal21, Sec. 7.4.2]: 'we achieve classification accuracies of >= 85% in the "
                  "misspecified cases compared to 73% in the well-specified case'",
            measured=f"correct {100 * np.mean(acc['correct']):.1f}%, A "
                     f"{100 * np.mean(acc['misspecified-A']):.1f}%, B "
                     f"{100 * np.mean(acc['misspecified-B']):.1f}% (mean over {n_seeds} data "
                     f"sets); {v_txt}; {m_txt}",
            holds=True, verdict=combine(v_ok, m_ok), statement="sec7.4.2-accuracies",
            reading=label,
            criterion=f"paper's numbers, with a tolerance of ours of {100 * ACC_TOL:.0f} points "
                      "(2 binomial standard errors at N = 1000); rule 2 on each part",
        ))
    worst = max(r["fisher_vs_hessian"] for r in rows)
    claims.append(Claim(
        id="fig7.2-fisher-is-hessian",
        claim="the Fisher equals the GGN and the Hessian at the minimum for all six models",
        paper="[Bal21, Fig. 7.2]: 'The true Fisher coincides with the GGN in all cases'; "
              "Prop. 7.1",
        measured=f"max |F - H| / max |H| (H by torch.func.hessian) = {worst:.1e}",
        holds=worst < 1e-10,
        kind="sanity",
        criterion="true by construction for canonical-link GLMs (Eq. D.18); < 1e-10 (float64 "
                  "kernels in different orders)",
    ))
    return claims


# ============================================================================ part 3: Fig. 7.3
DATASETS = {"breast-cancer": "bernoulli", "wine": "categorical", "diabetes": "gaussian"}


def real_problem(name: str, preprocessing: str) -> GLM:
    """scikit-learn's bundled data (nothing downloaded) with a bias column; ``raw`` features
    (as the authors' code) or ``standardized`` (zero mean, unit variance); mean loss."""
    import sklearn.datasets as skd

    loader = {"breast-cancer": skd.load_breast_cancer, "wine": skd.load_wine,
              "diabetes": skd.load_diabetes}[name]
    X, y = loader(return_X_y=True)
    X = X.astype(np.float64)
    if preprocessing == "standardized":
        X = (X - X.mean(0)) / X.std(0)
    elif preprocessing != "raw":
        raise ValueError(f"preprocessing must be 'raw' or 'standardized', got {preprocessing!r}")
    X = np.hstack([X, np.ones((X.shape[0], 1))])
    lik = DATASETS[name]
    yt = torch.tensor(y) if lik == "categorical" else torch.tensor(y, dtype=D64)
    return GLM(torch.tensor(X, dtype=D64), yt, lik, reduction="mean")


# The curves are there exactly when asked for (record=True).
@overload
def run_grid(m: GLM, method: str, lrs: np.ndarray, damping: float, iters: int,
             record: Literal[False] = ...) -> tuple[np.ndarray, None]: ...


@overload
def run_grid(m: GLM, method: str, lrs: np.ndarray, damping: float, iters: int,
             record: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...


def run_grid(m: GLM, method: str, lrs: np.ndarray, damping: float, iters: int,
             record: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Runs ``method`` from ``theta_0 = 0`` for ``iters`` iterations with every step size in
    ``lrs`` at once (one row per step size). Returns the final losses (``inf`` for runs stopped
    as diverged: loss > 100x the initial loss or non-finite) and, with ``record``, the loss
    curves ``(len(lrs), iters + 1)`` (NaN after a stop)."""
    lr = torch.tensor(lrs, dtype=D64).unsqueeze(-1)
    theta = torch.zeros(len(lrs), m.num_params, dtype=D64)
    loss0 = float(m.loss(theta[0]))
    active = torch.ones(len(lrs), dtype=torch.bool)
    final = np.full(len(lrs), math.inf)
    curves = np.full((len(lrs), iters + 1), math.nan) if record else None
    if curves is not None:
        curves[:, 0] = loss0
    for t in range(1, iters + 1):
        idx = active.nonzero().squeeze(-1)
        if idx.numel() == 0:
            break
        th = theta[idx] - lr[idx] * direction(m, theta[idx], method, damping)
        loss = m.loss(th)
        ok = torch.isfinite(loss) & (loss <= DIVERGE * loss0)
        theta[idx] = torch.where(ok.unsqueeze(-1), th, theta[idx])
        active[idx[~ok]] = False
        if curves is not None:
            curves[idx[ok].numpy(), t] = loss[ok].numpy()
        if t == iters:
            final[idx[ok].numpy()] = loss[ok].numpy()
    return final, curves


def search(m: GLM, method: str, iters: int, grid: str, progress: Any = None,
           keep: int = 3) -> dict[str, Any]:
    """Best (step size, damping) of Table D.4's grid by the loss after ``iters`` iterations.

    ``grid="full"``: every point (GD always). Otherwise hierarchical: ``"coarse"`` starts with
    every 8th step size (10^1 apart) x every 4th damping (10^2 apart), then strides 2 x 1,
    then 1 x 1; ``"quick"`` strides 16 x 8, 4 x 2, 1 x 1. Each level searches, at its stride,
    the windows of half the previous stride around the ``keep`` best points so far that lie in
    different windows (the loss over the grid has several basins: one window can miss the
    best), so every grid point near a kept point is reachable."""
    dampings: list[int | None] = [None] if method == "GD" else list(range(len(DAMPINGS)))
    if method == "GD" or grid == "full":
        levels = [(1, 1)]
    elif grid == "coarse":
        levels = [(8, 4), (2, 1), (1, 1)]
    else:
        levels = [(16, 8), (4, 2), (1, 1)]
    scores: dict[tuple[int, int | None], float] = {}

    def evaluate(lr_idx: list[int], d_idx: list[int | None]) -> None:
        for j in d_idx:
            todo = [i for i in lr_idx if (i, j) not in scores]
            if not todo:
                continue
            lam = 0.0 if j is None else float(DAMPINGS[j])
            final, _ = run_grid(m, method, LRS[todo], lam, iters)
            scores.update({(i, j): float(f) for i, f in zip(todo, final)})
            if progress is not None:
                progress()

    def order(k: tuple[int, int | None]) -> tuple[float, int]:
        # lowest loss; ties (runs that reached the same floor) to the larger step size
        return (scores[k], -k[0])

    prev: tuple[int, int] | None = None
    for s_lr, s_d in levels:
        if prev is None:
            evaluate(list(range(0, len(LRS), s_lr)), dampings[::s_d])
        else:
            w_lr, w_d = prev[0] // 2, prev[1] // 2
            centres: list[tuple[int, int]] = []
            for i0, j0 in sorted(scores, key=order):
                if not math.isfinite(scores[(i0, j0)]) or len(centres) == keep:
                    break
                # several levels only with a damping axis (GD's grid is one level, above)
                assert j0 is not None
                if all(abs(i0 - i) > w_lr or abs(j0 - j) > w_d for i, j in centres):
                    centres.append((i0, j0))
            for i0, j0 in centres:
                evaluate([i for i in range(i0 - w_lr, i0 + w_lr + 1, s_lr) if 0 <= i < len(LRS)],
                         [j for j in range(j0 - w_d, j0 + w_d + 1, s_d)
                          if 0 <= j < len(DAMPINGS)])
        prev = (s_lr, s_d)
    i, j = min(scores, key=order)
    return {"lr": float(LRS[i]), "damping": None if j is None else float(DAMPINGS[j]),
            "loss": scores[(i, j)], "evaluated": len(scores)}


def efgd_path_cosines(m: GLM, lr: float, damping: float, iters: int,
                      r_star: float | None = None) -> np.ndarray:
    """Along EFGD's path (Eq. D.32 with the chosen lr and damping), the cosine between the
    undamped EF and Fisher directions, ``F~^+ g`` and ``F^+ g`` (App. D.3.3). Once the loss is
    within ``1e-10`` of the initial excess over ``r_star`` the gradient is rounding noise and
    its directions mean nothing: those points are NaN."""
    theta = torch.zeros(m.num_params, dtype=D64)
    loss0 = float(m.loss(theta))
    cos = []
    for t in range(iters + 1):
        if r_star is not None and float(m.loss(theta)) - r_star <= 1e-10 * (loss0 - r_star):
            cos.append(math.nan)
        else:
            g = m.gradient(theta)
            d_f = m.preconditioned_gradient(theta, 0.0, "fisher", gradient=g)
            d_e = m.preconditioned_gradient(theta, 0.0, "empirical", gradient=g)
            cos.append(float(cosine_similarity(d_e, d_f)))
        if t < iters:
            step = direction(m, theta.unsqueeze(0), "EFGD", damping)[0]
            new = theta - lr * step
            if not bool(torch.isfinite(new).all()):
                break
            theta = new
    return np.array(cos)


def optim_claims(res: dict[str, dict[str, dict[str, Any]]], preps: list[str]) -> list[Claim]:
    """Claims of Fig. 7.3 from ``res[prep][dataset] = {"r_star", "loss0", "best": {method:
    {"loss", ...}}, "cos": array}``."""
    claims = []
    for prep in preps:
        parts, far = [], []
        for name, r in res[prep].items():
            excess = {k: max(v["loss"] - r["r_star"], 0.0) for k, v in r["best"].items()}
            init = r["loss0"] - r["r_star"]
            ratio = excess["EFGD"] / max(excess["NGD"], 1e-300)
            is_far = ratio >= FAR_WORSE and excess["EFGD"] >= VISIBLE * init
            far.append(is_far)
            parts.append(f"{name}: excess loss after 100 it. EFGD {excess['EFGD']:.3g}, NGD "
                         f"{excess['NGD']:.3g}, GD {excess['GD']:.3g} (initial {init:.3g})"
                         f"{' -> far worse' if is_far else ''}")
        claims.append(Claim(
            id=f"fig7.3-efgd-far-worse-{prep}",
            claim="with each method's best step size and damping, EFGD can end far worse than "
                  "NGD (on at least one of scikit-learn's breast cancer, wine and diabetes, used "
                  "in place of the paper's a1a, BreastCancer and Boston)",
            paper="[Bal21, Sec. 7.4.3, Fig. 7.3]: 'EF-preconditioned gradient descent compares "
                  "unfavorably to NGD even on simple linear regression and classification "
                  "tasks'; caption: the EF 'can be a good approximation for preconditioning on "
                  "some problems (e.g., a1a), it is not guaranteed to be'",
            measured=f"{prep} features: " + "; ".join(parts),
            holds=any(far), statement="fig7.3-efgd-unfavorable",
            reading="primary" if prep == "raw" else f"other: {prep} features",
            criterion=f"ours, fixed before the run: on some data set EFGD's excess loss over "
                      f"the minimum is >= {FAR_WORSE:g}x NGD's and >= {100 * VISIBLE:g}% of the "
                      f"initial excess loss",
        ))
        cparts, opposite = [], False
        for name, r in res[prep].items():
            c = np.asarray(r["cos"], dtype=float)
            c = c[np.isfinite(c)]
            if c.size == 0:
                cparts.append(f"{name}: converged at once (no direction to compare)")
                continue
            opposite |= bool(np.min(c) < 0)
            cparts.append(f"{name}: min {np.min(c):.2f}, median {np.median(c):.2f} "
                          f"({c.size} points)")
        claims.append(Claim(
            id=f"fig7.3-ef-points-against-ngd-{prep}",
            claim="along the EFGD path the undamped EF direction can point against the natural "
                  "gradient (negative cosine similarity; scikit-learn data in place of the "
                  "paper's)",
            paper="[Bal21, Fig. 7.3]: 'the EF can lead to update directions that are opposite to the "
                  "natural gradient (see Boston)'; Sec. 7.4.3: 'the two preconditioned updates "
                  "point in almost opposite directions'",
            measured=f"{prep} features, cosine(EF^+ g, F^+ g) along the path, up to the point "
                     f"where the excess loss falls below 1e-10 of its initial value: "
                     + "; ".join(cparts),
            holds=opposite, statement="fig7.3-opposite-directions",
            reading="primary" if prep == "raw" else f"other: {prep} features",
            criterion="ours, fixed before the run: the cosine is < 0 somewhere on the path of "
                      "at least one data set",
        ))
        if "breast-cancer" in res[prep] and prep == "raw":
            b = res[prep]["breast-cancer"]["best"]
            lg = {k: (math.log10(v["lr"]), None if v["damping"] is None
                      else math.log10(v["damping"])) for k, v in b.items()}
            claims.append(Claim(
                id="d5-breast-cancer-hyperparameters",
                claim="the grid search picks hyper-parameters like Table D.5's BreastCancer row",
                paper="Table D.5 (log10): GD lr -5.125; NGD lr 0.125, damping -10; EFGD lr "
                      "-1.25, damping -10",
                measured=f"raw scikit-learn breast cancer (log10): GD lr {lg['GD'][0]:.3f}; NGD "
                         f"lr {lg['NGD'][0]:.3f}, damping {lg['NGD'][1]:.1f}; EFGD lr "
                         f"{lg['EFGD'][0]:.3f}, damping {lg['EFGD'][1]:.1f}",
                holds=all(abs(lg[k][0] - ref) <= 0.5 for k, ref in
                          (("GD", -5.125), ("NGD", 0.125), ("EFGD", -1.25))),
                kind="diagnostic",
                criterion="ours: every chosen step size within 10^0.5 of Table D.5's (the "
                          "paper's data set may differ from scikit-learn's)",
            ))
        if "breast-cancer" in res[prep]:
            c0 = float(res[prep]["breast-cancer"]["cos"][0])
            claims.append(Claim(
                id=f"d33-ef-equals-fisher-at-zero-{prep}",
                claim="at theta_0 = 0 the EF equals the Fisher for logistic regression",
                paper="App. D.3.3, Eq. D.33: the EF and the Fisher 'coincide when "
                      "sigma(f) = 1/2, at theta = 0'",
                measured=f"breast cancer ({prep}): cosine at iteration 0 = {c0:.12f}",
                holds=abs(c0 - 1) < 1e-6,
                kind="sanity",
                criterion="true by construction; |cos - 1| < 1e-6 (pseudo-inverses of "
                          "ill-conditioned matrices)",
            ))
    return claims


# ============================================================================ run
def run(ctx: Context) -> Result:
    parts = [str(p) for p in ctx.opt("parts", ["field", "misspec", "optim"])]
    unknown = set(parts) - {"field", "misspec", "optim"}
    if unknown:
        raise ValueError(f"parts must be among field, misspec, optim; got {sorted(unknown)}")
    n = int(ctx.opt("n", 1000))
    field_steps = int(ctx.opt("field_steps", 5000 if ctx.quick else 50_000))
    field_lrs = [float(v) for v in ctx.opt("field_lrs", [1e-3] if ctx.quick else [1e-4, 1e-3])]
    field_grid = int(ctx.opt("field_grid", 17))
    iters = int(ctx.opt("iters", 100))
    grid = str(ctx.opt("grid", "quick" if ctx.quick else "coarse"))
    preps = [str(p) for p in ctx.opt("preprocessing",
                                     ["raw"] if ctx.quick else ["raw", "standardized"])]
    names = [str(d) for d in ctx.opt("datasets", list(DATASETS))]
    if grid not in ("quick", "coarse", "full"):
        raise ValueError(f"grid must be quick, coarse or full, got {grid!r}")
    if set(names) - set(DATASETS):
        raise ValueError(f"datasets must be among {sorted(DATASETS)}, got {names}")
    if n < 10 or field_steps < 1 or iters < 1 or field_grid < 2:
        raise ValueError("need n >= 10, field_steps >= 1, iters >= 1, field_grid >= 2")

    rows: list[dict[str, Any]] = []
    claims: list[Claim] = []
    figures: list[str] = []
    settings: dict[str, Any] = {
        "parts": parts, "n": n, "float": "float64", "loss": "mean over examples (App. D.3)",
    }
    with torch_threads(1):
        if "field" in parts:
            claims += _part_field(ctx, n, field_steps, field_lrs, field_grid, rows, figures,
                                  settings)
        if "misspec" in parts:
            claims += _part_misspec(ctx, n, rows, figures, settings)
        if "optim" in parts:
            claims += _part_optim(ctx, iters, grid, preps, names, rows, figures, settings)
    return Result(rows=rows, claims=claims, settings=settings, figures=figures)


def _part_field(ctx: Context, n: int, steps: int, lrs: list[float], n_grid: int,
                rows: list[dict[str, Any]], figures: list[str],
                settings: dict[str, Any]) -> list[Claim]:
    m = vecfield_problem(n, seed=0)
    star = fit(m)
    r_star = float(m.loss(star))
    lims = (-1.0, 5.0, -0.5, 5.0)
    stats = field_stats(m, star, lims, n_grid)
    log_every = max(1, steps // 200)
    trajs: dict[str, dict[str, np.ndarray]] = {}
    gaps: dict[str, dict[str, np.ndarray]] = {}
    runs = field_trajectories(m, lrs, steps, log_every)
    for lr in lrs:
        label = f"lr={lr:g} x {steps} steps"
        trajs[label] = runs[lr]
        gaps[label] = {}
        for method, tr in trajs[label].items():
            end = torch.tensor(tr[-1], dtype=D64)
            gaps[label][method] = m.loss(end).numpy() - r_star
            for k in range(tr.shape[0]):
                for s in range(tr.shape[1]):
                    rows.append({"part": "field", "reading": label, "method": method,
                                 "start": s, "step": min(k * log_every, steps),
                                 "theta0": tr[k, s, 0], "theta1": tr[k, s, 1],
                                 "excess_loss": float(m.loss(torch.tensor(tr[k, s]))) - r_star})
    paper_lr = f"lr={lrs[0]:g} x {steps} steps"
    settings["field"] = {
        "data": "Eq. D.29, N = 1000, x ~ Lognormal(0, sigma = 0.75), seed 0",
        "theta_star": star.numpy().round(4).tolist(), "damping": FIELD_DAMPING,
        "steps": steps, "lrs": lrs,
        "readings": "lr=1e-4: the paper's step size (App. D.3.1); lr=1e-3: the authors' code",
        "starts": FIELD_STARTS, "grid": f"{n_grid} x {n_grid} on {lims}",
        "display_scale": FIELD_SCALE,
    }
    figures.append(_plot_field(ctx, m, star, stats, trajs[paper_lr], paper_lr))
    cos = {k: stats[k]["cos"] for k in METHODS}
    return field_claims(cos, gaps, paper_lr)


def _part_misspec(ctx: Context, n: int, rows: list[dict[str, Any]], figures: list[str],
                  settings: dict[str, Any]) -> list[Claim]:
    out: list[dict[str, Any]] = []
    jobs = [(model, case, reading) for model in ("linear", "logistic") for case in LINEAR_CASES
            for reading in READINGS
            if not (model == "linear" and case != "misspecified-A" and reading == "code")]
    plot_rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for seed in ctx.track(ctx.seed_list(), desc="Fig. 7.2 data sets"):
        for model, case, reading in jobs:
            make = linear_problem if model == "linear" else logistic_problem
            m = make(case, n, 100 + seed, reading)
            r = misspec_row(m)
            rec = {"model": model, "case": case, "reading": reading, "seed": seed,
                   **{k: v for k, v in r.items() if k not in ("F", "E", "theta")}}
            out.append(rec)
            rows.append({"part": "misspec", **{k: v for k, v in rec.items()
                                              if k != "theta_star"}})
            if seed == ctx.seed_list()[0]:
                plot_rows[(model, case, reading)] = {"m": m, **r}
    settings["misspec"] = {
        "n": n, "seeds": ctx.seeds,
        "readings": {"printed": "N(0, 2) = variance 2; Table D.1 matrices are covariances",
                     "code": "N(0, 2) = standard deviation 2; x = mean + randn @ M "
                             "(covariance M^T M), as in the authors' code"},
        "minimum": "least squares (lstsq) / Newton with line search to |grad| < 1e-13",
        "comparison": "generalized eigenvalues of (EF, F) at the minimum",
    }
    for reading in READINGS:
        figures.append(_plot_misspec(ctx, plot_rows, reading))
    return misspec_claims(out)


def _part_optim(ctx: Context, iters: int, grid: str, preps: list[str], names: list[str],
                rows: list[dict[str, Any]], figures: list[str],
                settings: dict[str, Any]) -> list[Claim]:
    res: dict[str, dict[str, dict[str, Any]]] = {}
    r_how: dict[str, str] = {}
    jobs = [(p, d, meth) for p in preps for d in names for meth in METHODS]
    bar = iter(ctx.track(range(len(jobs)), desc="Fig. 7.3 grid searches"))
    for prep in preps:
        res[prep] = {}
        for name in names:
            m = real_problem(name, prep)
            r_star, how = infimum(m)
            r_how[f"{prep}/{name}"] = how
            loss0 = float(m.loss(torch.zeros(m.num_params, dtype=D64)))
            best, curves = {}, {}
            for method in METHODS:
                b = search(m, method, iters, grid)
                next(bar, None)
                _, curve = run_grid(m, method, np.array([b["lr"]]),
                                    0.0 if b["damping"] is None else b["damping"], iters,
                                    record=True)
                best[method], curves[method] = b, curve[0]
            # a run may end a few ulps below a computed minimum
            r_star = min(r_star, *(float(np.nanmin(c)) for c in curves.values()))
            cos = efgd_path_cosines(m, best["EFGD"]["lr"], best["EFGD"]["damping"], iters,
                                    r_star)
            res[prep][name] = {"r_star": r_star, "loss0": loss0, "best": best, "cos": cos,
                               "curves": curves}
            for method in METHODS:
                for t, v in enumerate(curves[method]):
                    rows.append({"part": "optim", "reading": prep, "dataset": name,
                                 "method": method, "step": t, "loss": v,
                                 "excess_loss": v - r_star,
                                 "cos_ef_ngd": cos[t] if method == "EFGD" and t < len(cos)
                                 else math.nan,
                                 "lr": best[method]["lr"], "damping": best[method]["damping"]})
        figures.append(_plot_optim(ctx, res[prep], prep))
    settings["optim"] = {
        "datasets": {"breast-cancer": "scikit-learn load_breast_cancer (569 x 30), logistic, "
                                      "in place of LIBSVM breast-cancer / a1a",
                     "wine": "scikit-learn load_wine (178 x 13, 3 classes), softmax",
                     "diabetes": "scikit-learn load_diabetes (442 x 10), least squares, in "
                                 "place of Boston housing"},
        "bias": "a column of ones appended", "theta0": 0, "iters": iters,
        "grid": grid, "lr_grid": "logspace(-20, 10, 241)", "damping_grid":
        "logspace(-10, 10, 41)", "selection": "lowest loss after iters (App. D.3.3)",
        "diverged": f"loss > {DIVERGE:g} x initial (stopped, authors' code)",
        "cosine": "undamped: pseudo-inverses of F and EF (torch default cutoff)",
        "readings": {"raw": "features as loaded (authors' code)",
                     "standardized": "zero mean, unit variance features"},
        "chosen": {p: {d: {k: {"lr": v["lr"], "damping": v["damping"], "loss": v["loss"],
                               "grid_points": v["evaluated"]}
                           for k, v in r["best"].items()} for d, r in res[p].items()}
                   for p in res},
        "r_star": {p: {d: r["r_star"] for d, r in res[p].items()} for p in res},
        "r_star_how": r_how,
        "paper_table_d5_breast_cancer": "log10 lr / damping: GD -5.125; NGD 0.125 / -10; "
                                        "EFGD -1.25 / -10 (on the paper's data set)",
    }
    return optim_claims(res, preps)


# ============================================================================ figures
def _plot_field(ctx: Context, m: GLM, star: Tensor, stats: dict[str, Any],
                trajs: dict[str, np.ndarray], label: str) -> str:
    plt = ctx.pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    x = m.features[:, 1].numpy()
    axes[0].scatter(x, _targets(m).numpy(), s=3, alpha=0.4)
    xs = np.linspace(0, x.max(), 50)
    axes[0].plot(xs, float(star[0]) + float(star[1]) * xs, "k")
    axes[0].set(title="data (Eq. D.29)", xlabel="x", ylabel="y")
    pts = stats["grid"]
    for ax, method in zip(axes[1:], METHODS):
        v = stats[method]["field"] * FIELD_SCALE[method]
        ax.quiver(pts[:, 0], pts[:, 1], v[:, 0], v[:, 1], angles="xy", scale_units="xy",
                  scale=1.0, width=0.004, color="0.5")
        for s in range(trajs[method].shape[1]):
            ax.plot(trajs[method][:, s, 0], trajs[method][:, s, 1], "-", lw=1.5)
            ax.plot(*trajs[method][0, s], "ko", ms=3)
        ax.plot(*star.numpy(), "r*", ms=10)
        scale = {"GD": "1/3", "NGD": "1", "EFGD": "3"}[method]
        ax.set(title=f"{method} (field drawn x{scale})",
               xlabel="theta_0 (intercept)", ylabel="theta_1 (slope)",
               xlim=(-1.2, 5.2), ylim=(-0.7, 5.2))
    fig.suptitle("Fig. 7.1: GD, NGD and EF-preconditioned fields on linear regression; "
                 f"trajectories: {label}, damping {FIELD_DAMPING:g}", y=1.02)
    return ctx.save_figure(fig, "fig7_1_vector_fields")


def _plot_misspec(ctx: Context, plot_rows: dict[tuple[str, str, str], dict[str, Any]],
                  reading: str) -> str:
    plt = ctx.pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    u = np.linspace(-1, 1, 61)
    U, V = np.meshgrid(u, u)
    D = np.stack([U.ravel(), V.ravel()], 1)
    for i, model in enumerate(("linear", "logistic")):
        for j, case in enumerate(LINEAR_CASES):
            key = (model, case, reading if (model, case, reading) in plot_rows else "printed")
            r = plot_rows[key]
            m, th = r["m"], r["theta"]
            true = (m.loss(th + torch.tensor(D, dtype=D64)) - m.loss(th)).numpy()
            qf = 0.5 * np.einsum("ni,ij,nj->n", D, r["F"], D)
            qe = 0.5 * np.einsum("ni,ij,nj->n", D, r["E"], D)
            circle = np.abs(np.hypot(D[:, 0], D[:, 1]) - 1) < 0.05
            level = [float(np.median(true[circle]))]
            ax = axes[i, j]
            ax.contour(U, V, true.reshape(U.shape), levels=level, colors="k")
            ax.contour(U, V, qf.reshape(U.shape), levels=level, colors="tab:blue",
                       linestyles="--")
            ax.contour(U, V, qe.reshape(U.shape), levels=level, colors="tab:red",
                       linestyles=":")
            ax.set(title=f"{model}, {case}\nEF/F eigenvalues [{r['ef_eig_min']:.2f}, "
                         f"{r['ef_eig_max']:.2f}]", aspect="equal")
    axes[0, 0].plot([], [], "k", label="loss R - R*")
    axes[0, 0].plot([], [], "--", color="tab:blue", label="Fisher quadratic")
    axes[0, 0].plot([], [], ":", color="tab:red", label="EF quadratic")
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Fig. 7.2: quadratic approximations at the minimum (reading: {reading}; "
                 f"one level set, theta - theta*)")
    return ctx.save_figure(fig, f"fig7_2_misspecification_{reading}")


def _plot_optim(ctx: Context, res: dict[str, dict[str, Any]], prep: str) -> str:
    plt = ctx.pyplot()
    names = list(res)
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 7.5), squeeze=False)
    for j, name in enumerate(names):
        r = res[name]
        for method in METHODS:
            c = r["curves"][method] - r["r_star"]
            b = r["best"][method]
            lab = f"{method} (lr 1e{math.log10(b['lr']):.3g}"
            lab += ")" if b["damping"] is None else f", damp 1e{math.log10(b['damping']):.3g})"
            axes[0, j].semilogy(np.maximum(c, 1e-16), label=lab)
        axes[0, j].set(title=f"{name} ({prep})", xlabel="iteration", ylabel="loss - R*")
        axes[0, j].legend(fontsize=8)
        axes[1, j].plot(r["cos"], color="tab:red")
        axes[1, j].axhline(0, color="0.6", lw=0.8)
        axes[1, j].set(ylim=(-1.05, 1.05), xlabel="iteration",
                       ylabel="cos(EF, NGD direction)")
    fig.suptitle("Fig. 7.3: NGD vs EFGD vs GD (best of Table D.4's grid, 100 iterations); "
                 "bottom: cosine of the undamped EF and NGD directions along EFGD's path")
    return ctx.save_figure(fig, f"fig7_3_optimization_{prep}")


EXPERIMENT = Experiment(
    name="empirical-fisher",
    description="Fisher vs empirical Fisher: vector fields, misspecified models, NGD vs EFGD",
    source="[Bal21, Ch. 7, Fig. 7.1-7.3, App. D.3]",
    run=run,
    statements=STATEMENTS,
    seed_start=200,
    default_seeds=5,
    quick_seeds=2,
)
