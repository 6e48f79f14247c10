"""The Adam ablation of "The Geometry of Sign Gradient Descent" [BPL20, Sec. 2, Fig. 1, App. D.1].

Adam's direction, with ``eps`` and bias-corrected moments ``m``, ``v``, is written as (Eq. 59)

    m / (sqrt(v) + eps) = gamma * sign(m),        gamma = |m| / (sqrt(v) + eps)

(Eq. 5 is the ``eps = 0`` form, ``gamma = (1 + (v - m^2)/m^2)^(-1/2)``). The two variants keep
``sign(m)`` and change the elementwise magnitudes ``gamma``, independently for each tensor
(weight matrix, filter bank, bias vector), as the paper's experiments do (App. D.1):

* :class:`AdamShuffled`: ``gamma`` is randomly permuted each step;
* :class:`AdamAveraged`: ``gamma`` is replaced by its mean (momentum-signSGD with an adaptive
  scalar step size per tensor).

Both keep ``torch.optim.Adam``'s moments and arithmetic: ``lr * gamma`` is computed as
``|m~ * (lr / (1 - beta1^k))| / (sqrt(v~)/sqrt(1 - beta2^k) + eps)`` with ``k = state["step"]``
(the torch counter, 1 at the first step), exactly the numbers torch's Adam adds to the
parameters. So on one-element tensors (where a permutation and a mean change nothing) both
variants reproduce ``torch.optim.Adam`` bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from steepest.backend import Backend, ForeachOps, policy
from steepest.backend import LoopOps as _Ops
from steepest.backend import ops_for as _ops
from steepest.optim import updates as _updates
from steepest.optim.base import StepOptimizer, apply_weight_decay, check_betas, scalar_dtype
from steepest.optim.noise import _scalar_arg, _tiny, adam_moments_

__all__ = ["AdamAveraged", "AdamShuffled"]


class _AdamDecomposed(StepOptimizer):
    """Adam's moments and step magnitudes; subclasses rearrange the magnitudes per tensor."""

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        *,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        maximize: bool,
        foreach: bool | None,
        fused: bool | None,
        nonfinite: str | None,
    ) -> None:
        pair: Any = tuple(betas) if isinstance(betas, (tuple, list)) else betas  # checked later
        super().__init__(params, dict(lr=lr, betas=pair, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize, foreach=foreach, fused=fused,
                                      nonfinite=nonfinite))

    def _streams(self, group: dict[str, Any]) -> bool:
        # Elementwise per tensor (AdamShuffled draws its permutations in parameter order either
        # way): the loop path streams tensor by tensor (StepOptimizer._streams).
        return True

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_betas(group["betas"])
        eps = group["eps"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0, dtype=scalar_dtype())
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _rearrange(self, mags: list[Tensor], ops: type[_Ops]) -> list[Tensor]:
        raise NotImplementedError

    def _fused_step(
        self,
        ops: type[_Ops],
        params: list[Tensor],
        m_t: list[Tensor],
        v_t: list[Tensor],
        bc2: list[float],
        ss: list[float],
        eps: float,
    ) -> None:
        """The eager step after the moment updates, in at most one parameter-sized temporary:
        ``params[i] -= sign(m~) * rearranged(|m~ ss| / (sqrt(v~)/bc2 + eps))``."""
        raise NotImplementedError

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        backend: Backend,
    ) -> None:
        foreach = backend.foreach
        # The fused eager kernels; the reference form under torch.compile, for DTensor or
        # non-contiguous parameters.
        fused = policy.eager_fused_ok(params) and all(p.is_contiguous() for p in params) \
            and all(t.is_contiguous() for s in states for t in (s["exp_avg"], s["exp_avg_sq"]))
        ops = policy.chunk_ops(foreach, params) if fused else _ops(foreach)
        (b1, b2), eps = group["betas"], group["eps"]
        lr = _scalar_arg(group["lr"]) if fused else group["lr"]
        ks, m_t, v_t = adam_moments_(ops, grads, states, b1, b2)  # 8 passes
        apply_weight_decay(ops, params, lr, group["weight_decay"])  # decoupled, as torch.optim.AdamW
        if fused:
            self._fused_step(ops, params, m_t, v_t, [(1.0 - b2**k) ** 0.5 for k in ks],
                             [lr / (1.0 - b1**k) for k in ks], eps)
            return
        # torch.optim.Adam's arithmetic: denom = sqrt(v~)/sqrt(1 - b2^k) + eps and the step
        # (m~ * lr/(1 - b1^k)) / denom, whose magnitude is lr * gamma of Eq. 59.
        denom = ops.sqrt(v_t)
        ops.div_scalars_(denom, [(1.0 - b2**k) ** 0.5 for k in ks])
        ops.add_(denom, eps)
        if eps == 0:
            ops.clamp_min_(denom, _tiny(denom))  # m = v = 0: 0/0 := 0, no update
        mags = ops.mul_scalars(m_t, [lr / (1.0 - b1**k) for k in ks])
        ops.abs_(ops.div_(mags, denom))
        upd = ops.mul_(ops.sign(m_t), self._rearrange(mags, ops))
        ops.axpy_(params, upd, -1.0)


class AdamShuffled(_AdamDecomposed):
    """Adam with shuffled magnitudes ([BPL20, Sec. 2], "Shuffled"; App. D.1, Eq. 59)::

        x <- x - lr gamma~ * sign(m),    gamma = |m| / (sqrt(v) + eps),    gamma~ = gamma[pi]

    with ``m``, ``v`` Adam's bias-corrected moments and ``pi`` a fresh uniformly random
    permutation of each tensor's entries at every step: the entries of ``gamma~`` are those of
    ``gamma`` in random order, so the step's magnitudes are a permutation of Adam's. Concretely,
    at every step and for each parameter with a gradient, in parameter order,
    ``pi = torch.randperm(numel, generator=generator)`` and ``gamma~.flatten()[j] =
    gamma.flatten()[pi[j]]``. A complex parameter is permuted as its real view.

    Args:
        params: parameters or param groups.
        lr, betas, eps: as ``torch.optim.Adam``.
        weight_decay: decoupled (``torch.optim.AdamW``'s), ``x <- (1 - lr wd) x``; not Adam's
            L2 term.
        generator: a ``torch.Generator`` for reproducible permutations (``None``: torch's global
            generator of the parameter's device). Its state is saved in ``state_dict()`` and
            restored by ``load_state_dict`` so that a resumed run draws the same permutations.
        maximize, foreach, nonfinite: see :class:`steepest.optim.base.StepOptimizer`.
        fused: not supported (``fused=True`` raises ``ValueError``): the permutation is a
            random gather across the tensor, not an elementwise kernel.

    State: ``step``, ``exp_avg``, ``exp_avg_sq`` (as ``torch.optim.Adam``).

    Default ``lr=3e-2`` (best 3e-2..1e-1 in docs/defaults.md, as for AdamW there); if you use
    AdamW at lr ``a``, start at about ``1.3 a`` (1-3 a).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 3e-2,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        generator: torch.Generator | None = None,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {generator!r}")
        self._generator = generator
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         maximize=maximize, foreach=foreach, fused=fused, nonfinite=nonfinite)

    def _fused_unsupported(self, group: dict[str, Any]) -> str | None:
        return ("(its step gathers each tensor's magnitudes through a fresh torch.randperm: a "
                "random permutation, not an elementwise kernel)")

    def _rearrange(self, mags: list[Tensor], ops: type[_Ops]) -> list[Tensor]:
        gen = getattr(self, "_generator", None)
        out = []
        for u in mags:
            device = gen.device if gen is not None else u.device
            perm = torch.randperm(u.numel(), generator=gen, device=device).to(u.device)
            out.append(u.reshape(-1)[perm].view_as(u))
        return out

    def _fused_step(
        self,
        ops: type[_Ops],
        params: list[Tensor],
        m_t: list[Tensor],
        v_t: list[Tensor],
        bc2: list[float],
        ss: list[float],
        eps: float,
    ) -> None:
        # Tensors within the loop path's stream chunk (small ones, whose temporaries the stream
        # allows): gamma for all of them with one kernel per op (_magnitudes_), then per tensor
        # one gather through the permutation. Larger ones: _shuffled_step_ (index + 3%).
        # The generator draws one permutation per tensor in parameter order either way.
        gen = getattr(self, "_generator", None)
        small = [i for i, m in enumerate(m_t) if m.numel() <= policy.stream_chunk()]
        mags = dict(zip(small, _magnitudes_(ops, [m_t[i] for i in small], [v_t[i] for i in small],
                                            [bc2[i] for i in small], [ss[i] for i in small], eps)))
        for i, (p, m, v, b, s) in enumerate(zip(params, m_t, v_t, bc2, ss)):
            if i not in mags:
                _shuffled_step_(p, m, v, b, s, eps, gen)
                continue
            d = mags.pop(i).view(-1)
            if d.numel() == 0:
                continue
            perm = _randperm(d.numel(), gen, d.device)
            shuffled = torch.index_select(d, 0, perm)  # gamma[pi]
            del perm
            p.view(-1).addcmul_(torch.sign(m.view(-1), out=d), shuffled, value=-1.0)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        gen = getattr(self, "_generator", None)
        if gen is not None:
            sd["generator_state"] = gen.get_state()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        gen_state = state_dict.pop("generator_state", None)
        super().load_state_dict(state_dict)
        gen = getattr(self, "_generator", None)
        if gen_state is not None and gen is not None:
            gen.set_state(gen_state)


class AdamAveraged(_AdamDecomposed):
    """Adam with averaged magnitudes ([BPL20, Sec. 2], "Averaged"; App. D.1, Eq. 59)::

        x <- x - lr mean(gamma) * sign(m),    gamma = |m| / (sqrt(v) + eps)

    with ``m``, ``v`` Adam's bias-corrected moments and the mean taken over each tensor's entries:
    momentum-signSGD with an adaptive scalar step size per tensor. On one-element tensors it is
    ``torch.optim.Adam`` exactly (``torch.optim.AdamW`` with ``weight_decay``).

    Args:
        params: parameters or param groups.
        lr, betas, eps: as ``torch.optim.Adam``.
        weight_decay: decoupled (``torch.optim.AdamW``'s), ``x <- (1 - lr wd) x``.
        maximize, foreach, nonfinite: see :class:`steepest.optim.base.StepOptimizer`.
        fused: ``True`` runs the step as one compiled kernel per tensor (the fused backend,
            :mod:`steepest.backend.fused`; :func:`steepest.optim.updates.adam_averaged_step`:
            the moments and the sum of gamma in one loop, the update in a second loop of the
            same call; eager with one warning where compiling fails); not with
            ``foreach=True``. ``None``/``False``: eager.

    State: ``step``, ``exp_avg``, ``exp_avg_sq`` (as ``torch.optim.Adam``).

    Default ``lr=3e-2`` (best 3e-2..1e-1 in docs/defaults.md, as for AdamW there); if you use
    AdamW at lr ``a``, start at about ``1.3 a`` (1-3 a).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 3e-2,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         maximize=maximize, foreach=foreach, fused=fused, nonfinite=nonfinite)

    def _fused_unsupported(self, group: dict[str, Any]) -> str | None:
        return None

    def _fused_run(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                   states: list[dict[str, Any]], backend: Any) -> None:
        _updates.fused_adam_averaged(group, params, grads, states, backend)

    def _rearrange(self, mags: list[Tensor], ops: type[_Ops]) -> list[Tensor]:
        if ops.foreach:  # magnitudes are >= 0: their l1 norms are their sums, in one kernel
            sums = list(ops.norms(mags, 1.0).unbind(0))
        else:
            sums = [u.sum() for u in mags]
        return [s / max(u.numel(), 1) for s, u in zip(sums, mags)]

    def _fused_step(
        self,
        ops: type[_Ops],
        params: list[Tensor],
        m_t: list[Tensor],
        v_t: list[Tensor],
        bc2: list[float],
        ss: list[float],
        eps: float,
    ) -> None:
        # 17 passes over N floats after the moments' 8 (25; 7 counted), in one temporary d:
        # torch's magnitudes 11 (_magnitudes_; torch's rounding: one-element tensors stay bitwise
        # torch.optim.Adam), their sum 1 (the mean), d <- sign(m~) 2, x -= mean d 3.
        d = _magnitudes_(ops, m_t, v_t, bc2, ss, eps)
        means = [x.sum() / max(x.numel(), 1) for x in d]
        if ops.foreach:
            del d  # the sign list replaces it
            sg = ops.sign(m_t)
            ForeachOps.mul_(sg, means)
            ForeachOps.axpy_(params, sg, -1.0)
        else:
            for p, m, x, mean in zip(params, m_t, d, means):
                p.addcmul_(torch.sign(m, out=x), mean, value=-1.0)


def _magnitudes_(ops: type[_Ops], m_t: list[Tensor], v_t: list[Tensor], bc2: list[float],
                 ss: list[float], eps: float) -> list[Tensor]:
    """``lr gamma = |(ss m~) / (sqrt(v~)/bc2 + eps)|`` per tensor, torch.optim.Adam's numbers
    and rounding, in one new tensor each (11 passes: sqrt 2, /bc2 2, +eps 2, the quotient 3 in
    place, abs 2; 2 more for the floor when eps = 0). (``addcdiv(eps, sqrt(v~), bc2)`` would save
    a pass but its two broadcast scalar operands make it slower on CPU.)"""
    if not m_t:
        return []
    d = ops.sqrt(v_t)
    ops.div_scalars_(d, bc2)
    ops.add_(d, eps)
    if eps == 0:
        ops.clamp_min_(d, _tiny(d))  # m = v = 0: 0/0 := 0, no update
    for x, m, s in zip(d, m_t, ss):  # (ss m~)/d in place: no foreach form writes into d
        torch.addcdiv(x.new_zeros(()), m, x, value=s, out=x)
    return ops.abs_(d)


def _randperm(n: int, gen: torch.Generator | None, device: torch.device) -> Tensor:
    """``torch.randperm(n, generator=gen)`` on the generator's device (the parameter's without
    one), moved to ``device``; int32 on the CPU, where the shuffle draws the same numbers for
    every index dtype (half the bytes of int64), int64 elsewhere and past 2^31 entries."""
    where = gen.device if gen is not None else device
    dtype = torch.int32 if where.type == "cpu" and n < 2**31 else torch.int64
    return torch.randperm(n, generator=gen, device=where, dtype=dtype).to(device)


def _shuffled_step_(p: Tensor, m: Tensor, v: Tensor, bc2: float, ss: float, eps: float,
                    gen: torch.Generator | None) -> None:
    """``p -= sign(m~) * gamma[pi]`` for one (contiguous) tensor, ``gamma = |m~ ss| / (sqrt(v~)/bc2
    + eps)`` (torch.optim.Adam's numbers) and ``pi = torch.randperm(numel, generator=gen)``.

    Memory: the permutation itself is an index tensor of ``numel`` entries, int32 where the
    generator is on the CPU (``torch.randperm``'s CPU shuffle draws the same numbers for every
    index dtype; int64 elsewhere and past 2^31 entries): for float32 parameters that is exactly
    one parameter-sized tensor, and nothing else parameter-sized is made. gamma is never
    materialized whole: the step walks ``pi`` in chunks ``j``, gathers ``m~`` and ``v~`` at
    ``pi[j]`` and computes ``gamma[pi[j]]`` there; the two chunk buffers live in the bytes of
    the part of the index already consumed (after the first chunk, freshly allocated: a 64th of
    a tensor larger than the loop path's stream chunk), so chunks grow geometrically (x1.5 for
    float32) and the peak stays the index plus the first chunk: 1.03 x the tensor for float32
    (0.53 for float64). A tensor within the stream chunk (2^16 entries) is done in one chunk.
    The permutation can not be smaller: it must be ``torch.randperm(numel)`` (documented and
    resumable from the generator state), whose smallest index dtype that holds ``numel`` is
    int32, and an in-place permutation has no torch kernel.

    Time: ``torch.randperm`` is a sequential Fisher-Yates shuffle (one generator draw per
    entry, ~8 ns each on a 2026 CPU core): it alone costs several SGD steps."""
    n = m.numel()
    if n == 0:
        return
    perm = _randperm(n, gen, m.device)
    pf, mf, vf = p.view(-1), m.view(-1), v.view(-1)
    es, ib = m.element_size(), perm.element_size()
    # The consumed index bytes, reused for the chunk buffers (whole elements of m's dtype).
    spare = perm.view(torch.uint8)[: (n * ib) // es * es].view(m.dtype)
    zero = m.new_zeros(())
    tiny = torch.finfo(m.dtype).tiny
    # The first chunk's buffers are fresh: the whole tensor if it is within the loop path's
    # stream chunk (whose temporaries StepOptimizer allows anyway), else a 64th of it, at least
    # a 16th of a stream chunk (fewer, larger chunks: each costs ~15 small ops).
    limit = policy.stream_chunk()
    # (At least 2 es / ib entries, so that the consumed bytes hold the next, non-empty chunk.)
    j, c = 0, n if n <= limit else max(n >> 6, limit >> 4, 4)
    while j < n:
        c = min(c, n - j)
        idx = perm[j : j + c]
        if j == 0:
            a, b = torch.empty_like(mf[:c]), torch.empty_like(mf[:c])
        else:  # bytes [0, 2 c es) lie within the consumed [0, j ib): disjoint from idx
            a, b = spare[:c], spare[c : 2 * c]
        torch.index_select(vf, 0, idx, out=a)
        a.sqrt_().div_(bc2).add_(eps)
        if eps == 0:
            a.clamp_min_(tiny)  # m = v = 0: 0/0 := 0, no update
        torch.index_select(mf, 0, idx, out=b)
        torch.addcdiv(zero, b, a, value=ss, out=a).abs_()  # gamma[pi[j]], torch's rounding
        torch.sign(mf[j : j + c], out=b)
        pf[j : j + c].addcmul_(b, a, value=-1.0)
        j += c
        c = (j * ib) // (2 * es)
