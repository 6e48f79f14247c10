"""Curvature of real models, matrix-free: the Hessian as a linear operator over a data set.

The Hessian is that of the *average* loss over a data set,

    f(w) = (1/N) sum_b n_b loss_fn(model_w(x_b), y_b),      H = grad^2 f(w),

where ``loss_fn`` returns the mean over a batch of ``n_b`` examples (as torch's losses do by
default) and ``N = sum_b n_b``. ``data`` is one batch ``(inputs, targets)`` or a re-iterable of
such batches (a list, a ``DataLoader`` without shuffling). Hessian-vector products use double
backward (Pearlmutter's trick); everything else is built on them:

* :func:`top_eigenvalues` (scipy ``eigsh(which="LA")`` on a ``LinearOperator``), ``L_2``;
* :func:`hutchinson_trace`, :func:`hutchinson_diagonal` (Rademacher probes) and
  :func:`slq_trace` (stochastic Lanczos quadrature for ``tr f(H)``, e.g. ``sum |lambda_i|``);
* :func:`diagonal_concentration`: ``rho_diag`` [BPL20, Prop. 4] from sampled Hessian columns;
* :func:`inf1_lower_bound`: a certified lower bound on ``||H||_{inf,1}`` (Eq. 19) from sign
  vectors, since ``||H s||_1 <= ||H||_{inf,1}`` for every ``s in {-1,1}^d``;
* :func:`gradient_density` and :func:`density_along_training` (Eq. 30).

Quantities refer to the current parameters: they describe the local geometry ``grad^2 f(w)``,
not the supremum over ``w`` that defines the global smoothness constants.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from steepest.geometry.dense import density

__all__ = [
    "HessianOperator",
    "Inf1LowerBound",
    "density_along_training",
    "diagonal_concentration",
    "gradient_density",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hvp",
    "inf1_lower_bound",
    "l2_smoothness_model",
    "slq_trace",
    "top_eigenvalue",
    "top_eigenvalues",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _batches(data: Any) -> list[tuple[Any, Any]]:
    """Normalize ``data`` to a list of ``(inputs, targets)`` batches."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        return [data]
    if isinstance(data, Tensor):
        raise ValueError("data must be a batch (inputs, targets) or an iterable of such batches, "
                         "got a single tensor")
    try:
        batches = list(data)
    except TypeError as exc:
        raise ValueError(f"data must be a batch (inputs, targets) or an iterable of batches, "
                         f"got {type(data).__name__}") from exc
    if not batches:
        raise ValueError("data is empty")
    for b in batches:
        if not (isinstance(b, list | tuple) and len(b) == 2):
            raise ValueError("every batch must be a pair (inputs, targets)")
    return [tuple(b) for b in batches]


def _batch_size(x: Any) -> int:
    if isinstance(x, Tensor):
        return int(x.shape[0]) if x.dim() else 1
    if isinstance(x, list | tuple) and x and isinstance(x[0], Tensor):
        return int(x[0].shape[0])
    return 1


def _through_error_node(grads: Sequence[Tensor]) -> set[int]:
    """The ``id``s of the gradients whose graph reaches an ``Error`` node, the node that
    ``@once_differentiable`` puts after a backward it ran without a graph."""
    cut: set[int] = set()
    memo: dict[Any, bool] = {}

    def reaches(node: Any) -> bool:
        stack, opened = [node], set()
        while stack:  # iterative post-order walk of the (acyclic) graph
            n = stack[-1]
            if n in memo:
                stack.pop()
                continue
            inputs = [f for f, _ in n.next_functions if f is not None]
            if n not in opened:
                opened.add(n)
                stack.extend(f for f in inputs if f not in memo)
                continue
            stack.pop()
            memo[n] = type(n).__name__ == "Error" or any(memo[f] for f in inputs)
        return memo[node]

    for g in grads:
        if g.grad_fn is not None and reaches(g.grad_fn):
            cut.add(id(g))
    return cut


class HessianOperator:
    """The Hessian of the average loss over ``data`` w.r.t. ``params``, as a linear operator.

    Args:
        model: the model; called as ``model(inputs)``.
        loss_fn: ``loss_fn(outputs, targets)``, a *mean* over the batch.
        data: one batch ``(inputs, targets)`` or a re-iterable of batches. Each pass over it
            must give the same batches (no shuffling, no dropout): :meth:`check_deterministic`.
        params: parameters to differentiate w.r.t. (default: all with ``requires_grad``).

    Vectors are flat tensors of length :attr:`dim` in the parameters' order, dtype and device.
    Complex parameters are not supported (``ValueError``).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        params: Sequence[Tensor] | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.batches = _batches(data)
        self.params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no parameters that require grad")
        if any(p.is_complex() for p in self.params):
            raise ValueError("complex parameters are not supported; use their real views")
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise ValueError(f"all parameters must share one dtype, got {sorted(map(str, dtypes))}")
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = int(sum(self.numels))
        self.sizes = [_batch_size(x) for x, _ in self.batches]
        self.num_examples = int(sum(self.sizes))
        self.num_hvps = 0  # Hessian-vector products computed (one per column of a matmat)
        self._batched_ok = True
        self._checked_second_order = False

    # ---------------------------------------------------------------- basic products
    def _unflatten(self, v: Tensor) -> list[Tensor]:
        return [t.view(s) for t, s in zip(v.split(self.numels), self.shapes)]

    def _flat(self, ts: Sequence[Tensor | None]) -> Tensor:
        return torch.cat([
            (t if t is not None else torch.zeros(s, dtype=self.dtype, device=self.device)).reshape(-1)
            for t, s in zip(ts, self.shapes)
        ])

    def _batch_loss(self, x: Any, y: Any) -> Tensor:
        return self.loss_fn(self.model(x), y)

    def _as_matrix(self, V: Tensor | np.ndarray) -> Tensor:
        V = torch.as_tensor(V)
        if V.dim() == 1:
            V = V[:, None]
        if V.dim() != 2 or V.shape[0] != self.dim:
            raise ValueError(f"vectors must have length dim = {self.dim}, got shape {tuple(V.shape)}")
        if V.is_complex():
            raise ValueError("vectors must be real")
        return V.to(dtype=self.dtype, device=self.device)

    def matmat(self, V: Tensor | np.ndarray) -> Tensor:
        """``H V`` for a ``(dim, k)`` block of vectors (one graph per batch, k double backwards)."""
        V = self._as_matrix(V)
        k = V.shape[1]
        out = torch.zeros(self.dim, k, dtype=self.dtype, device=self.device)
        cols = [self._unflatten(V[:, j].contiguous()) for j in range(k)]
        for (x, y), n in zip(self.batches, self.sizes):
            with torch.enable_grad(), _twice_differentiable():
                loss = self._batch_loss(x, y)
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
                self._check_second_order(x, y, grads)
                if not live:
                    continue  # loss is linear in the parameters on this batch: H = 0
                hvs = self._double_backward(grads, live, cols, V, k)
                for j, hv in enumerate(hvs):
                    full: list[Tensor | None] = [None] * len(self.params)
                    for i, h in zip(live, hv):
                        full[i] = h
                    out[:, j] += (n / self.num_examples) * self._flat(full).detach()
        self.num_hvps += k
        return out

    def _check_second_order(self, x: Any, y: Any, grads: Sequence[Tensor | None]) -> None:
        """Catch, on the first batch, second derivatives that autograd would drop without an
        error. They are dropped at a ``@once_differentiable`` autograd Function, whose backward
        runs without a graph: (1) where something downstream requires grad, its gradient goes
        through an ``Error`` node whose inputs are detached, so the double backward never
        reaches it and returns the Hessian without the terms through that function: raise
        ``ValueError``; (2) at the loss, its gradient w.r.t. the model's output has no graph
        (also the case for a loss linear in the output): warn, the Hessian has no
        loss-curvature term ``J^T H_loss J``; (3) some parameters' gradients have no graph
        (their Hessian rows are zero; right where the loss is linear in them): warn. Cost, once
        per operator: a walk of the first batch's gradient graph, and (2)'s forward and backward
        to the output."""
        if self._checked_second_order:
            return
        self._checked_second_order = True
        cut = _through_error_node([g for g in grads if g is not None])
        if cut:
            shown = self._names([i for i, g in enumerate(grads) if g is not None and id(g) in cut])
            raise ValueError(
                f"HessianOperator: the gradient of {shown} passes through a "
                "function marked @once_differentiable (an autograd Function whose backward builds "
                "no graph): autograd would return Hessian-vector products without the terms "
                "through it, silently. Write that function with differentiable torch operations "
                "(or give it a double backward) to compute curvature."
            )
        hint = ("right if the loss is linear in it; wrong if the gradient passes through a function "
                "that is not twice differentiable (e.g. a @once_differentiable autograd Function), "
                "whose second derivative autograd drops without an error")
        out = self.model(x)
        if isinstance(out, Tensor) and out.requires_grad:
            (go,) = torch.autograd.grad(self.loss_fn(out, y), out, create_graph=True, allow_unused=True)
            if go is None or not go.requires_grad:
                warnings.warn(
                    "HessianOperator: the loss's gradient w.r.t. the model's output does not depend "
                    "on the output (autograd returned it without a graph), so the Hessian has no "
                    f"loss-curvature term (J^T H_loss J): {hint}.",
                    RuntimeWarning, stacklevel=3,
                )
                return
        const = [i for i, g in enumerate(grads) if g is not None and not g.requires_grad]
        if const:
            warnings.warn(
                f"HessianOperator: the gradient of {self._names(const)} does not depend on "
                "the parameters (autograd returned it without a graph), so their Hessian rows are "
                f"taken as zero: {hint}.",
                RuntimeWarning, stacklevel=3,
            )

    def _names(self, indices: list[int]) -> str:
        """The model's names of ``self.params[i]`` for ``i`` in ``indices``, the first five."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        shown = [names.get(id(self.params[i]), f"params[{i}]") for i in indices]
        return ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")

    def _double_backward(
        self, grads: Sequence[Tensor], live: list[int], cols: list[list[Tensor]], V: Tensor, k: int
    ) -> list[list[Tensor]]:
        """Second backward pass for k vectors: one batched (vmapped) call where autograd
        supports it (``is_grads_batched``, several times faster), else one call per vector."""
        gl = [grads[i] for i in live]
        pl = [self.params[i] for i in live]
        if k > 1 and self._batched_ok:
            try:
                outs = V.T.split(self.numels, dim=1)
                gouts = [outs[i].reshape(k, *self.shapes[i]) for i in live]
                hb = torch.autograd.grad(gl, pl, grad_outputs=gouts, retain_graph=True,
                                         is_grads_batched=True, allow_unused=True)
                return [[h[j] if h is not None else None for h in hb] for j in range(k)]
            except RuntimeError:  # an op without a batching rule: fall back to the loop
                self._batched_ok = False
        res = []
        for j in range(k):
            hv = torch.autograd.grad(gl, pl, grad_outputs=[cols[j][i] for i in live],
                                     retain_graph=True, allow_unused=True)
            res.append(list(hv))
        return res

    def matvec(self, v: Tensor | np.ndarray) -> Tensor:
        """``H v`` (a Hessian-vector product by double backward)."""
        return self.matmat(v)[:, 0]

    __matmul__ = matvec

    def gradient(self) -> tuple[float, Tensor]:
        """``(f(w), grad f(w))`` over the whole data set."""
        total = 0.0
        g = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for (x, y), n in zip(self.batches, self.sizes):
            with torch.enable_grad():
                loss = self._batch_loss(x, y)
                gs = torch.autograd.grad(loss, self.params, allow_unused=True)
            g += (n / self.num_examples) * self._flat(gs).detach()
            total += float(loss.detach()) * n / self.num_examples
        return total, g

    def check_deterministic(self, rtol: float = 1e-6) -> None:
        """Raise ``ValueError`` unless two passes over the data give the same loss and gradient.

        Randomness (dropout, a shuffling loader, data augmentation) makes the "Hessian" a
        different matrix at every product and every estimate below meaningless.
        """
        l1, g1 = self.gradient()
        l2, g2 = self.gradient()
        scale = float(g1.abs().max()) + 1e-30
        if abs(l1 - l2) > rtol * (abs(l1) + 1e-30) or float((g1 - g2).abs().max()) > rtol * scale:
            raise ValueError(
                "model or data is not deterministic (two passes gave different losses/gradients): "
                "use model.eval() to disable dropout and a data iterable without shuffling"
            )

    def dense(self, *, progress: bool = False, block: int = 64) -> Tensor:
        """The full ``dim x dim`` Hessian, column block by column block (``dim`` HVPs)."""
        H = torch.empty(self.dim, self.dim, dtype=self.dtype, device=self.device)
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        bar = _bar(self.dim, progress, "dense Hessian (columns)")
        for s in range(0, self.dim, block):
            e = min(s + block, self.dim)
            H[:, s:e] = self.matmat(eye[:, s:e])
            bar.update(e - s)
        bar.close()
        return H

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` (float64) for eigsh and friends."""
        from scipy.sparse.linalg import LinearOperator

        def mv(x: np.ndarray) -> np.ndarray:
            return self.matvec(torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(-1))).double().cpu().numpy()

        def mm(X: np.ndarray) -> np.ndarray:
            return self.matmat(torch.as_tensor(np.asarray(X, dtype=np.float64))).double().cpu().numpy()

        return LinearOperator((self.dim, self.dim), matvec=mv, rmatvec=mv, matmat=mm, dtype=np.float64)


def _twice_differentiable() -> Any:
    """A context in which the model's forward can be differentiated twice: scaled dot-product
    attention on its math backend (the fused CPU/flash kernels have no double backward:
    ``derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not
    implemented``); a no-op where torch has no ``sdpa_kernel``."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - older torch
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def hvp(model: nn.Module, loss_fn: LossFn, data: Any, v: Tensor, params: Sequence[Tensor] | None = None) -> Tensor:
    """One Hessian-vector product ``H v`` of the average loss over ``data`` (flat ``v``)."""
    return HessianOperator(model, loss_fn, data, params).matvec(v)


# ------------------------------------------------------------------------------------------
# spectrum
# ------------------------------------------------------------------------------------------
def top_eigenvalues(
    op: HessianOperator, k: int = 1, *, which: str = "LA", tol: float = 1e-6,
    maxiter: int | None = None, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` extreme eigenpairs of H by scipy's Lanczos ``eigsh`` on :meth:`to_scipy`.

    ``which``: ``"LA"`` largest algebraic (default: ``lambda_max``), ``"SA"`` smallest,
    ``"LM"`` largest magnitude. Returns ``(eigenvalues (k,), eigenvectors (dim, k))`` sorted
    descending by the ``which`` criterion. Tiny operators (``dim <= k + 1``) are solved densely.
    """
    if which not in ("LA", "SA", "LM"):
        raise ValueError(f"which must be 'LA', 'SA' or 'LM', got {which!r}")
    if not isinstance(k, int) or k < 1 or k > op.dim:
        raise ValueError(f"k must be an integer in [1, dim={op.dim}], got {k!r}")
    if op.dim <= k + 1:
        lam, V = np.linalg.eigh(op.dense().double().cpu().numpy())
    else:
        from scipy.sparse.linalg import ArpackNoConvergence, eigsh

        v0 = np.random.default_rng(seed).standard_normal(op.dim)
        try:
            lam, V = eigsh(op.to_scipy(), k=k, which=which, tol=tol, maxiter=maxiter, v0=v0)
        except ArpackNoConvergence:
            # Clustered extreme eigenvalues (rank-deficient Hessians of linear models) can stall
            # the default Krylov space: retry once with a larger one and a looser tolerance,
            # then keep what converged or say what to do instead.
            ncv = min(op.dim, max(4 * k + 1, 64))
            loose = max(tol, 1e-4)
            try:
                lam, V = eigsh(op.to_scipy(), k=k, which=which, tol=loose, ncv=ncv,
                               maxiter=max(maxiter or 0, 50 * op.dim), v0=v0)
            except ArpackNoConvergence as e:
                if len(e.eigenvalues) < k:
                    raise RuntimeError(
                        f"Lanczos (eigsh, which={which!r}) did not converge on this {op.dim}-dim "
                        "Hessian even with a larger Krylov space; use the dense mode "
                        "(steepest geometry --mode dense) or fewer parameters"
                    ) from e
                lam, V = e.eigenvalues, e.eigenvectors
            warnings.warn(
                f"eigsh did not converge at tol={tol:g}; the eigenvalue was computed with "
                f"tol={loose:g} and a {ncv}-vector Krylov space", RuntimeWarning, stacklevel=2,
            )
    key = {"LA": -lam, "SA": lam, "LM": -np.abs(lam)}[which]
    idx = np.argsort(key, kind="stable")[:k]
    return lam[idx], V[:, idx]


def top_eigenvalue(op: HessianOperator, *, which: str = "LA", tol: float = 1e-6, seed: int = 0) -> tuple[float, np.ndarray]:
    """``(lambda_max, v)`` of H (``which="LA"``; see :func:`top_eigenvalues`)."""
    lam, V = top_eigenvalues(op, 1, which=which, tol=tol, seed=seed)
    return float(lam[0]), V[:, 0]


def l2_smoothness_model(op: HessianOperator, *, tol: float = 1e-6, seed: int = 0) -> float:
    """``L_2 = ||H||_2 = max_i |lambda_i|`` at the current parameters (``eigsh(which="LM")``)."""
    lam, _ = top_eigenvalues(op, 1, which="LM", tol=tol, seed=seed)
    return float(abs(lam[0]))


# ------------------------------------------------------------------------------------------
# stochastic trace / diagonal estimates
# ------------------------------------------------------------------------------------------
def _rademacher(dim: int, k: int, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    return torch.randint(0, 2, (dim, k), generator=gen).to(dtype).mul_(2).sub_(1)


def _check_samples(num_samples: int) -> None:
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")


def hutchinson_trace(
    op: HessianOperator, num_samples: int = 32, *, seed: int = 0, block: int = 16
) -> tuple[float, float]:
    """Hutchinson's estimate of ``tr(H) = sum_i lambda_i``: the mean of ``v^T H v``.

    ``v`` has i.i.d. Rademacher entries, so ``E[v^T H v] = tr(H)`` and
    ``Var[v^T H v] = 2 sum_{i != j} H_ij^2``. Returns ``(estimate, standard error)``.
    """
    _check_samples(num_samples)
    gen = torch.Generator().manual_seed(seed)
    vals: list[Tensor] = []
    for s in range(0, num_samples, block):
        V = _rademacher(op.dim, min(block, num_samples - s), gen, op.dtype).to(op.device)
        vals.append((V * op.matmat(V)).sum(0))
    q = torch.cat(vals).double()
    se = float(q.std() / math.sqrt(num_samples)) if num_samples > 1 else math.inf
    return float(q.mean()), se


def hutchinson_diagonal(
    op: HessianOperator, num_samples: int = 32, *, seed: int = 0, block: int = 16
) -> Tensor:
    """Hutchinson's estimate of ``diag(H)``: the mean of ``v * (H v)`` (Rademacher ``v``)."""
    _check_samples(num_samples)
    gen = torch.Generator().manual_seed(seed)
    acc = torch.zeros(op.dim, dtype=torch.float64)
    for s in range(0, num_samples, block):
        V = _rademacher(op.dim, min(block, num_samples - s), gen, op.dtype).to(op.device)
        acc += (V * op.matmat(V)).sum(1).double().cpu()
    return acc / num_samples


def slq_trace(
    op: HessianOperator,
    fn: Callable[[np.ndarray], np.ndarray] = np.abs,
    *,
    num_probes: int = 8,
    steps: int = 40,
    seed: int = 0,
    progress: bool = False,
) -> tuple[float, float]:
    """Stochastic Lanczos quadrature estimate of ``tr f(H) = sum_i f(lambda_i)`` (Ubaru et al. 2017).

    For each Rademacher probe ``v``, ``steps`` Lanczos iterations (full reorthogonalization)
    give a tridiagonal ``T = U diag(theta) U^T`` and ``v^T f(H) v ~ ||v||^2 sum_j U_0j^2 f(theta_j)``
    (Gauss quadrature; exact once ``steps`` reaches the number of distinct eigenvalues).
    The default ``f = |.|`` gives ``sum_i |lambda_i|``, the ``d * lambda_bar`` of [BPL20],
    Eq. 24. Returns ``(estimate, standard error over probes)``.
    """
    _check_samples(num_probes)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    rng = np.random.default_rng(seed)
    d, k = op.dim, num_probes
    m = min(steps, d)
    # all probes run as one block: every Lanczos step is a single matmat with k columns
    Q = np.zeros((m, d, k))
    alpha, beta = np.zeros((m, k)), np.zeros((m, k))
    q = rng.choice([-1.0, 1.0], size=(d, k)) / math.sqrt(d)
    used = np.full(k, m)  # Lanczos steps per probe (fewer on breakdown: exact quadrature)
    active = np.ones(k, dtype=bool)
    bar = _bar(m, progress, "Lanczos (tr f(H))")
    for j in range(m):
        Q[j] = q
        W = op.matmat(torch.as_tensor(q)).double().cpu().numpy()
        bar.update(1)
        alpha[j] = (W * q).sum(0)
        for _ in range(2):  # full reorthogonalization, twice is enough
            W -= np.einsum("jdk,jk->dk", Q[: j + 1], np.einsum("jdk,dk->jk", Q[: j + 1], W))
        b = np.linalg.norm(W, axis=0)
        if j == m - 1:
            break
        scale = np.maximum(1.0, np.abs(alpha[: j + 1]).max(0))
        stop = active & (b <= 1e-12 * scale)
        used[stop] = j + 1
        active &= ~stop
        W[:, ~active] = 0.0
        beta[j] = np.where(active, b, 0.0)
        q = np.where(active[None, :], W / np.where(b > 0, b, 1.0)[None, :], 0.0)
        if not active.any():
            break
    bar.close()
    ests = []
    for c in range(k):
        u = used[c]
        T = np.diag(alpha[:u, c]) + np.diag(beta[: u - 1, c], 1) + np.diag(beta[: u - 1, c], -1)
        theta, U = np.linalg.eigh(T)
        ests.append(d * float((U[0] ** 2 * fn(theta)).sum()))
    arr = np.array(ests)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else math.inf
    return float(arr.mean()), se


@dataclass
class DiagonalConcentration:
    """``rho_diag`` [BPL20, Prop. 4] from ``columns`` Hessian columns.

    ``exact`` when every column was computed; otherwise a ratio estimate
    ``sum_{i in S} |H_ii| / sum_{i in S} ||H e_i||_1`` over a uniform sample ``S`` of columns,
    with a delta-method standard error. ``abs_sum`` estimates ``sum_ij |H_ij|`` (the entrywise
    upper bound on ``||H||_{inf,1}``, Eq. 80) and ``abs_diag_sum`` estimates ``sum_i |H_ii|``.
    """

    rho: float
    stderr: float
    abs_sum: float
    abs_diag_sum: float
    columns: int
    exact: bool


def diagonal_concentration(
    op: HessianOperator, num_columns: int = 64, *, seed: int = 0, progress: bool = False,
    block: int = 32,
) -> DiagonalConcentration:
    """Estimate ``rho_diag(H) = sum_i |H_ii| / sum_ij |H_ij|`` from sampled columns ``H e_i``.

    Column ``i`` (one HVP) gives both ``|H_ii|`` and the row sum ``||H e_i||_1`` (H is
    symmetric), so both sums are estimated from the same sample; with ``num_columns >= dim``
    all columns are used and the result is exact. Returns :class:`DiagonalConcentration`.
    """
    if not isinstance(num_columns, int) or num_columns < 1:
        raise ValueError(f"num_columns must be an integer >= 1, got {num_columns!r}")
    d = op.dim
    if num_columns >= d:
        idx = np.arange(d)
    else:
        idx = np.sort(np.random.default_rng(seed).choice(d, size=num_columns, replace=False))
    diag, rows = [], []
    bar = _bar(len(idx), progress, "Hessian columns (rho_diag)")
    for s in range(0, len(idx), block):
        sel = idx[s : s + block]
        E = torch.zeros(d, len(sel), dtype=op.dtype, device=op.device)
        E[torch.as_tensor(sel), torch.arange(len(sel))] = 1
        Hc = op.matmat(E).double().cpu()
        diag.append(Hc[torch.as_tensor(sel), torch.arange(len(sel))].abs().numpy())
        rows.append(Hc.abs().sum(0).numpy())
        bar.update(len(sel))
    bar.close()
    a, b = np.concatenate(diag), np.concatenate(rows)
    exact = len(idx) == d
    if b.sum() == 0:
        return DiagonalConcentration(math.nan, math.nan, 0.0, 0.0, len(idx), exact)
    rho = float(a.sum() / b.sum())
    if exact or len(a) < 2:
        se = 0.0 if exact else math.inf
    else:
        # delta method for a ratio of means, with finite-population correction
        resid = a - rho * b
        fpc = 1.0 - len(a) / d
        se = float(math.sqrt(fpc * resid.var(ddof=1) / len(a)) / b.mean())
    scale = d / len(idx)
    return DiagonalConcentration(rho, se, float(b.sum() * scale), float(a.sum() * scale), len(idx), exact)


# ------------------------------------------------------------------------------------------
# lower bound on ||H||_{inf,1}
# ------------------------------------------------------------------------------------------
@dataclass
class Inf1LowerBound:
    """A certified lower bound ``value = ||H s||_1 <= ||H||_{inf,1}`` and its sign vector.

    ``source`` names the start that won (``random``, ``eigvec``, ``ones``, ``grad``), improved
    by ``iterations`` sign iterations; ``values`` lists every start's final value.
    """

    value: float
    sign: Tensor
    source: str
    values: dict[str, float] = field(default_factory=dict)


def _signs(v: Tensor) -> Tensor:
    return torch.where(v >= 0, 1.0, -1.0).to(v.dtype)


def inf1_lower_bound(
    op: HessianOperator,
    *,
    num_random: int = 4,
    eigvecs: Sequence[np.ndarray | Tensor] = (),
    extra: dict[str, Tensor] | None = None,
    iterations: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> Inf1LowerBound:
    """A certified lower bound on ``||H||_{inf,1} = max_s ||H s||_1`` [BPL20, Eq. 19].

    Every sign vector ``s in {-1,1}^d`` gives ``||H s||_1 <= ||H||_{inf,1}`` (``||s||_inf = 1``),
    so the maximum found is a valid lower bound, whatever the search. Starts: ``num_random``
    random sign vectors, the all-ones vector, the signs of the given eigenvectors (the sign of
    the top eigenvector is the natural witness, cf. Eq. 22) and of any ``extra`` vectors (e.g.
    the gradient). Each start is improved by the local search ``s <- sign(H s)``: for symmetric
    H, ``||H sign(H s)||_1 >= sign(H s)^T H s = ||H s||_1``, so values never decrease; each
    iteration costs one HVP, all starts run as one block.
    """
    if not isinstance(num_random, int) or num_random < 0:
        raise ValueError(f"num_random must be an integer >= 0, got {num_random!r}")
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    gen = torch.Generator().manual_seed(seed)
    names: list[str] = ["ones"]
    cols: list[Tensor] = [torch.ones(op.dim, dtype=op.dtype)]
    for i in range(num_random):
        names.append(f"random{i}")
        cols.append(_rademacher(op.dim, 1, gen, op.dtype)[:, 0])
    for i, v in enumerate(eigvecs):
        names.append(f"eigvec{i}")
        cols.append(_signs(torch.as_tensor(np.asarray(v) if not isinstance(v, Tensor) else v).to(op.dtype)))
    for nm, v in (extra or {}).items():
        names.append(nm)
        cols.append(_signs(v.detach().to(op.dtype).reshape(-1).cpu()))
    S = torch.stack(cols, 1).to(op.device)
    HS = op.matmat(S)
    vals = HS.abs().sum(0)
    best_S, best_v = S.clone(), vals.clone()
    bar = _bar(iterations, progress, "sign search (||H||_inf,1 lower bound)")
    for _ in range(iterations):
        S = _signs(HS)
        HS = op.matmat(S)
        vals = HS.abs().sum(0)
        better = vals > best_v
        best_S[:, better], best_v[better] = S[:, better], vals[better]
        bar.update(1)
        if not better.any():
            break
    bar.close()
    k = int(best_v.argmax())
    src = names[k].rstrip("0123456789") if names[k].startswith(("random", "eigvec")) else names[k]
    return Inf1LowerBound(
        float(best_v[k]), best_S[:, k].cpu(), src, {n: float(v) for n, v in zip(names, best_v)}
    )


# ------------------------------------------------------------------------------------------
# gradient density
# ------------------------------------------------------------------------------------------
def gradient_density(model: nn.Module, loss_fn: LossFn, data: Any, params: Sequence[Tensor] | None = None) -> float:
    """``phi(grad f)`` [BPL20, Eq. 30] of the full gradient of the average loss over ``data``."""
    _, g = HessianOperator(model, loss_fn, data, params).gradient()
    return density(g)


def density_along_training(
    model: nn.Module,
    loss_fn: LossFn,
    train_batches: Iterable[tuple[Any, Any]],
    optimizer: torch.optim.Optimizer,
    steps: int,
    *,
    eval_data: Any,
    every: int = 10,
    progress: bool = False,
) -> list[tuple[int, float, float]]:
    """Train ``steps`` steps and record ``(step, loss, phi(grad f))`` every ``every`` steps.

    The density is that of the *full* gradient over ``eval_data`` (not of the mini-batch
    gradient), at steps ``0, every, 2 every, ...`` and at the end.
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an integer >= 1, got {every!r}")
    op = HessianOperator(model, loss_fn, eval_data)
    out: list[tuple[int, float, float]] = []

    def record(t: int) -> None:
        loss, g = op.gradient()
        out.append((t, loss, density(g) if float(g.abs().max()) > 0 else math.nan))

    it = iter(train_batches)
    bar = _bar(steps, progress, "training (density along the way)")
    record(0)
    for t in range(1, steps + 1):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(train_batches)
            x, y = next(it)
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
        bar.update(1)
        if t % every == 0 or t == steps:
            record(t)
    bar.close()
    return out


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return _NoBar()
    return tqdm(total=total, desc=desc, leave=False)
