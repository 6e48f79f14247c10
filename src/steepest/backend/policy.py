"""Every path heuristic and chunk constant of the execution layer, in one module.

The optimizers and norms never test the device, the tensor sizes or whether ``torch.compile``
is tracing: they ask the functions here (through :class:`steepest.backend.Backend`), so that a
path is decided in one place. Tests monkeypatch the constants and predicates of this module to
reach every path at small sizes; everything here reads them at call time.

The figures behind the constants are in docs/performance.md (issue 12).
"""

from __future__ import annotations

import math
from operator import attrgetter

import torch
from torch import Tensor

from steepest.backend.ops import BatchedOps, ForeachOps, LoopOps, _stack, any_dtensor

# Elements per chunk when the loop path streams an elementwise update (StepOptimizer._streams):
# 64K float32 = 256 KiB of temporaries per chunk beyond one large tensor's own.
_STREAM_CHUNK = 1 << 16
# The same for the foreach path (one fused kernel per op and chunk), where a chunk holds up to
# the largest parameter or this many elements, whichever is more: large enough that the per-chunk
# calls are amortized (4 MiB of float32 on CPU; 64 MiB on accelerators, where a kernel launch
# costs as much as moving ~10 MB), small enough that a chunk's temporaries stay near one
# parameter-sized tensor instead of one per parameter.
_FOREACH_CHUNK = 1 << 20
_FOREACH_CHUNK_ACCELERATOR = 1 << 24
# Mean elements per tensor below which the loop path runs fused (foreach) kernels a chunk at a
# time: per-op Python/dispatch overhead (~3-5 us per op and tensor) then outweighs the work
# (1,000 tensors of 1,000 elements: the per-tensor loop was ~2x torch's SGD per byte).
_SMALL = 1 << 14


# Per-tensor predicates as C-level passes (map of an attrgetter): with 1,000 small tensors a
# Python generator over the list costs ~50-100 us a pass, several passes a step.
_IS_CPU = attrgetter("is_cpu")


def _all_cpu(xs: list[Tensor]) -> bool:
    """Whether every tensor of ``xs`` is on the CPU (eager: one C-level pass; traced by
    torch.compile, which cannot call an attrgetter without a graph break: a generator)."""
    if torch.compiler.is_compiling():
        return all(x.is_cpu for x in xs)
    return all(map(_IS_CPU, xs))


_any_dtensor = any_dtensor


def compiling() -> bool:
    """Whether ``torch.compile`` is tracing (the one place the package asks)."""
    return torch.compiler.is_compiling()


def nonfinite_policy(policy: str | None, params: list[Tensor]) -> str:
    """A group's ``nonfinite`` setting resolved: ``None`` (the default) is ``"raise"`` for an
    eager step on CPU tensors and ``"ignore"`` elsewhere (a device check would cost a host
    sync per step; a traced step cannot raise data-dependently), docs/optimizers.md."""
    if policy is not None:
        return policy
    return "ignore" if compiling() or not _all_cpu(params) else "raise"


def default_foreach(params: list[Tensor]) -> bool:
    """``foreach=None``: on CPU the per-tensor loop is usually faster (docs/design.md); foreach pays
    off on GPUs."""
    return bool(params) and all(p.device.type == "cuda" for p in params)


def reduction_ops(xs: list[Tensor]) -> type[LoopOps]:
    """The list ops of a norm's reductions outside an update's backend (:meth:`Norm.plan`): the
    device's default (the two agree on CPU, where :func:`norms` picks the same kernels). The
    first tensor tells (a list's tensors share a device; no Python pass over 1,000 tensors)."""
    return ForeachOps if xs and xs[0].device.type == "cuda" else LoopOps


def stream_chunk() -> int:
    """Elements per streamed chunk, read at call time (tests shrink it)."""
    return int(_STREAM_CHUNK)


def _chunk_limit(params: list[Tensor], foreach: bool) -> int:
    """Elements per streamed chunk (see ``_STREAM_CHUNK`` and ``_FOREACH_CHUNK``)."""
    if not foreach:
        return _STREAM_CHUNK
    # A group's tensors share a device (foreach kernels need that): the first one tells.
    floor = _FOREACH_CHUNK if not params or params[0].device.type == "cpu" else _FOREACH_CHUNK_ACCELERATOR
    return max([floor] + [p.numel() for p in params])


def _chunks(params: list[Tensor], limit: int) -> list[slice]:
    """Consecutive slices of ``params`` of at most ``limit`` elements each (a larger tensor alone)."""
    if sum(map(Tensor.numel, params)) <= limit:  # one chunk: no Python pass over the tensors
        return [slice(0, len(params))] if params else []
    out, start, size = [], 0, 0
    for k, p in enumerate(params):
        n = p.numel()
        if size and size + n > limit:
            out.append(slice(start, k))
            start, size = k, 0
        size += n
    if start < len(params):
        out.append(slice(start, len(params)))
    return out


def _small_chunks(params: list[Tensor], foreach: bool, temps: int) -> list[slice]:
    """Chunks of small tensors for fused kernels: the streaming granularity on the loop path, and
    the foreach chunks on the foreach path (fewer calls) where the map needs one temporary per
    tensor (two, the l_p map's |x|^a and sign(x), would exceed that path's budget)."""
    return _chunks(params, _FOREACH_CHUNK if foreach and temps == 1 else _STREAM_CHUNK)


def _per_tensor_ok(xs: list[Tensor]) -> bool:
    """Whether a per-tensor loop costs the foreach path nothing: on CPU the ``_foreach_*`` ops
    are such a loop themselves, and one tensor is one kernel either way. On accelerators a
    loop would launch a kernel per tensor, so there the fused ops (and their temporaries) stay."""
    return len(xs) <= 1 or _all_cpu(xs)


def _small_many(xs: list[Tensor]) -> bool:
    """Whether ``xs`` are many small plain CPU tensors, in eager mode (see ``_SMALL``)."""
    return (len(xs) > 1 and sum(map(Tensor.numel, xs)) < _SMALL * len(xs)
            and not torch.compiler.is_compiling() and _all_cpu(xs) and not _any_dtensor(xs))


def _loop_each(xs: list[Tensor], ops: type[LoopOps]) -> bool:
    """Whether to write an elementwise result tensor by tensor (no extra temporary)."""
    return not ops.foreach or len(xs) <= 1 or (not ops.batched and _per_tensor_ok(xs))


def _lean_ok() -> bool:
    """Whether an elementwise update may take the eager per-tensor loop that passes lr as
    ``alpha=`` (inductor would freeze it; see ``ops._compiling``)."""
    return not torch.compiler.is_compiling()


def eager_fused_ok(params: list[Tensor]) -> bool:
    """Whether hand-fused eager kernels (``addcdiv_(value=...)``, ``out=``) may run on these
    tensors: not while compiling (see ``ops._compiling``), not on DTensors (their reductions and
    ``out=`` arguments need the generic ops)."""
    if torch.compiler.is_compiling():
        return False
    return not _any_dtensor(params)


def chunk_ops(foreach: bool, xs: list[Tensor]) -> type[LoopOps]:
    """The list ops of an eager elementwise update of one stream chunk of tensors.

    The loop path of a CPU chunk with several tensors (small ones: StepOptimizer streams a large
    tensor alone) runs the ``torch._foreach_*`` kernels: on CPU those are the per-tensor ATen
    kernels called in a C++ loop, so the numbers are bitwise the loop's (tests/optim/test_noise.py
    checks it), without the Python and dispatch overhead of ~3-5 us per op and tensor that
    dominates small tensors (1,000 tensors of 1K floats)."""
    if foreach or (len(xs) > 1 and _all_cpu(xs)):
        return ForeachOps
    return LoopOps


def norms(xs: list[Tensor], ord: float, ops: type[LoopOps]) -> Tensor:
    """``ops.norms(xs, ord)``, on CPU the same on both paths: for many small tensors the foreach
    kernel for ord 1 and 2 (no temporaries, no Python per tensor), for large ones the loop's
    (``|x|.sum()`` for ord 1 ran up to 2x faster than the foreach kernel on 100K elements)."""
    if ord in (1.0, 2.0) and _small_many(xs):
        return ForeachOps.norms(xs, ord)
    if ops.foreach and len(xs) > 1 and _per_tensor_ok(xs):
        return LoopOps.norms(xs, ord)
    return ops.norms(xs, ord)


def absmax(xs: list[Tensor], ops: type[LoopOps]) -> Tensor:
    """``ops.norms(xs, inf)`` (per-tensor max|x|, 0 for empty tensors), the same numbers faster on
    the CPU: ``max(max x, -min x)`` from one ``aminmax`` pass, where ``vector_norm(x, inf)`` ran
    ~4-6x slower than a pass (measured on 100K-element float32 tensors). NaN propagates as in
    ``vector_norm``. Elsewhere (accelerators, DTensors, compiling) ``ops.norms`` as before."""
    if (not xs or torch.compiler.is_compiling() or (ops.foreach and not _per_tensor_ok(xs))
            or not _all_cpu(xs) or _any_dtensor(xs) or any(map(Tensor.is_complex, xs))):
        return ops.norms(xs, math.inf)
    lo, hi = [], []
    for x in xs:
        if x.numel():
            a, b = torch.aminmax(x)
        else:
            a = b = x.new_zeros(())
        lo.append(a)
        hi.append(b)
    return torch.maximum(_stack(hi), -_stack(lo))


def absargmax(xs: list[Tensor]) -> tuple[Tensor, list[Tensor | None]]:
    """Per-tensor ``max|x|`` (stacked, 0 for an empty tensor) and each tensor's first argmax of
    ``|x|`` in flat order as a 1-element int64 tensor (``None`` for an empty tensor), with no host
    read: the on-device choice of l1's coordinate (:meth:`steepest.norms.L1.coordinates`).

    Eager (accelerators): ``argmax(|x|)`` per tensor, as before. While compiling, a two-stage
    reduction (:func:`_absargmax_blocks`): inductor's C++ argmax carries an index per lane
    (``argmax_combine_vec``, ~1 ns per element), and in a graph of 100 tensors it did not fuse
    with the max, so every tensor was read twice (CoordinateDescent compiled: 4.4x its eager
    step, issue 18). The index is the same: first maximal, NaN as the maximum
    (``torch.argmax``)."""
    if not torch.compiler.is_compiling():
        maxes: list[Tensor] = []
        idx: list[Tensor | None] = []
        for x in xs:
            if x.numel():
                a = x.reshape(-1).abs()
                j = torch.argmax(a).reshape(1)
                maxes.append(a.gather(0, j).reshape(()))
                idx.append(j)
            else:
                maxes.append(x.new_zeros((), dtype=x.real.dtype if x.is_complex() else x.dtype))
                idx.append(None)
        return _stack(maxes), idx
    out = [_absargmax_blocks(x.reshape(-1)) if x.numel() else (x.new_zeros(()), None) for x in xs]
    return _stack([m for m, _ in out]), [j for _, j in out]


# Block length of the compiled two-stage argmax (absargmax): a multiple of the widest vector
# (16 floats), long enough that a block's horizontal max is amortized, short enough that the
# second stage (the winning block read again) is a rounding error beside the pass over the tensor.
_ARGMAX_BLOCK = 1024


def _first_equal(a: Tensor, m: Tensor) -> Tensor:
    """The first index of the 1-d ``a`` (values ``|x|``) equal to ``m``, or holding a NaN (when
    ``m``, a max of ``a``, is NaN); ``a.numel()`` if none: a vectorized compare and integer min,
    where inductor's argmax costs ~1 ns per element on CPU."""
    hit = (a == m) | (a != a)
    return torch.where(hit, torch.arange(a.numel(), device=a.device), a.numel()).amin()


def _absargmax_blocks(flat: Tensor) -> tuple[Tensor, Tensor]:
    """``(max|x|, first argmax of |x|)`` of a 1-d tensor as a two-stage reduction: the max of
    every block of :data:`_ARGMAX_BLOCK` elements (one vectorized read of x; the tail is a last,
    shorter block), the first block holding the largest of them (an argmax over the few block
    maxima), then the first element of that block equal to it (one block read again). First
    maximal block, then first maximal element in it: the first maximal element of x (NaN counts
    as the maximum at every stage, as in ``torch.argmax`` and ``amax``). A tensor of at most one
    block takes its max and the first element equal to it; one of a symbolic size
    (``dynamic=True``: a branch on it would be a guard), or off the CPU (the C++ argmax is the
    CPU's problem; unmeasured on GPUs), ``argmax`` as is."""
    n, c = flat.numel(), int(_ARGMAX_BLOCK)
    if not isinstance(n, int) or flat.device.type != "cpu":
        a = flat.abs()
        j = torch.argmax(a).reshape(1)
        return a.gather(0, j).reshape(()), j
    if n <= c:
        a = flat.abs()
        m = a.amax()
        return m, _first_equal(a, m).reshape(1)
    rows = n // c
    head = flat[: rows * c].view(rows, c)
    blocks = head.abs().amax(dim=1)
    tail = flat[rows * c:].abs() if rows * c < n else None
    if tail is not None:
        blocks = torch.cat([blocks, tail.amax().reshape(1)])
    b = torch.argmax(blocks)
    m = blocks.gather(0, b.reshape(1)).reshape(())
    # the winning row, read in place (index_select: a vectorized load at a computed offset; a
    # tensor subscript would break the graph); the tail's own index is taken where it wins
    r = b.clamp(max=rows - 1)
    j = r * c + _first_equal(head.index_select(0, r.reshape(1)).reshape(-1).abs(), m)
    if tail is not None:
        j = torch.where(b == rows, rows * c + _first_equal(tail, m), j)
    return m, j.reshape(1)


def copysign_(mags: list[Tensor], xs: list[Tensor], ops: type[LoopOps], owned: bool = False) -> list[Tensor]:
    """``mags * sign(xs)`` for ``mags >= 0``, in place: copysign needs no sign temporary. The
    same numbers: the product with sign(x) = +-1 is exact, and 0 stays 0 (-0.0 compares equal).
    ``owned``: ``xs`` are the caller's temporaries (their sign may be taken in place)."""
    if _loop_each(xs, ops):
        for m, x in zip(mags, xs):
            m.copysign_(x)
        return mags
    # no foreach copysign: one sign temporary (fused kernels), or none where xs are ours
    return ops.mul_(mags, ops.sign_(xs) if owned else ops.sign(xs))


def div_into_(xs: list[Tensor], dens: list[Tensor], ops: type[LoopOps]) -> list[Tensor]:
    """``xs[i] / dens[i]`` written into ``dens`` (owned temporaries) tensor by tensor where that
    costs nothing (one temporary instead of two), else out of place with fused kernels."""
    if _loop_each(xs, ops):
        for x, d in zip(xs, dens):
            torch.div(x, d, out=d)
        return dens
    return ops.div(xs, dens)


def on_host(xs: list[Tensor]) -> bool:
    """Whether a per-coordinate choice may read values back to the host: eager, CPU, no DTensor
    (elsewhere a host read is a device sync, and compiled a graph break with a guard on it)."""
    return not torch.compiler.is_compiling() and _all_cpu(xs)


__all__ = [
    "BatchedOps",
    "absargmax",
    "absmax",
    "chunk_ops",
    "compiling",
    "copysign_",
    "default_foreach",
    "div_into_",
    "eager_fused_ok",
    "norms",
    "on_host",
    "stream_chunk",
]
