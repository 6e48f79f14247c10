"""Variance-adapted optimizers from "Dissecting Adam" [Bal21, Ch. 5 and App. B].

Adam's update splits into a *sign* and a *variance adaptation* [Bal21, Eq. 5.5-5.7]. Of the
four recombinations (Fig. 5.1), M-SIGN-SGD is :class:`steepest.optim.SignSGD` with
``momentum=beta`` (Alg. 3); this module adds the other three and SVAG:

==========  ===========================================  =============================
optimizer   update, elementwise                          source
==========  ===========================================  =============================
MSGD        x -= lr m                                    [Bal21, Alg. 3] (M-SGD)
SVAG        x -= lr m^2/(m^2 + s) g                      Alg. 4 (Eq. 5.17)
MSVAG       x -= lr m^2/(m^2 + rho s) m                  Alg. 2 (Eq. 5.19)
MSVAG(mb)   x -= lr m^2/(m^2 + rho r) m                  Alg. 6 (App. B.4.1)
AdamStar    x -= lr sqrt(m^2/(m^2 + rho s)) sign(m)      Alg. 5 (Adam*)
==========  ===========================================  =============================

with the shared moment estimates (one constant ``beta`` for both moments, Sec. 5.4.1)

    m~ <- beta m~ + (1 - beta) g,        v~ <- beta v~ + (1 - beta) g^2,   m~ = v~ = 0 initially,
    m = m~ / (1 - beta^(t+1)),           v = v~ / (1 - beta^(t+1)),
    s = (v - m^2) / (1 - rho(beta, t))                                        (Eq. 5.16)

**Index convention.** The thesis counts iterations ``t = 0, ..., T-1``; ``t`` is the number of
steps taken *before* the current one. The optimizers keep torch's counter ``state["step"]``
(the number of steps taken *including* the current one), so ``t = state["step"] - 1``: the first
step has ``t = 0``, bias corrections ``1 - beta^1`` and ``rho(beta, 0) = 1``.

**Details of Sec. 5.4.4, as implemented.**

* At ``t = 0`` Eq. 5.16 is 0/0 (``v - m^2 = 0`` and ``1 - rho(beta, 0) = 0``; the thesis text says
  "rho(beta, 0) = 0", but Eq. 5.15 gives 1, and it is ``1 - rho`` that vanishes). We use
  ``s_0 = 0``, so the first step of SVAG and M-SVAG is an SGD step and that of Adam* a sign step.
  ``beta = 0`` makes ``1 - rho = 0`` at every step (no averaging, no variance information): the
  same rule gives SGD (SVAG, M-SVAG) and signSGD (Adam*).
* No ``eps``. Where ``m = v = 0`` the factor ``m^2/(m^2 + rho s)`` is 0/0; it is defined as 0 there,
  so that coordinate does not move. (In floating point: SVAG and M-SVAG compute the factor as
  ``1/(1 + rho s/m^2)``, where ``m = 0`` makes the quotient ``+inf`` and the factor exactly 0;
  the 0/0 of ``m = v = 0`` is mapped to ``+inf`` too (eager steps, :func:`_adapted_step_`;
  compiled steps, :func:`_gamma_`). Adam* floors ``(v - m^2)/a`` at that number under its ``rsqrt``. This
  changes nothing else, and the one parameter-sized temporary of the step holds the factor,
  computed in place.)
* ``v >= m^2`` holds exactly (Jensen: both are the same convex combination); rounding can make
  ``v - m^2`` slightly negative, so ``s`` is clamped at 0.

Every optimizer takes decoupled ``weight_decay`` (x <- (1 - lr wd) x before the step; 0 by default,
which is the thesis' algorithm), ``maximize``, ``foreach`` and ``nonfinite`` as all ``steepest``
optimizers do (:mod:`steepest.optim.base`).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
import weakref
from types import FrameType
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

import steepest
from steepest.backend import Backend, policy
from steepest.backend import LoopOps as _Ops
from steepest.backend import ops_for as _ops
from steepest.optim import updates as _updates
from steepest.optim.base import (
    StepOptimizer,
    _real,
    apply_weight_decay,
    check_choice,
    check_range,
    first_nonfinite,
    scalar_dtype,
)
from steepest.optim.engine import momentum_direction_input

__all__ = ["MSGD", "MSVAG", "SVAG", "AdamStar", "rho"]

VARIANCES = ("moving_average", "minibatch")


def _tiny(xs: list[Tensor]) -> list[float]:
    """The smallest normal number of each tensor's dtype: the floor for 0/0-prone denominators."""
    return [torch.finfo(x.dtype).tiny for x in xs]


# ------------------------------------------------------------------ fused eager kernels
# The eager steps below are counted in passes over parameter-sized memory (every ATen
# elementwise op reads its inputs and writes its output once; on CPU tensors this large are
# memory-bound). torch's SGD(momentum) does 8 passes for the 5 that the benchmark counts; each
# optimizer's ``_update`` names its own count. Under torch.compile the unfused reference forms
# run instead (inductor fuses them, and they pass no step-dependent Python float as a kernel
# argument, see steepest.backend.ops._compiling); DTensor (FSDP2) parameters take them too (their
# reductions and out= arguments need the generic ops).


def _scalar_arg(v: Any) -> Any:
    """A 0-d tensor hyper-parameter (``lr=torch.tensor(...)``) as the Python number that the
    fused kernels' ``value=``/scalar-list arguments take (eager only; CPU scalars in practice)."""
    return float(v) if isinstance(v, Tensor) else v


def _subset(idx: list[int], *lists: list[Any]) -> list[list[Any]]:
    return [[xs[i] for i in idx] for xs in lists]


def adam_moments_(
    ops: type[_Ops], grads: list[Tensor], states: list[dict[str, Any]], b1: float, b2: float
) -> tuple[list[float], list[Tensor], list[Tensor]]:
    """Count the step (state ``step``) and update Adam's moments in place (8 passes): m~ <-
    lerp(m~, g, 1 - b1) (``exp_avg``; ``lerp_``, 3), v~ <- b2 v~ + (1 - b2) g^2 (``exp_avg_sq``;
    ``mul_`` 2 + ``addcmul_`` 3), as torch.optim.Adam. Returns the counted steps, m~ and v~. The
    one moments implementation of the noise family (``b1 = b2 = beta``) and the Adam ablations."""
    ks = ops.count([s["step"] for s in states])
    m_t = [s["exp_avg"] for s in states]
    v_t = [s["exp_avg_sq"] for s in states]
    ops.lerp_(m_t, grads, 1.0 - b1)
    ops.mul_scalar_(v_t, b2)
    ops.addcmul_(v_t, grads, grads, 1.0 - b2)
    return ks, m_t, v_t


# ------------------------------------------------------------------ rho(beta, t), Eq. 5.15
def rho(beta: float, t: int | float) -> float:
    """``rho(beta, t) = (1-beta)(1+beta^(t+1)) / ((1+beta)(1-beta^(t+1)))`` [Bal21, Eq. 5.15].

    ``t`` is the thesis' 0-based iteration index (``t = state["step"] - 1``). ``rho`` is the sum of
    the squared weights of the bias-corrected EMA, ``sum_s c(beta, t, s)^2`` (Eq. B.26), i.e.
    ``Var[m_t] = rho(beta, t) sigma^2`` for iid gradients: ``rho(beta, 0) = 1`` and
    ``rho -> (1-beta)/(1+beta)`` as ``t -> inf`` (Eq. B.27). ``beta = 0`` gives 1 for all ``t``.
    """
    check_range("beta", beta, 0.0, 1.0)
    if isinstance(t, Tensor):  # a compiled step (steepest.backend.ops.LoopOps.count): no branches
        if beta == 0.0:
            return torch.ones_like(t)
        bt = beta ** (t + 1)
        return torch.where(t == 0, 1.0, (1.0 - beta) * (1.0 + bt) / ((1.0 + beta) * (1.0 - bt)))
    if t < 0:
        raise ValueError(f"t must be >= 0 (the 0-based iteration index), got {t!r}")
    if t == 0 or beta == 0.0:
        return 1.0
    bt = beta ** (t + 1)
    return (1.0 - beta) * (1.0 + bt) / ((1.0 + beta) * (1.0 - bt))


def _one_minus_rho(beta: float, t: float) -> float:
    """``1 - rho(beta, t) = 2 beta (1 - beta^t) / ((1+beta)(1 - beta^(t+1)))``, free of the
    cancellation of ``1 - rho`` near ``t = 0`` (it is exactly 0 at ``t = 0`` and for ``beta = 0``)."""
    if beta == 0.0:
        return 0.0
    if not isinstance(t, Tensor) and t == 0:
        return 0.0
    # (For a tensor t the formula itself is exactly 0 at t = 0: 1 - beta^0 = 0.)
    return 2.0 * beta * (1.0 - beta**t) / ((1.0 + beta) * (1.0 - beta ** (t + 1)))


def _check_beta(group: dict[str, Any]) -> None:
    if "beta" in group:  # a param-group override or an older checkpoint: it takes precedence
        group["momentum"] = group.pop("beta")
    check_range("beta", group["momentum"], 0.0, 1.0)


class _BetaIsMomentum(StepOptimizer):
    """The one EMA constant ``beta`` of [Bal21] is stored in the param groups under the key
    ``"momentum"``, so that schedulers that cycle momentum (``OneCycleLR``, ``CyclicLR``: they
    look for a ``momentum`` or ``betas`` option) cycle it. The constructors take ``beta``; a param
    group may give either ``beta`` or ``momentum``; checkpoints with ``beta`` still load."""

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        defaults["momentum"] = defaults.pop("beta")
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            if "beta" in group:
                group["momentum"] = group.pop("beta")


# ------------------------------------------------------------------ M-SGD
class MSGD(_BetaIsMomentum):
    """M-SGD [Bal21, Alg. 3]: SGD along the bias-corrected exponential moving average

        m~ <- beta m~ + (1 - beta) g,     m = m~ / (1 - beta^(t+1)),     x <- x - lr m

    (``t = state["step"] - 1``, so the first step divides by ``1 - beta``). It is steepest
    descent w.r.t. the l2 norm (``SteepestDescent(norm=L2())``) applied to ``m`` instead of ``g``,
    and a rescaled SGD with momentum: with ``beta`` it equals ``torch.optim.SGD(momentum=beta,
    dampening=beta)`` up to the bias correction. M-SIGN-SGD, the sign counterpart of Alg. 3, is
    ``SignSGD(momentum=beta)``.

    Args:
        params: parameters or param groups.
        lr: step size ``>= 0``.
        beta: EMA constant in ``[0, 1)``; ``beta = 0`` is plain SGD.
        weight_decay: decoupled, ``x <- (1 - lr wd) x`` before the step.
        maximize, foreach, nonfinite: see :class:`steepest.optim.base.StepOptimizer`.
        fused: ``True`` runs the step as one compiled elementwise kernel per tensor and dtype
            (the fused backend, :mod:`steepest.backend.fused`; eager with one warning where
            compiling fails); not with ``foreach=True``. ``None``/``False``: eager.

    State: ``step`` (float32 0-d), ``exp_avg`` (m~).

    Extreme gradients: the update ``lr m`` is a bias-corrected average of the gradients, finite
    for finite ones; one pass, no reduction, nothing to overflow but ``x - lr m`` itself (which,
    as with ``torch.optim.SGD``, then leaves the dtype's range).

    Default ``lr=1.0`` (an SGD step; best 1-3 in docs/defaults.md); if you use AdamW at lr
    ``a``, start at about ``40 a`` (30-100 a there).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        *,
        beta: float = 0.9,
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        defaults = dict(lr=lr, beta=beta, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach, fused=fused, nonfinite=nonfinite)
        super().__init__(params, defaults)

    def _streams(self, group: dict[str, Any]) -> bool:
        return True  # elementwise: the loop path streams tensor by tensor (StepOptimizer._streams)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        _check_beta(group)

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0, dtype=scalar_dtype())
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _fused_unsupported(self, group: dict[str, Any]) -> str | None:
        return None

    def _fused_run(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    states: list[dict[str, Any]], backend: Any) -> None:
        _updates.fused_msgd(group, params, grads, states, backend)

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        backend: Backend,
    ) -> None:
        foreach = backend.foreach
        # 6 passes over N floats (lerp_ 3, axpy 3) for the 5 the benchmark counts (torch's
        # SGD-momentum: 8); one kernel per op for a chunk of small CPU tensors (_kernels).
        fast = policy.eager_fused_ok(params)
        ops = policy.chunk_ops(foreach, params) if fast else _ops(foreach)
        lr, b, wd = group["lr"], group["momentum"], group["weight_decay"]
        if fast:
            lr = _scalar_arg(lr)
        ks = ops.count([s["step"] for s in states])
        m = momentum_direction_input((b, b), grads, states, ops.foreach, key="exp_avg")
        if m is grads:  # beta = 0: the buffer is not used, m~ = g
            for s, g in zip(states, grads):
                s["exp_avg"].copy_(g)
            m = [s["exp_avg"] for s in states]
        apply_weight_decay(ops, params, lr, wd)
        ops.axpy_scalars_(params, m, [-lr / (1.0 - b**k) for k in ks])


# ------------------------------------------------------------------ SVAG, M-SVAG, Adam*
class _VarianceAdapted(_BetaIsMomentum):
    """Shared state and moment estimates of SVAG, M-SVAG and Adam* (see the module docstring)."""

    def _streams(self, group: dict[str, Any]) -> bool:
        return True  # elementwise: the loop path streams tensor by tensor (StepOptimizer._streams)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        _check_beta(group)

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0, dtype=scalar_dtype())
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @staticmethod
    def _moments(
        b: float, grads: list[Tensor], states: list[dict[str, Any]], ops: type[_Ops]
    ) -> tuple[list[float], list[Tensor], list[Tensor]]:
        """Count the step and update m~ (lerp_, 3 passes) and v~ (mul_ + addcmul_, 5 passes) in
        place; return the thesis' ``t = state["step"] - 1``, m~ and v~."""
        ks, m_t, v_t = adam_moments_(ops, grads, states, b, b)
        return [k - 1.0 for k in ks], m_t, v_t

    @staticmethod
    def _scales(b: float, ts: list[float], weight: bool) -> tuple[list[float], list[float]]:
        """``a = 1/(1 - beta^(t+1))`` and ``K = w c / a`` per tensor (``w = rho(beta, t)`` if
        ``weight`` else 1, ``c = 1/(1 - rho(beta, t))``, 0 at t = 0 and for beta = 0), so that
        ``m^2 + w s = a^2 (m~^2 + K (v~ - a m~^2))`` (Eq. 5.16 with the bias corrections folded
        in; see :meth:`_denominators`)."""
        a = [1.0 / (1.0 - b ** (t + 1.0)) for t in ts]
        k = [(rho(b, t) if weight else 1.0) * _safe_reciprocal(_one_minus_rho(b, t)) / ai
             for t, ai in zip(ts, a)]
        return a, k

    @staticmethod
    def _factors(b: float, t: Tensor, weight: bool) -> tuple[Tensor, Tensor]:
        """:meth:`_scales` of a tensor step index ``t`` (a compiled step: no graph break)."""
        a = 1.0 / (1.0 - b ** (t + 1.0))
        tt: Any = t  # rho and _one_minus_rho take a tensor step index too
        k = (rho(b, tt) if weight else 1.0) * _safe_reciprocal(_one_minus_rho(b, tt)) / a
        if not isinstance(k, Tensor):
            k = torch.zeros_like(t) + k
        return a, k

    _kind = "svag"  # the variance_adapted_step of the subclass

    def _fused_unsupported(self, group: dict[str, Any]) -> str | None:
        return None

    def _fused_run(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    states: list[dict[str, Any]], backend: Any) -> None:
        _updates.fused_variance_adapted(group, params, grads, states, self._kind, backend, self._scales)

    @staticmethod
    def _denominators(
        b: float,
        grads: list[Tensor],
        states: list[dict[str, Any]],
        ops: type[_Ops],
        weight: bool,
    ) -> tuple[list[float], list[Tensor], list[Tensor]]:
        """Update m~, v~; return ``a = 1/(1 - beta^(t+1))``, ``m~`` and ``e = w s / a^2`` with
        ``m^2 + w s = a^2 (m~^2 + e)`` (``w = rho(beta, t)`` if ``weight`` else 1).

        The bias corrections are folded into scalars (gamma = m^2/(m^2 + w s) = m~^2/(m~^2 + e)):
        ``v - m^2 = a (v~ - a m~^2)``, so ``e = w a c (v~ - a m~^2)/a^2`` with
        ``c = 1/(1 - rho(beta, t))`` (0 at t = 0: ``s_0 = 0``). ``e >= 0`` (``s >= 0``) is enforced.
        ``e`` is the step's one parameter-sized temporary: the callers turn it into their factor
        in place (:func:`_gamma_`; Adam*'s ``rsqrt``), without a second tensor for ``m~^2``.
        """
        ts, m_t, v_t = _VarianceAdapted._moments(b, grads, states, ops)
        a = [1.0 / (1.0 - b ** (t + 1.0)) for t in ts]
        # e <- m~^2, then in place v~ - a m~^2 = (v - m^2)/a, clamped at 0 (rounding can make it
        # negative; the scale below is >= 0, so this is the old floor m~^2 + e >= m~^2), scaled.
        e = ops.mul(m_t, m_t)
        ops.mul_scalars_(e, [-ai for ai in a])
        ops.axpy_(e, v_t, 1.0)
        ops.clamp_min_(e, [0.0] * len(e))
        ops.mul_scalars_(e, [
            (rho(b, t) if weight else 1.0) * _safe_reciprocal(_one_minus_rho(b, t)) / ai
            for t, ai in zip(ts, a)
        ])
        return a, m_t, e


def _gamma_(e: list[Tensor], m_t: list[Tensor], ops: type[_Ops]) -> list[Tensor]:
    """``e <- gamma = m~^2/(m~^2 + e) = 1/(1 + e/m~/m~)`` in place (no temporary for ``m~^2``).

    A NaN quotient counts as ``+inf`` (gamma 0): ``0/0`` where ``m = v = 0`` (defined as 0: no
    update; Sec. 5.4.4), and ``inf - inf`` where ``v~`` and ``m~^2`` both overflowed (as for
    ``v~ = inf``, issue 21); where ``m~ = 0 < e`` the quotient is ``+inf`` by itself. Where
    ``s = 0`` (the first step, ``beta = 0``, constant gradients) ``e = 0`` and gamma is exactly 1.
    (Not by flooring ``e`` at the dtype's smallest normal number first: ``tiny/m~^2`` is
    subnormal wherever the variance is 0 and ``|m~| > 1``, and the CPU then computed a compiled
    step ~15x slower, issue 18.) All terms are >= 0: no cancellation, a few ulp from the quotient."""
    ops.nan_to_inf_(ops.div_(ops.div_(e, m_t), m_t))
    return ops.reciprocal_(ops.add_(e, 1.0))


def _safe_reciprocal(x: float) -> float:
    if isinstance(x, Tensor):  # a compiled step: no data-dependent branch
        return torch.where(x > 0.0, 1.0 / torch.where(x > 0.0, x, 1.0), 0.0)
    return 1.0 / x if x > 0.0 else 0.0


def _adapted_step_(
    ops: type[_Ops],
    params: list[Tensor],
    xs: list[Tensor],
    m_t: list[Tensor],
    v_t: list[Tensor],
    a: list[float],
    k: list[float],
    coef: list[float],
) -> None:
    """``params[i] -= coef[i] * gamma * xs[i]`` with ``gamma = m~^2/(m~^2 + K (v~ - a m~^2)^+)``
    (SVAG: ``x = g``; M-SVAG: ``x = m~``, ``coef = lr a``), the eager form of :func:`_gamma_`
    in one temporary and 18 passes over N floats (with the moments' 8: 26, of which 7 counted).

    ``1/gamma = 1 + K (q - a)^+ = K max(q + 1/K - a, 1/K)`` with ``q = v~/m~/m~``: the temporary
    holds ``r = q + (1/K - a)`` (``v~/m~`` 3 passes, ``/m~`` 3, ``+`` 2; dividing twice, ``m~^2``
    cannot underflow), the clamp at ``1/K`` (2) is ``s >= 0`` (gamma <= 1). Where ``m~ = 0 < v~``,
    ``q = inf`` and gamma is exactly 0; where ``m~ = v~ = 0`` (a coordinate that never had a
    gradient) ``q`` is 0/0, mapped to ``+inf`` (2 passes): gamma 0 there too (0/0 := 0, Sec.
    5.4.4). The update is ``r <- x / r`` (3) and ``x -= coef/K r`` (3), not one ``addcdiv_`` (4),
    which forms ``(coef/K) x`` first: that overflows where ``v~`` did (float32 |g| > ~1e19, then
    ``r = inf``) and wrote NaN (issue 21); ``x / r`` is 0 there, as gamma. So the step stays finite
    for any finite gradient unless ``lr m`` itself overflows (as with ``torch.optim.Adam``, a
    ``v~ = inf`` stops the step). ``q >= a`` up to rounding, so
    no intermediate is subnormal (flooring ``v~ - a m~^2`` at ``tiny`` and dividing by ``m~^2``
    would make subnormals wherever the variance is 0 -- constant gradients -- and CPUs compute
    those ~10x slower). ``K = 0`` (t = 0, beta = 0: ``s = 0``,
    gamma = 1 wherever ``m~ != 0``) is the plain step ``coef x``."""
    pos = [i for i, ki in enumerate(k) if ki > 0.0]
    plain = [i for i, ki in enumerate(k) if not ki > 0.0]
    if plain:
        ps, xp, cp = _subset(plain, params, xs, coef)
        ops.axpy_scalars_(ps, xp, [-c for c in cp])
    if pos:
        ps, xp, ms, vs, a, k, coef = _subset(pos, params, xs, m_t, v_t, a, k, coef)
        r = ops.div_(ops.div(vs, ms), ms)
        ops.add_scalars_(r, [1.0 / ki - ai for ki, ai in zip(k, a)])
        ops.clamp_min_(r, [1.0 / ki for ki in k])
        for x, ri in zip(xp, r):  # (no foreach form)
            ri.nan_to_num_(nan=math.inf, posinf=math.inf, neginf=-math.inf)
            # r <- x / r before the scalar, not addcdiv's (scalar x) / r: where v~ overflowed
            # (|g| > ~1e19 in float32: v~ = inf, gamma = 0) (coef/K) x can overflow too, and
            # inf/inf wrote NaN (issue 21); x / r is 0 there and |x / r| <= K |x| elsewhere.
            torch.div(x, ri, out=ri)
        ops.axpy_scalars_(ps, r, [-c / ki for c, ki in zip(coef, k)])


class SVAG(_VarianceAdapted):
    """SVAG, stochastic variance-adapted gradient [Bal21, Alg. 4, Eq. 5.11 and 5.17]::

        m~, v~ as in Adam with beta1 = beta2 = beta;  m, v bias-corrected by 1 - beta^(t+1)
        s     = (v - m^2) / (1 - rho(beta, t))                 (Eq. 5.16; s = 0 at t = 0)
        gamma = m^2 / (m^2 + s)                                 (Eq. 5.17)
        x    <- x - lr gamma * g

    The variance adaptation factor ``gamma = 1/(1 + s/m^2)`` estimates the optimal factor
    ``1/(1 + sigma^2/grad^2)`` of Lemma 5.1 for the direction ``g``. ``t = state["step"] - 1``;
    the first step is an SGD step; no ``eps``; a coordinate with ``m = v = 0`` does not move.
    See the module docstring for the conventions.

    Args:
        params: parameters or param groups.
        lr: step size ``>= 0``.
        beta: the one EMA constant of both moments, in ``[0, 1)`` (0.9 in the thesis).
        weight_decay: decoupled, ``x <- (1 - lr wd) x``.
        maximize, foreach, nonfinite: see :class:`steepest.optim.base.StepOptimizer`.
        fused: ``True`` runs the step as one compiled elementwise kernel per tensor and dtype
            (the fused backend, :mod:`steepest.backend.fused`; eager with one warning where
            compiling fails); not with ``foreach=True``. ``None``/``False``: eager.

    State: ``step``, ``exp_avg`` (m~), ``exp_avg_sq`` (v~).

    Default ``lr=1.0`` (an SGD step damped by gamma <= 1; best 1-10 in docs/defaults.md); if you
    use AdamW at lr ``a``, start at about ``100 a`` (30-300 a there).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        *,
        beta: float = 0.9,
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        super().__init__(params, dict(lr=lr, beta=beta, weight_decay=weight_decay,
                                      maximize=maximize, foreach=foreach, fused=fused,
                                      nonfinite=nonfinite))

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        backend: Backend,
    ) -> None:
        foreach = backend.foreach
        if policy.eager_fused_ok(params):  # 26 passes (_adapted_step_)
            ops = policy.chunk_ops(foreach, params)
            lr, b = _scalar_arg(group["lr"]), group["momentum"]
            ts, m_t, v_t = self._moments(b, grads, states, ops)
            a, k = self._scales(b, ts, weight=False)
            apply_weight_decay(ops, params, lr, group["weight_decay"])
            _adapted_step_(ops, params, grads, m_t, v_t, a, k, [lr] * len(params))
            return
        ops = _ops(foreach)
        lr, wd = group["lr"], group["weight_decay"]
        _, m_t, e = self._denominators(group["momentum"], grads, states, ops, weight=False)
        upd = ops.mul_(_gamma_(e, m_t, ops), grads)  # gamma g, gamma = m^2/(m^2 + s)
        apply_weight_decay(ops, params, lr, wd)
        ops.axpy_(params, upd, -lr)


class AdamStar(_VarianceAdapted):
    """Adam* [Bal21, Alg. 5, App. B.3.2]: Adam with M-SVAG's variance estimate::

        m, v, s as in M-SVAG (beta1 = beta2 = beta, Eq. 5.16; s = 0 at t = 0)
        gamma = sqrt(m^2 / (m^2 + rho(beta, t) s))
        x    <- x - lr gamma * sign(m)

    computed as ``m / sqrt(m^2 + rho s)`` (the same number). It differs from Adam in the single
    ``beta``, the bias-corrected variance, the momentum factor ``rho`` and the absent ``eps``. The
    first step is a signSGD step; a coordinate with ``m = v = 0`` does not move.
    ``t = state["step"] - 1``.

    Args:
        params: parameters or param groups.
        lr: step size ``>= 0``.
        beta: EMA constant in ``[0, 1)``.
        weight_decay: decoupled, ``x <- (1 - lr wd) x``.
        maximize, foreach, nonfinite: see :class:`steepest.optim.base.StepOptimizer`.
        fused: ``True`` runs the step as one compiled elementwise kernel per tensor and dtype
            (the fused backend, :mod:`steepest.backend.fused`; eager with one warning where
            compiling fails); not with ``foreach=True``. ``None``/``False``: eager.

    State: ``step``, ``exp_avg`` (m~), ``exp_avg_sq`` (v~).

    Default ``lr=1e-2`` (a sign-sized step; best 3e-3..1e-2 in docs/defaults.md); if you use
    AdamW at lr ``a``, start at about ``0.25 a`` (0.1-0.3 a there).
    """

    _kind = "adamstar"

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        *,
        beta: float = 0.9,
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        super().__init__(params, dict(lr=lr, beta=beta, weight_decay=weight_decay,
                                      maximize=maximize, foreach=foreach, fused=fused,
                                      nonfinite=nonfinite))

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        backend: Backend,
    ) -> None:
        foreach = backend.foreach
        if policy.eager_fused_ok(params):
            self._fused_update(group, params, grads, states, foreach)
            return
        ops = _ops(foreach)
        lr, b, wd = group["lr"], group["momentum"], group["weight_decay"]
        _, m_t, den = self._denominators(b, grads, states, ops, weight=True)
        # gamma sign(m) = m / sqrt(m^2 + rho s) = m~ / sqrt(den'), den' = m~^2 + e floored at tiny
        # (0/0 := 0) (the bias corrections cancel); m~^2 is added in place, recomputed.
        ops.clamp_min_(ops.addcmul_(den, m_t, m_t, 1.0), _tiny(den))
        upd = ops.mul_(ops.rsqrt_(den), m_t)
        apply_weight_decay(ops, params, lr, wd)
        ops.axpy_(params, upd, -lr)

    def _fused_update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        foreach: bool,
    ) -> None:
        """The eager step in 22 passes over N floats (moments 8; then, in one temporary,
        ``d = max(v~ - a m~^2, tiny)`` 3 + 2, ``d += m~^2/K`` 3, ``rsqrt_`` 2, and
        ``x -= lr/sqrt(K) m~ d`` 4; 7 are counted).

        ``m / sqrt(m^2 + rho s) = m~ / sqrt(m~^2 + K (v~ - a m~^2)^+) = m~ rsqrt(d) / sqrt(K)``
        (K > 0). The floor ``tiny`` (instead of 0) keeps ``d > 0`` where ``m = v = 0`` (the update
        ``0 * rsqrt(tiny)`` is 0: 0/0 := 0) and changes ``m~^2 + K d`` only where that is below
        ``K tiny / eps``. At t = 0 and for beta = 0 (K = 0, s = 0) the step is the sign step."""
        ops = policy.chunk_ops(foreach, params)
        lr, b = _scalar_arg(group["lr"]), group["momentum"]
        ts, m_t, v_t = self._moments(b, grads, states, ops)
        a, k = self._scales(b, ts, weight=True)
        apply_weight_decay(ops, params, lr, group["weight_decay"])
        pos = [i for i, ki in enumerate(k) if ki > 0.0]
        sign = [i for i, ki in enumerate(k) if not ki > 0.0]
        if sign:
            ps, ms = _subset(sign, params, m_t)
            ops.axpy_(ps, ops.sign(ms), -lr)
        if pos:
            ps, ms, vs, a, k = _subset(pos, params, m_t, v_t, a, k)
            d = ops.addcmul_fused(vs, ms, ms, [-ai for ai in a])
            ops.clamp_min_(d, _tiny(d))
            ops.addcmul_scalars_(d, ms, ms, [1.0 / ki for ki in k])
            ops.addcmul_scalars_(ps, ops.rsqrt_(d), ms, [-lr / math.sqrt(ki) for ki in k])


class MSVAG(_VarianceAdapted):
    """M-SVAG, momentum SGD with variance adaptation ([Bal21, Alg. 2; Alg. 6] for minibatch
    variance).

    ``variance="moving_average"`` (default, Alg. 2)::

        m~ <- beta m~ + (1-beta) g;   v~ <- beta v~ + (1-beta) g^2
        m = m~/(1-beta^(t+1));        v = v~/(1-beta^(t+1))
        s = (v - m^2)/(1 - rho(beta, t))                       (Eq. 5.16; s = 0 at t = 0)
        gamma = m^2/(m^2 + rho(beta, t) s)                     (Eq. 5.19)
        x <- x - lr gamma * m

    ``rho(beta, t)`` (Eq. 5.15, :func:`rho`) turns the variance of one gradient into that of the
    average ``m`` (Sec. 5.4.3). The first step is an SGD step; no ``eps``; a coordinate with
    ``m = v = 0`` does not move. ``t = state["step"] - 1``.

    ``variance="minibatch"`` (Alg. 6) replaces ``v~`` by an average of the *within-batch*
    variance of the mean gradient, ``s_mb = grad_var / N`` (Eq. B.30 with the estimator of
    Eq. 3.30; unbiased, as App. B.4 says; the printed Eq. B.31 subtracts ``g^2`` rather than
    ``N/(N-1) g^2`` and is not, so we follow Eq. 3.30)::

        m~ <- beta m~ + (1-beta) g;       r~ <- beta^2 r~ + (1-beta^2) s_mb
        m = m~/(1-beta^(t+1));            r = r~/(1-beta^(2(t+1)))
        gamma = m^2/(m^2 + rho(beta, t) r);   x <- x - lr gamma * m

    Here the first step is already variance-adapted (``r`` is known at ``t = 0``). It reads, for
    every parameter ``p`` with a gradient, two attributes that must be set after each backward:

    * ``p.grad_var``: the elementwise variance of the N individual gradients of the mean-reduced
      loss, ``1/(N-1) sum_i (g_i - g)^2`` (Eq. 3.30), a tensor shaped like ``p.grad`` (for a
      complex ``p``, complex: real part the variance of the real parts, imaginary part that of
      the imaginary parts). It should be >= 0 (``GradientMoments`` clamps it); whatever the
      input, ``m^2 + rho r`` is floored at ``m^2``, so ``gamma <= 1``;
    * ``p.grad_batch_size``: the batch size ``N >= 2`` (an int).

    :class:`steepest.stats.GradientMoments` attaches both during an ordinary ``backward()``::

        opt = MSVAG(model.parameters(), lr=0.1, variance="minibatch")
        for x, y in loader:
            opt.zero_grad()
            with steepest.stats.GradientMoments(model):    # per-example variance, in backward
                loss = loss_fn(model(x), y)                # mean-reduced over the batch
                loss.backward()                            # sets p.grad, p.grad_var, p.grad_batch_size
            opt.step()

    A per-example loop gives the same attributes by hand: ``p.grad = G.mean(0)``,
    ``p.grad_var = G.var(0, unbiased=True)``, ``p.grad_batch_size = N`` for the stacked
    per-example gradients ``G``. A missing attribute raises a ``RuntimeError``; a ``grad_var``
    that is still the very tensor of the previous step (statistics not refreshed) warns;
    a non-finite ``grad_var`` follows the ``nonfinite`` policy like a non-finite gradient.

    Args:
        params: parameters or param groups.
        lr: step size ``>= 0``.
        beta: EMA constant in ``[0, 1)`` (0.9 in the thesis).
        variance: ``"moving_average"`` (Alg. 2) or ``"minibatch"`` (Alg. 6).
        weight_decay: decoupled, ``x <- (1 - lr wd) x``.
        maximize, foreach, nonfinite: see :class:`steepest.optim.base.StepOptimizer`.
        fused: ``True`` runs the step as one compiled elementwise kernel per tensor and dtype
            (the fused backend, :mod:`steepest.backend.fused`; eager with one warning where
            compiling fails); not with ``foreach=True``. ``None``/``False``: eager.

    State: ``step``, ``exp_avg`` (m~) and ``exp_avg_sq`` (v~, moving average) or ``exp_var``
    (r~, minibatch).

    Extreme gradients: ``v~`` (an average of g^2) overflows float32 from |g| ~ 2e19, as Adam's
    ``exp_avg_sq`` does; ``gamma`` is then 0 (no step on those coordinates, as Adam's step is 0
    there). The one-pass update is written overflow-safely (``m~ / r`` before the scalar, see
    :func:`_adapted_step_`; ``inf - inf`` in the reference form counts as ``v~ = inf``), so the
    parameters stay finite for every finite gradient (before: NaN after two steps at 1e38).

    Default ``lr=1.0`` (an SGD step damped by gamma <= 1; best 1-10 in docs/defaults.md); if you
    use AdamW at lr ``a``, start at about ``100 a`` (30-300 a there).
    """

    _kind = "msvag"

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        *,
        beta: float = 0.9,
        variance: str = "moving_average",
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        self._pending: dict[int, list[tuple[Tensor, int, Tensor]]] = {}
        super().__init__(params, dict(lr=lr, beta=beta, variance=variance,
                                      weight_decay=weight_decay, maximize=maximize,
                                      foreach=foreach, fused=fused, nonfinite=nonfinite))

    def _streams(self, group: dict[str, Any]) -> bool:
        return group["variance"] != "minibatch"  # that mode consumes per-group pending stats

    def _fused_unsupported(self, group: dict[str, Any]) -> str | None:
        if group["variance"] == "minibatch":
            return "with variance='minibatch' (its per-example variance has no fused kernel)"
        return None

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_choice("variance", group["variance"], VARIANCES)

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0, dtype=scalar_dtype())
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        key = "exp_var" if group["variance"] == "minibatch" else "exp_avg_sq"
        state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)

    # ---- the minibatch variance: read, check, and hand to _update ------------------------
    def _gather(self, gi: int, group: dict[str, Any]) -> list[tuple[int, Tensor, Tensor]]:
        items = super()._gather(gi, group)
        if not hasattr(self, "_pending") or gi == 0:
            self._pending = {}
        if group["variance"] == "minibatch":
            self._pending[gi] = [self._read_variance(gi, i, p) for i, p, _ in items]
        return items

    def _read_variance(self, gi: int, i: int, p: Tensor) -> tuple[Tensor, int, Tensor]:
        name = self._named(gi, i, p)
        var, n = getattr(p, "grad_var", None), getattr(p, "grad_batch_size", None)
        if var is None or n is None:
            raise RuntimeError(
                f"MSVAG(variance='minibatch') needs the per-example gradient variance of {name}: "
                "set p.grad_var (elementwise variance of the individual gradients, 1/(N-1) "
                "normalisation, shaped like p.grad) and p.grad_batch_size (N) after backward, "
                "e.g. by running the backward inside `with steepest.stats.GradientMoments(model):`"
            )
        if not isinstance(var, Tensor) or var.shape != p.shape or var.is_complex() != p.is_complex():
            got = f"shape {tuple(var.shape)}, dtype {var.dtype}" if isinstance(var, Tensor) else type(var).__name__
            raise ValueError(
                f"grad_var of {name} must be a tensor shaped like the parameter "
                f"(complex for a complex parameter), got {got}"
            )
        if isinstance(n, Tensor) and n.numel() == 1 and not n.is_floating_point():
            n = int(n)
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"grad_batch_size of {name} must be an int >= 2, got {n!r}")
        last = self.__dict__.setdefault("_last_var", {}).get(id(p))
        if last is not None and last[0]() is var and last[1] == var._version:
            warnings.warn(
                f"MSVAG: grad_var of {name} is the same, unmodified tensor as at the previous "
                "step; were the per-example statistics refreshed for this backward?",
                RuntimeWarning,
                stacklevel=_caller_level(),
            )
        return var, n, p

    def _all_finite(self, gathered: list[list[tuple[int, Tensor, Tensor]]]) -> tuple[bool, str]:
        ok, where = super()._all_finite(gathered)
        if not ok:
            return ok, where
        pending = getattr(self, "_pending", {})
        flat = [(gi, i, p, var) for gi, items in enumerate(gathered) if gi in pending
                for (i, p, _), (var, *_) in zip(items, pending[gi])]
        k = first_nonfinite([var for *_, var in flat])
        if k is None:
            return True, ""
        gi, i, p, _ = flat[k]
        return False, f"grad_var of {self._named(gi, i, p)}"

    # ---- the step ------------------------------------------------------------------------------
    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        backend: Backend,
    ) -> None:
        foreach = backend.foreach
        ops = _ops(foreach)
        lr, b, wd = group["lr"], group["momentum"], group["weight_decay"]
        if group["variance"] == "minibatch":
            gi = next(j for j, g in enumerate(self.param_groups) if g is group)
            pending = self._pending.pop(gi)
            # Remember what was consumed, to warn if the next step is handed the same tensor.
            seen = self.__dict__.setdefault("_last_var", {})
            for var, _, p in pending:
                seen[id(p)] = (weakref.ref(var), var._version)
            if foreach:
                self._minibatch_step(group, params, grads, states, pending, ops)
            else:  # one tensor at a time: its temporary is freed before the next is made
                for i in range(len(params)):
                    sl = slice(i, i + 1)
                    self._minibatch_step(group, params[sl], grads[sl], states[sl], pending[sl], ops)
            return
        if policy.eager_fused_ok(params):  # 26 passes (_adapted_step_)
            ops = policy.chunk_ops(foreach, params)
            lr = _scalar_arg(lr)
            ts, m_t, v_t = self._moments(b, grads, states, ops)
            a, k = self._scales(b, ts, weight=True)
            apply_weight_decay(ops, params, lr, wd)
            _adapted_step_(ops, params, m_t, m_t, v_t, a, k, [lr * ai for ai in a])  # m = a m~
            return
        a, m_t, e = self._denominators(b, grads, states, ops, weight=True)
        upd = ops.mul_(_gamma_(e, m_t, ops), m_t)  # gamma m~; gamma m = a gamma m~
        apply_weight_decay(ops, params, lr, wd)
        ops.axpy_scalars_(params, upd, [-lr * ai for ai in a])

    def _minibatch_step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        pending: list[tuple[Tensor, int, Tensor]],
        ops: type[_Ops],
    ) -> None:
        lr, b, wd = group["lr"], group["momentum"], group["weight_decay"]
        a, m_t, e = self._minibatch_denominators(b, grads, states, pending, ops)
        upd = ops.mul_(_gamma_(e, m_t, ops), m_t)  # gamma m~; gamma m = a gamma m~
        apply_weight_decay(ops, params, lr, wd)
        ops.axpy_scalars_(params, upd, [-lr * ai for ai in a])

    @staticmethod
    def _minibatch_denominators(
        b: float,
        grads: list[Tensor],
        states: list[dict[str, Any]],
        pending: list[tuple[Tensor, int, Tensor]],
        ops: type[_Ops],
    ) -> tuple[list[float], list[Tensor], list[Tensor]]:
        """Alg. 6: update m~ and r~ (r~ <- beta^2 r~ + (1-beta^2) grad_var/N); return
        ``a = 1/(1 - beta^(t+1))``, ``m~`` and ``e = rho r / a^2`` (``den' = m~^2 + e``) with
        ``r = r~/(1 - beta^(2(t+1)))``, so that ``gamma = m^2/(m^2 + rho r) = m~^2/den'``."""
        ts = [k - 1.0 for k in ops.count([s["step"] for s in states])]
        # grad_var in the working dtype (float32 for half parameters; real views of complex).
        var = [_real(v).to(dtype=g.dtype, device=g.device) for (v, *_), g in zip(pending, grads)]
        m_t = [s["exp_avg"] for s in states]
        r_t = [s["exp_var"] for s in states]
        ops.lerp_(m_t, grads, 1.0 - b)
        ops.mul_scalar_(r_t, b * b)
        ops.axpy_scalars_(r_t, var, [(1.0 - b * b) / n for _, n, _ in pending])
        a = [1.0 / (1.0 - b ** (t + 1.0)) for t in ts]
        den = ops.mul_scalars(r_t, [
            rho(b, t) / (ai * ai * (1.0 - b ** (2.0 * (t + 1.0)))) for t, ai in zip(ts, a)
        ])
        # Negative variance entries (rounding in the caller's estimator) count as 0: den' >= m~^2.
        return a, m_t, ops.clamp_min_(den, [0.0] * len(den))


_SKIP_DIRS = tuple(os.path.dirname(m.__file__) for m in (steepest, torch) if m.__file__)


def _caller_level() -> int:
    """``stacklevel`` of the first frame outside steepest and torch (the user's ``opt.step()``)."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_SKIP_DIRS):
        frame, level = frame.f_back, level + 1
    return level

