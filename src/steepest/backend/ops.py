"""The list ops every ``steepest`` update is written against (the execution layer's kernels).

An update is written once against the small list-of-tensors interface of :class:`LoopOps`: the
per-tensor loop (the reference); :class:`ForeachOps` runs the same ops as ``torch._foreach_*``
kernels, and :class:`BatchedOps` is those kernels for the loop path's chunks of small CPU
tensors. Tests check they agree in float64. Which one runs is decided in
:mod:`steepest.backend.policy` alone.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from typing import TypeGuard

    from torch.distributed.tensor import DTensor


def _compiling() -> bool:
    """Whether torch.compile is tracing. Then the loop ops below pass step-dependent scalars as
    multiplications, not as ``alpha=``/``value=``/``weight`` arguments: inductor freezes a
    changing Python float given there at the value it first saw as symbolic (a PyTorch bug;
    compiled ``torch.addcmul(v, v, v, value=t) * (t + 1)`` gives 12 instead of 16 at t = 3, and
    ``add_(y, alpha=t)``, ``lerp_(y, t)``, ``clamp_min_(t)`` do the same). Inductor fuses the
    products, so the unfused form costs no temporaries there."""
    return torch.compiler.is_compiling()


def _once(cs: list[Any], xs: list[Tensor]) -> list[Any]:
    """Per-tensor scalars of an update while compiling, each computed once instead of once per
    element (eager: ``cs`` as given).

    Compiled, a step-dependent coefficient is a 0-d tensor expression (``-lr / (1 - beta**k)``,
    see :meth:`LoopOps.count`), and inductor inlines a 0-d pointwise expression into every
    kernel that reads it: the C++ kernel then evaluated it, a double-precision ``pow`` among
    others, once per 8 floats, and compiled MSGD/MSVAG steps ran 2.6x/5.5x slower than SGD's
    (issue 18). A stack of two or more tensors is a buffer on CPU (inductor's ``ConcatKernel``):
    each coefficient is written once, and the update kernels load it. (A lone scalar is stacked
    with itself, since a one-input stack is a copy that inductor inlines again.) Only scalars on
    the tensors' device are stacked (a CPU step counter of a CUDA tensor stays as it is)."""
    if not cs or not all(isinstance(c, Tensor) and c.dim() == 0 for c in cs):
        return cs
    if not xs or any(c.device != xs[0].device for c in cs):
        return cs
    return list(_stack(cs if len(cs) > 1 else [cs[0], cs[0]]).unbind(0))[: len(cs)]


def _once1(c: Any, xs: list[Tensor]) -> Any:
    """:func:`_once` of one scalar shared by all tensors."""
    return _once([c], xs)[0] if isinstance(c, Tensor) else c


class LoopOps:
    """The per-tensor loop (the reference backend's list ops)."""

    foreach = False
    #: Whether a chunk of tensors runs fused (foreach) kernels throughout (see BatchedOps).
    batched = False

    @staticmethod
    def norms(xs: list[Tensor], ord: float) -> Tensor:
        """Per-tensor vector norms, stacked into a 1-d tensor (0 for empty tensors)."""
        if any_dtensor(xs):
            return _stack([_sharded_norm(x, ord) for x in xs])
        if ord in (1.0, 2.0) and _compiling():
            return _stack([_compiled_norm(x, ord) for x in xs])
        if ord == 1.0:  # abs().sum() is ~30% faster than vector_norm(x, 1) on CPU
            return _stack([x.abs().sum() for x in xs])
        if ord == 2.0:
            out = [torch.linalg.vector_norm(x) if x.numel() else x.new_zeros(()) for x in xs]
            return _rescue_l2(xs, _stack(out))
        if math.isinf(ord):
            out = [torch.linalg.vector_norm(x, ord) if x.numel() else x.new_zeros(()) for x in xs]
            return _stack(out)
        # General l_p: divide by max|x| first, since sum |x|^p overflows for large p or |x|.
        out = []
        for x in xs:
            m = x.abs().amax() if x.numel() else x.new_zeros(())
            out.append(m * torch.linalg.vector_norm(x / torch.where(m > 0, m, 1.0), ord))
        return _stack(out)

    @staticmethod
    def sign(xs: list[Tensor]) -> list[Tensor]:
        return [torch.sign(x) for x in xs]

    @staticmethod
    def abs(xs: list[Tensor]) -> list[Tensor]:
        return [torch.abs(x) for x in xs]

    @staticmethod
    def pow_(xs: list[Tensor], e: float) -> list[Tensor]:
        for x in xs:
            x.pow_(e)
        return xs

    @staticmethod
    def add_(xs: list[Tensor], c: float) -> list[Tensor]:
        for x in xs:
            x.add_(c)
        return xs

    @staticmethod
    def mul_(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
        for x, y in zip(xs, ys):
            x.mul_(y)
        return xs

    @staticmethod
    def div_(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
        for x, y in zip(xs, ys):
            x.div_(y)
        return xs

    @staticmethod
    def scale(xs: list[Tensor], coefs: Tensor) -> list[Tensor]:
        """Out of place: ``xs[i] * coefs[i]`` (coefs a 1-d tensor)."""
        return [x * c for x, c in zip(xs, coefs.unbind(0))]

    @staticmethod
    def div(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
        """Out of place: ``xs[i] / ys[i]``."""
        return [x / y for x, y in zip(xs, ys)]

    @staticmethod
    def mul_scalar_(xs: list[Tensor], c: float) -> list[Tensor]:
        if _compiling():
            c = _once1(c, xs)
        for x in xs:
            x.mul_(c)
        return xs

    @staticmethod
    def axpy_(xs: list[Tensor], ys: list[Tensor], alpha: float) -> list[Tensor]:
        """xs += alpha * ys."""
        if _compiling():
            alpha = _once1(alpha, xs)
            for x, y in zip(xs, ys):
                x.add_(y * alpha)
            return xs
        for x, y in zip(xs, ys):
            x.add_(y, alpha=alpha)
        return xs

    @staticmethod
    def lerp_(xs: list[Tensor], ys: list[Tensor], w: float) -> list[Tensor]:
        """xs <- xs + w (ys - xs) = (1 - w) xs + w ys."""
        if _compiling():
            w = _once1(w, xs)
            for x, y in zip(xs, ys):
                x.add_((y - x) * w)
            return xs
        for x, y in zip(xs, ys):
            x.lerp_(y, w)
        return xs

    @staticmethod
    def lerp(xs: list[Tensor], ys: list[Tensor], w: float) -> list[Tensor]:
        if _compiling():
            w = _once1(w, xs)
            return [x + (y - x) * w for x, y in zip(xs, ys)]
        return [torch.lerp(x, y, w) for x, y in zip(xs, ys)]

    @staticmethod
    def count(steps: list[Tensor]) -> list[float]:
        """Increment the step counters; return their new values as floats.

        While compiling: as float64 0-d tensors instead. ``float()`` of a tensor breaks the
        graph, and the floats a resumed graph receives become symbolic scalars that inductor
        mishandles (see :func:`_compiling`); every consumer is written for both."""
        for s in steps:
            s.add_(1.0)
        return _step_values(steps)

    @staticmethod
    def addcmul_(xs: list[Tensor], ys: list[Tensor], zs: list[Tensor], value: float) -> list[Tensor]:
        if _compiling():
            value = _once1(value, xs)
            for x, y, z in zip(xs, ys, zs):
                x.add_(y * z * value)
            return xs
        for x, y, z in zip(xs, ys, zs):
            x.addcmul_(y, z, value=value)
        return xs

    @staticmethod
    def addcmul(xs: list[Tensor], ys: list[Tensor], zs: list[Tensor], values: list[float]) -> list[Tensor]:
        """Out of place: ``xs[i] + values[i] * ys[i] * zs[i]``.

        Not ``torch.addcmul(..., value=v)``: inductor freezes a changing Python float passed as
        ``value`` at its first value (a PyTorch bug: compiled ``torch.addcmul(v, v, v, value=t)
        * (t + 1)`` gives 12 instead of 16 at t = 3), so a compiled SVAG/MSVAG step would use
        the first step's bias correction forever. Same one temporary, same result in eager."""
        if _compiling():
            values = _once(values, xs)
        return [torch.mul(y, z).mul_(v).add_(x) for x, y, z, v in zip(xs, ys, zs, values)]

    @staticmethod
    def maximum_(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
        for x, y in zip(xs, ys):
            torch.maximum(x, y, out=x)
        return xs

    @staticmethod
    def rsqrt_(xs: list[Tensor]) -> list[Tensor]:
        for x in xs:
            x.rsqrt_()
        return xs

    @staticmethod
    def mul(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
        return [x * y for x, y in zip(xs, ys)]

    @staticmethod
    def mul_scalars(xs: list[Tensor], cs: list[float]) -> list[Tensor]:
        if _compiling():
            cs = _once(cs, xs)
        return [x * c for x, c in zip(xs, cs)]

    @staticmethod
    def mul_scalars_(xs: list[Tensor], cs: list[float]) -> list[Tensor]:
        if _compiling():
            cs = _once(cs, xs)
        for x, c in zip(xs, cs):
            x.mul_(c)
        return xs

    @staticmethod
    def div_scalars_(xs: list[Tensor], cs: list[float]) -> list[Tensor]:
        if _compiling():
            cs = _once(cs, xs)
        for x, c in zip(xs, cs):
            x.div_(c)
        return xs

    @staticmethod
    def sub_(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
        for x, y in zip(xs, ys):
            x.sub_(y)
        return xs

    @staticmethod
    def clamp_min_(xs: list[Tensor], cs: list[float]) -> list[Tensor]:
        for x, c in zip(xs, cs):  # cs are dtype constants (tiny): no compiled-scalar issue
            x.clamp_min_(c)
        return xs

    @staticmethod
    def sqrt(xs: list[Tensor]) -> list[Tensor]:
        return [torch.sqrt(x) for x in xs]

    @staticmethod
    def sqrt_(xs: list[Tensor]) -> list[Tensor]:
        for x in xs:
            x.sqrt_()
        return xs

    @staticmethod
    def abs_(xs: list[Tensor]) -> list[Tensor]:
        for x in xs:
            x.abs_()
        return xs

    @staticmethod
    def axpy_scalars_(xs: list[Tensor], ys: list[Tensor], alphas: list[float]) -> list[Tensor]:
        """xs[i] += alphas[i] * ys[i]."""
        if _compiling():
            alphas = _once(alphas, xs)
            for x, y, a in zip(xs, ys, alphas):
                x.add_(y * a)
            return xs
        for x, y, a in zip(xs, ys, alphas):
            x.add_(y, alpha=a)
        return xs

    @staticmethod
    def add_scalars_(xs: list[Tensor], cs: list[float]) -> list[Tensor]:
        """xs[i] += cs[i]."""
        if _compiling():
            cs = _once(cs, xs)
        for x, c in zip(xs, cs):
            x.add_(c)
        return xs

    @staticmethod
    def addcdiv_scalars_(xs: list[Tensor], ys: list[Tensor], zs: list[Tensor], cs: list[float]) -> list[Tensor]:
        """xs[i] += cs[i] * ys[i] / zs[i], one pass (compiled: the product form, see _compiling)."""
        if _compiling():
            cs = _once(cs, xs)
            for x, y, z, c in zip(xs, ys, zs, cs):
                x.add_(y / z * c)
            return xs
        for x, y, z, c in zip(xs, ys, zs, cs):
            x.addcdiv_(y, z, value=c)
        return xs

    @staticmethod
    def addcmul_scalars_(xs: list[Tensor], ys: list[Tensor], zs: list[Tensor], cs: list[float]) -> list[Tensor]:
        """xs[i] += cs[i] * ys[i] * zs[i], one pass (compiled: the product form, see _compiling)."""
        if _compiling():
            cs = _once(cs, xs)
            for x, y, z, c in zip(xs, ys, zs, cs):
                x.add_(y * z * c)
            return xs
        for x, y, z, c in zip(xs, ys, zs, cs):
            x.addcmul_(y, z, value=c)
        return xs

    @staticmethod
    def addcmul_fused(xs: list[Tensor], ys: list[Tensor], zs: list[Tensor], cs: list[float]) -> list[Tensor]:
        """Out of place xs[i] + cs[i] * ys[i] * zs[i] in one pass (eager only: ``value=`` takes a
        Python float, which inductor would freeze; :meth:`addcmul` is the compile-safe form)."""
        return [torch.addcmul(x, y, z, value=c) for x, y, z, c in zip(xs, ys, zs, cs)]

    @staticmethod
    def reciprocal_(xs: list[Tensor]) -> list[Tensor]:
        for x in xs:
            x.reciprocal_()
        return xs

    @staticmethod
    def nan_to_inf_(xs: list[Tensor]) -> list[Tensor]:
        """NaN -> +inf in place (infinities kept). Compiled, as ``where(x != x)``: inductor's C++
        code for ``isnan``/``nan_to_num`` is a scalar loop per 8 floats, which made a fused
        SVAG/MSVAG step ~15x slower (issue 18); the self-comparison is one vector compare."""
        if _compiling():
            for x in xs:
                x.masked_fill_(x != x, math.inf)
            return xs
        for x in xs:
            x.nan_to_num_(nan=math.inf, posinf=math.inf, neginf=-math.inf)
        return xs

    @staticmethod
    def sign_(xs: list[Tensor]) -> list[Tensor]:
        for x in xs:
            x.sign_()
        return xs

    @staticmethod
    def copy_(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
        for x, y in zip(xs, ys):
            x.copy_(y)
        return xs

    @staticmethod
    def clone(xs: list[Tensor]) -> list[Tensor]:
        return [x.clone() for x in xs]

    @staticmethod
    def clamp_min_scalar_(xs: list[Tensor], c: float) -> list[Tensor]:
        for x in xs:  # c is a dtype constant (tiny): no compiled-scalar issue
            x.clamp_min_(c)
        return xs

    @staticmethod
    def addcdiv_(xs: list[Tensor], ys: list[Tensor], zs: list[Tensor], value: float) -> list[Tensor]:
        """xs += value * ys / zs."""
        if _compiling():
            value = _once1(value, xs)
            for x, y, z in zip(xs, ys, zs):
                x.add_(y / z * value)
            return xs
        for x, y, z in zip(xs, ys, zs):
            x.addcdiv_(y, z, value=value)
        return xs

    @staticmethod
    def increment_(steps: list[Tensor]) -> None:
        """Add 1 to the step counters (one kernel where the backend has one)."""
        for s in steps:
            s.add_(1.0)


class ForeachOps(LoopOps):
    """The same list ops as ``torch._foreach_*`` kernels."""

    foreach = True

    @staticmethod
    def norms(xs: list[Tensor], ord: float) -> Tensor:
        if not xs:
            return torch.zeros(0)
        if any_dtensor(xs):
            return _stack([_sharded_norm(x, ord) for x in xs])
        if ord in (1.0, 2.0) and _compiling() and xs[0].device.type == "cpu":
            # inductor writes _foreach_norm as per-tensor sums on CPU: the blocked ones instead
            return LoopOps.norms(xs, ord)
        if math.isinf(ord):  # _foreach_norm has no identity for inf on empty tensors
            nonempty = [i for i, x in enumerate(xs) if x.numel()]
            vals = iter(torch._foreach_norm([xs[i] for i in nonempty], ord) if nonempty else [])
            return _stack([next(vals) if x.numel() else x.new_zeros(()) for x in xs])
        if ord == 1.0:
            return _stack(list(torch._foreach_norm(xs, ord)))
        if ord == 2.0:
            return _rescue_l2(xs, _stack(list(torch._foreach_norm(xs, ord))))
        # General l_p: divide by max|x| first (see LoopOps.norms).
        maxes = ForeachOps.norms(xs, math.inf)
        safe = torch.where(maxes > 0, maxes, torch.ones_like(maxes))
        scaled = torch._foreach_div(xs, list(safe.unbind(0)))
        return maxes * _stack(list(torch._foreach_norm(scaled, ord)))

    @staticmethod
    def sign(xs: list[Tensor]) -> list[Tensor]:
        return list(torch._foreach_sign(xs))

    @staticmethod
    def abs(xs: list[Tensor]) -> list[Tensor]:
        return list(torch._foreach_abs(xs))

    @staticmethod
    def pow_(xs: list[Tensor], e: float) -> list[Tensor]:
        torch._foreach_pow_(xs, e)
        return xs

    @staticmethod
    def add_(xs: list[Tensor], c: float) -> list[Tensor]:
        torch._foreach_add_(xs, c)
        return xs

    @staticmethod
    def mul_(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
        torch._foreach_mul_(xs, ys)
        return xs

    @staticmethod
    def div_(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
        torch._foreach_div_(xs, ys)
        return xs

    @staticmethod
    def scale(xs: list[Tensor], coefs: Tensor) -> list[Tensor]:
        return list(torch._foreach_mul(xs, list(coefs.unbind(0))))

    @staticmethod
    def div(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
        return list(torch._foreach_div(xs, ys))

    @staticmethod
    def mul_scalar_(xs: list[Tensor], c: float) -> list[Tensor]:
        torch._foreach_mul_(xs, c)
        return xs

    @staticmethod
    def axpy_(xs: list[Tensor], ys: list[Tensor], alpha: float) -> list[Tensor]:
        torch._foreach_add_(xs, ys, alpha=alpha)
        return xs

    @staticmethod
    def lerp_(xs: list[Tensor], ys: list[Tensor], w: float) -> list[Tensor]:
        torch._foreach_lerp_(xs, ys, w)
        return xs

    @staticmethod
    def lerp(xs: list[Tensor], ys: list[Tensor], w: float) -> list[Tensor]:
        return list(torch._foreach_lerp(xs, ys, w))

    @staticmethod
    def count(steps: list[Tensor]) -> list[float]:
        torch._foreach_add_(steps, 1.0)
        return _step_values(steps)

    @staticmethod
    def addcmul_(xs: list[Tensor], ys: list[Tensor], zs: list[Tensor], value: float) -> list[Tensor]:
        torch._foreach_addcmul_(xs, ys, zs, value=value)
        return xs

    @staticmethod
    def addcmul(xs: list[Tensor], ys: list[Tensor], zs: list[Tensor], values: list[float]) -> list[Tensor]:
        if _compiling():  # values may be 0-d tensors (see LoopOps.count); inductor fuses the loop
            return LoopOps.addcmul(xs, ys, zs, values)
        return list(torch._foreach_addcmul(xs, ys, zs, values))

    @staticmethod
    def maximum_(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
        torch._foreach_maximum_(xs, ys)
        return xs

    @staticmethod
    def rsqrt_(xs: list[Tensor]) -> list[Tensor]:
        torch._foreach_rsqrt_(xs)
        return xs

    @staticmethod
    def mul(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
        return list(torch._foreach_mul(xs, ys))

    @staticmethod
    def mul_scalars(xs: list[Tensor], cs: list[float]) -> list[Tensor]:
        if _compiling():
            return LoopOps.mul_scalars(xs, cs)
        return list(torch._foreach_mul(xs, cs))

    @staticmethod
    def mul_scalars_(xs: list[Tensor], cs: list[float]) -> list[Tensor]:
        if _compiling():
            return LoopOps.mul_scalars_(xs, cs)
        torch._foreach_mul_(xs, cs)
        return xs

    @staticmethod
    def div_scalars_(xs: list[Tensor], cs: list[float]) -> list[Tensor]:
        if _compiling():
            return LoopOps.div_scalars_(xs, cs)
        torch._foreach_div_(xs, cs)
        return xs

    @staticmethod
    def sub_(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
        torch._foreach_sub_(xs, ys)
        return xs

    @staticmethod
    def clamp_min_(xs: list[Tensor], cs: list[float]) -> list[Tensor]:
        torch._foreach_clamp_min_(xs, cs)
        return xs

    @staticmethod
    def sqrt(xs: list[Tensor]) -> list[Tensor]:
        return list(torch._foreach_sqrt(xs))

    @staticmethod
    def sqrt_(xs: list[Tensor]) -> list[Tensor]:
        torch._foreach_sqrt_(xs)
        return xs

    @staticmethod
    def abs_(xs: list[Tensor]) -> list[Tensor]:
        torch._foreach_abs_(xs)
        return xs

    @staticmethod
    def axpy_scalars_(xs: list[Tensor], ys: list[Tensor], alphas: list[float]) -> list[Tensor]:
        if not alphas:
            return xs
        if _compiling():  # alphas may be 0-d tensors; inductor fuses the per-tensor loop
            return LoopOps.axpy_scalars_(xs, ys, alphas)
        # Equal alphas (the usual case: every step counter agrees) need no temporaries.
        if all(a == alphas[0] for a in alphas):
            torch._foreach_add_(xs, ys, alpha=alphas[0])
        else:
            torch._foreach_add_(xs, torch._foreach_mul(ys, alphas))
        return xs

    @staticmethod
    def add_scalars_(xs: list[Tensor], cs: list[float]) -> list[Tensor]:
        if _compiling():
            return LoopOps.add_scalars_(xs, cs)
        torch._foreach_add_(xs, cs)
        return xs

    @staticmethod
    def addcdiv_scalars_(xs: list[Tensor], ys: list[Tensor], zs: list[Tensor], cs: list[float]) -> list[Tensor]:
        if _compiling():
            return LoopOps.addcdiv_scalars_(xs, ys, zs, cs)
        torch._foreach_addcdiv_(xs, ys, zs, cs)
        return xs

    @staticmethod
    def addcmul_scalars_(xs: list[Tensor], ys: list[Tensor], zs: list[Tensor], cs: list[float]) -> list[Tensor]:
        if _compiling():
            return LoopOps.addcmul_scalars_(xs, ys, zs, cs)
        torch._foreach_addcmul_(xs, ys, zs, cs)
        return xs

    @staticmethod
    def addcmul_fused(xs: list[Tensor], ys: list[Tensor], zs: list[Tensor], cs: list[float]) -> list[Tensor]:
        return list(torch._foreach_addcmul(xs, ys, zs, cs))

    @staticmethod
    def reciprocal_(xs: list[Tensor]) -> list[Tensor]:
        torch._foreach_reciprocal_(xs)
        return xs

    @staticmethod
    def sign_(xs: list[Tensor]) -> list[Tensor]:
        torch._foreach_sign_(xs)
        return xs

    @staticmethod
    def copy_(xs: list[Tensor], ys: list[Tensor]) -> list[Tensor]:
        torch._foreach_copy_(xs, ys)
        return xs

    @staticmethod
    def clone(xs: list[Tensor]) -> list[Tensor]:
        return list(torch._foreach_mul(xs, 1.0))

    @staticmethod
    def clamp_min_scalar_(xs: list[Tensor], c: float) -> list[Tensor]:
        torch._foreach_clamp_min_(xs, c)
        return xs

    @staticmethod
    def addcdiv_(xs: list[Tensor], ys: list[Tensor], zs: list[Tensor], value: float) -> list[Tensor]:
        torch._foreach_addcdiv_(xs, ys, zs, value=value)
        return xs

    @staticmethod
    def increment_(steps: list[Tensor]) -> None:
        torch._foreach_add_(steps, 1.0)


def is_dtensor(x: Any) -> TypeGuard[DTensor]:
    """Whether ``x`` is a DTensor (an FSDP2/tensor-parallel parameter), without importing
    torch.distributed where it is not in use."""
    return type(x).__name__ == "DTensor" and hasattr(x, "to_local")


def any_dtensor(xs: list[Any]) -> bool:
    """Whether ``xs`` holds a DTensor: the distinct types first, one C-level pass over the list (a
    Python test per tensor costs ~50-100 us a pass with 1,000 tensors), then the per-tensor test
    only where a type is named DTensor. (Traced by torch.compile: the plain per-tensor test.)"""
    if _compiling():
        return any(is_dtensor(x) for x in xs)
    return any(t.__name__ == "DTensor" for t in set(map(type, xs))) and any(map(is_dtensor, xs))


def _sharded_norm(x: Any, ord: float) -> Any:
    """The l_ord norm of a sharded DTensor, reduced across its shards (a replicated 0-d DTensor).

    DTensor's own reductions fail on a rank whose shard is empty (FSDP2 pads uneven shards:
    ``amax`` of an empty tensor raises), so the shards are reduced by hand: the global max|x|
    (all-reduce MAX), then ``max * (sum (|x|/max)^ord)^(1/ord)`` (all-reduce SUM), overflow-free
    as the unsharded path."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Replicate

    local = x.to_local()
    mesh = x.device_mesh
    groups = [mesh.get_group(i) for i, pl in enumerate(x.placements) if not pl.is_replicate()]
    a = local.abs()
    m = a.amax() if local.numel() else local.new_zeros(())
    for g in groups:
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=g)
    if math.isinf(ord):
        val = m
    else:
        scaled = a / torch.where(m > 0, m, torch.ones_like(m))
        s = scaled.sum() if ord == 1.0 else scaled.pow_(ord).sum()
        for g in groups:
            dist.all_reduce(s, op=dist.ReduceOp.SUM, group=g)
        val = m * (s if ord == 1.0 else s ** (1.0 / ord))
    return DTensor.from_local(val, mesh, [Replicate()] * mesh.ndim, run_check=False)


def _step_values(steps: list[Tensor]) -> list[Any]:
    """Step counters as Python floats (eager) or float64 0-d tensors (compiling; no graph break)."""
    if _compiling():
        return [s.to(torch.float64) for s in steps]
    return [float(s) for s in steps]


def _l2_unsafe_below(dtype: torch.dtype) -> float:
    """Below this an l2 norm computed as sqrt(sum x^2) may have lost accuracy: squares of entries
    under sqrt(tiny) are subnormal or 0 (torch's vector_norm does not rescale). Above it the
    subnormal part is at most ~eps of the sum."""
    fi = torch.finfo(dtype if dtype.is_floating_point else torch.float32)
    return math.sqrt(fi.tiny / fi.eps)


def l2_norm(x: Tensor, dim: int | None = None) -> Tensor:
    """``||x||_2`` (over ``dim``, or all of x) accurate for tiny and huge entries: the fast
    ``vector_norm``, recomputed as ``max|x| * ||x / max|x|||_2`` where it underflowed or
    overflowed. The check costs a host sync, so it runs on CPU in eager mode only (where steps
    already sync); elsewhere the fast value is returned."""
    n = torch.linalg.vector_norm(x, dim=dim)
    if x.numel() == 0 or x.device.type != "cpu" or _compiling() or is_dtensor(x):
        return n
    bad = (n < _l2_unsafe_below(n.dtype)) | torch.isinf(n)
    if not bool(bad.any()):
        return n
    if dim is None:
        m = x.abs().amax()
        safe = torch.where(m > 0, m, torch.ones_like(m))
        scaled = torch.linalg.vector_norm(x / safe) * m
    else:
        m = x.abs().amax(dim=dim, keepdim=True)
        safe = torch.where(m > 0, m, torch.ones_like(m))
        scaled = torch.linalg.vector_norm(x / safe, dim=dim) * m.squeeze(dim)
    return torch.where(bad, scaled, n)


def _rescue_l2(xs: list[Tensor], norms: Tensor) -> Tensor:
    """Per-tensor l2 norms ``norms`` of ``xs``, with the ones that under- or overflowed
    recomputed by :func:`l2_norm` (one host check for the whole list; CPU eager only)."""
    if not xs or norms.device.type != "cpu" or _compiling() or any_dtensor(xs):
        return norms
    bad = (norms < _l2_unsafe_below(norms.dtype)) | torch.isinf(norms)
    if not bool(bad.any()):
        return norms
    fixed = [l2_norm(x) if b and x.numel() else n for x, n, b in zip(xs, norms.unbind(0), bad.tolist())]
    return _stack(fixed)


# Elements per block of a compiled l1/l2 norm of a CPU tensor (_compiled_norm): inductor's C++
# sums a float reduction of more than 4096 elements through its cascade-summation helper, whose
# accumulator lives in a std::vector: one store and reload per 16 floats, ~3.5x the time of
# ATen's norm (10M floats in 100 tensors: 7.0 ms against 2.1 ms for blocks of 4096; issue 18).
_SUM_BLOCK = 4096
# Whether a sum over a symbolic size (the fused backend's shape-dynamic kernels) is blocked, as
# the kernel being traced needs: True for rows longer than a block (inductor would sum them with
# its cascade helper), False for shorter ones (a plain sum: the blocked form's two sums cost more
# there; measured in docs/performance.md). Set by the fused backend while it traces a kernel
# (:func:`symbolic_sums`); each setting is a kernel of its own (the flag is in the kernel's key).
_SYMBOLIC_BLOCKED = [True]


class symbolic_sums:
    """``with symbolic_sums(blocked):`` traces symbolic-size sums blocked or plain (above)."""

    def __init__(self, blocked: bool) -> None:
        self.blocked = blocked

    def __enter__(self) -> None:
        self.old = _SYMBOLIC_BLOCKED[0]
        _SYMBOLIC_BLOCKED[0] = self.blocked

    def __exit__(self, *exc: object) -> None:
        _SYMBOLIC_BLOCKED[0] = self.old


def _compiled_norm(x: Tensor, ord: float) -> Tensor:
    """``||x||_1`` or ``||x||_2`` while compiling: on a float32/half CPU tensor of more than
    :data:`_SUM_BLOCK` elements, or of a symbolic size (``dynamic=True``, the fused backend's
    kernels), the sum of ``|x|`` (of ``x^2``) by :func:`_blocked_sum` (one read of x, plain
    vectorized sums that inductor writes without its cascade helper; a two-level order, as
    accurate: the value agrees with ``vector_norm``'s to rounding). Elsewhere ``vector_norm``
    (``abs().sum()`` for ord 1)."""
    n, c = x.numel(), int(_SUM_BLOCK)
    low = x.dtype in (torch.float16, torch.bfloat16)
    short = n <= c if isinstance(n, int) else not _SYMBOLIC_BLOCKED[0]
    if (short or x.device.type != "cpu"
            or not (low or x.dtype == torch.float32)):  # LoopOps.norms' eager form
        if ord == 1.0:
            return x.abs().sum()
        return torch.linalg.vector_norm(x) if x.numel() else x.new_zeros(())
    y = x.reshape(-1).float() if low else x.reshape(-1)  # half: accumulate in float32, as ATen
    total = _blocked_sum(y.abs() if ord == 1.0 else y * y)
    return (total if ord == 1.0 else total.sqrt()).to(x.dtype)


def _blocked_sum(y: Tensor) -> Tensor:
    """The sum of a 1-d tensor as sums of blocks of :data:`_SUM_BLOCK` elements, then their sum
    and that of the tail (the last ``numel % _SUM_BLOCK`` elements). The same graph for a static
    and a symbolic size: no branch on the size (under ``dynamic=True`` a branch is a guard, and
    the fused backend's list kernels run with their guards off, so one graph must hold for every
    size, a size below one block, a whole number of blocks, or none). Inductor sums a block
    (4096 elements, a static length) and the short sums without its cascade helper: it takes
    the helper only for a float32 reduction it knows or guesses (from the size it compiled
    with) to be longer than 4096."""
    n, c = y.numel(), int(_SUM_BLOCK)
    rows = n // c
    parts = y[: rows * c].view(rows, c).sum(dim=1)
    if isinstance(n, int):  # a static size (torch.compile(opt.step)): the tail, if any, as a block
        if rows * c < n:
            parts = torch.cat([parts, y[rows * c:].sum().reshape(1)])
        return parts.sum()
    # symbolic: the tail always (empty for a whole number of blocks: its sum is 0)
    return parts.sum() + y.narrow(0, rows * c, n - rows * c).sum()


def sum_all(y: Tensor) -> Tensor:
    """``y.sum()`` of a whole tensor (a reduction pass's ``|x|``), eagerly and on accelerators
    the same call; while compiling a float32 CPU tensor, :func:`_blocked_sum` (issue 18: the
    fused backend's ScaledSignSGD and EFSignSGD passes summed 100K-element rows through
    inductor's cascade helper, see :data:`_SUM_BLOCK`). Agrees with ``y.sum()`` to rounding."""
    if not _compiling() or y.device.type != "cpu" or y.dtype != torch.float32:
        return y.sum()
    n = y.numel()
    if n <= _SUM_BLOCK if isinstance(n, int) else not _SYMBOLIC_BLOCKED[0]:
        return y.sum()
    return _blocked_sum(y.reshape(-1))


def _stack(scalars: list[Tensor]) -> Tensor:
    """Stack 0-d tensors, promoting mixed dtypes (a group may mix float32 and float64)."""
    if not scalars:
        return torch.zeros(0)
    dtypes = {t.dtype for t in scalars}
    if len(dtypes) == 1:  # the usual case: no per-scalar .to() (~2 us each, 1,000 per step)
        return torch.stack(scalars)
    dtype = scalars[0].dtype
    for d in dtypes:
        dtype = torch.promote_types(dtype, d)
    return torch.stack([t.to(dtype) for t in scalars])


class BatchedOps(ForeachOps):
    """``ForeachOps`` for the loop path's chunks of small CPU tensors: fused kernels throughout,
    where the foreach path would loop per tensor to save a temporary (the chunk's temporaries
    are bounded by the chunk)."""

    batched = True


def ops_for(foreach: bool) -> type[LoopOps]:
    """The list ops of the loop (``False``) or foreach (``True``) backend."""
    return ForeachOps if foreach else LoopOps
