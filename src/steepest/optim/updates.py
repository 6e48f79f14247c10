"""The elementwise math of each update, written once as plain per-tensor tensor functions.

These are the kernels of the fused backend (:mod:`steepest.backend.fused` compiles each one
with ``torch.compile``, shape-dynamic, once per function, static options and dtype). Each is
also correct eager (the fallback when compiling is unavailable runs them as they are).

Conventions, so that one function serves every shape, dtype and step:

* tensors are given as they are stored (float32, float64, bfloat16, float16; real views of
  complex ones); the math runs in ``acc`` (float32 for half precision, as the eager path's
  working copies) and results are written back with ``copy_``, which rounds to the stored dtype;
* positional arguments are what changes from step to step: tensors, the lr and bias-corrected
  step sizes as Python floats (``torch.compile`` makes them symbolic: no recompile when they
  change; each costs a ``torch.as_tensor`` per call, so there are few), and per-step scalars
  that feed ``clamp``/``sqrt`` as 0-d tensors (a symbolic float there is specialized: one
  recompile per step). Floats are never passed as ``alpha=``/``value=``/``weight=`` arguments,
  which inductor freezes at the first value (see :func:`steepest._backend._compiling`);
* keyword-only arguments are "static": hyper-parameters that stay fixed (betas, weight decay,
  the sign of maximize, the map's exponent) and options that change the program (the map, the
  momentum scheme); the fused backend makes one kernel per combination (a changed weight decay
  compiles a new kernel once);
* per-tensor scalars that come from a reduction (``pre``, ``post``) are 0-d tensors (or None);
* a reduction pass never writes (so that the non-finite policy can still refuse the step with
  every parameter and state tensor untouched; see :mod:`steepest.backend.fused`).

Each function documents the eager code it must equal (tests/optim/test_fused.py checks it).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from steepest.backend import fused as _fused

__all__ = [
    "ef_reduce",
    "ef_step",
    "fused_ef",
    "fused_msgd",
    "fused_steepest",
    "fused_variance_adapted",
    "lp_map",
    "msgd_step",
    "steepest_reduce",
    "steepest_step",
    "variance_adapted_step",
]

# The maps of the l_p family (seed 003 Alg. 1; steepest.norms.Lp): which of them, a static option.
MAPS = ("sign", "identity", "pow", "paper", "code")
# Momentum schemes of SteepestDescent (seed 000 Sec. 3): none (c = g), EMA (c = m = b m + (1-b) g,
# Signum), Lion (c = b1 m + (1-b1) g; m <- b2 m + (1-b2) g).
MOMENTA = ("none", "ema", "lion")


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


def lp_map(x: Tensor, mapping: str, a: float = 1.0, eps: float = 0.0) -> Tensor:
    """The elementwise map of the l_p norm (``steepest.norms.Lp``; should become ``Norm.map``):

    * ``"sign"``: ``sign(x)`` (p = inf);  ``"identity"``: ``x`` (p = 2);
    * ``"pow"``: ``sign(x)|x|^a`` with ``a = 1/(p-1)`` (seed 003 Alg. 1, eps = 0);
    * ``"paper"``: ``x / (|x|^a + eps)`` with ``a = (p-2)/(p-1)`` (seed 003 Alg. 1-3);
    * ``"code"``: ``x / (|x| + eps)^a`` (the authors' code).
    """
    if mapping == "sign":
        return torch.sign(x)
    if mapping == "identity":
        return x
    if mapping == "pow":
        return torch.copysign(x.abs().pow(a), x)
    if mapping == "paper":
        return x / (x.abs().pow(a) + eps)
    if mapping == "code":
        return x / (x.abs() + eps).pow(a)
    raise ValueError(f"mapping must be one of {MAPS}, got {mapping!r}")


def _momentum_input(g: Tensor, m: Tensor | None, b1: float, momentum: str, hi1: bool) -> Tensor:
    if momentum == "none" or m is None:
        return g
    return _lerp(m, g, 1.0 - b1, hi1)


def steepest_reduce(
    g: Tensor,
    m: Tensor | None,
    *,
    b1: float = 0.0,
    sgn: float = 1.0,
    momentum: str = "none",
    hi1: bool = False,
    q: str = "1",
    qv: float = 1.0,
) -> Tensor:
    """Pass 1 of a steepest-descent step whose direction needs a reduction (scaled/normalized/
    soft modes, BlockNorm): the norm ``||c||_q`` of this tensor's momentum input
    ``c = b1 m + (1 - b1) sgn g`` (``sgn = -1`` under ``maximize``), as 0-d float32/float64.
    ``q``: ``"1"`` (sum |c|, Linf's dual), ``"2"`` (l2, BlockNorm), ``"q"`` (``(sum |c|^qv)^(1/qv)``,
    Lp's dual; unscaled, so |c| beyond ~1e19 overflows float32: the policy's exact check then
    runs and a finite gradient proceeds). Reads ``g`` (and ``m``), writes nothing."""
    c = _momentum_input(_acc(g) * sgn, None if m is None else _acc(m), b1, momentum, hi1)
    if q == "1":
        return c.abs().sum()
    if q == "2":
        return (c * c).sum().sqrt()
    return c.abs().pow(qv).sum().pow(1.0 / qv)


def steepest_step(
    p: Tensor,
    g: Tensor,
    m: Tensor | None,
    pre: Tensor | None,
    post: Tensor | None,
    lr: float,
    *,
    wd: float = 0.0,
    b1: float = 0.0,
    b2: float = 0.0,
    sgn: float = 1.0,
    a: float = 1.0,
    eps: float = 0.0,
    momentum: str = "none",
    mapping: str = "sign",
    hi1: bool = False,
    hi2: bool = False,
) -> None:
    """One steepest-descent step of one tensor (``steepest.optim.steepest``; seed 000 Sec. 3)::

        c = b1 m + (1 - b1) g                (momentum "ema": c = m <- b m + (1-b) g;
        m <- b2 m + (1 - b2) g                "lion": c a temporary; "none": c = g)
        x <- (1 - lr wd) x - lr post * map(c / pre)

    ``pre``/``post``: the norm's plan scalars (0-d tensors or None = 1), from
    :func:`steepest_reduce` and the norm's plan. Writes ``p`` and ``m``."""
    ga = _acc(g) * sgn
    ma = None if m is None else _acc(m)
    if momentum == "ema" and ma is not None:
        c = _lerp(ma, ga, 1.0 - b1, hi1)
        m.copy_(c)
    elif momentum == "lion" and ma is not None:
        c = _lerp(ma, ga, 1.0 - b1, hi1)
        m.copy_(_lerp(ma, ga, 1.0 - b2, hi2))
    else:
        c = ga
    z = c if pre is None else c / pre
    d = lp_map(z, mapping, a, eps)
    if post is not None:
        d = d * post
    pa = _acc(p)
    p.copy_(pa * (1.0 - lr * wd) + d * (-lr))


def msgd_step(
    p: Tensor,
    g: Tensor,
    m: Tensor,
    lr_hat: float,
    lr: float,
    *,
    wd: float = 0.0,
    w: float = 1.0,
    sgn: float = 1.0,
    hi: bool = False,
) -> None:
    """M-SGD (``steepest.optim.noise.MSGD``; seed 001 Alg. 5.1): ``m~ <- lerp(m~, g, w)`` with
    ``w = 1 - beta``; ``x <- (1 - lr wd) x - lr_hat m~`` with ``lr_hat = lr / (1 - beta^k)``."""
    ga = _acc(g) * sgn
    mt = _lerp(_acc(m), ga, w, hi)
    m.copy_(mt)
    p.copy_(_acc(p) * (1.0 - lr * wd) + mt * (-lr_hat))


def ef_reduce(g: Tensor, e: Tensor, lr: float, *, sgn: float = 1.0) -> Tensor:
    """Pass 1 of EF-signSGD (``steepest.optim.ef``; seed 004 Eq. 12): ``||lr g + e||_1`` of this
    tensor, without writing ``e`` (pass 2 recomputes ``lr g + e``: the same 7 transfers for the
    5 counted as writing it here, and the step stays refusable until pass 2)."""
    pt = _acc(e) + _acc(g) * sgn * lr
    return pt.abs().sum()


def ef_step(p: Tensor, g: Tensor, e: Tensor, coef: Tensor, lr: float, *, wd: float = 0.0,
            sgn: float = 1.0) -> None:
    """Pass 2 of EF-signSGD: ``p_t = lr g + e``; ``delta = coef sign(p_t)`` with
    ``coef = ||p_t||_1 / d`` over the scope; ``x <- (1 - lr wd) x - delta``, ``e <- p_t - delta``."""
    pt = _acc(e) + _acc(g) * sgn * lr
    delta = torch.sign(pt) * coef
    p.copy_(_acc(p) * (1.0 - lr * wd) - delta)
    e.copy_(pt - delta)


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
    """SVAG, M-SVAG and Adam* with the moving-average variance (``steepest.optim.noise``; seed 001
    Alg. 2, 4, 5), one tensor::

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
    r = torch.where(torch.isnan(r), math.inf, r)
    p.copy_(pa - torch.where(kpos, x / r / ks, x) * coef)


# ------------------------------------------------------------------ drivers (per optimizer)
# What each optimizer's ``_update`` hands off to when ``group["fused"]``: the reductions, the
# norm's per-tensor scalars, the non-finite check of a deferred group, then one kernel call per
# tensor. ``params``, ``grads`` and the state tensors are the stored ones (real views of complex
# ones), in any floating dtype; maximize is the sign ``sgn``.
def _f(x: Any) -> float:
    return float(x) if isinstance(x, Tensor) else x


def _checks(group: dict[str, Any], params: list[Tensor]) -> bool:
    """Whether the group's non-finite policy checks (as ``StepOptimizer._nonfinite_policy``)."""
    policy = group.get("nonfinite")
    if policy is not None:
        return policy != "ignore"
    return not torch.compiler.is_compiling() and all(p.device.type == "cpu" for p in params)


def _refuse_nonfinite(partials: Tensor, grads: list[Tensor]) -> None:
    """Before any write: raise ``NonFinite`` if a reduction is not finite because a gradient is
    not (an overflow of finite values proceeds)."""
    if bool(torch.isfinite(partials).all()):
        return
    from steepest.optim.base import first_nonfinite

    k = first_nonfinite(grads)
    if k is not None:
        raise _fused.NonFinite(k)


def _stack(xs: list[Tensor], like: Tensor) -> Tensor:
    """Per-tensor reductions as one 1-d tensor of their common dtype (float32 for half
    precision, as the eager working copies; float64 stays float64)."""
    if not xs:
        return like.new_zeros(0, dtype=torch.float32)
    dt = xs[0].dtype
    for x in xs[1:]:
        dt = torch.promote_types(dt, x.dtype)
    return torch.stack([x.to(dt) for x in xs])


def lp_options(norm: Any) -> tuple[str, float, float]:
    """``(mapping, a, eps)`` of :func:`lp_map` for an ``Lp`` norm (should become ``Norm.map``)."""
    p = norm.p
    if math.isinf(p):
        return "sign", 1.0, 0.0
    if p == 2.0:
        return "identity", 1.0, 0.0
    if norm.eps == 0.0:
        return "pow", 1.0 / (p - 1.0), 0.0
    return norm.eps_mode, (p - 2.0) / (p - 1.0), norm.eps


def steepest_fusable(norm: Any, mode: str) -> str | None:
    """Why SteepestDescent cannot fuse this norm (None: it can): the l_p family in every mode,
    BlockNorm over whole tensors."""
    from steepest.norms import BlockNorm, Lp

    if isinstance(norm, Lp) and type(norm)._plan is Lp._plan and type(norm)._map_div is Lp._map_div:
        return None
    if isinstance(norm, BlockNorm) and norm.blocks == "tensor" and type(norm)._plan is BlockNorm._plan:
        return None
    return (f"with norm {norm!r} (fused kernels cover the l_p norms and BlockNorm(blocks='tensor'); "
            "CoordinateDescent's L1 step already moves one entry per tensor)")


def fused_steepest(group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                   states: list[dict[str, Any]], betas: tuple[float, float]) -> None:
    """``SteepestDescent._update`` on the fused backend (see :func:`steepest_step`)."""
    from steepest.norms import BlockNorm, Factored, _combine_pow

    norm, mode, beta = group["norm"], group["mode"], group["beta"]
    lr, wd = _f(group["lr"]), _f(group.get("weight_decay", 0.0))
    b1, b2 = betas
    momentum = "none" if b1 == 0.0 and b2 == 0.0 else ("ema" if b1 == b2 else "lion")
    sgn = -1.0 if group["maximize"] else 1.0
    hi1, hi2 = 1.0 - b1 >= 0.5, 1.0 - b2 >= 0.5
    ms: list[Tensor | None] = [st.get("momentum_buffer") if momentum != "none" else None for st in states]
    block = isinstance(norm, BlockNorm)
    mapping, a, eps = ("identity", 1.0, 0.0) if block else lp_options(norm)
    pres: list[Tensor | None] = [None] * len(params)
    posts: list[Tensor | None] = [None] * len(params)
    if block or not norm._is_elementwise(mode):
        # Pass 1 (reads g, m; writes nothing): the dual norm of c, then the norm's plan.
        q, qv = ("2", 2.0) if block else ("1", 1.0) if math.isinf(norm.p) else ("q", norm.q)
        partials = _stack([_fused.run(steepest_reduce, g, m, b1=b1, sgn=sgn, momentum=momentum,
                                      hi1=hi1, q=q, qv=qv) if g.numel() else g.new_zeros((), dtype=torch.float32)
                           for g, m in zip(grads, ms)], params[0])
        if _checks(group, params):
            _refuse_nonfinite(partials, grads)
        per_tensor = group.get("scope", "global") == "per_tensor"
        if block:  # BlockNorm._plan: c / ||c|| (inf where 0) times the mode's coefficient
            dual = _combine_pow(partials, 1.0, per_tensor)
            pre = torch.where(partials > 0, partials, math.inf)
            post = Factored([], dual, dual).coefficients(mode, beta)
        else:  # Lp._plan from the partial norms
            dual = _combine_pow(partials, norm.q, per_tensor)
            if mode == "normalized" and norm.eps == 0.0:
                pre, post = torch.where(dual > 0, dual, math.inf), None
            else:
                pre, post = None, Factored([], norm._scale(dual), dual).coefficients(mode, beta)
        # One scalar object for the whole scope where it is one number (run_many packs then).
        one = not per_tensor and not block
        pres = ([pre[0]] * len(params) if one else list(pre.unbind(0))) if pre is not None else pres
        posts = ([post[0]] * len(params) if one else list(post.unbind(0))) if post is not None else posts
    _fused.run_many(steepest_step, [(p, g, m, pre_i, post_i, lr) for p, g, m, pre_i, post_i
                                    in zip(params, grads, ms, pres, posts) if p.numel()],
                    wd=wd, b1=b1, b2=b2, sgn=sgn, a=a, eps=eps, momentum=momentum,
                    mapping=mapping, hi1=hi1, hi2=hi2)


def fused_msgd(group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
               states: list[dict[str, Any]]) -> None:
    """``MSGD._update`` on the fused backend (see :func:`msgd_step`)."""
    lr, b, wd = _f(group["lr"]), group["momentum"], _f(group["weight_decay"])
    sgn = -1.0 if group["maximize"] else 1.0
    w = 1.0 - b
    rows = []
    for p, g, st in zip(params, grads, states):
        st["step"].add_(1.0)
        k = float(st["step"])
        if p.numel():
            rows.append((p, g, st["exp_avg"], lr / (1.0 - b**k), lr))
    _fused.run_many(msgd_step, rows, wd=wd, w=w, sgn=sgn, hi=w >= 0.5)


def fused_ef(group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
             states: list[dict[str, Any]]) -> None:
    """``EFSignSGD._update`` on the fused backend: pass 1 :func:`ef_reduce`, pass 2 :func:`ef_step`."""
    from steepest.norms import _combine_pow, _safe_div

    lr, wd = _f(group["lr"]), _f(group["weight_decay"])
    sgn = -1.0 if group["maximize"] else 1.0
    errs = [st["error"] for st in states]
    partials = _stack([_fused.run(ef_reduce, g, e, lr, sgn=sgn) if g.numel()
                       else g.new_zeros((), dtype=torch.float32) for g, e in zip(grads, errs)],
                      params[0])
    if _checks(group, params):
        _refuse_nonfinite(partials, grads)
    per_tensor = group["scope"] == "per_tensor"
    dual = _combine_pow(partials, 1.0, per_tensor)
    sizes = [float(e.numel()) for e in errs]
    ds = sizes if per_tensor else [sum(sizes)] * len(errs)
    coefs = _safe_div(dual, torch.tensor(ds, dtype=dual.dtype, device=dual.device))
    cs = list(coefs.unbind(0)) if per_tensor else [coefs[0]] * len(errs)  # one object: packable
    _fused.run_many(ef_step, [(p, g, e, c, lr) for p, g, e, c in zip(params, grads, errs, cs)
                              if p.numel()], wd=wd, sgn=sgn)


def fused_variance_adapted(group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                           states: list[dict[str, Any]], kind: str) -> None:
    """``SVAG``/``MSVAG`` (moving average)/``AdamStar._update`` on the fused backend
    (:func:`variance_adapted_step`; the scalars as ``noise._VarianceAdapted._scales``)."""
    from steepest.optim.noise import _VarianceAdapted

    if torch.compiler.is_compiling():  # torch.compile(opt.step) of the default backend
        _traced_variance_adapted(group, params, grads, states, kind)
        return
    lr, b, wd = _f(group["lr"]), group["momentum"], _f(group["weight_decay"])
    sgn = -1.0 if group["maximize"] else 1.0
    scalars: dict[float, tuple[Tensor, Tensor]] = {}  # per step value (usually one): a, K
    rows = []
    for p, g, st in zip(params, grads, states):
        st["step"].add_(1.0)
        t = float(st["step"]) - 1.0
        if t not in scalars:
            (a,), (k,) = _VarianceAdapted._scales(b, [t], weight=kind != "svag")
            scalars[t] = tuple(torch.tensor([a, k], dtype=torch.float64, device=p.device).unbind(0))  # type: ignore[assignment]
        a_t, k_t = scalars[t]
        if p.numel():
            rows.append((p, g, st["exp_avg"], st["exp_avg_sq"], lr, a_t, k_t))
    _fused.run_many(variance_adapted_step, rows, wd=wd, w=1.0 - b, b=b, sgn=sgn, kind=kind,
                    hi=1.0 - b >= 0.5)

def _traced_variance_adapted(group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                             states: list[dict[str, Any]], kind: str) -> None:
    """The compiled step of SVAG/M-SVAG/Adam* (``torch.compile(opt.step)``, not ``fused``): the
    step counter stays a tensor (no graph break), the math is :func:`variance_adapted_step`.
    The fused backend's gradients are the stored ones (``sgn`` under maximize); the default
    backend's are the working gradients, already negated."""
    from steepest.optim.noise import _one_minus_rho, _safe_reciprocal, rho

    lr, b, wd = group["lr"], group["momentum"], group["weight_decay"]
    sgn = -1.0 if group.get("fused") and group["maximize"] else 1.0
    for p, g, st in zip(params, grads, states):
        st["step"].add_(1.0)
        t = st["step"].to(torch.float64) - 1.0
        a = 1.0 / (1.0 - b ** (t + 1.0))
        k = (rho(b, t) if kind != "svag" else 1.0) * _safe_reciprocal(_one_minus_rho(b, t)) / a
        if not isinstance(k, Tensor):
            k = torch.zeros_like(t) + k
        variance_adapted_step(p, g, st["exp_avg"], st["exp_avg_sq"], lr, a, k, wd=wd, w=1.0 - b,
                              b=b, sgn=sgn, kind=kind, hi=1.0 - b >= 0.5)
