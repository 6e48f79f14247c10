"""The Adam ablation of "The Geometry of Sign Gradient Descent" (seed 000 Sec. 2, Fig. 1, App. D.1).

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

from steepest._backend import _Ops, _ops
from steepest.optim.base import StepOptimizer, apply_weight_decay, check_betas
from steepest.optim.noise import _tiny

__all__ = ["AdamAveraged", "AdamShuffled"]


class _AdamDecomposed(StepOptimizer):
    """Adam's moments and step magnitudes; subclasses rearrange the magnitudes per tensor."""

    def __init__(
        self,
        params: Any,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        maximize: bool,
        foreach: bool | None,
        nonfinite: str | None,
    ) -> None:
        betas = tuple(betas) if isinstance(betas, (tuple, list)) else betas
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize, foreach=foreach, nonfinite=nonfinite))

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
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _rearrange(self, mags: list[Tensor], ops: type[_Ops]) -> list[Tensor]:
        raise NotImplementedError

    def _update(self, group, params, grads, states, foreach) -> None:  # type: ignore[no-untyped-def]
        ops = _ops(foreach)
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        ks = ops.count([s["step"] for s in states])
        apply_weight_decay(ops, params, lr, wd)  # decoupled, as torch.optim.AdamW
        m_t = [s["exp_avg"] for s in states]
        v_t = [s["exp_avg_sq"] for s in states]
        ops.lerp_(m_t, grads, 1.0 - b1)
        ops.mul_scalar_(v_t, b2)
        ops.addcmul_(v_t, grads, grads, 1.0 - b2)
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
    """Adam with shuffled magnitudes (seed 000 Sec. 2, "Shuffled"; App. D.1, Eq. 59)::

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

    State: ``step``, ``exp_avg``, ``exp_avg_sq`` (as ``torch.optim.Adam``).

    Default ``lr=3e-2`` (best 3e-2..1e-1 in docs/defaults.md, as for AdamW there); if you use
    AdamW at lr ``a``, start at about ``1.3 a`` (1-3 a).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 3e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        generator: torch.Generator | None = None,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {generator!r}")
        self._generator = generator
        super().__init__(params, lr, betas, eps, weight_decay, maximize, foreach, nonfinite)

    def _rearrange(self, mags: list[Tensor], ops: type[_Ops]) -> list[Tensor]:
        gen = getattr(self, "_generator", None)
        out = []
        for u in mags:
            device = gen.device if gen is not None else u.device
            perm = torch.randperm(u.numel(), generator=gen, device=device).to(u.device)
            out.append(u.reshape(-1)[perm].view_as(u))
        return out

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
    """Adam with averaged magnitudes (seed 000 Sec. 2, "Averaged"; App. D.1, Eq. 59)::

        x <- x - lr mean(gamma) * sign(m),    gamma = |m| / (sqrt(v) + eps)

    with ``m``, ``v`` Adam's bias-corrected moments and the mean taken over each tensor's entries:
    momentum-signSGD with an adaptive scalar step size per tensor. On one-element tensors it is
    ``torch.optim.Adam`` exactly (``torch.optim.AdamW`` with ``weight_decay``).

    Args:
        params: parameters or param groups.
        lr, betas, eps: as ``torch.optim.Adam``.
        weight_decay: decoupled (``torch.optim.AdamW``'s), ``x <- (1 - lr wd) x``.
        maximize, foreach, nonfinite: see :class:`steepest.optim.base.StepOptimizer`.

    State: ``step``, ``exp_avg``, ``exp_avg_sq`` (as ``torch.optim.Adam``).

    Default ``lr=3e-2`` (best 3e-2..1e-1 in docs/defaults.md, as for AdamW there); if you use
    AdamW at lr ``a``, start at about ``1.3 a`` (1-3 a).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 3e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, maximize, foreach, nonfinite)

    def _rearrange(self, mags: list[Tensor], ops: type[_Ops]) -> list[Tensor]:
        if ops.foreach:  # magnitudes are >= 0: their l1 norms are their sums, in one kernel
            sums = list(ops.norms(mags, 1.0).unbind(0))
        else:
            sums = [u.sum() for u in mags]
        return [s / max(u.numel(), 1) for s, u in zip(sums, mags)]
