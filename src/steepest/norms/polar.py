"""The polar factor ``U V^T`` of a matrix: Newton-Schulz (Muon's) and the SVD (the reference)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from steepest.backend import policy as _policy
from steepest.backend.ops import is_dtensor

__all__ = ["NS_COEFFICIENTS", "NS_EPS", "NS_STEPS", "newton_schulz", "polar_svd"]

#: Newton-Schulz quintic coefficients and step count of ``torch.optim.Muon`` (Jordan's Muon).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
SHAPE_SCALES = ("none", "shape")
_NS_DTYPES = {"auto": None, "float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def _as_matrix(x: Tensor, transpose: bool = False) -> Tensor:
    """The matrix view of a parameter: ``out x rest`` (conv kernels flattened, as Jordan's Muon
    and Scion do); a vector is one column ``n x 1``, a scalar ``1 x 1``."""
    if x.dim() == 0:
        m = x.reshape(1, 1)
    elif x.dim() == 1:
        m = x.reshape(-1, 1)
    else:
        m = x.reshape(x.shape[0], math.prod(x.shape[1:]))
    return m.T if transpose else m


def newton_schulz(
    g: Tensor,
    coefficients: Sequence[float] = NS_COEFFICIENTS,
    steps: int = NS_STEPS,
    eps: float = NS_EPS,
    dtype: torch.dtype | None = None,
    *,
    overwrite: bool = False,
) -> Tensor:
    """Approximate polar factor ``U V^T`` of a matrix by the Newton-Schulz quintic iteration.

    ``X_0 = G / max(||G||_F, eps)``, then ``steps`` times ``A = X X^T``,
    ``X <- a X + (b A + c A^2) X`` (torch/optim/_muon.py, Jordan's Muon), on the wide
    orientation (``X^T`` if rows > cols, which costs fewer flops). The same operations in the same
    order as ``torch.optim.Muon``, so with ``dtype=torch.bfloat16`` the result equals torch's.
    The default coefficients do not converge to ``U V^T`` but to ``U S' V^T`` with ``S'`` roughly
    in [0.7, 1.2] (by design: a steep slope at 0); a zero matrix maps to zero. Returns ``dtype``
    (default: ``g.dtype``).

    Memory (eager): X (``m x n``, ``m <= n``), ``A`` and ``B = b A + c A^2`` (``m x m`` each),
    reused across iterations. A product cannot write into its own input, but column ``j`` of
    ``a X + B X`` needs column ``j`` of ``X`` alone, so on CPU in float32/64 X is updated in place
    a column block at a time, through ``A``'s storage once ``B`` is made (a square X swaps with
    it): peak ``1 + 2m/n`` times X's bytes. In bfloat16 and on accelerators (where blocked GEMMs
    or their launches cost time) and for an X of at most one stream chunk, the new X goes into a
    second buffer instead (``2 + 2m/n``; a square X still swaps with A: 3). ``overwrite=True``: ``g`` is the caller's temporary
    and becomes X (no copy).
    """
    if g.dim() != 2:
        raise ValueError(f"newton_schulz needs a 2-D matrix, got shape {tuple(g.shape)}")
    if len(coefficients) != 3:
        raise ValueError(f"coefficients must be three numbers (a, b, c), got {coefficients!r}")
    a, b, c = (float(v) for v in coefficients)
    x = g.to(dtype) if dtype is not None else g
    owned = overwrite or x is not g  # a converted copy is ours too
    wide = g.size(0) > g.size(1)
    if wide:
        x = x.T
    norm = x.norm().clamp(min=eps)
    x = x.div_(norm) if owned else x / norm
    if _policy.compiling() or is_dtensor(x) or x.numel() == 0:
        # Compiled, inductor plans the buffers itself (and out= into swapped buffers would guard
        # on storages); a DTensor has no out= matmuls. The plain form, torch's.
        for _ in range(steps):
            gram = x @ x.T
            update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.addmm(x, update, x, beta=a)
        return x.T if wide else x
    m, n = x.shape
    gram, update = x.new_empty(m, m), x.new_empty(m, m)
    chunk = _policy.stream_chunk()
    if m == n:
        # The new X goes into A's storage (consumed once B is made); the old X's takes the next A.
        for _ in range(steps):
            torch.mm(x, x.T, out=gram)
            torch.addmm(gram, gram, gram, beta=b, alpha=c, out=update)
            torch.addmm(x, update, x, beta=a, out=gram)
            x, gram = gram, (x if x.is_contiguous() else x.new_empty(m, m))
        return x
    if not (m * n > chunk and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)):
        # bfloat16 kernels and accelerators (a launch per block), or an X of at most one chunk:
        # blocks would cost time, so the new X goes into a second buffer, and the two swap.
        spare = x.new_empty(m, n)
        for _ in range(steps):
            torch.mm(x, x.T, out=gram)
            torch.addmm(gram, gram, gram, beta=b, alpha=c, out=update)
            torch.addmm(x, update, x, beta=a, out=spare)
            # The old X is dropped here (no name keeps it) unless laid out for the next one.
            x, spare = spare, (x if x.is_contiguous() else None)
            if spare is None:
                spare = x.new_empty(m, n)
        return x.T if wide else x
    # On CPU in float32/64, where blocked GEMMs cost what one does (benchmarks/spectral.py):
    # in place, a block of columns at a time (of X^T's rows in the tall case, the input's own
    # layout, where column blocks of X were slower), through A's storage or one chunk of scratch.
    width = min(n, max(m, chunk // max(m, 1)))  # at least one chunk per block: little Python overhead
    flat = x.new_empty(m * width) if width > m else gram.view(-1)
    rows_of_xt = x.T.is_contiguous()
    for _ in range(steps):
        torch.mm(x, x.T, out=gram)
        torch.addmm(gram, gram, gram, beta=b, alpha=c, out=update)
        if rows_of_xt:
            xt, ut = x.T, update.T
            for j in range(0, n, width):
                rows = xt[j : j + width]
                tmp = flat[: m * rows.size(0)].view(rows.size(0), m)
                torch.addmm(rows, rows, ut, beta=a, out=tmp)
                rows.copy_(tmp)
        else:
            for j in range(0, n, width):
                block = x[:, j : j + width]
                tmp = flat[: m * block.size(1)].view(m, block.size(1))
                torch.addmm(block, update, block, beta=a, out=tmp)
                block.copy_(tmp)
    return x.T if wide else x


def polar_svd(g: Tensor) -> tuple[Tensor, Tensor]:
    """``(U V^T, ||G||_nuc)`` of a matrix by the SVD ``G = U S V^T`` (the reference polar).

    Directions of (numerically) zero singular values are dropped (threshold
    ``max(m, n) * eps(dtype) * sigma_max``, as ``torch.linalg.pinv``), so a zero or
    rank-deficient matrix gets the minimal factor (zero for a zero matrix).
    """
    if g.numel() == 0:
        return torch.zeros_like(g), g.new_zeros(())
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    tol = max(g.shape) * torch.finfo(s.dtype).eps * s.max()
    keep = (s > tol).to(s.dtype)
    if _policy.compiling() or is_dtensor(g):
        return (u * keep) @ vh, s.sum()
    # U V^T without a third matrix: the product has V^T's shape if rows <= cols (column block j
    # of U V^T needs column block j of V^T alone), else U's (row block i needs U's row block i),
    # so it is written over that factor a block at a time through one chunk of scratch.
    u.mul_(keep)
    rows, cols = g.shape
    chunk = _policy.stream_chunk()
    if rows <= cols:
        width = max(1, chunk // rows)
        scratch = vh.new_empty(rows * min(width, cols))
        for j in range(0, cols, width):
            block = vh[:, j : j + width]
            block.copy_(torch.mm(u, block, out=scratch[: rows * block.size(1)].view(rows, -1)))
        return vh, s.sum()
    height = max(1, chunk // cols)
    scratch = u.new_empty(min(height, rows) * cols)
    for i in range(0, rows, height):
        block = u[i : i + height]
        block.copy_(torch.mm(block, vh, out=scratch[: block.size(0) * cols].view(-1, cols)))
    return u, s.sum()
