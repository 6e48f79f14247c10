"""Error-feedback sign descent ([ScaledSign, Eq. 12]; [Karimireddy19])."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from steepest.backend import Backend, BatchedOps, LoopOps, is_dtensor, policy
from steepest.backend.ops import _stack
from steepest.norms import Linf, _combine_pow, _safe_div
from steepest.optim import updates as _updates
from steepest.optim.base import StepOptimizer, apply_weight_decay

__all__ = ["EFSignSGD"]


class EFSignSGD(StepOptimizer):
    """EF-signSGD [ScaledSign, Eq. 12]::

        p_t     = lr g_t + e_t
        delta_t = (||p_t||_1 / d) sign(p_t)
        x_{t+1} = x_t - delta_t
        e_{t+1} = p_t - delta_t

    with ``d`` and ``||p_t||_1`` taken over the scope (``"group"``: all parameters of the group
    as one vector; ``"all_groups"``: all parameters of all such groups; ``"per_tensor"``: each
    tensor; ``"global"``, the default, is ``"group"``, and never warns; see
    :class:`steepest.optim.SteepestDescent`). ``delta_t`` is the l_inf sharp of ``p_t``
    divided by ``d``. The error ``e`` (initially 0) lives in ``state["error"]``.

    Extreme gradients: the coefficient ``||p||_1/d`` is a mean, at most ``max|p|``, so it is finite
    for finite ``p``; where the fast ``||p||_1`` overflows (float32 |p| near 1e38) it is recomputed
    as ``max|p| * (sum(|p|/max|p|)/d)`` (checked on the CPU, where the read is free; the fast path
    is unchanged). Parameters stay finite unless ``x - delta`` itself leaves the dtype's range.

    ``fused=True`` runs the step on the fused backend (:mod:`steepest.backend.fused`): a
    reduction pass for ``||p_t||_1`` (which also checks the gradients), then one kernel per
    tensor updating ``x`` and ``e``; not with ``scope="all_groups"`` nor ``foreach=True``.

    Default ``lr=1.0``: the step is lr ||g||_1/d per coordinate, an SGD-sized step; if you use
    AdamW at lr ``a``, start at about ``75 a`` (30-100 a in docs/defaults.md).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        *,
        scope: str = "global",
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, scope=scope, weight_decay=weight_decay, maximize=maximize,
                 foreach=foreach, fused=fused, nonfinite=nonfinite),
        )

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["error"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _fused_unsupported(self, group: dict[str, Any]) -> str | None:
        if group["scope"] == "all_groups":
            return "with scope='all_groups' (one norm over several groups)"
        return None

    def _fused_reduces_first(self, group: dict[str, Any]) -> bool:
        return True  # ||lr g + e||_1 reads every gradient before the first write

    def _fused_run(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    states: list[dict[str, Any]], backend: Any) -> None:
        _updates.fused_ef(group, params, grads, states, backend, _mean_abs_safe)

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        backend: Backend,
    ) -> None:
        ops, foreach = backend.ops, backend.foreach
        lr, wd = group["lr"], group["weight_decay"]
        errs = [s["error"] for s in states]
        per_tensor = group["scope"] == "per_tensor"
        # On CPU the foreach path takes the loop path's code too (torch's _foreach_* ops are a
        # per-tensor loop there themselves; all-at-once temporaries cost page faults).
        loop = backend.per_tensor(errs)
        small = loop and policy._small_many(errs)
        if small:  # many small tensors: fused kernels (per-tensor Python would dominate)
            BatchedOps.axpy_(errs, grads, lr)  # e <- p = lr g + e
            dual = _combine_pow(policy.norms(errs, Linf().q, ops), 1.0, per_tensor)
        elif loop and policy.eager_fused_ok(errs):
            # e <- p = lr g + e and its l1 norm tensor by tensor: e is read back while in cache.
            sums = []
            for e, g in zip(errs, grads):
                e.add_(g, alpha=lr)
                sums.append(e.abs().sum())
            dual = _combine_pow(_stack(sums), 1.0, per_tensor)
        else:
            ops.axpy_(errs, grads, lr)  # e <- p = lr g + e
            # ||p||_1 over the scope (Linf's dual; sign(p) is made tensor by tensor below)
            dual = _combine_pow(ops.norms(errs, Linf().q), 1.0, per_tensor)
        sizes = [float(e.numel()) for e in errs]
        ds = sizes if per_tensor else [sum(sizes)] * len(errs)
        if _overflowed(dual):
            # ||p||_1 overflowed (float32 |p| near 1e38): the coefficient ||p||_1/d <= max|p| is
            # finite, so recompute it overflow-safely (issue 21). Rare: the fast path is unchanged.
            coefs: list[Any] = list(_mean_abs_safe(errs, per_tensor).unbind(0))
            if small:
                coefs = [float(c) for c in coefs]
        elif is_dtensor(dual):
            # ||p||_1 / d with Python-number divisors (0 for an empty scope): a sharded (DTensor)
            # dual cannot be divided by a plain host tensor.
            coefs = [du / d if d else du * 0.0 for du, d in zip(dual.unbind(0), ds)]
        else:  # one vectorized division (1,000 scalar divisions cost ~3 ms a step)
            quot = _safe_div(dual, torch.tensor(ds, dtype=dual.dtype, device=dual.device))
            # small tensors: Python floats (a free host read on CPU; no 0-d tensor per tensor)
            coefs = quot.tolist() if small else list(quot.unbind(0))
        apply_weight_decay(ops, params, lr, wd)
        if small:  # a chunk's sign temporaries at a time (the loop path's streaming granularity)
            for sl in policy._small_chunks(params, foreach, 1):  # one temporary per tensor
                _subtract_delta(BatchedOps, params[sl], errs[sl], coefs[sl])
            return
        _subtract_delta(ops, params, errs, coefs)

    def _update_joint(
        self,
        groups: list[dict[str, Any]],
        params: list[list[Tensor]],
        grads: list[list[Tensor]],
        states: list[list[dict[str, Any]]],
        backend: Backend,
    ) -> None:
        """``scope="all_groups"``: ``d`` and ``||p_t||_1`` over every such group together; each
        group's own lr in ``p_t = lr g_t + e_t`` and in its weight decay."""
        ops = backend.ops
        errs = [[s["error"] for s in st] for st in states]
        for g, es, gr in zip(groups, errs, grads):
            ops.axpy_(es, gr, g["lr"])  # e <- p = lr g + e
        flat = [e for es in errs for e in es]
        dual = _combine_pow(ops.norms(flat, Linf().q), 1.0, False)
        d = torch.tensor([float(sum(e.numel() for e in flat))], dtype=dual.dtype, device=dual.device)
        coef = _mean_abs_safe(flat, False)[0] if _overflowed(dual) else _safe_div(dual[:1], d)[0]
        for g, ps, es in zip(groups, params, errs):
            apply_weight_decay(ops, ps, g["lr"], g["weight_decay"])
            _subtract_delta(ops, ps, es, [coef] * len(ps))


def _overflowed(dual: Tensor) -> bool:
    """Whether the l1 norms overflowed; checked on the CPU in eager mode only (where a host read
    is free: the step already syncs), as :func:`steepest.backend.ops.l2_norm` checks its norms."""
    if dual.device.type != "cpu" or policy.compiling() or is_dtensor(dual):
        return False
    return not bool(torch.isfinite(dual).all())


def _mean_abs_safe(errs: list[Tensor], per_tensor: bool) -> Tensor:
    """``||p||_1 / d`` over the scope (an entry per tensor) without overflow, for finite ``p``:
    ``max|p| * (sum(|p| / max|p|) / d)``, every factor at most ``max|p|`` or ``d``."""
    zero = errs[0].new_zeros(())
    maxes = torch.stack([e.abs().amax() if e.numel() else zero for e in errs])
    if not per_tensor:
        maxes = maxes.max().expand(len(errs))
    safe = torch.where(maxes > 0, maxes, torch.ones_like(maxes))
    sums = torch.stack([(e.abs() / s).sum() if e.numel() else zero for e, s in zip(errs, safe)])
    sizes = torch.tensor([float(e.numel()) for e in errs], dtype=sums.dtype)
    if not per_tensor:
        sums, sizes = sums.sum().expand(len(errs)), sizes.sum().expand(len(errs))
    return maxes * _safe_div(sums, sizes)


def _subtract_delta(ops: type[LoopOps], params: list[Tensor], errs: list[Tensor], coefs: list[Any]) -> None:
    """``delta = coef * sign(e)``; ``x <- x - delta``, ``e <- e - delta`` [ScaledSign, Eq. 12].

    One sign temporary per tensor, freed before the next (the loop path; and the foreach path on
    CPU, where ``_foreach_*`` is such a loop itself), with ``coef`` folded into both updates
    (``addcmul_``): the same numbers as ``delta`` itself, since coef * (+-1) is exact."""
    if not policy._loop_each(errs, ops) or (ops.foreach and policy._small_many(errs)):
        # fused kernels (accelerators; small CPU tensors, where Python per tensor dominates):
        # one sign temporary per tensor, the foreach path's budget
        delta = ops.mul_(ops.sign(errs), coefs)
        ops.axpy_(params, delta, -1.0)
        ops.axpy_(errs, delta, -1.0)  # e <- p - delta
        return
    for p, e, c in zip(params, errs, coefs):
        s = torch.sign(e)
        if isinstance(c, Tensor):
            p.addcmul_(s, c, value=-1.0)
            e.addcmul_(s, c, value=-1.0)  # e <- p - delta
        else:  # a Python float (small tensors): the same exact products +-c
            p.add_(s, alpha=-c)
            e.add_(s, alpha=-c)
        del s
