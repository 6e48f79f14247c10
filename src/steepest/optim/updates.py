"""The elementwise math of each update, written once as plain per-tensor tensor functions.

These are the kernels of the fused backend (:mod:`steepest.backend.fused` compiles each one
with ``torch.compile``, shape-dynamic, once per function, static options and dtype). Each is
also correct eager (the fallback when compiling is unavailable runs them as they are). The
drivers at the end (``fused_*``) are what an optimizer's ``_fused_run`` calls: they make the
reductions and per-tensor scalars and call ``backend.kernel_map`` (a reduction pass: the rows'
values stacked in one tensor) and ``backend.kernel_many`` (the update). A norm
enters only through its public methods (:meth:`steepest.norms.Norm.map`, ``partial``,
``plan_partials``), so a norm written outside the package fuses as a built-in one.

Conventions, so that one function serves every shape, dtype and step:

* tensors are given as they are stored (float32, float64, bfloat16, float16; real views of
  complex ones); the math runs in ``acc`` (float32 for half precision, as the eager path's
  working copies) and results are written back with ``copy_``, which rounds to the stored dtype;
* positional arguments are what changes from step to step: tensors, and the lr, bias-corrected
  step sizes and other per-step scalars as 0-d tensors (float64, on the parameters' device: a
  0-d tensor does not change the dtype of the result; no recompile when its value changes;
  Python floats are constants of a kernel, see :mod:`steepest.backend.fused`). Floats are never
  passed as ``alpha=``/``value=``/``weight=`` arguments, which inductor freezes at the first
  value (see :func:`steepest.backend.ops._compiling`);
* keyword-only arguments are "static": hyper-parameters that stay fixed (betas, weight decay,
  the sign of maximize, the norm whose ``map`` is traced in) and options that change the
  program (the momentum scheme); the fused backend makes one kernel per combination (a changed weight decay
  compiles a new kernel once);
* per-tensor scalars that come from a reduction (``pre``, ``post``) are 0-d tensors (or None);
* a reduction pass never writes (so that the non-finite policy can still refuse the step with
  every parameter and state tensor untouched; see :mod:`steepest.backend.fused`).

Each function documents the eager code it must equal (tests/optim/test_fused.py checks it).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from steepest.backend import NonFinite, compiling, nonfinite_policy, sum_all
from steepest.backend.fused import Column, Same, Vec, rows_of
from steepest.backend.ops import ForeachOps, _stack
from steepest.backend.policy import _all_cpu
from steepest.norms import Norm, _combine_pow, _safe_div, per_tensor_list
from steepest.optim.base import first_nonfinite, update_is_finite

__all__ = [
    "adam_averaged_step",
    "ef_reduce",
    "ef_step",
    "fused_adam_averaged",
    "fused_ef",
    "fused_msgd",
    "fused_stacey",
    "fused_steepest",
    "fused_variance_adapted",
    "msgd_step",
    "stacey_step",
    "steepest_fusable",
    "steepest_partial",
    "steepest_step",
    "variance_adapted_step",
]

# Momentum schemes of SteepestDescent ([BPL20, Sec. 3]): none (c = g), EMA (c = m = b m + (1-b) g,
# Signum), Lion (c = b1 m + (1-b1) g; m <- b2 m + (1-b2) g), heavy ball (torch.optim.SGD's:
# c = m = b m + w g, w = 1 - dampening; its Nesterov form is a step option: per parameter, unfused).
MOMENTA = ("none", "ema", "lion", "heavy_ball")


def _acc(x: Tensor) -> Tensor:
    """``x`` in the compute dtype: float32 for half precision (as the eager working copies)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _lerp(a: Tensor, b: Tensor, w: float, hi: bool) -> Tensor:
    """``torch.lerp(a, b, w)`` as ATen computes it (``w < 0.5``: ``a + w (b - a)``; else
    ``b - (b - a)(1 - w)``), with ``hi = w >= 0.5`` decided outside (a static option: a branch on a
    symbolic float would guard and recompile)."""
    if hi:
        return b - (b - a) * (1.0 - w)
    return a + (b - a) * w


def _momentum_input(g: Tensor, m: Tensor | None, b1: float, momentum: str, hi1: bool,
                    w: float = 0.0) -> Tensor:
    if momentum == "none" or m is None:
        return g
    if momentum == "heavy_ball":
        return _heavy_ball(m, g, b1, w)
    return _lerp(m, g, 1.0 - b1, hi1)


def _heavy_ball(m: Tensor, g: Tensor, b: float, w: float) -> Tensor:
    """``b m + w g`` (eager ``m.mul_(b).add_(g, alpha=w)``, torch.optim.SGD's buffer update)."""
    return m * b + g * w


def steepest_partial(
    g: Tensor,
    m: Tensor | None,
    *,
    norm: Norm,
    b1: float = 0.0,
    sgn: float = 1.0,
    momentum: str = "none",
    hi1: bool = False,
    w: float = 0.0,
) -> Tensor:
    """Pass 1 of a steepest-descent step whose direction needs a reduction (scaled/normalized/
    soft modes, block norms): the norm's :meth:`~steepest.norms.Norm.partial` (e.g. ``||c||_q``)
    of this tensor's momentum input ``c = b1 m + (1 - b1) sgn g`` (``sgn = -1`` under
    ``maximize``; heavy ball: ``c = b1 m + w sgn g``). Reads ``g`` (and ``m``), writes nothing."""
    c = _momentum_input(_acc(g) * sgn, None if m is None else _acc(m), b1, momentum, hi1, w)
    out = norm.partial(c, True)  # c is a fresh temporary (g * sgn at least)
    assert out is not None
    return out


def steepest_step(
    p: Tensor,
    g: Tensor,
    m: Tensor | None,
    pre: Tensor | None,
    post: Tensor | None,
    lr: Tensor,
    *,
    norm: Norm,
    wd: float = 0.0,
    b1: float = 0.0,
    b2: float = 0.0,
    sgn: float = 1.0,
    momentum: str = "none",
    hi1: bool = False,
    hi2: bool = False,
    w: float = 0.0,
) -> None:
    """One steepest-descent step of one tensor (:mod:`steepest.optim.engine`; [BPL20, Sec. 3])::

        c = b1 m + (1 - b1) g                (momentum "ema": c = m <- b m + (1-b) g;
        m <- b2 m + (1 - b2) g                "lion": c a temporary; "none": c = g;
                                              "heavy_ball": c = m <- b1 m + w g, w = 1 - dampening)
        x <- (1 - lr wd) x - lr post * norm.map(c / pre)

    ``pre``/``post``: the norm's plan scalars (0-d tensors or None = 1), from
    :func:`steepest_partial` and ``norm.plan_partials``. Writes ``p`` and ``m``."""
    ga = _acc(g) * sgn
    ma = None if m is None else _acc(m)
    if momentum == "ema" and ma is not None and m is not None:
        c = _lerp(ma, ga, 1.0 - b1, hi1)
        m.copy_(c)
    elif momentum == "lion" and ma is not None and m is not None:
        c = _lerp(ma, ga, 1.0 - b1, hi1)
        m.copy_(_lerp(ma, ga, 1.0 - b2, hi2))
    elif momentum == "heavy_ball" and ma is not None and m is not None:
        c = _heavy_ball(ma, ga, b1, w)
        m.copy_(c)
    else:
        c = ga
    z = c if pre is None else c / pre
    d = norm.map(z)
    if post is not None:
        d = d * post
    p.copy_(_acc(p) * (1.0 - lr * wd) + d * (-lr))


def msgd_step(
    p: Tensor,
    g: Tensor,
    m: Tensor,
    lr_hat: Tensor,
    lr: Tensor,
    *,
    wd: float = 0.0,
    w: float = 1.0,
    sgn: float = 1.0,
    hi: bool = False,
) -> None:
    """M-SGD ([Bal21, Alg. 3]; :class:`steepest.optim.MSGD`): ``m~ <- lerp(m~, g, w)`` with
    ``w = 1 - beta``; ``x <- (1 - lr wd) x - lr_hat m~`` with ``lr_hat = lr / (1 - beta^k)``."""
    ga = _acc(g) * sgn
    mt = _lerp(_acc(m), ga, w, hi)
    m.copy_(mt)
    p.copy_(_acc(p) * (1.0 - lr * wd) + mt * (-lr_hat))


def ef_reduce(g: Tensor, e: Tensor, lr: Tensor, *, sgn: float = 1.0) -> Tensor:
    """Pass 1 of EF-signSGD ([ScaledSign, Eq. 12]; :class:`steepest.optim.EFSignSGD`):
    ``||lr g + e||_1`` of this tensor, without writing ``e`` (pass 2 recomputes ``lr g + e``: the
    same 7 transfers for the 5 counted as writing it here, and the step stays refusable until
    pass 2)."""
    pt = _acc(e) + _acc(g) * sgn * lr
    return sum_all(pt.abs())  # compiled on CPU: blocked sums, not inductor's cascade helper


def ef_step(p: Tensor, g: Tensor, e: Tensor, coef: Tensor, lr: Tensor, *, wd: float = 0.0,
            sgn: float = 1.0) -> None:
    """Pass 2 of EF-signSGD: ``p_t = lr g + e``; ``delta = coef sign(p_t)`` with
    ``coef = ||p_t||_1 / d`` over the scope; ``x <- (1 - lr wd) x - delta``, ``e <- p_t - delta``."""
    pt = _acc(e) + _acc(g) * sgn * lr
    delta = torch.sign(pt) * coef
    p.copy_(_acc(p) * (1.0 - lr * wd) - delta)
    e.copy_(pt - delta)


def ef_input(g: Tensor, e: Tensor, lr: Tensor, *, sgn: float = 1.0) -> Tensor:
    """``p_t = lr g + e`` as a temporary (the rare overflow-safe path of :func:`fused_ef`)."""
    return _acc(e) + _acc(g) * sgn * lr


def variance_adapted_step(
    p: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    lr: Any,
    a: Tensor,
    k: Tensor,
    *,
    wd: Any = 0.0,
    w: float = 0.1,
    b: float = 0.9,
    sgn: float = 1.0,
    kind: str = "svag",
    hi: bool = False,
) -> None:
    """SVAG, M-SVAG and Adam* with the moving-average variance ([Bal21, Alg. 2, 4, 5];
    :mod:`steepest.optim.noise`), one tensor::

        m~ <- lerp(m~, g, w);  v~ <- b v~ + (1 - b) g^2         (w = 1 - b)
        a = 1/(1 - b^(t+1)),  K = (rho(b,t) if M-SVAG/Adam* else 1) / ((1 - rho(b,t)) a)

    then, with ``r = max(v~/m~/m~ + 1/K - a, 1/K)`` (0/0 -> inf: gamma = 0), the eager fast form
    of ``noise._adapted_step_`` (no subnormal intermediates when the variance is 0, which made
    the compiled reference form 3-5x slower than eager)::

        SVAG:   x <- (1 - lr wd) x - (lr / K) g / r
        M-SVAG: x <- (1 - lr wd) x - (lr a / K) m~ / r
        Adam*:  x <- (1 - lr wd) x - lr/sqrt(K) m~ rsqrt(max(v~ - a m~^2, tiny) + m~^2/K)

    and where ``K = 0`` (the first step, or b = 0: s = 0, gamma = 1) SVAG ``lr g``, M-SVAG
    ``lr a m~``, Adam* ``lr sign(m~)``. ``a`` and ``K`` are 0-d tensors (they change every step:
    as tensors they never recompile a kernel, and ``torch.compile(opt.step)`` traces the step
    counter with no graph break), ``K = 0`` a ``where``. Writes ``p``, ``m``, ``v``."""
    ga = _acc(g) * sgn
    mt = _lerp(_acc(m), ga, w, hi)
    vt = _acc(v) * b + ga * ga * (1.0 - b)
    m.copy_(mt)
    v.copy_(vt)
    pa = _acc(p) * (1.0 - lr * wd)
    kpos = k > 0.0
    ks = torch.where(kpos, k, 1.0).to(mt.dtype)
    a = a.to(mt.dtype)
    if kind == "adamstar":
        tiny = torch.finfo(mt.dtype).tiny
        d = torch.clamp_min(vt - mt * mt * a, tiny) + mt * mt / ks
        upd = torch.where(kpos, torch.rsqrt(d) * mt / torch.sqrt(ks), torch.sign(mt))
        p.copy_(pa - upd * lr)
        return
    x, coef = (ga, lr) if kind == "svag" else (mt, a * lr)
    r = torch.clamp_min(vt / mt / mt + (1.0 / ks - a), 1.0 / ks)
    # r != r: NaN (0/0) -> inf; isnan is a scalar loop in inductor's CPU code (performance.md)
    r = torch.where(r != r, math.inf, r)
    p.copy_(pa - torch.where(kpos, x / r / ks, x) * coef)


# The smallest normal float32: STACEY's floor for the mirror step's scale M (as
# steepest.optim.stacey, in every working dtype).
_TINY32 = torch.finfo(torch.float32).tiny


def _mirror(z: Tensor, c: Tensor, alpha_r: Tensor, p: float) -> Tensor:
    """STACEY's l_p mirror step ``phi^-1(phi(z) - alpha c)``, ``phi(z) = |z|^(p-2) z``, in the
    overflow-safe scaled form of :func:`steepest.optim.stacey._mirror_single_` (the same
    operations, out of place)::

        b = |c|^(1/k) alpha^(1/k),  M = max(|z|, b, tiny),  k = p - 1
        w = sign(z) (|z|/M)^k - sign(c) (b/M)^k,  z <- sign(w) |w|^(1/k) M

    ``alpha_r = alpha^(1/k)``, a per-step 0-d tensor."""
    k = p - 1.0
    r = 1.0 / k
    b = c.abs().pow(r) * alpha_r
    scale = torch.clamp_min(torch.maximum(z.abs(), b), _TINY32)
    w = torch.copysign((z.abs() / scale).pow(k), z) - torch.copysign((b / scale).pow(k), c)
    return torch.copysign(w.abs().pow(r) * scale, w)


def stacey_step(
    x: Tensor,
    g: Tensor,
    m: Tensor,
    z: Tensor,
    lr: Tensor,
    alpha: Tensor,
    decay: Tensor,
    *,
    norm: Norm | None,
    p: float = 3.0,
    tau: float = 1e-3,
    wd: float = 0.0,
    w1: float = 0.1,
    w2: float = 0.01,
    mom: str = "fresh",
    plain: bool = True,
    sgn: float = 1.0,
    hi1: bool = False,
    hi2: bool = False,
    hit: bool = False,
) -> None:
    """One STACEY step of one tensor ([STACEY, Alg. 2-4]; :class:`steepest.optim.Stacey`, whose
    ``_step_single`` it must equal)::

        c = lerp(m, g, w1); m <- lerp(m, g, w2)      (mom "tied": c = m <- lerp(m, g, w1);
                                                       "none": c = g, m untouched)
        y' = decay x - lr d(c)                        (d = norm.map, the Lp map s_eps; the
                                                       identity where ``norm`` is None)
        z <- z - alpha c  (plain)  or  the l_p mirror step of z along c (:func:`_mirror`,
                                       ``alpha`` = alpha^(1/(p-1)) then)
        x <- lerp(y', z, tau)   (tau = 1: x <- decay x + z, decay = -lr wd, or z)

    ``decay = 1 - lr wd / (1 - tau)`` (a 0-d tensor; 1 without weight decay). Writes ``x``,
    ``m`` (unless "none") and ``z``: one pass, 7 transfers (the 7 counted)."""
    ga = _acc(g) * sgn
    if mom == "none":
        c = ga
    else:
        ma = _acc(m)
        c = _lerp(ma, ga, w1, hi1)
        m.copy_(c if mom == "tied" else _lerp(ma, ga, w2, hi2))
    xa, za = _acc(x), _acc(z)
    zn = za + c * (-alpha) if plain else _mirror(za, c, alpha, p)
    z.copy_(zn)
    if tau == 1.0:
        x.copy_(xa * decay + zn if wd else zn)
        return
    y = xa * decay if wd else xa
    y = y + (c if norm is None else norm.map(c)) * (-lr)
    x.copy_(_lerp(y, zn, tau, hit) if tau else y)


def adam_averaged_step(
    p: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    ss: Tensor,
    bc2: Tensor,
    lr: Tensor,
    n: Tensor,
    *,
    w1: float = 0.1,
    b2: float = 0.999,
    eps: float = 1e-8,
    wd: float = 0.0,
    sgn: float = 1.0,
    hi1: bool = False,
) -> None:
    """AdamAveraged ([BPL20, Sec. 2, App. D.1]; :class:`steepest.optim.AdamAveraged`), one
    tensor, torch.optim.Adam's moments and magnitudes::

        m~ <- lerp(m~, g, w1);  v~ <- b2 v~ + (1 - b2) g^2
        gamma = |ss (m~ / (sqrt(v~)/bc2 + eps))|       (ss = lr/(1 - b1^k), bc2 = sqrt(1 - b2^k))
        x <- (1 - lr wd) x - mean(gamma) sign(m~),     mean(gamma) = sum(gamma) / n

    ``n``: this tensor's number of entries as a 0-d tensor (the drivers pass every row's in one
    :class:`~steepest.backend.fused.Vec`: no object per row). The mean is a reduction before
    the write of ``x``: a compiled call makes two loops (the sum reads g, m~, v~; the update
    reads them again, in cache for tensors up to a few hundred thousand entries, and writes
    m~, v~, x): 10 transfers for the 7 counted, 3 of them usually from cache."""
    ga = _acc(g) * sgn
    mt = _lerp(_acc(m), ga, w1, hi1)
    vt = _acc(v) * b2 + ga * ga * (1.0 - b2)
    den = torch.sqrt(vt) / bc2 + eps
    if eps == 0.0:
        den = torch.clamp_min(den, torch.finfo(den.dtype).tiny)  # m = v = 0: 0/0 := 0
    mean = (ss * (mt / den)).abs().sum() / n  # (as eager: the sum divided by numel)
    m.copy_(mt)
    v.copy_(vt)
    pa = _acc(p) * (1.0 - lr * wd) if wd else _acc(p)
    p.copy_(pa - torch.sign(mt) * mean)


# ------------------------------------------------------------------ drivers (per optimizer)
# What each optimizer's ``_fused_run`` hands off to: the reductions, the norm's per-tensor
# scalars, the non-finite check of a deferred group, then the kernel calls. ``params``, ``grads``
# and the state tensors are the stored ones (real views of complex ones), in any floating dtype;
# maximize is the sign ``sgn``.
def _f(x: Any) -> float:
    return float(x) if isinstance(x, Tensor) else x


def _scalar(x: Any, like: Tensor) -> Tensor:
    """A per-step scalar as the kernels take it: a 0-d tensor of ``like``'s compute dtype
    (float32 for half precision, as eager's working copies; float64 for float64) and device.
    (The backend passes it as a 1-element tensor, which would promote a float32 update if it
    were float64; eager rounds a Python-number lr to float32 for float32 tensors too.)"""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.tensor(_f(x), dtype=dtype, device=like.device)


class _PerDtype:
    """One scalar tensor per (compute dtype, device) of a group's tensors, made once per step
    (one object per dtype: the list kernels' rows share it, one (1,) view a call)."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.made: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def __call__(self, like: Tensor) -> Tensor:
        key = (like.dtype, like.device)
        t = self.made.get(key)
        if t is None:
            t = self.made[key] = _scalar(self.value, like)
        return t

    def column(self, likes: list[Tensor]) -> Column:
        """``[self(x) for x in likes]`` as a kernel column: one :class:`Same` where they share one
        dtype and device (the usual group; two C passes, and the list kernels pass it once per
        call), else one entry per tensor."""
        if likes and len(set(map(_DTYPE, likes))) == 1 and len(set(map(_DEVICE, likes))) == 1:
            return Same(self(likes[0]))
        return [self(x) for x in likes]


def _checks(group: dict[str, Any], params: list[Tensor]) -> bool:
    """Whether the group's non-finite policy checks (as ``StepOptimizer._nonfinite_policy``)."""
    return nonfinite_policy(group.get("nonfinite"), params) != "ignore"


def _refuse_nonfinite(partials: Tensor, grads: list[Tensor]) -> None:
    """Before any write: raise ``NonFinite`` if a reduction is not finite because a gradient is
    not (an overflow of finite values proceeds to the policy's overflow check)."""
    if bool(torch.isfinite(partials).all()):
        return
    k = first_nonfinite(grads)
    if k is not None:
        raise NonFinite(k)


_DTYPE = operator.attrgetter("dtype")
_DEVICE = operator.attrgetter("device")


def _map(backend: Any, fn: Callable[..., Tensor], cols: list[Column], **static: Any) -> Tensor:
    """A reduction pass: ``fn(*row, **static)`` per row of the columns ``cols``, stacked
    (``backend.kernel_map``: list kernels, each returning its rows' results in one tensor); a
    float32 0 for an empty tensor (the row's first argument: ``fn`` never sees one, so that a
    norm's ``partial`` need not handle it)."""
    first = cols[0]
    if 0 not in map(Tensor.numel, first):
        return backend.kernel_map(fn, cols, **static)
    rows = rows_of(cols)
    out = [row[0].new_zeros((), dtype=torch.float32) for row in rows]
    todo = [i for i, row in enumerate(rows) if row[0].numel()]
    if todo:
        got = backend.kernel_map(fn, [list(c) for c in zip(*(rows[i] for i in todo))], **static)
        for i, r in zip(todo, got.unbind(0)):
            out[i] = r
    return _stack(out)


def _shared(scalars: Tensor | list[Tensor] | None, params: list[Tensor], per_tensor: bool) -> Column:
    """A plan's per-tensor scalars as a kernel column: a :class:`Vec` of the 1-d plan tensor
    (one slice per list-kernel call, no view per tensor and step); where the scope gives them all
    one value (a group-wide norm), one :class:`Same` (the host read is the CPU's; elsewhere the
    plan tensor stays a Vec); None: ``Same(None)``."""
    if scalars is None:
        return Same(None)
    if (not per_tensor and isinstance(scalars, Tensor) and scalars.numel() and scalars.device.type == "cpu"
            and bool((scalars == scalars[0]).all())):
        return Same(scalars[0])
    if isinstance(scalars, Tensor) and scalars.dim() == 1 and scalars.shape[0] == len(params):
        return Vec(scalars)
    got = per_tensor_list(scalars)
    assert got is not None
    return got


def steepest_fusable(norm: Norm, mode: str) -> str | None:
    """Why SteepestDescent cannot fuse this norm and mode (None: it can): the direction must be
    ``post_i * map(c_i / pre_i)`` with a pointwise :meth:`Norm.map`, and its scalars either none
    (an elementwise direction) or made of one :meth:`Norm.partial` per tensor."""
    if not norm.has_map() or not norm.pointwise_map:
        return (f"with norm {norm!r}: its direction is not a pointwise map (Norm.map) of the "
                "momentum, which the fused kernels need")
    if not norm.elementwise(mode) and not norm.has_partial:
        return (f"with norm {norm!r} in mode {mode!r}: the step's reduction is not one "
                "Norm.partial per tensor, which the fused kernels need")
    return None


def fused_steepest(group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                   states: list[dict[str, Any]], betas: tuple[float, float], backend: Any,
                   who: str = "SteepestDescent", dampening: float | None = None) -> None:
    """``SteepestDescent``'s step on the fused backend (:func:`steepest_partial`, the norm's
    ``plan_partials``, :func:`steepest_step`); ``dampening``: heavy-ball momentum (``None``: the
    EMA or Lion-style ``betas``)."""
    norm: Norm = group["norm"]
    mode, beta = group["mode"], group["beta"]
    lr, wd = _PerDtype(group["lr"]), _f(group.get("weight_decay", 0.0))
    b1, b2 = betas
    momentum = "none" if b1 == 0.0 and b2 == 0.0 else ("ema" if b1 == b2 else "lion")
    # Heavy ball: w = 1 - dampening, a static kernel option as the betas (passed only there, so
    # the other schemes' kernels keep their options).
    hb: dict[str, float] = {}
    if momentum == "ema" and dampening is not None:
        momentum, hb = "heavy_ball", {"w": 1.0 - dampening}
    sgn = -1.0 if group["maximize"] else 1.0
    hi1, hi2 = 1.0 - b1 >= 0.5, 1.0 - b2 >= 0.5
    ms: Column = Same(None) if momentum == "none" else [st.get("momentum_buffer") for st in states]
    pres: Column = Same(None)
    posts: Column = Same(None)
    if not norm.elementwise(mode):
        # Pass 1 (reads g, m; writes nothing): the norm's partials of c, then its plan.
        partials = _map(backend, steepest_partial, [grads, ms],
                        norm=norm, b1=b1, sgn=sgn, momentum=momentum, hi1=hi1, **hb)
        if _checks(group, params):
            _refuse_nonfinite(partials, grads)
        per_tensor = group.get("scope", "global") == "per_tensor"
        pre, post = norm.plan_partials(partials, params, mode, beta, per_tensor)
        # The plan's reductions, before any write: a finite but huge gradient can overflow them
        # (issue 21), as on the eager path.
        if not update_is_finite(who, group, params, [post], f"the {mode} step's scale under {norm!r}"):
            return
        pres, posts = _shared(pre, params, per_tensor), _shared(post, params, per_tensor)
    backend.kernel_many(steepest_step, [params, grads, ms, pres, posts, lr.column(params)], norm=norm, wd=wd,
                        b1=b1, b2=b2, sgn=sgn, momentum=momentum, hi1=hi1, hi2=hi2, **hb)


def _counts(states: list[dict[str, Any]]) -> list[float]:
    """Increment each state's step counter; return the new values as floats. For the usual
    counters (0-d, on the CPU, an eager step): one list op and one host read for the group
    instead of an ``add_`` and a ``float()`` per tensor (fused MSGD on 1,000 tensors: 10.8 ->
    10.0 ms a step; docs/performance.md, "Per-tensor Python work"); otherwise one of each per
    tensor. The values are the counters' own (a float32 counter read as it is), as ``float()``
    of each would give."""
    steps = [st["step"] for st in states]
    if compiling() or not steps or not _all_cpu(steps) or any(map(Tensor.dim, steps)):
        for s in steps:
            s.add_(1.0)
        return [float(s) for s in steps]
    ForeachOps.increment_(steps)
    return _stack(steps).tolist()


def _per_count(ks: list[float], params: list[Tensor], make: Callable[[float], Any]) -> Column:
    """Per tensor, ``make(k)(p)`` for its step count ``k``, as a kernel column: ``make`` is
    called once per distinct count, and where every tensor has the same count (the usual group),
    its value's ``column`` gives one :class:`Same`."""
    if ks and ks.count(ks[0]) == len(ks):
        return make(ks[0]).column(params)
    made: dict[float, Any] = {}
    out = []
    for p, k in zip(params, ks):
        if k not in made:
            made[k] = make(k)
        out.append(made[k](p))
    return out


def fused_msgd(group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
               states: list[dict[str, Any]], backend: Any) -> None:
    """``MSGD``'s step on the fused backend (:func:`msgd_step`)."""
    lr, b, wd = _f(group["lr"]), group["momentum"], _f(group["weight_decay"])
    sgn = -1.0 if group["maximize"] else 1.0
    w = 1.0 - b
    hats = _per_count(_counts(states), params, lambda k: _PerDtype(lr / (1.0 - b**k)))
    cols = [params, grads, [st["exp_avg"] for st in states], hats, _PerDtype(lr).column(params)]
    backend.kernel_many(msgd_step, cols, wd=wd, w=w, sgn=sgn, hi=w >= 0.5)


def fused_ef(group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
             states: list[dict[str, Any]], backend: Any,
             safe_coefs: Callable[[list[Tensor], bool], Tensor]) -> None:
    """``EFSignSGD``'s step on the fused backend: pass 1 :func:`ef_reduce`, pass 2 :func:`ef_step`.
    ``safe_coefs(p_ts, per_tensor)``: the overflow-safe ``||p_t||_1 / d`` (the optimizer's), for
    the rare step whose ``||p_t||_1`` overflows with finite gradients."""
    lr, wd = _PerDtype(group["lr"]), _f(group["weight_decay"])
    sgn = -1.0 if group["maximize"] else 1.0
    errs = [st["error"] for st in states]
    lrs = lr.column(params)
    partials = _map(backend, ef_reduce, [grads, errs, lrs], sgn=sgn)
    if _checks(group, params):
        _refuse_nonfinite(partials, grads)
    per_tensor = group["scope"] == "per_tensor"
    dual = _combine_pow(partials, 1.0, per_tensor)
    if dual.device.type == "cpu" and not compiling() and not bool(torch.isfinite(dual).all()):
        coefs = safe_coefs([ef_input(g, e, lr(g), sgn=sgn) for g, e in zip(grads, errs)], per_tensor)
    else:
        sizes = [float(e.numel()) for e in errs]
        ds = sizes if per_tensor else [sum(sizes)] * len(errs)
        coefs = _safe_div(dual, torch.tensor(ds, dtype=dual.dtype, device=dual.device))
    cs = _shared(coefs, params, True) if per_tensor else Same(coefs[0])
    backend.kernel_many(ef_step, [params, grads, errs, cs, lrs], wd=wd, sgn=sgn)


def fused_variance_adapted(group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                           states: list[dict[str, Any]], kind: str, backend: Any,
                           scales: Callable[[float, list[float], bool], tuple[list[float], list[float]]]
                           ) -> None:
    """``SVAG``/``MSVAG`` (moving average)/``AdamStar``'s step on the fused backend
    (:func:`variance_adapted_step`); ``scales``: ``noise._VarianceAdapted._scales`` (a, K)."""
    lr, b, wd = _PerDtype(group["lr"]), group["momentum"], _f(group["weight_decay"])
    sgn = -1.0 if group["maximize"] else 1.0
    per_step: dict[float, tuple[Tensor, Tensor]] = {}  # per step value (usually one): a, K

    def scalars(count: float) -> tuple[Tensor, Tensor]:
        t = count - 1.0
        if t not in per_step:
            (a,), (k,) = scales(b, [t], kind != "svag")
            a_t, k_t = torch.tensor([a, k], dtype=torch.float64, device=params[0].device).unbind(0)
            per_step[t] = (a_t, k_t)
        return per_step[t]

    ks = _counts(states)
    acol: Column
    kcol: Column
    if ks and ks.count(ks[0]) == len(ks):
        a_t, k_t = scalars(ks[0])
        acol, kcol = Same(a_t), Same(k_t)
    else:
        pairs = [scalars(k) for k in ks]
        acol, kcol = [a for a, _ in pairs], [k for _, k in pairs]
    cols = [params, grads, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states],
            lr.column(params), acol, kcol]
    backend.kernel_many(variance_adapted_step, cols, wd=wd, w=1.0 - b, b=b, sgn=sgn, kind=kind,
                        hi=1.0 - b >= 0.5)


def fused_stacey(group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                 states: list[dict[str, Any]], backend: Any, cfg: Any) -> None:
    """``Stacey``'s step on the fused backend (:func:`stacey_step`); ``cfg``: the group's
    constants (``steepest.optim.stacey._Cfg``: the variant's descent map, momentum scheme,
    whether the mirror step is plain). The step counters are the caller's."""
    sgn = -1.0 if group["maximize"] else 1.0
    lr, alpha = cfg.lr, cfg.alpha
    mirror_alpha = alpha if cfg.plain else alpha ** (1.0 / (cfg.p - 1.0))
    decay = (-lr * cfg.wd) if cfg.tau == 1.0 else cfg.decay
    lr_t, alpha_t, decay_t = _PerDtype(lr), _PerDtype(mirror_alpha), _PerDtype(decay)
    backend.kernel_many(
        stacey_step,
        [params, grads, [st["m"] for st in states], [st["z"] for st in states], lr_t.column(params),
         alpha_t.column(params), decay_t.column(params)],
        norm=cfg.norm, p=cfg.p, tau=cfg.tau, wd=cfg.wd, w1=cfg.w1, w2=cfg.w2, mom=cfg.mom,
        plain=cfg.plain, sgn=sgn, hi1=cfg.w1 >= 0.5, hi2=cfg.w2 >= 0.5, hit=cfg.tau >= 0.5)


def fused_adam_averaged(group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                        states: list[dict[str, Any]], backend: Any) -> None:
    """``AdamAveraged``'s step on the fused backend (:func:`adam_averaged_step`; each row's
    ``n``, its number of entries, from one :class:`~steepest.backend.fused.Vec`)."""
    lr, wd, eps = _f(group["lr"]), _f(group["weight_decay"]), float(group["eps"])
    b1, b2 = group["betas"]
    sgn = -1.0 if group["maximize"] else 1.0
    ks = _counts(states)
    sss = _per_count(ks, params, lambda k: _PerDtype(lr / (1.0 - b1**k)))
    bc2s = _per_count(ks, params, lambda k: _PerDtype((1.0 - b2**k) ** 0.5))
    # The sizes: one Vec where the group has one compute dtype and device (the usual group),
    # else a 0-d tensor per row.
    ns: Column
    if params and len(set(map(_DTYPE, params))) == 1 and len(set(map(_DEVICE, params))) == 1:
        like = _scalar(0.0, params[0])  # (the compute dtype: a (1,)-shaped n promotes nothing)
        ns = Vec(torch.tensor(list(map(float, map(Tensor.numel, params))), dtype=like.dtype,
                              device=like.device))
    else:
        ns = [_scalar(float(p.numel()), p) for p in params]
    cols = [params, grads, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states], sss, bc2s,
            _PerDtype(lr).column(params), ns]
    backend.kernel_many(adam_averaged_step, cols,
                        w1=1.0 - b1, b2=b2, eps=eps, wd=wd, sgn=sgn, hi1=1.0 - b1 >= 0.5)
