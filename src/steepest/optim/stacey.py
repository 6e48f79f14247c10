"""STACEY: stochastic l_p steepest descent accelerated by primal-dual interpolation [STACEY].

One step of every variant ([STACEY, Alg. 2-4]; z_0 = x_0 and m_0 = 0; docs/stacey.md)::

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
one of two forms (docs/stacey.md; :class:`steepest.norms.Lp`):

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

Memory and speed (issue 12). The step is computed in the paper's own order, in place: ``c``
(the only temporary of the momentum), ``y' = x - lr d(c) - lr wd x / (1 - tau)`` in ``x`` (one
``addcdiv_`` for ``s_eps``), the mirror step in ``z``, then ``x <- lerp(y', z, tau)``, which is
``tau z + (1 - tau) y - lr wd x`` (``tau = 1``: ``x <- z - lr wd x``). At most ``k`` temporaries
are alive (``c`` and ``s_eps``'s denominator; ``c``, ``|b|`` and ``M`` in the mirror step, whose
signs are parked in the sign bit of ``M > 0`` instead of sign temporaries), and the update runs
on blocks of at most ``1/k`` of a tensor (loop path; tensors above the stream chunk, in blocks
of at most that chunk) or of the chunk of tensors the base class hands over (foreach path):
the step holds at most one parameter-sized tensor beyond its state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from steepest.backend import Backend, ForeachOps, LoopOps, is_dtensor, policy
from steepest.norms import Lp
from steepest.optim import updates as _updates
from steepest.optim.base import StepOptimizer, check_betas, check_choice, check_range, scalar_dtype
from steepest.optim.engine import momentum_, momentum_one_

__all__ = ["VARIANTS", "Stacey", "mirror_step"]

VARIANTS = ("p2", "pp", "2p")
EPS_MODES = ("code", "paper")
# The smallest normal float32: a positive floor for M that is representable in every working
# dtype (half-precision parameters are computed in float32 by the base class).
_TINY = torch.finfo(torch.float32).tiny
# The multi-tensor list ops of the foreach path (steepest.backend).
F = ForeachOps


def _mirror_single_(z: Tensor, c: Tensor, alpha: float, p: float) -> None:
    """``z <- phi^-1(phi(z) - alpha c)`` in place, in the scaled form of the module docstring.

    Two temporaries the size of ``z`` (``|b|``, then ``phi(b/M)``; and ``M``). The signs of
    ``z`` and of ``w = phi(z/M) - phi(b/M)`` are parked in the sign bit of ``M > 0`` while ``z``'s
    buffer holds magnitudes, so that ``phi(z/M)`` and ``phi^-1(w)`` are computed in ``z`` itself.
    The same numbers as ``sign(w) |w|^(1/k) M`` with ``w = sign(z) (|z|/M)^k - sign(c) (|b|/M)^k``
    (IEEE division and multiplication are symmetric in sign: ``z / (sign(z) M) = |z| / M``)."""
    k = p - 1.0
    r = 1.0 / k
    b = c.abs().pow_(r).mul_(alpha**r)  # |phi^-1(alpha c)|
    m = z.abs()
    torch.maximum(m, b, out=m)
    m.clamp_min_(_TINY)  # M
    b.div_(m).pow_(k).copysign_(c)  # phi(b / M) = alpha c / M^{p-1}
    m.copysign_(z)  # park sign(z)
    z.div_(m).pow_(k).copysign_(m)  # phi(z / M)
    z.sub_(b)  # w
    del b
    m.copysign_(z)  # sign(w) M
    z.abs_().pow_(r).mul_(m)


def _mirror_foreach_(zs: list[Tensor], c: list[Tensor], alpha: float, p: float, fresh: bool) -> None:
    """The multi-tensor (foreach) version of :func:`_mirror_single_` (the same
    numbers). There is no foreach copysign: signs are multiplied in, in a third temporary list
    (``c``'s own buffer when it is a fresh temporary, which this consumes)."""
    k = p - 1.0
    r = 1.0 / k
    b = F.abs(c)
    F.pow_(b, r)
    F.mul_scalar_(b, alpha**r)
    m = F.abs(zs)
    F.maximum_(m, b)
    F.clamp_min_scalar_(m, _TINY)
    F.div_(b, m)
    F.pow_(b, k)
    if fresh:
        F.sign_(c)
        s = c
    else:
        s = F.sign(c)
    F.mul_(b, s)  # phi(b / M)
    # s is free: phi(z / M) = |z/M|^k sign(z) in it, then w = phi(z/M) - phi(b/M).
    F.div_(zs, m)
    F.copy_(s, zs)
    F.abs_(s)
    F.pow_(s, k)
    F.sign_(zs)
    F.mul_(s, zs)
    F.sub_(s, b)
    del b
    # z <- sign(w) M |w|^{1/k} (|w|^{1/k} M up to the sign: the same product).
    F.copy_(zs, s)
    F.sign_(zs)
    F.mul_(zs, m)
    F.abs_(s)
    F.pow_(s, r)
    F.mul_(zs, s)


class _Cfg:
    """The constants of one group's step (computed once per ``_update`` call)."""

    __slots__ = (
        "alpha",
        "decay",
        "descent",
        "eps",
        "lr",
        "mom",
        "norm",
        "p",
        "plain",
        "tau",
        "temps",
        "w1",
        "w2",
        "wd",
    )

    def __init__(self, group: dict[str, Any]) -> None:
        self.lr = lr = float(group["lr"])
        self.alpha = lr if group["alpha"] is None else float(group["alpha"])
        self.tau, self.wd = float(group["tau"]), float(group["weight_decay"])
        self.p = p = float(group["p"])
        self.eps = float(group["eps"])
        b1, b2 = group["betas"]
        # momentum_direction_input's cases: c = g, c = m (updated), or a fresh c.
        self.mom = "none" if b1 == 0.0 and b2 == 0.0 else ("tied" if b1 == b2 else "fresh")
        self.w1, self.w2 = 1.0 - b1, 1.0 - b2
        variant = group["variant"]
        self.plain = variant == "p2" or p == 2.0  # the mirror step is z - alpha c
        # The descent direction d(c): "id" (p = 2, or the l_2 step of "2p"), "sign" (p = inf),
        # "pow" (sign(c)|c|^{1/(p-1)}, eps = 0) or "eps" (s_eps).
        if p == 2.0 or variant == "2p":
            self.descent = "id"
        elif math.isinf(p):
            self.descent = "sign"
        else:
            self.descent = "pow" if self.eps == 0.0 else "eps"
        # The descent's map is Lp's ([STACEY, Alg. 1]: s(c), or s_eps(c) = c / den for eps > 0).
        self.norm = Lp(p, self.eps, group["eps_mode"]) if self.descent != "id" else None
        # x_{t+1} = tau z + (1 - tau) y' with y' = x - lr d(c) - lr wd x / (1 - tau), which is
        # x_{t+1} = tau z + (1 - tau)(x - lr d(c)) - lr wd x (tau = 1: z - lr wd x).
        self.decay = 1.0 - lr * self.wd / (1.0 - self.tau) if self.tau < 1.0 and self.wd else 1.0
        # Parameter-sized temporaries alive at once (c included): c and the descent's
        # denominator; c, |b| and M in the mirror step.
        self.temps = (1 if self.descent in ("id", "sign") else 2) if self.plain else 3


def _descent_foreach_(xs: list[Tensor], c: list[Tensor], k: _Cfg, consume: bool) -> None:
    """The multi-tensor version of :func:`_descent_`."""
    if k.descent == "id":
        F.axpy_(xs, c, -k.lr)
        return
    assert k.norm is not None
    if k.descent == "eps":  # s_eps(c) = c / den: the division inside the update
        F.addcdiv_(xs, c, k.norm.denominators(c, F), -k.lr)
        return
    F.axpy_(xs, k.norm.map_all(c, None, F, owned=consume), -k.lr)  # Lp's map: sign(c), s(c)


def _descent_(x: Tensor, c: Tensor, k: _Cfg, consume: bool) -> None:
    """``x <- x - lr d(c)`` (one tensor); ``consume``: ``c`` is a fresh temporary, free after."""
    descent, norm = k.descent, k.norm
    if descent == "id":
        x.add_(c, alpha=-k.lr)
    elif descent == "eps":  # s_eps(c) = c / den (Lp's smoothed map), the division in the update
        assert norm is not None
        (den,) = norm.denominators([c])
        x.addcdiv_(c, den, value=-k.lr)
    else:  # Lp's map: sign(c) (in place where c is ours), sign(c)|c|^{1/(p-1)}
        assert norm is not None
        x.add_(norm.map_(c) if consume else norm.map(c), alpha=-k.lr)


def _step_single(x: Tensor, g: Tensor, m: Tensor, z: Tensor, k: _Cfg) -> None:
    """One STACEY step on one tensor (or on aligned blocks of x, g, m, z), all in place.

    Order: c and m; the descent step y' = x - lr d(c) (- lr wd x / (1 - tau)) in x; the mirror
    step on z; then the coupling x <- tau z + (1 - tau) y' (see :class:`_Cfg`). The plain mirror
    step z - alpha c goes first, so that the descent may consume c."""
    if k.mom == "none":
        c, fresh = g, False
    else:  # the engine's momentum schemes (EMA, or Lion-style with a fresh c)
        c, fresh = momentum_one_(m, g, k.w1, k.w2), k.mom == "fresh"
    tau = k.tau
    if k.decay != 1.0:
        x.mul_(k.decay)
    if k.plain:
        z.add_(c, alpha=-k.alpha)
        if tau < 1.0:
            _descent_(x, c, k, fresh)
    else:
        if tau < 1.0:
            _descent_(x, c, k, False)
        _mirror_single_(z, c, k.alpha, k.p)
    del c
    if tau == 1.0:
        if k.wd:
            x.mul_(-k.lr * k.wd).add_(z)
        else:
            x.copy_(z)
    elif tau:
        x.lerp_(z, tau)


def _step_traced(x: Tensor, g: Tensor, m: Tensor, z: Tensor, k: _Cfg) -> None:
    """:func:`_step_single` while ``torch.compile`` traces (whole tensors; inductor fuses the
    ops): step-dependent scalars as products, never as ``alpha=``/``value=``/``weight``
    (inductor freezes those; see :func:`steepest.backend.ops._compiling`)."""
    # the engine's momentum schemes; LoopOps take the product form while compiling
    c = g if k.mom == "none" else momentum_(LoopOps, [m], [g], k.w1, k.w2)[0]
    if k.decay != 1.0:
        x.mul_(k.decay)
    if k.plain:
        z.add_(c * -k.alpha)
    if k.tau < 1.0:
        if k.norm is None:  # the l2 step
            d = c
        elif k.descent == "eps":
            d = c / k.norm.denominators([c])[0]
        else:
            d = k.norm.map(c)  # Lp's map
        x.add_(d * -k.lr)
    if not k.plain:
        _mirror_single_(z, c, k.alpha, k.p)
    if k.tau == 1.0:
        if k.wd:
            x.mul_(-k.lr * k.wd).add_(z)
        else:
            x.copy_(z)
    elif k.tau:
        x.add_((z - x) * k.tau)


def _step_foreach(xs: list[Tensor], gs: list[Tensor], ms: list[Tensor], zs: list[Tensor],
                  k: _Cfg) -> None:
    """The multi-tensor version of :func:`_step_single` (the same numbers)."""
    if k.mom == "none":
        c, fresh = gs, False
    else:  # the engine's momentum schemes (EMA, or Lion-style with a fresh c)
        c, fresh = momentum_(F, ms, gs, k.w1, k.w2), k.mom == "fresh"
    if k.decay != 1.0:
        F.mul_scalar_(xs, k.decay)
    if k.plain:
        F.axpy_(zs, c, -k.alpha)
        if k.tau < 1.0:
            _descent_foreach_(xs, c, k, fresh)
    else:
        if k.tau < 1.0:
            _descent_foreach_(xs, c, k, False)
        _mirror_foreach_(zs, c, k.alpha, k.p, fresh)
    del c
    if k.tau == 1.0:
        if k.wd:
            F.mul_scalar_(xs, -k.lr * k.wd)
            F.axpy_(xs, zs, 1.0)
        else:
            F.copy_(xs, zs)
    elif k.tau:
        F.lerp_(xs, zs, k.tau)


def _splittable(ts: tuple[Tensor, ...]) -> bool:
    return all(t.is_contiguous() for t in ts) and not is_dtensor(ts[0])


def _quad(ts: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x, g, m, z)`` as the fixed-length tuple the step functions take."""
    x, g, m, z = ts
    return x, g, m, z


def _blocks(ts: tuple[Tensor, ...], size: int) -> list[tuple[Tensor, ...]]:
    """Aligned views of blocks of at most ``size`` elements of the same-shaped tensors ``ts``:
    flat blocks when all are contiguous, else blocks of rows along dim 0 (any layout)."""
    if _splittable(ts):
        return list(zip(*(t.view(-1).split(size) for t in ts)))
    x = ts[0]
    if x.dim() == 0 or is_dtensor(x):  # a shard: no views to split
        return [ts]
    rows = max(1, size // max(1, x[0].numel()))
    return list(zip(*(t.split(rows) for t in ts)))


def _pieces(items: list[tuple[Tensor, ...]], limit: int) -> list[list[tuple[Tensor, ...]]]:
    """Split aligned tuples (x, g, m, z) into pieces of at most ``limit`` elements, cutting a
    tensor where a piece fills up: into flat views when contiguous, else into rows along dim 0
    (a row larger than ``limit`` stays whole, and so does a 0-d tensor or a DTensor shard)."""
    pieces: list[list[tuple[Tensor, ...]]] = []
    cur: list[tuple[Tensor, ...]] = []
    size = 0
    for ts in items:
        n = ts[0].numel()
        if n == 0:
            continue
        if size + n <= limit:
            cur.append(ts)
            size += n
            continue
        if _splittable(ts):
            views, unit = [t.view(-1) for t in ts], 1
        elif ts[0].dim() and not is_dtensor(ts[0]):
            views, unit = list(ts), n // ts[0].shape[0]
        else:  # a piece of its own
            if cur:
                pieces.append(cur)
            pieces.append([ts])
            cur, size = [], 0
            continue
        rows, off = n // unit, 0
        while off < rows:
            room = (limit - size) // unit
            if room == 0 and size:  # not one more row fits: next piece
                pieces.append(cur)
                cur, size = [], 0
                continue
            take = min(max(room, 1), rows - off)
            cur.append(tuple(v.narrow(0, off, take) for v in views))
            size += take * unit
            off += take
            if size >= limit:
                pieces.append(cur)
                cur, size = [], 0
    if cur:
        pieces.append(cur)
    return pieces


def mirror_step(z: Tensor, c: Tensor, alpha: float, p: float) -> Tensor:
    """The l_p mirror-descent step of [STACEY] (Alg. 3 line 5, Alg. 4 line 5), out of place:
    ``phi^-1(phi(z) - alpha c)`` with ``phi(z) = |z|^{p-2} z``, evaluated without overflow."""
    check_range("p", p, 2.0, math.inf)
    check_range("alpha", alpha, 0.0, math.inf)
    out = z.clone()
    if p == 2.0:
        return out.sub_(c, alpha=alpha)
    _mirror_single_(out, c, float(alpha), float(p))
    return out


class Stacey(StepOptimizer):
    """STACEY(p,2), STACEY(p,p) and STACEY(2,p) ([STACEY, Alg. 2, Alg. 3, App. C] Alg. 4).

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
        fused: ``True`` runs the whole step (momentum, descent map, mirror step, coupling) as
            one compiled elementwise kernel per tensor and dtype (the fused backend,
            :mod:`steepest.backend.fused`; :func:`steepest.optim.updates.stacey_step`; eager
            with one warning where compiling fails): one pass over x, g, m, z, no temporaries;
            not with ``foreach=True``. ``None``/``False``: eager.
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
        params: ParamsT,
        lr: float = 0.3,
        *,
        alpha: float | None = None,
        tau: float = 1e-3,
        p: float = 3.0,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        variant: str = "p2",
        eps_mode: str = "code",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
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
            fused=fused,
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

    def _fused_unsupported(self, group: dict[str, Any]) -> str | None:
        return None  # every variant is elementwise: one kernel per tensor

    def _fused_run(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                   states: list[dict[str, Any]], backend: Any) -> None:
        ForeachOps.increment_([s["step"] for s in states])
        _updates.fused_stacey(group, params, grads, states, backend, _Cfg(group))

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0, dtype=scalar_dtype())
        # z_0 = x_0 (docs/stacey.md): taken at the first step, so weights loaded after the
        # optimizer was built are the starting point.
        state["z"] = p.detach().clone(memory_format=torch.preserve_format)
        state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        backend: Backend,
    ) -> None:
        # The step counters (0-d CPU tensors) in one call on both paths: a Python loop of 0-d
        # adds was 1/8 of the loop path's time on 1,000 small tensors.
        ForeachOps.increment_([s["step"] for s in states])
        k = _Cfg(group)
        items: list[tuple[Tensor, ...]] = [(x, g, s["m"], s["z"]) for x, g, s in zip(params, grads, states)]
        if backend.compiling:  # inductor fuses the whole step: no blocks needed (nor wanted)
            for x, g, m, z in items:
                _step_traced(x, g, m, z, k)
            return
        # Peak memory (issue 12): k.temps temporaries of a block at a time, with blocks of at
        # most 1/k.temps of what a step may hold beyond the state: this chunk of tensors on the
        # foreach path; on the loop path the tensor, or the stream chunk for tensors below it
        # (k.temps of them fit in one chunk: 256 KiB at most), so that the peak is at most the
        # largest tensor or one stream chunk. (Blocks cost ~5-10% of the time on the big layout of
        # benchmarks/optim_step.py, for the per-op overhead; no cache gain was measured.)
        if backend.foreach:
            total = sum(ts[0].numel() for ts in items)
            for piece in _pieces(items, max(1, total // k.temps)):
                xs, gs, ms, zs = (list(t) for t in zip(*piece))
                _step_foreach(xs, gs, ms, zs, k)
            return
        chunk = policy.stream_chunk()
        for ts in items:
            n = ts[0].numel()
            if n * k.temps <= chunk:
                if n:
                    _step_single(*_quad(ts), k)
                continue
            for blk in _blocks(ts, min(chunk, n // k.temps)):
                _step_single(*_quad(blk), k)
