"""STACEY: stochastic l_p steepest descent accelerated by primal-dual interpolation (seed 003).

One step of every variant (seed 003, Alg. 2-4; z_0 = x_0 and m_0 = 0, SPEC.md Sec. 2)::

    c_{t+1} = b1 m_t + (1 - b1) g_t                                   (Lion-style momentum)
    y_{t+1} = x_t - lr_t d(c_{t+1})                                   (steepest-descent step)
    z_{t+1} = mirror step of z_t along c_{t+1} with step size alpha   (mirror-descent step)
    x_{t+1} = tau z_{t+1} + (1 - tau) y_{t+1} - lr_t wd x_t           (linear coupling)
    m_{t+1} = b2 m_t + (1 - b2) g_t

=========  =====================================  ==============================================
variant    descent step d(c)                      mirror step
=========  =====================================  ==============================================
``"p2"``   s_eps(c), the l_p step (Alg. 2)         z - alpha c  (dgf 1/2 ||.||_2^2)
``"pp"``   s_eps(c) (Alg. 3)                       phi^-1(phi(z) - alpha c)  (dgf 1/p ||.||_p^p)
``"2p"``   c, the l_2 step (App. C, Alg. 4)        phi^-1(phi(z) - alpha c)
=========  =====================================  ==============================================

with ``phi(z) = |z|^{p-2} z`` (the gradient of the dgf ``||z||_p^p / p``) and its inverse
``phi^-1(w) = sign(w) |w|^{1/(p-1)}``. ``s_eps`` is the smoothed unscaled l_p map of Alg. 1-3 in
one of two forms (SPEC.md Sec. 2; :class:`steepest.norms.Lp`):

* ``eps_mode="code"`` (default): ``s_eps_i(c) = c_i (|c_i| + eps)^{-(p-2)/(p-1)}``, the form of
  the authors' public code (github xinyuluo8561/Stacey), which produced the published numbers;
* ``eps_mode="paper"``: ``s_eps_i(c) = c_i / (|c_i|^{(p-2)/(p-1)} + eps)``, as printed in Alg. 2-3.

``p = 2`` makes both maps the identity (STACEY(2,2) is momentum SGD coupled with a gradient
step), ``p = inf`` makes ``s_eps`` the sign (variant ``"p2"`` only: the mirror map needs a finite
``p``). From ``x_0 = 0`` the first step is the identity of Sec. 4,
``x_1 = -(1 - tau) lr s_eps((1 - b1) g_0) - tau alpha (1 - b1) g_0`` (variant ``"p2"``), and
``tau = 0`` removes the coupling, leaving Lion-K with K = ||.||_p (l_p descent on Lion's momentum).

Numerics. ``phi(z)`` overflows in float32 for ``|z| > 3.4e38^{1/(p-1)}`` (about 3.5e5 at p = 8)
and underflows for small ``|z|``, so the mirror step is evaluated in the equivalent scaled form
(phi is (p-1)-homogeneous)::

    b = phi^-1(alpha c),  M = max(|z|, |b|, tiny),
    phi^-1(phi(z) - alpha c) = M phi^-1(phi(z/M) - phi(b/M))

where every power acts on a number in [-2, 2]: no overflow, no 0/0 at ``z = c = 0``, and a zero
``c`` leaves ``z`` bit-exactly unchanged (``z/M = sign(z)``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

import steepest.optim.base as _base
from steepest._backend import _Ops, _ops, is_dtensor
from steepest.norms import Lp
from steepest.optim.base import StepOptimizer, check_betas, check_choice, check_range
from steepest.optim.steepest import momentum_direction_input

__all__ = ["VARIANTS", "Stacey", "mirror_step"]

VARIANTS = ("p2", "pp", "2p")
EPS_MODES = ("code", "paper")
# The smallest normal float32: a positive floor for M that is representable in every working
# dtype (half-precision parameters are computed in float32 by the base class).
_TINY = torch.finfo(torch.float32).tiny


def _mirror_single_(z: Tensor, c: Tensor, alpha: float, p: float) -> None:
    """``z <- phi^-1(phi(z) - alpha c)`` in place, in the scaled form of the module docstring."""
    k = p - 1.0
    b = c.abs().pow_(1.0 / k).mul_(alpha ** (1.0 / k))  # |phi^-1(alpha c)|
    m = torch.maximum(z.abs(), b).clamp_min_(_TINY)
    b.div_(m).pow_(k).mul_(torch.sign(c))  # phi(b / M) = alpha c / M^{p-1}
    w = z.abs().div_(m).pow_(k).mul_(torch.sign(z))  # phi(z / M)
    w.sub_(b)
    z.copy_(w.abs().pow_(1.0 / k).mul_(torch.sign(w)).mul_(m))


def _mirror_foreach_(zs: list[Tensor], c: list[Tensor], alpha: float, p: float) -> None:
    """The multi-tensor (``torch._foreach_*``) version of :func:`_mirror_single_`."""
    k = p - 1.0
    b = torch._foreach_abs(c)
    torch._foreach_pow_(b, 1.0 / k)
    torch._foreach_mul_(b, alpha ** (1.0 / k))
    m = torch._foreach_maximum(torch._foreach_abs(zs), b)
    torch._foreach_clamp_min_(m, _TINY)
    torch._foreach_div_(b, m)
    torch._foreach_pow_(b, k)
    torch._foreach_mul_(b, torch._foreach_sign(c))
    w = torch._foreach_abs(zs)
    torch._foreach_div_(w, m)
    torch._foreach_pow_(w, k)
    torch._foreach_mul_(w, torch._foreach_sign(zs))
    torch._foreach_sub_(w, b)
    signs = torch._foreach_sign(w)
    torch._foreach_abs_(w)
    torch._foreach_pow_(w, 1.0 / k)
    torch._foreach_mul_(w, signs)
    torch._foreach_mul_(w, m)
    torch._foreach_copy_(zs, w)


def _unit_into_(c: list[Tensor], lp: Lp, ops: type[_Ops]) -> list[Tensor]:
    """``Lp(p, eps, eps_mode).unit(c)``, the same numbers, written into ``c`` (a fresh temporary
    of the step) where the map allows: the sign (``p = inf``) and the identity (``p = 2``) in
    place; the eps-smoothed forms divide ``c`` by their denominator in place, which the loop path
    builds a row block at a time (at most ``_STREAM_CHUNK`` elements, the streaming granularity
    of :class:`~steepest.optim.base.StepOptimizer`), so that the step's only parameter-sized
    temporary is ``c``. Without eps, ``Lp.unit`` itself (a fresh result; ``c`` is then dropped)."""
    p, eps = lp.p, lp.eps
    if math.isinf(p):
        if ops.foreach:
            torch._foreach_sign_(c)
        else:
            for x in c:
                x.sign_()
        return c
    if p == 2.0:
        return c
    if eps == 0.0:
        return lp.unit(c, ops)
    e = (p - 2.0) / (p - 1.0)
    paper = lp.eps_mode == "paper"

    def den(xs: list[Tensor]) -> list[Tensor]:  # as Lp.unit: (|x|^e + eps) or (|x| + eps)^e
        if paper:
            return ops.add_(ops.pow_(ops.abs(xs), e), eps)
        return ops.pow_(ops.add_(ops.abs(xs), eps), e)

    if ops.foreach:
        return ops.div_(c, den(c))
    chunk = _base._STREAM_CHUNK
    for x in c:
        if x.dim() == 0 or x.numel() <= chunk or is_dtensor(x):  # a shard: no views to split
            x.div_(den([x])[0])
            continue
        if x.is_contiguous():  # flat blocks of a power-of-2 length: the vectorized kernels
            blocks = x.view(-1).split(chunk)  # see the same element runs as on the whole tensor
        else:  # views along dim 0: any memory layout
            blocks = x.split(max(1, chunk // max(1, x[0].numel())))
        for blk in blocks:
            blk.div_(den([blk])[0])
    return c


def mirror_step(z: Tensor, c: Tensor, alpha: float, p: float) -> Tensor:
    """The l_p mirror-descent step of seed 003 (Alg. 3 line 5, Alg. 4 line 5), out of place:
    ``phi^-1(phi(z) - alpha c)`` with ``phi(z) = |z|^{p-2} z``, evaluated without overflow."""
    check_range("p", p, 2.0, math.inf)
    check_range("alpha", alpha, 0.0, math.inf)
    out = z.clone()
    if p == 2.0:
        return out.sub_(c, alpha=alpha)
    _mirror_single_(out, c, float(alpha), float(p))
    return out


class Stacey(StepOptimizer):
    """STACEY(p,2), STACEY(p,p) and STACEY(2,p) (seed 003, Alg. 2, Alg. 3, App. C Alg. 4).

    The update is given in the module docstring (:mod:`steepest.optim.stacey`). Everything is
    elementwise: there is no norm reduction, so the result does not depend on how parameters
    are grouped or stacked.

    Args:
        params: parameters or param groups (each group may override every option).
        lr: the step size eta_t of the steepest-descent step, ``>= 0`` (LR schedulers change it).
        alpha: the step size of the mirror (dual) step, ``>= 0``. ``None`` (default) ties it to
            the learning rate, ``alpha_t = lr_t``: schedules (warm-up, cosine decay) then scale
            the whole update, and a group with ``lr = 0`` is frozen. Five of the nine STACEY
            rows of App. D (Tables 5-7) use alpha = lr. A number is used as is, unscheduled, as
            in Alg. 2-4 (e.g. App. D's ImageNet STACEY(p,p): lr 0.01, alpha 0.1).
        tau: the coupling weight in ``[0, 1]`` (App. D: 0.001 in every table). ``tau = 0`` is
            Lion-K with K = ||.||_p (no acceleration), ``tau = 1`` follows the mirror sequence.
        p: the l_p norm, a real ``>= 2``; ``math.inf`` (sign step) for ``variant="p2"`` only.
            Default 3, the best p of the paper's LLaMA pretraining (Sec. 5.3) and its ImageNet
            STACEY(p,p) row.
        betas: ``(b1, b2)`` in ``[0, 1)``: b1 interpolates the momentum used by the step, b2
            updates the momentum (App. D: 0.9, 0.99).
        eps: smoothing of the descent step ``s_eps`` (``>= 0``; App. D: 1e-8). Unused by
            ``variant="2p"``, whose descent step is plain l_2.
        weight_decay: decoupled weight decay ``lr wd x_t`` (App. D uses 5e-4 to 0.4).
        variant: ``"p2"`` (Alg. 2), ``"pp"`` (Alg. 3) or ``"2p"`` (Alg. 4).
        eps_mode: ``"code"`` (default, the authors' code) or ``"paper"`` (Alg. 2-3 as printed);
            see the module docstring. At ``p = 2`` both are the identity (the printed form would
            divide by ``1 + eps``).
        maximize: ascend instead of descend.
        foreach: ``None`` (loop on CPU, foreach on CUDA), ``True`` or ``False``.
        nonfinite: ``None`` (default: ``"raise"`` on CPU, ``"ignore"`` elsewhere and when
            compiled), ``"raise"``, ``"skip"`` or ``"ignore"`` for NaN/inf gradients (see
            :mod:`steepest.optim.base`).

    State (in ``self.state[param]``, so checkpoints keep it, unlike the authors' code, which
    stores it as tensor attributes): ``"z"`` (the mirror sequence, ``z_0 = x_0`` at the first
    step), ``"m"`` (momentum, ``m_0 = 0``) and ``"step"``.

    Example::

        opt = steepest.Stacey(model.parameters(), lr=0.01, alpha=0.1, tau=1e-3, p=3,
                              variant="pp", weight_decay=5e-4)

    Default ``lr=0.3`` (with ``alpha=None``; best 0.1-0.3 in docs/defaults.md); if you use AdamW
    at lr ``a``, start at about ``7 a`` (3-10 a there).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.3,
        alpha: float | None = None,
        tau: float = 1e-3,
        p: float = 3.0,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        variant: str = "p2",
        eps_mode: str = "code",
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            alpha=alpha,
            tau=tau,
            p=p,
            betas=tuple(betas) if isinstance(betas, list) else betas,
            eps=eps,
            weight_decay=weight_decay,
            variant=variant,
            eps_mode=eps_mode,
            maximize=maximize,
            foreach=foreach,
            nonfinite=nonfinite,
        )
        super().__init__(params, defaults)

    def _streams(self, group: dict[str, Any]) -> bool:
        return True  # elementwise: the loop path streams tensor by tensor (StepOptimizer._streams)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_choice("variant", group["variant"], VARIANTS)
        check_choice("eps_mode", group["eps_mode"], EPS_MODES)
        check_betas(group["betas"])
        check_range("tau", group["tau"], 0.0, 1.0, hi_open=False)
        check_range("eps", group["eps"], 0.0, math.inf)
        if group["alpha"] is not None:
            check_range("alpha", group["alpha"], 0.0, math.inf)
        p = group["p"]
        if group["variant"] == "p2":
            check_range("p", p, 2.0, math.inf, hi_open=False)
        else:
            ok = isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p)
            if not ok or p < 2:
                raise ValueError(
                    f"p must be a finite real number >= 2 for variant {group['variant']!r} "
                    f"(its mirror map |z|^(p-2) z needs a finite p; p = inf only with 'p2'), "
                    f"got {p!r}"
                )

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        # z_0 = x_0 (SPEC.md Sec. 2): taken at the first step, so weights loaded after the
        # optimizer was built are the starting point.
        state["z"] = p.detach().clone(memory_format=torch.preserve_format)
        state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        foreach: bool,
    ) -> None:
        ops = _ops(foreach)
        lr = float(group["lr"])
        alpha = lr if group["alpha"] is None else float(group["alpha"])
        tau, wd, variant = float(group["tau"]), float(group["weight_decay"]), group["variant"]
        p = float(group["p"])

        steps = [s["step"] for s in states]
        if foreach:
            torch._foreach_add_(steps, 1.0)
        else:
            for s in steps:
                s.add_(1.0)

        # c = b1 m + (1-b1) g; m <- b2 m + (1-b2) g. c may alias m or g (then read-only);
        # otherwise it is a fresh temporary, which becomes u below (peak memory: one tensor).
        b1, b2 = group["betas"]
        c = momentum_direction_input((b1, b2), grads, states, foreach, key="m")
        fresh = not (b1 == 0.0 and b2 == 0.0) and b1 != b2  # momentum_direction_input's cases
        zs = [s["z"] for s in states]

        # Mirror step on z (first: the last use of c as such).
        if variant == "p2" or p == 2.0:
            ops.axpy_(zs, c, -alpha)
        elif foreach:
            _mirror_foreach_(zs, c, alpha, p)
        else:
            for z, ci in zip(zs, c):
                _mirror_single_(z, ci, alpha, p)

        # u = (1-tau) lr d(c) + lr wd x_t, in c's buffer when it is fresh (x_t is needed before
        # x changes). The same numbers as a fresh u: the same ops on the same values.
        if variant == "2p":
            if fresh:
                u = ops.mul_scalar_(c, (1.0 - tau) * lr)
            else:
                u = [ci * ((1.0 - tau) * lr) for ci in c] if not foreach else list(
                    torch._foreach_mul(c, (1.0 - tau) * lr)
                )
        else:
            lp = Lp(p, group["eps"], group["eps_mode"])
            u = _unit_into_(c, lp, ops) if fresh else lp.unit(c, ops)  # s_eps(c)
            ops.mul_scalar_(u, (1.0 - tau) * lr)
        if wd:
            ops.axpy_(u, params, lr * wd)

        # x <- x + tau (z - x) - u = tau z + (1-tau) y - lr wd x. lerp keeps x bit-exact when
        # z == x and u == 0 (a zero gradient from a fresh state is a no-op).
        if tau:
            ops.lerp_(params, zs, tau)
        ops.axpy_(params, u, -1.0)
