"""Geometry of dense matrices: l_inf smoothness ``||H||_{inf,1}``, its bounds, and friends.

Everything follows [BPL20] (Balles, Pedregosa & Le Roux, *The Geometry of Sign Gradient
Descent*), Sec. 4-5 and App. A.2.2, B, D.2:

* ``L_inf = ||H||_{inf,1} = max_{||x||_inf <= 1} ||H x||_1 = max_{s in {-1,1}^d} ||H s||_1``
  (Eq. 19; the max over the cube is attained at a vertex, Rohn 2000). NP-hard in general;
  :func:`norm_inf1` computes it exactly by branch-and-bound, :func:`heuristic_norm_inf1` gives a
  certified *lower* bound (the value of an explicit sign vector) for any ``d``.
* ``L_2 = ||H||_2`` (the largest absolute eigenvalue of a symmetric H) and
  ``L_2 <= L_inf <= d L_2`` (Eq. 23).
* upper bounds: Prop. 4 (PSD, Eq. 20), Prop. 5 (symmetric, Eq. 21), the entrywise bound of
  Eq. 80, ``L_sep`` by an SDP (Prop. 6, Eq. 26-27); the lower bound of Eq. 22.
* block versions for block-normalized descent (Prop. 7, Eq. 37-40).
* gradient density ``phi`` (Eq. 30) and the predicted advantage ``R(x)`` of sign descent over
  gradient descent (Eq. 31).
* the rotated quadratics of the paper's Fig. 3 (App. D.2).

Inputs may be numpy arrays, torch tensors (dense or sparse) or scipy sparse matrices; they are
converted to dense float64. Complex, empty or non-finite input raises ``ValueError``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np

__all__ = [
    "Inf1Result",
    "density",
    "entrywise_bound",
    "entrywise_bound_block",
    "heuristic_norm_inf1",
    "heuristic_norm_inf1_block",
    "l2_smoothness",
    "lower_bound_eq22",
    "norm_inf1",
    "norm_inf1_bruteforce",
    "predicted_advantage",
    "prop4_bound",
    "prop5_bound",
    "prop7_bound",
    "rho_diag",
    "rho_diag_block",
    "rotated_quadratic",
    "sdp_bound",
    "sep_smoothness",
    "solve_norm_inf1",
]

#: Largest ``d`` for which :func:`norm_inf1` attempts an exact answer (sign patterns are kept as
#: 63-bit integers; beyond ~45 no exact method finishes anyway).
MAX_EXACT_DIM = 62


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------
def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Dense float64 numpy copy of an array-like, torch tensor or scipy sparse matrix."""
    if hasattr(x, "detach") and hasattr(x, "is_sparse"):  # torch tensor
        if x.is_complex():
            raise ValueError(f"{name} must be real, got a complex tensor ({x.dtype})")
        if x.layout != _torch_strided():
            x = x.to_dense()
        x = x.detach().cpu().to(dtype=_torch_float64()).numpy()
    elif hasattr(x, "toarray") and hasattr(x, "nnz"):  # scipy sparse
        x = x.toarray()
    arr = np.asarray(x)
    if np.iscomplexobj(arr):
        raise ValueError(
            f"{name} must be real, got complex dtype {arr.dtype}; the l_inf geometry is defined "
            "for real Hessians (pass the real view of complex parameters)"
        )
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype object")
    return np.array(arr, dtype=np.float64)


def _torch_strided() -> Any:
    import torch

    return torch.strided


def _torch_float64() -> Any:
    import torch

    return torch.float64


def _matrix(H: Any, name: str = "H", square: bool = True) -> np.ndarray:
    A = _to_numpy(H, name)
    if A.ndim != 2:
        raise ValueError(f"{name} must be a 2-d matrix, got shape {A.shape}")
    if A.size == 0:
        raise ValueError(f"{name} must be non-empty, got shape {A.shape}")
    if square and A.shape[0] != A.shape[1]:
        raise ValueError(f"{name} must be square, got shape {A.shape}")
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name} contains NaN or inf entries")
    return A


def _symmetric(H: Any, name: str = "H") -> np.ndarray:
    """Validated symmetric matrix; tiny asymmetry (rounding, e.g. from HVPs) is averaged away."""
    A = _matrix(H, name)
    scale = float(np.abs(A).max())
    if float(np.abs(A - A.T).max()) > 1e-6 * max(scale, 1e-300):  # float32 HVPs: ~1e-7
        raise ValueError(f"{name} must be symmetric (a Hessian); max |H - H^T| is "
                         f"{float(np.abs(A - A.T).max()):.3g}")
    return 0.5 * (A + A.T)


def _eigh(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.linalg.eigh(A)


def _check_psd(lam: np.ndarray, what: str) -> None:
    tol = 1e-10 * max(float(np.abs(lam).max()), 1e-300) * len(lam)
    if float(lam.min()) < -tol:
        raise ValueError(
            f"{what} needs a positive semi-definite H, but its smallest eigenvalue is "
            f"{float(lam.min()):.3g}; use prop5_bound (any symmetric H) instead"
        )


# --------------------------------------------------------------------------------------------
# L_2 and simple quantities
# --------------------------------------------------------------------------------------------
def l2_smoothness(H: Any) -> float:
    """``L_2 = ||H||_2``: the spectral norm, i.e. ``max_i |lambda_i|`` for symmetric H.

    Smoothness w.r.t. the Euclidean norm of ``f(x) = x^T H x / 2`` ([BPL20, Sec. 4.1; Prop. 3]
    with the l2 norm). For a non-symmetric matrix this is its largest singular value.
    """
    A = _matrix(H)
    if np.array_equal(A, A.T):
        return float(np.abs(np.linalg.eigvalsh(A)).max())
    return float(np.linalg.norm(A, 2))


def rho_diag(H: Any) -> float:
    """Diagonal concentration ``rho_diag(H) = sum_i |H_ii| / sum_ij |H_ij|`` [BPL20, Prop. 4].

    In ``[1/d, 1]`` for a PSD matrix; 1 iff H is diagonal. The zero matrix gives ``nan`` (0/0:
    a zero Hessian has no axis alignment to speak of).
    """
    A = _matrix(H)
    total = float(np.abs(A).sum())
    if total == 0.0:
        return math.nan
    return float(np.abs(np.diag(A)).sum()) / total


def entrywise_bound(H: Any) -> float:
    """``sum_ij |H_ij|``: an upper bound on ``||H||_{inf,1}`` for *any* matrix (Eq. 80).

    For PSD H it equals the Prop. 4 bound ``sum(lambda) / rho_diag`` (Eq. 81).
    """
    return float(np.abs(_matrix(H, square=False)).sum())


def prop4_bound(H: Any) -> float:
    """Prop. 4 (Eq. 20): ``||H||_{inf,1} <= rho_diag(H)^{-1} sum_i lambda_i`` for PSD H.

    Raises ``ValueError`` if H is not (numerically) positive semi-definite. The zero matrix
    gives 0 (the bound equals ``sum_ij |H_ij|``, Eq. 81).
    """
    A = _symmetric(H)
    lam = np.linalg.eigvalsh(A)
    _check_psd(lam, "prop4_bound (Prop. 4)")
    total = float(np.abs(A).sum())
    if total == 0.0:
        return 0.0
    rho = float(np.abs(np.diag(A)).sum()) / total
    return float(lam.clip(min=0.0).sum()) / rho


def prop5_bound(H: Any) -> float:
    """Prop. 5 (Eq. 21): ``||H||_{inf,1} <= sum_i |lambda_i| ||v_i||_1^2`` for symmetric H.

    ``v_i`` are orthonormal eigenvectors (for repeated eigenvalues any orthonormal basis of the
    eigenspace gives a valid bound; the one numpy returns is used).
    """
    lam, V = _eigh(_symmetric(H))
    return float((np.abs(lam) * np.abs(V).sum(axis=0) ** 2).sum())


def lower_bound_eq22(H: Any) -> float:
    """Eq. 22: ``||H||_{inf,1} >= max_i |lambda_i| ||v_i||_1 / ||v_i||_inf`` for symmetric H.

    Each eigenpair gives ``||H v||_1 / ||v||_inf = |lambda| ||v||_1 / ||v||_inf``; the best one
    is returned.
    """
    lam, V = _eigh(_symmetric(H))
    ratios = np.abs(V).sum(axis=0) / np.abs(V).max(axis=0)
    return float((np.abs(lam) * ratios).max())


# --------------------------------------------------------------------------------------------
# ||H||_{inf,1}: exact and heuristic
# --------------------------------------------------------------------------------------------
@dataclass
class Inf1Result:
    """Result of :func:`solve_norm_inf1`.

    ``lower`` is the value ``||H s||_1`` of the returned sign vector ``sign`` (a certified lower
    bound); ``upper`` a certified upper bound; ``exact`` is true when they coincide because the
    search finished. ``nodes`` counts evaluated partial/complete sign vectors.
    """

    lower: float
    upper: float
    sign: np.ndarray
    exact: bool
    method: str
    nodes: int
    seconds: float

    @property
    def value(self) -> float:
        return self.lower


def _patterns(b: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``2^b`` sign patterns (rows, float64 +-1) and their bit codes (bit i set: s_i = +1)."""
    codes = np.arange(1 << b, dtype=np.int64)
    bits = (codes[:, None] >> np.arange(b, dtype=np.int64)[None, :]) & 1
    return (2.0 * bits - 1.0), codes


def _decode(code: int, n: int) -> np.ndarray:
    return np.array([1.0 if (code >> i) & 1 else -1.0 for i in range(n)])


def _local_search(A: np.ndarray, S: np.ndarray, max_rounds: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Improve sign vectors (rows of S) for ``max ||A s||_1``; return (S, values).

    Two moves, repeated until neither improves: the alternating sign iteration
    (``s <- sign(A^T sign(A s))``: the bilinear form ``t^T A s`` never decreases), then the best
    single flip (skipped when ``m n > 4e6``). Every returned value is ``||A s||_1`` of an explicit sign vector.
    """
    S = S.copy()
    R = S @ A.T
    vals = np.abs(R).sum(axis=1)
    m, n = A.shape
    # the flip gains cost an (n, m) array per start and round: skip them for very large A
    # (d > 2000), where the alternating iteration alone is used
    flips = n * m <= 4_000_000
    big = S.shape[0] * n * m > 4_000_000  # flip-gain tensor too large: loop over starts
    for _ in range(max_rounds):
        # alternating step
        T = np.where(R >= 0, 1.0, -1.0)
        S2 = np.where(T @ A >= 0, 1.0, -1.0)
        R2 = S2 @ A.T
        v2 = np.abs(R2).sum(axis=1)
        better = v2 > vals * (1 + 1e-15)
        S[better], R[better], vals[better] = S2[better], R2[better], v2[better]
        if not flips:
            if not better.any():
                break
            continue
        # best single flip: ||r - 2 s_j A[:, j]||_1 for every j
        if big:
            gains = np.stack([np.abs(R[b][None, :] - 2.0 * (S[b][:, None] * A.T)).sum(axis=1)
                              for b in range(S.shape[0])])
        else:
            gains = np.abs(R[:, None, :] - 2.0 * S[:, :, None] * A.T[None, :, :]).sum(axis=2)
        j = gains.argmax(axis=1)
        gbest = gains[np.arange(len(j)), j]
        flip = gbest > vals * (1 + 1e-12)
        if not flip.any() and not better.any():
            break
        rows = np.nonzero(flip)[0]
        R[rows] -= 2.0 * S[rows, j[rows]][:, None] * A[:, j[rows]].T
        S[rows, j[rows]] *= -1.0
        vals[rows] = np.abs(R[rows]).sum(axis=1)
    return S, vals


def _start_vectors(A: np.ndarray, starts: int, rng: np.random.Generator) -> np.ndarray:
    """Starting sign vectors: signs of top singular/eigen-vectors (Eq. 22's witnesses) + random."""
    m, n = A.shape
    cands = []
    if n <= 3000:
        if m == n and np.allclose(A, A.T):
            lam, V = np.linalg.eigh(0.5 * (A + A.T))
            idx = np.argsort(-np.abs(lam))[: max(1, starts // 2)]
        else:
            _, _, Vt = np.linalg.svd(A, full_matrices=False)
            V = Vt.T
            idx = np.arange(min(V.shape[1], max(1, starts // 2)))
        for i in idx:
            cands.append(np.where(V[:, i] >= 0, 1.0, -1.0))
    cands.append(np.ones(n))
    while len(cands) < max(starts, 2):
        cands.append(rng.choice([-1.0, 1.0], size=n))
    return np.stack(cands)


@overload
def heuristic_norm_inf1(
    H: Any, *, starts: int = ..., seed: int = ..., return_sign: Literal[False] = ...
) -> float: ...
@overload
def heuristic_norm_inf1(
    H: Any, *, starts: int = ..., seed: int = ..., return_sign: Literal[True]
) -> tuple[float, np.ndarray]: ...
def heuristic_norm_inf1(
    H: Any, *, starts: int = 8, seed: int = 0, return_sign: bool = False
) -> float | tuple[float, np.ndarray]:
    """A fast, certified *lower* bound on ``||H||_{inf,1}`` for any ``d`` (Eq. 19).

    Local search over sign vectors from several starts (signs of the leading eigenvectors, the
    all-ones vector, random signs): the alternating iteration ``s <- sign(H^T sign(H s))``
    followed by best single flips, until neither improves. The returned value is
    ``||H s||_1`` for an explicit ``s in {-1,1}^d``, hence ``<= ||H||_{inf,1}`` always; it is
    often, but not provably, equal to it. Works for rectangular matrices too.
    """
    if not isinstance(starts, int | np.integer) or starts < 1:
        raise ValueError(f"starts must be an integer >= 1, got {starts!r}")
    A = _matrix(H, square=False)
    rng = np.random.default_rng(seed)
    S, vals = _local_search(A, _start_vectors(A, int(starts), rng))
    i = int(vals.argmax())
    s = S[i]
    val = float(np.abs(A @ s).sum())  # recompute directly (no accumulated rounding)
    return (val, s) if return_sign else val


def norm_inf1_bruteforce(H: Any, *, chunk: int = 1 << 14) -> float:
    """``max_{s in {-1,1}^d} ||H s||_1`` by plain enumeration of all ``2^d`` sign vectors.

    This is what the paper did (App. D.2): ``O(2^d d^2)``; the reference the benchmark and the
    docs compare :func:`norm_inf1` against. Practical up to ``d ~ 22``.
    """
    return _brute(_matrix(H, square=False), chunk)[0]


def _brute(A: np.ndarray, chunk: int) -> tuple[float, int]:
    n = A.shape[1]
    if n > 40:
        raise ValueError(f"plain enumeration of 2^{n} sign vectors is out of reach; d must be <= 40")
    best, best_code = -np.inf, 0
    total = 1 << n
    shifts = np.arange(n, dtype=np.int64)
    for start in range(0, total, chunk):
        codes = np.arange(start, min(start + chunk, total), dtype=np.int64)
        S = 2.0 * ((codes[:, None] >> shifts[None, :]) & 1) - 1.0
        vals = np.abs(S @ A.T).sum(axis=1)
        k = int(vals.argmax())
        if vals[k] > best:
            best, best_code = float(vals[k]), int(codes[k])
    return best, best_code


def _enumerate(A: np.ndarray, deadline: float | None) -> tuple[float, int, int]:
    """Exhaustive search with ``s_0 = +1`` (``||A(-s)||_1 = ||A s||_1``), meet-in-the-middle.

    ``A s = A_0 + A_lo s_lo + A_hi s_hi``: the ``2^b`` low partial sums are tabulated once, so
    each sign vector costs one m-vector add instead of a matrix-vector product.
    Returns (value, code, count); bit i of ``code`` set means ``s_i = +1``.
    """
    m, n = A.shape
    if n == 1:
        return float(np.abs(A[:, 0]).sum()), 1, 1
    b_lo = min(n - 1, 14)
    P_lo, c_lo = _patterns(b_lo)
    Q_lo = A[:, 0][None, :] + P_lo @ A[:, 1 : 1 + b_lo].T  # (2^b_lo, m)
    n_hi = n - 1 - b_lo
    best, best_code, count = -np.inf, 1, 0
    per = max(1, (1 << 16) // (1 << b_lo))
    for start in range(0, 1 << n_hi, per):
        codes = np.arange(start, min(start + per, 1 << n_hi), dtype=np.int64)
        if n_hi:
            S_hi = 2.0 * ((codes[:, None] >> np.arange(n_hi)[None, :]) & 1) - 1.0
            base = S_hi @ A[:, 1 + b_lo :].T  # (k, m)
        else:
            base = np.zeros((1, m))
        vals = np.abs(base[:, None, :] + Q_lo[None, :, :]).sum(axis=2)
        count += vals.size
        k = int(vals.argmax())
        if vals.flat[k] > best:
            hi, lo = divmod(k, 1 << b_lo)
            best = float(vals.flat[k])
            best_code = 1 | (int(c_lo[lo]) << 1) | (int(codes[hi]) << (1 + b_lo))
        if deadline is not None and time.perf_counter() > deadline:
            raise TimeoutError
    return best, best_code, count


class _Timeout(Exception):
    pass


def _bnb_subproblem(
    C: np.ndarray, L: np.ndarray, inc_val: float, inc_code: int, deadline: float | None,
    chunk: int,
) -> tuple[float, int, int]:
    """Branch-and-bound for ``max ||C s||_1`` over sign vectors with ``s_0 = +1``.

    Variables are fixed in column order; a node with partial sum ``r = C[:, :j] s_{:j}`` is
    bounded by ``||r||_1 + L[j]`` where ``L[j] = ||C[:, j:]||_{inf,1}`` (the already-solved
    suffix problems: Russian-doll search). The bound is admissible by the triangle inequality.
    Nodes are processed in vectorized chunks, depth-first. Returns (value, code, nodes).
    """
    m, n = C.shape
    best, best_code, nodes = inc_val, inc_code, 0
    # stack of (depth, partial sums (N, m), codes (N,))
    stack: list[tuple[int, np.ndarray, np.ndarray]] = [(1, C[:, 0][None, :].copy(), np.ones(1, np.int64))]
    pats: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    while stack:
        if deadline is not None and time.perf_counter() > deadline:
            raise _Timeout(max([best] + [float(np.abs(R).sum(1).max()) + L[j] for j, R, _ in stack]))
        j, R, codes = stack.pop()
        # re-check: the incumbent may have improved since this chunk was pushed
        keep = np.abs(R).sum(axis=1) + L[j] > best
        if not keep.all():
            R, codes = R[keep], codes[keep]
            if len(R) == 0:
                continue
        N = len(R)
        b = int(min(n - j, max(1, math.floor(math.log2(max(chunk // N, 1))))))
        if b not in pats:
            pats[b] = _patterns(b)
        P, pc = pats[b]
        Q = P @ C[:, j : j + b].T  # (2^b, m)
        child = (R[:, None, :] + Q[None, :, :]).reshape(-1, m)
        val = np.abs(child).sum(axis=1)
        nodes += len(val)
        ccodes = (codes[:, None] | (pc[None, :] << j)).reshape(-1)
        if j + b == n:
            k = int(val.argmax())
            if val[k] > best:
                best, best_code = float(val[k]), int(ccodes[k])
            continue
        bound = val + L[j + b]
        keep = bound > best
        if not keep.any():
            continue
        child, ccodes, bound = child[keep], ccodes[keep], bound[keep]
        # push the most promising nodes last so they are expanded first (finds incumbents early)
        order = np.argsort(bound, kind="stable")
        child, ccodes = child[order], ccodes[order]
        for s in range(0, len(child), chunk):
            stack.append((j + b, child[s : s + chunk], ccodes[s : s + chunk]))
    return best, best_code, nodes


def solve_norm_inf1(
    H: Any,
    *,
    method: str = "auto",
    time_limit: float | None = None,
    progress: bool = False,
    chunk: int = 1 << 14,
) -> Inf1Result:
    """Compute ``||H||_{inf,1} = max_{s in {-1,1}^d} ||H s||_1`` [BPL20, Eq. 19], exactly.

    The ``method`` values:

    * ``"bnb"``: branch-and-bound. The symmetry ``||H(-s)||_1 = ||H s||_1`` halves the search.
      Columns are sorted by l1 norm (largest first) and the problems on the trailing ``k``
      columns are solved for ``k = 1, ..., d`` in turn (Russian-doll search): the value of the
      trailing problem is an admissible bound for the unfixed part of every node, the previous
      optimum extended by one sign (and improved by :func:`heuristic_norm_inf1`'s local search)
      is the first incumbent. Nodes are expanded in vectorized numpy chunks.
    * ``"enumerate"``: exhaustive over ``2^(d-1)`` vectors, meet-in-the-middle vectorized.
    * ``"brute"``: plain enumeration of all ``2^d`` vectors (what the paper did).
    * ``"auto"``: ``enumerate`` for ``d <= 12``, else ``bnb``.

    ``H`` may be rectangular (``m x d``). With ``time_limit`` (seconds), an unfinished search
    returns ``exact=False`` with a certified bracket ``lower <= ||H||_{inf,1} <= upper``.
    Raises ``ValueError`` for ``d > 62`` (use the heuristic and the bounds).
    """
    if method not in ("auto", "bnb", "enumerate", "brute"):
        raise ValueError(f"method must be 'auto', 'bnb', 'enumerate' or 'brute', got {method!r}")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds or None, got {time_limit!r}")
    A = _matrix(H, square=False)
    n = A.shape[1]
    if n > MAX_EXACT_DIM:
        raise ValueError(
            f"exact ||H||_inf,1 needs d <= {MAX_EXACT_DIM}, got d = {n}; use heuristic_norm_inf1 "
            "(a certified lower bound) with the upper bounds prop4_bound/prop5_bound/entrywise_bound"
        )
    t0 = time.perf_counter()
    deadline = None if time_limit is None else t0 + time_limit
    if method == "auto":
        method = "enumerate" if n <= 12 else "bnb"
    if np.all(A == 0):
        return Inf1Result(0.0, 0.0, np.ones(n), True, method, 0, time.perf_counter() - t0)

    def finish(code: int, nodes: int) -> Inf1Result:
        s = _decode(code, n)
        val = float(np.abs(A @ s).sum())
        return Inf1Result(val, val, s, True, method, nodes, time.perf_counter() - t0)

    def timed_out(upper: float) -> Inf1Result:
        val, s = heuristic_norm_inf1(A, return_sign=True)
        return Inf1Result(val, max(upper, val), s, False, method, -1, time.perf_counter() - t0)

    if method == "brute":
        if time_limit is not None:
            raise ValueError("method='brute' does not support time_limit")
        _, code = _brute(A, chunk)
        return finish(code, 1 << n)
    if method == "enumerate":
        try:
            _, code, count = _enumerate(A, deadline)
        except TimeoutError:
            return timed_out(entrywise_bound(A))
        return finish(code, count)

    # ---- branch and bound with Russian-doll bounds
    order = np.argsort(-np.abs(A).sum(axis=0), kind="stable")
    Ap = A[:, order]
    L = np.zeros(n + 1)  # L[k] = ||Ap[:, k:]||_{inf,1}
    codes = np.zeros(n + 1, dtype=np.int64)  # optimal pattern of each suffix (relative bits)
    nodes = 0
    bar = _progress_bar(n, progress)
    try:
        for k in range(n - 1, -1, -1):
            C = Ap[:, k:]
            nk = n - k
            if nk <= 10:
                val, code, cnt = _enumerate(C, None)
                nodes += cnt
            else:
                # incumbent: previous suffix optimum, both signs of the new column, local search
                prev = _decode(int(codes[k + 1]), nk - 1)
                S0 = np.stack([np.concatenate([[1.0], prev]), np.concatenate([[1.0], -prev])])
                S, vals = _local_search(C, S0)
                S *= np.where(S[:, :1] >= 0, 1.0, -1.0)  # normalize s_0 = +1
                i = int(vals.argmax())
                inc_code = int(sum(1 << t for t in range(nk) if S[i, t] > 0))
                inc_val = float(np.abs(C @ S[i]).sum())
                Lk = L[k:].copy()
                try:
                    val, code, cnt = _bnb_subproblem(C, Lk, inc_val, inc_code, deadline, chunk)
                except _Timeout as exc:
                    # certified: ||A s||_1 <= sum|A[:, :k]| + (upper bound of the suffix problem)
                    bar.close()
                    upper_k = float(exc.args[0])
                    return timed_out(float(np.abs(Ap[:, :k]).sum()) + upper_k)
                nodes += cnt
            L[k] = val
            codes[k] = code
            bar.update(1)
    finally:
        bar.close()
    s_perm = _decode(int(codes[0]), n)
    s = np.empty(n)
    s[order] = s_perm
    val = float(np.abs(A @ s).sum())
    return Inf1Result(val, val, s, True, method, nodes, time.perf_counter() - t0)


@overload
def norm_inf1(
    H: Any, *, method: str = ..., return_sign: Literal[False] = ..., time_limit: float | None = ...,
    progress: bool = ...,
) -> float: ...
@overload
def norm_inf1(
    H: Any, *, method: str = ..., return_sign: Literal[True], time_limit: float | None = ...,
    progress: bool = ...,
) -> tuple[float, np.ndarray]: ...
def norm_inf1(
    H: Any,
    *,
    method: str = "auto",
    return_sign: bool = False,
    time_limit: float | None = None,
    progress: bool = False,
) -> float | tuple[float, np.ndarray]:
    """Exact ``L_inf = ||H||_{inf,1} = max_{s in {-1,1}^d} ||H s||_1`` [BPL20, Eq. 19].

    See :func:`solve_norm_inf1` for the algorithm (branch-and-bound with Russian-doll bounds;
    ``d = 30`` takes seconds to tens of seconds on a laptop core depending on the matrix).
    ``return_sign`` also returns a maximizing sign vector. If ``time_limit`` runs out, raises
    ``TimeoutError`` with the certified bracket in the message (use :func:`solve_norm_inf1` to
    get the bracket as numbers).
    """
    res = solve_norm_inf1(H, method=method, time_limit=time_limit, progress=progress)
    if not res.exact:
        raise TimeoutError(
            f"||H||_inf,1 not proven within {time_limit} s: {res.lower:.6g} <= L_inf <= "
            f"{res.upper:.6g}"
        )
    return (res.value, res.sign) if return_sign else res.value


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with [experiments]
        return _NoBar()
    return tqdm(total=total, desc="||H||_inf,1 (suffix problems)", leave=False)


# --------------------------------------------------------------------------------------------
# separable smoothness (SDP)
# --------------------------------------------------------------------------------------------
def _diag_sdp(W: np.ndarray, solver: str | None, eps: float, max_dim: int, what: str) -> np.ndarray:
    """Solve ``min sum_i l_i  s.t.  diag(l) - W >= 0`` and return a *certified feasible* ``l``.

    The solver's ``l`` is shifted by ``max(0, -lambda_min(diag(l) - W))`` so that the constraint
    holds exactly (up to the eigenvalue routine's rounding), whatever the solver's accuracy.
    """
    try:
        import cvxpy as cp
    except ImportError as exc:
        raise ImportError(
            f"{what} needs the optional dependency cvxpy: pip install 'steepest[sdp]'"
        ) from exc
    d = W.shape[0]
    if d > max_dim:
        raise ValueError(
            f"{what}: the SDP has a {d}x{d} matrix constraint, above max_dim = {max_dim} "
            "(interior-point cost grows like d^6); raise max_dim if you can wait"
        )
    scale = float(np.abs(W).max())
    if scale == 0.0:
        return np.zeros(d)
    Wn = W / scale  # a well-scaled problem
    lv = cp.Variable(d)
    prob = cp.Problem(cp.Minimize(cp.sum(lv)), [cp.diag(lv) - Wn >> 0])
    kwargs: dict[str, Any] = {}
    if solver is None:
        solver = "CLARABEL" if "CLARABEL" in cp.installed_solvers() else None
    if solver == "CLARABEL":
        kwargs = {"tol_gap_abs": eps, "tol_gap_rel": eps, "tol_feas": eps}
    prob.solve(solver=solver, **kwargs)
    if prob.status not in ("optimal", "optimal_inaccurate") or lv.value is None:
        raise RuntimeError(f"{what}: SDP solver failed with status {prob.status!r}")
    l = np.asarray(lv.value, dtype=np.float64).reshape(-1)
    shift = -float(np.linalg.eigvalsh(np.diag(l) - Wn).min())
    l = l + max(shift, 0.0) * (1 + 1e-9) + (1e-14 if shift > 0 else 0.0)
    return l * scale


@overload
def sep_smoothness(
    H: Any, *, solver: str | None = ..., return_weights: Literal[False] = ..., eps: float = ...,
    max_dim: int = ...,
) -> float: ...
@overload
def sep_smoothness(
    H: Any, *, solver: str | None = ..., return_weights: Literal[True], eps: float = ...,
    max_dim: int = ...,
) -> tuple[float, np.ndarray]: ...
def sep_smoothness(
    H: Any, *, solver: str | None = None, return_weights: bool = False, eps: float = 1e-9,
    max_dim: int = 80,
) -> float | tuple[float, np.ndarray]:
    """``L_sep(H) = min sum_i l_i  s.t.  l_i >= 0,  H <= diag(l)`` [BPL20, Eq. 26], by SDP.

    For PSD H, Prop. 6 gives ``L_inf <= L_sep <= sum(lambda) / rho_diag`` (Eq. 27); it is also
    the classical SDP relaxation of ``max_s s^T H s`` and so at most ``pi/2 L_inf`` (Nesterov
    1998). The solver's ``l`` is made exactly feasible before summing, so the value is a
    certified upper bound on ``L_inf`` for PSD H, at most ~``eps`` relative above the optimum.
    Needs the optional dependency ``cvxpy`` (``pip install steepest[sdp]``); ``ImportError``
    with that hint otherwise. ``d > max_dim`` raises ``ValueError`` (interior-point SDPs get
    slow: ~1 min at d = 100 on one core). ``return_weights`` also returns ``l``.
    """
    A = _symmetric(H)
    l = _diag_sdp(A, solver, eps, max_dim, "sep_smoothness")
    l = np.maximum(l, 0.0)  # l >= 0 is implied when H is PSD; enforced for indefinite H
    if float(np.linalg.eigvalsh(np.diag(l) - A).min()) < -1e-12 * max(float(np.abs(A).max()), 1e-300):
        l = l + (-float(np.linalg.eigvalsh(np.diag(l) - A).min()))
    val = float(l.sum())
    return (val, l) if return_weights else val


def sdp_bound(H: Any, *, solver: str | None = None, eps: float = 1e-9, max_dim: int = 80) -> float:
    """Certified SDP upper bound on ``||H||_{inf,1}`` for any square H.

    ``||H||_{inf,1} = max_{s,t in {-1,1}^d} t^T H s = max_z z^T W z`` with
    ``z = (t, s)``, ``W = [[0, H/2], [H^T/2, 0]]``; any ``l`` with ``diag(l) >= W`` gives
    ``z^T W z <= sum l`` (the argument of Prop. 6, Eq. 86). For PSD H the smaller ``L_sep(H)``
    is used (Prop. 6). Within a factor ``pi/2`` (PSD) or Grothendieck's constant ``< 1.783``
    of ``L_inf``. Needs ``cvxpy``.
    """
    A = _matrix(H)
    if np.allclose(A, A.T, rtol=0, atol=1e-12 * max(float(np.abs(A).max()), 1e-300)):
        lam = np.linalg.eigvalsh(0.5 * (A + A.T))
        if lam.min() >= -1e-12 * max(float(np.abs(lam).max()), 1e-300) * len(lam):
            return float(sep_smoothness(A, solver=solver, eps=eps, max_dim=max_dim))
    d = A.shape[0]
    W = np.zeros((2 * d, 2 * d))
    W[:d, d:] = 0.5 * A
    W[d:, :d] = 0.5 * A.T
    return float(_diag_sdp(W, solver, eps, max_dim, "sdp_bound").sum())


# --------------------------------------------------------------------------------------------
# block versions (App. A.2.2, Prop. 7)
# --------------------------------------------------------------------------------------------
def _blocks(blocks: Any, d: int) -> list[np.ndarray]:
    """A partition of ``range(d)``: a list of block sizes (contiguous) or of index lists."""
    if isinstance(blocks, int | np.integer):
        raise ValueError("blocks must be a sequence of block sizes or of index sequences")
    blocks = list(blocks)
    if not blocks:
        raise ValueError("blocks must be non-empty")
    if all(isinstance(b, int | np.integer) for b in blocks):
        if any(b < 1 for b in blocks) or sum(blocks) != d:
            raise ValueError(f"block sizes must be >= 1 and sum to d = {d}, got {blocks}")
        edges = np.cumsum([0, *blocks])
        return [np.arange(edges[i], edges[i + 1]) for i in range(len(blocks))]
    out = [np.asarray(b, dtype=np.int64).reshape(-1) for b in blocks]
    flat = np.concatenate(out)
    if any(len(b) == 0 for b in out) or len(flat) != d or not np.array_equal(np.sort(flat), np.arange(d)):
        raise ValueError(f"blocks must partition range({d}) into non-empty index sets")
    return out


def rho_diag_block(H: Any, blocks: Sequence[Any]) -> float:
    """Block diagonal concentration ``sum_B ||H_BB||_2 / sum_{B,B'} ||H_BB'||_2`` (Prop. 7).

    The seed's text prints this fraction upside down (which would make it ``>= 1``); the proof
    (Eq. 93) and the analogy with ``rho_diag`` fix this reading: it lies in ``(0, 1]`` and
    singleton blocks give back :func:`rho_diag`. The zero matrix gives ``nan``.
    """
    A = _matrix(H)
    bl = _blocks(blocks, A.shape[0])
    norms = np.array([[np.linalg.norm(A[np.ix_(b, c)], 2) for c in bl] for b in bl])
    total = float(norms.sum())
    return math.nan if total == 0.0 else float(np.trace(norms)) / total


def entrywise_bound_block(H: Any, blocks: Sequence[Any]) -> float:
    """``sum_{B,B'} ||H_BB'||_2``: upper bound on ``||H||^B_{inf,1}`` for any H (Eq. 92)."""
    A = _matrix(H)
    bl = _blocks(blocks, A.shape[0])
    return float(sum(np.linalg.norm(A[np.ix_(b, c)], 2) for b in bl for c in bl))


def prop7_bound(H: Any, blocks: Sequence[Any]) -> float:
    """Prop. 7 (Eq. 40): ``||H||^B_{inf,1} <= rho^B_diag(H)^{-1} sum_B lambda_max(H_BB)``, PSD H.

    ``||H||^B_{inf,1} = max_{max_B ||x_B||_2 <= 1} sum_B ||(H x)_B||_2`` (Eq. 39) is the
    smoothness constant of block-normalized gradient descent. Raises ``ValueError`` unless H is
    positive semi-definite.
    """
    A = _symmetric(H)
    _check_psd(np.linalg.eigvalsh(A), "prop7_bound (Prop. 7)")
    bl = _blocks(blocks, A.shape[0])
    lam_b = sum(float(np.linalg.eigvalsh(A[np.ix_(b, b)]).max()) for b in bl)
    rho = rho_diag_block(A, blocks)
    return 0.0 if math.isnan(rho) else max(lam_b, 0.0) / rho


def heuristic_norm_inf1_block(
    H: Any, blocks: Sequence[Any], *, starts: int = 8, seed: int = 0, max_iter: int = 500
) -> float:
    """Certified lower bound on ``||H||^B_{inf,1}`` (Eq. 39) by alternating maximization.

    ``sum_B ||(Hx)_B||_2 = max_y y^T H x`` over ``max_B ||y_B||_2 <= 1``; alternately setting
    ``y_B = (Hx)_B / ||(Hx)_B||`` and ``x_B = (H^T y)_B / ||(H^T y)_B||`` never decreases the
    value, and every iterate ``x`` is feasible, so the value returned is attained. Singleton
    blocks give the sign iteration of :func:`heuristic_norm_inf1`.
    """
    if not isinstance(starts, int | np.integer) or starts < 1:
        raise ValueError(f"starts must be an integer >= 1, got {starts!r}")
    A = _matrix(H)
    bl = _blocks(blocks, A.shape[0])
    rng = np.random.default_rng(seed)

    def normalize(z: np.ndarray) -> np.ndarray:
        out = np.empty_like(z)
        for b in bl:
            nz = np.linalg.norm(z[b])
            out[b] = z[b] / nz if nz > 0 else 1.0 / math.sqrt(len(b))
        return out

    def value(x: np.ndarray) -> float:
        y = A @ x
        return float(sum(np.linalg.norm(y[b]) for b in bl))

    lam, V = np.linalg.eigh(0.5 * (A + A.T))
    starts_x = [V[:, i] for i in np.argsort(-np.abs(lam))[: max(1, starts // 2)]]
    while len(starts_x) < starts:
        starts_x.append(rng.standard_normal((A.shape[0],)))
    best = 0.0
    for x0 in starts_x:
        # x0 scaled to unit block-max norm is feasible too; from the top eigenvector it gives
        # ||H v||^B_1 / ||v||^B_inf >= ||H v||_2 / ||v||_2 = L_2 (block analogue of Eq. 22-23)
        bmax = max(float(np.linalg.norm(x0[b])) for b in bl)
        if bmax > 0:
            best = max(best, value(x0 / bmax))
        x = normalize(x0)
        v = value(x)
        for _ in range(max_iter):
            x_new = normalize(A.T @ normalize(A @ x))
            v_new = value(x_new)
            if v_new <= v * (1 + 1e-13):
                break
            x, v = x_new, v_new
        best = max(best, v)
    return best


# --------------------------------------------------------------------------------------------
# gradient density and the predicted advantage (Sec. 5)
# --------------------------------------------------------------------------------------------
def _vector(z: Any, name: str) -> np.ndarray:
    if isinstance(z, list | tuple) and z and all(hasattr(t, "detach") for t in z):
        arr = np.concatenate([_to_numpy(t, name).reshape(-1) for t in z])
    else:
        arr = _to_numpy(z, name).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} must be non-empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf entries")
    return arr


def density(z: Any) -> float:
    """Gradient density ``phi(z) = ||z||_1^2 / (d ||z||_2^2)`` in ``[1/d, 1]`` [BPL20, Eq. 30].

    ``z`` may be an array, a tensor of any shape or a list of tensors (e.g. the gradients of a
    model's parameters, taken as one vector). 1 for a vector with all ``|z_i|`` equal, ``1/d``
    for a one-hot vector. The zero vector gives ``nan`` (0/0; at a stationary point neither
    method makes progress).
    """
    v = _vector(z, "z")
    vmax = float(np.abs(v).max())
    if vmax == 0.0:
        return math.nan
    v = v / vmax  # scale first: ||z||_2^2 underflows/overflows for tiny/huge entries
    return float(np.abs(v).sum() ** 2 / (v.size * np.dot(v, v)))


def predicted_advantage(grad: Any, L2: float, Linf: float) -> float:
    """``R(x) = I_signGD / I_GD = phi(grad) d L_2 / L_inf`` [BPL20, Eq. 31].

    The ratio of the guaranteed one-step improvements ``||g||_1^2 / L_inf`` (norm-scaled sign
    descent, Eq. 29) and ``||g||_2^2 / L_2`` (gradient descent, Eq. 28): above 1, sign descent's
    guarantee is the better one. Given a lower bound on ``L_inf`` this is an upper estimate of
    ``R``, given an upper bound a lower estimate.
    """
    v = _vector(grad, "grad")
    for nm, val in (("L2", L2), ("Linf", Linf)):
        if not (isinstance(val, int | float | np.floating | np.integer) and math.isfinite(val) and val > 0):
            raise ValueError(f"{nm} must be a finite number > 0, got {val!r}")
    return density(v) * v.size * float(L2) / float(Linf)


# --------------------------------------------------------------------------------------------
# rotated quadratics (App. D.2)
# --------------------------------------------------------------------------------------------
def rotated_quadratic(d: int, lam_max: float, theta: float, seed: int | None = 0) -> np.ndarray:
    """``H = R^theta Lambda (R^theta)^T``, ``Lambda = diag(1, ..., 1, lam_max)`` [BPL20, App. D.2].

    ``R`` is Haar-random in SO(d) (scipy's ``special_ortho_group``, seeded); the fractional
    power ``R^theta = U D^theta U^*`` comes from the (complex Schur = eigen-) decomposition of
    the normal matrix ``R`` with the principal branch of ``D^theta``. ``theta = 0`` gives the
    axis-aligned ``Lambda``, ``theta = 1`` the fully rotated ``R Lambda R^T``. Returns a real
    symmetric positive definite ``d x d`` float64 matrix with eigenvalues ``Lambda``.
    """
    if not isinstance(d, int | np.integer) or isinstance(d, bool) or d < 1:
        raise ValueError(f"d must be an integer >= 1, got {d!r}")
    if not (isinstance(lam_max, int | float | np.number) and math.isfinite(lam_max) and lam_max > 0):
        raise ValueError(f"lam_max must be a finite number > 0, got {lam_max!r}")
    if not (isinstance(theta, int | float | np.number) and 0.0 <= float(theta) <= 1.0):
        raise ValueError(f"theta must be in [0, 1], got {theta!r}")
    lam = np.ones(int(d))
    lam[-1] = float(lam_max)
    if d == 1:
        return np.diag(lam)
    try:
        from scipy.linalg import schur
        from scipy.stats import special_ortho_group
    except ImportError as exc:  # pragma: no cover
        raise ImportError("rotated_quadratic needs scipy: pip install 'steepest[experiments]'") from exc
    R = special_ortho_group.rvs(int(d), random_state=seed)
    T, Z = schur(R.astype(np.complex128), output="complex")  # R normal => T diagonal, Z unitary
    w = np.diag(T)
    Rt = (Z * np.power(w, float(theta))[None, :]) @ Z.conj().T
    Rt = Rt.real
    Hm = (Rt * lam[None, :]) @ Rt.T
    return 0.5 * (Hm + Hm.T)
