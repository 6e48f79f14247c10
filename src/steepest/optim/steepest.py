"""Steepest descent under a norm, and the named methods that are presets of it.

One update rule (seed 000, Sec. 3; DESIGN.md):

    c_t = beta1 m_{t-1} + (1 - beta1) g_t              (momentum scheme; c_t = g_t without it)
    m_t = beta2 m_{t-1} + (1 - beta2) g_t
    x_{t+1} = (1 - lr wd) x_t - lr * direction(c_t)

where ``direction`` is the norm's steepest-descent direction in one of four modes
(:meth:`steepest.norms.Factored.coefficients`): ``scaled`` c# (Eq. 10), ``normalized``
c#/||c||_* (Eq. 49), ``soft`` c#/(||c||_* + beta) (Eq. 52/57) or ``unscaled`` (the norm's
elementwise map alone, e.g. sign(c)). With ``beta1 = beta2 = b`` this is the EMA momentum of
Signum (c_t = m_t); with ``beta1 != beta2`` it is Lion's interpolation.

The named optimizers are presets:

=====================  =====================================  ============================
optimizer              norm, mode                             source
=====================  =====================================  ============================
SignSGD                Linf, unscaled (sign); momentum=Signum seed 000 Eq. 2, 001 Alg. 3
ScaledSignSGD          Linf, scaled (||g||_1 sign g)          seed 000 Eq. 11, 004 Alg. 1-2
LpDescent              Lp(p, eps), unscaled or scaled         seed 003 Alg. 1
CoordinateDescent      L1, scaled                             seed 000 Eq. 33
BlockNormalizedSGD     BlockNorm, normalized (or any mode)    seed 000 App. A.2.2
Lion                   Linf, unscaled, betas=(0.9, 0.99)      Chen et al. 2023
=====================  =====================================  ============================
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from steepest._backend import _Ops, _ops, is_dtensor
from steepest.norms import (
    L1,
    L2,
    MODES,
    BlockNorm,
    Factored,
    Linf,
    Lp,
    Norm,
    _FusedOps,
    _per_tensor_ok,
    _small_many,
)
from steepest.optim import base as _base
from steepest.optim import updates as _updates
from steepest.optim.base import (
    StepOptimizer,
    apply_weight_decay,
    check_betas,
    check_choice,
    check_range,
)

__all__ = [
    "BlockNormalizedSGD",
    "CoordinateDescent",
    "Lion",
    "LpDescent",
    "ScaledSignSGD",
    "SignSGD",
    "SteepestDescent",
]


def apply_direction(
    group: dict[str, Any],
    params: list[Tensor],
    c: list[Tensor],
    norm: Norm,
    mode: str,
    foreach: bool,
    *,
    lr: float | None = None,
    beta: float = 1.0,
    owned: bool = False,
) -> None:
    """``x <- (1 - lr wd) x - lr direction(c)``, the shared last line of every steepest method.

    ``owned``: ``c`` is a temporary of the caller's (Lion's interpolated momentum), so a sign
    direction may overwrite it instead of allocating another parameter-sized tensor.

    Where the direction is ``post_i * map(c_i / pre_i)`` (:meth:`Norm._plan`), the scalars are
    folded into the update pass (``addcmul_``/``addcdiv_`` with a 0-d tensor) instead of a
    ``mul_`` pass over a direction temporary, and the map is built in one temporary per tensor
    (:meth:`Norm._map_div`); the identity maps (l2, BlockNorm) need no temporary at all."""
    ops = _ops(foreach)
    eager = not torch.compiler.is_compiling()
    if eager and type(norm) is L1 and not any(is_dtensor(x) for x in c) and all(
        p.is_contiguous() for p in params
    ):
        # Coordinate descent moves one coordinate (per scope): update it alone instead of
        # adding a whole all-zero direction (3 passes over every parameter saved). Eager only:
        # compiled, the winner's indices would be guarded on (a recompile per new winner).
        dual, coords = norm._coordinates(c, ops, group.get("scope", "global") == "per_tensor")
        coefs = Factored([], dual, dual).coefficients(mode, beta) if coords else dual
        lr = group["lr"] if lr is None else lr
        apply_weight_decay(ops, params, lr, group.get("weight_decay", 0.0))
        for i, j, sign in coords:
            params[i].view(-1)[j] -= lr * coefs[i] * sign
        return
    lr = group["lr"] if lr is None else lr
    per_tensor = group.get("scope", "global") == "per_tensor"
    wd = group.get("weight_decay", 0.0)
    if isinstance(norm, BlockNorm) and (not foreach or _per_tensor_ok(c)):
        # x_B / ||x_B|| * coefficient as one division inside the update: no temporary at all.
        dens = norm._divisors(c, ops, mode, beta, per_tensor)
        fuse = _small_many(c) and all(d.dim() == 0 for d in dens)
        for sl in _small_chunks(params, foreach, 1) if fuse else [slice(0, len(params))]:
            if fuse and sl.stop - sl.start > 1:  # small tensors: fused kernels, a chunk at a time
                d = torch._foreach_div(c[sl], dens[sl])
                apply_weight_decay(_FusedOps, params[sl], lr, wd)
                torch._foreach_add_(params[sl], d, alpha=-lr)
                del d
                continue
            for p, x, den in zip(params[sl], c[sl], dens[sl]):
                apply_weight_decay(_Ops, [p], lr, wd)
                _axpy_one_(p, x, lr, den, None, not eager)
        return
    sign_in_place = owned and isinstance(norm, Lp) and math.isinf(norm.p)
    if sign_in_place and mode == "unscaled":
        # sign(c) in place: peak memory one temporary (c) instead of two.
        if foreach:
            torch._foreach_sign_(c)
        else:
            for x in c:
                torch.sign(x, out=x)
        apply_weight_decay(ops, params, lr, wd)
        ops.axpy_(params, c, -lr)
        return
    plan = norm._plan(c, ops, mode, beta, per_tensor)
    if plan is None:
        direction = norm._direction(c, ops, mode, beta, per_tensor)
        apply_weight_decay(ops, params, lr, wd)
        ops.axpy_(params, direction, -lr)
        return
    pre, post = plan
    identity = type(norm) in (Lp, L2) and norm.p == 2.0  # map(z) = z: fold pre into the update
    if foreach and not _per_tensor_ok(c):  # accelerators: all tensors at once (fused kernels)
        _apply_fused(norm, params, c, pre, post, identity, lr, wd, ops)
        return
    # Loop path (and the foreach path on CPU, where torch's _foreach_* ops are a per-tensor loop
    # themselves): one tensor at a time, so that each temporary is freed before the next is made
    # (holding them all costs page faults on CPU: ~3x slower); many small tensors (per-tensor
    # Python would dominate) take fused kernels a chunk at a time.
    fuse = _small_many(c)
    pres = None if pre is None else pre.unbind(0)
    posts = None if post is None else post.unbind(0)
    one = type(norm) in (Lp, L2, Linf) and (math.isinf(norm.p) or norm.p == 2.0)  # sign, identity
    temps = 1 if one else 2  # the l_p map: |x|^a and sign(x); other norms' maps: assume two
    for sl in _small_chunks(params, foreach, temps) if fuse else [slice(0, len(params))]:
        if fuse and sl.stop - sl.start > 1:
            _apply_small(norm, params[sl], c[sl], None if pre is None else pre[sl],
                         None if post is None else post[sl], identity, lr, wd)
            continue
        _apply_each(norm, params[sl], c[sl], pres and pres[sl], posts and posts[sl], identity,
                    sign_in_place, lr, wd, not eager)


def _apply_each(norm: Norm, params: list[Tensor], c: list[Tensor], pres: Any, posts: Any,
                identity: bool, sign_in_place: bool, lr: Any, wd: float, compiling: bool) -> None:
    """The loop path's update, one tensor at a time (``pres``/``posts``: per-tensor 0-d scalars
    or ``None``), with at most one temporary alive."""
    for i, (p, x) in enumerate(zip(params, c)):
        den = None if pres is None else pres[i]
        if identity:
            d = x
        elif sign_in_place and den is None:
            d = torch.sign(x, out=x)
        else:
            (d,) = norm._map_div([x], None if den is None else [den], _Ops)
            den = None
        apply_weight_decay(_Ops, [p], lr, wd)
        _axpy_one_(p, d, lr, den, None if posts is None else posts[i], compiling)
        del d  # free it before the next tensor's direction is made


def _small_chunks(params: list[Tensor], foreach: bool, temps: int) -> list[slice]:
    """Chunks of small tensors for fused kernels: the base class's streaming granularity on the
    loop path, and its foreach chunks on the foreach path (fewer calls) where the map needs one
    temporary per tensor (two, the l_p map's |x|^a and sign(x), would exceed that path's budget)."""
    return _base._chunks(params, _base._FOREACH_CHUNK if foreach and temps == 1 else _base._STREAM_CHUNK)


def _apply_fused(norm: Norm, params: list[Tensor], c: list[Tensor], pre: Tensor | None,
                 post: Tensor | None, identity: bool, lr: Any, wd: float, ops: type[_Ops]) -> None:
    """``x <- (1 - lr wd) x - lr post * map(c / pre)`` with foreach kernels, one temporary per
    tensor (none for the identity map without scalars)."""
    if identity and pre is None and post is None:
        d = c
    else:
        d = norm._map_div(c, None if pre is None else list(pre.unbind(0)), ops)
        if post is not None:
            ops.mul_(d, list(post.unbind(0)))
    apply_weight_decay(ops, params, lr, wd)
    ops.axpy_(params, d, -lr)


def _apply_small(norm: Norm, params: list[Tensor], c: list[Tensor], pre: Tensor | None,
                 post: Tensor | None, identity: bool, lr: Any, wd: float) -> None:
    """:func:`_apply_fused` for a loop-path chunk of small CPU tensors (eager): the per-tensor
    scalars as Python floats (a host read costs nothing on CPU), so that no 0-d tensor is made
    per tensor and ``post`` folds into the update's ``alpha`` (one pass fewer)."""
    ops = _FusedOps
    pres = None if pre is None else pre.tolist()
    posts = None if post is None else post.tolist()
    d = c if identity and pres is None else norm._map_div(c, pres, ops)
    apply_weight_decay(ops, params, lr, wd)
    if posts is None:
        torch._foreach_add_(params, d, alpha=-lr)
    elif len(set(posts)) == 1:  # one scope: the same scalar for every tensor
        torch._foreach_add_(params, d, alpha=-lr * posts[0])
    else:
        if d is c:
            d = torch._foreach_mul(c, posts)
        else:
            torch._foreach_mul_(d, posts)
        torch._foreach_add_(params, d, alpha=-lr)


def _axpy_one_(p: Tensor, d: Tensor, lr: Any, den: Tensor | None, post: Tensor | None,
               compiling: bool) -> None:
    """``p <- p - lr * (d / den) * post`` (``None``: 1) in one pass: the 0-d scalars are folded
    into ``add_``/``addcmul_``/``addcdiv_`` instead of a separate pass scaling a temporary."""
    if compiling:  # no step-dependent Python float as value=/alpha= (see _backend._compiling)
        if den is not None:
            d = d / den
        if post is not None:
            d = d * post
        p.add_(d * -lr)
    elif den is None and post is None:
        p.add_(d, alpha=-lr)
    elif den is None:
        p.addcmul_(d, post, value=-lr)
    elif post is None:
        p.addcdiv_(d, den, value=-lr)
    else:  # not made by the norms here (a plan with both pre and post); kept general
        p.addcmul_(d / den, post, value=-lr)


class SteepestDescent(StepOptimizer):
    """Steepest descent w.r.t. ``norm`` (seed 000, Sec. 3, Table 1).

    Args:
        params: parameters or param groups (each group may override every option).
        lr: step size ``>= 0``.
        norm: a :class:`steepest.norms.Norm`, e.g. ``Lp(3)``, ``Linf()``, ``BlockNorm()``.
        mode: ``"scaled"`` x -= lr g# (Eq. 10); ``"normalized"`` x -= lr g#/||g||_* (Eq. 49);
            ``"soft"`` x -= lr g#/(||g||_* + beta) (Eq. 52/57); ``"unscaled"`` the norm's
            elementwise map only (sign(g) for Linf, s(g) of seed 003 Alg. 1 for Lp).
        beta: the ``beta > 0`` of ``soft`` mode.
        momentum: ``b in [0, 1)``; the direction is taken of m = b m + (1-b) g (m_0 = 0).
        scope: where the norm is taken. ``"group"``: over all parameters of each param group as
            one vector; ``"all_groups"``: over all parameters of all groups with this scope (the
            papers' R^d, whatever the grouping: splitting biases into a no-decay group does not
            change the update); ``"per_tensor"``: over each tensor on its own. ``"global"``
            (default) behaves as ``"group"`` and warns when several groups meet a norm that
            couples tensors, since the grouping then changes the update.
        weight_decay: decoupled weight decay, x -= lr wd x.
        maximize: ascend instead of descend.
        foreach: ``None`` (loop on CPU, foreach on CUDA), ``True`` or ``False``.
        nonfinite: ``None`` (default: ``"raise"`` on CPU, ``"ignore"`` elsewhere and when
            compiled), ``"raise"``, ``"skip"`` or ``"ignore"`` for NaN/inf gradients (see
            :mod:`steepest.optim.base`).

    A zero gradient gives a zero step in every mode (no 0/0).

    Default ``lr=0.3`` suits the default norm (l2: gradient descent; best 0.3-1 in the sweep of
    docs/defaults.md, 10-100x AdamW's best lr there). With another norm start from the matching
    preset's default (``ScaledSignSGD`` for scaled Linf, ``LpDescent`` for Lp, ``SignSGD`` for
    unscaled Linf).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.3,
        norm: Norm | dict[str, Any] | str = "l2",
        mode: str = "scaled",
        beta: float = 1.0,
        momentum: float = 0.0,
        scope: str = "global",
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            norm=norm,
            mode=mode,
            beta=beta,
            momentum=momentum,
            scope=scope,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach, fused=fused,
            nonfinite=nonfinite,
        )
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_choice("mode", group["mode"], MODES)
        b = group["beta"]
        if not isinstance(b, (int, float)) or not math.isfinite(b) or b <= 0:
            raise ValueError(f"beta must be a finite number > 0, got {b!r}")
        if "betas" in group:
            check_betas(group["betas"])
        else:
            check_range("momentum", group["momentum"], 0.0, 1.0)

    @staticmethod
    def _betas(group: dict[str, Any]) -> tuple[float, float]:
        if "betas" in group:
            return tuple(group["betas"])  # type: ignore[return-value]
        m = group["momentum"]
        return m, m

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        if any(self._betas(group)):
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _streams(self, group: dict[str, Any]) -> bool:
        # Nothing couples the tensors (sign(m), Lion, s(g), l2): the base class hands _update a
        # chunk of tensors at a time on both paths (temporaries of one chunk at a time).
        return bool(group["norm"]._is_elementwise(group["mode"]))

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        foreach: bool,
    ) -> None:
        betas = self._betas(group)
        if group.get("fused"):  # the fused backend (steepest.optim.updates)
            _updates.fused_steepest(group, params, grads, states, betas)
            return
        # On CPU the foreach path takes the loop path's code too: torch's _foreach_* ops are a
        # per-tensor loop there themselves, and all-at-once temporaries cost page faults.
        if (not foreach or _per_tensor_ok(params)) and self._streams(group) and _lean_ok(group["norm"]):
            _elementwise_loop(group, params, grads, states, betas, foreach)
            return
        c = momentum_direction_input(betas, grads, states, foreach)
        apply_direction(group, params, c, group["norm"], group["mode"], foreach, beta=group["beta"],
                        owned=betas[0] != betas[1])

    def _fused_unsupported(self, group: dict[str, Any]) -> str | None:
        if group.get("scope") == "all_groups":
            return "with scope='all_groups' (one norm over several groups)"
        return _updates.steepest_fusable(group["norm"], group["mode"])

    def _fused_defers_check(self, group: dict[str, Any]) -> bool:
        # A reduction pass reads every gradient before the first write (the check is free).
        return not self._streams(group)

    def _scope_couples(self, group: dict[str, Any]) -> bool:
        # The scope matters only where the direction has a reduction over the scope: not for an
        # elementwise map (sign, s(g)), nor for BlockNorm's normalized mode (each block moves
        # along g_B/||g_B||, whatever the scope).
        norm, mode = group["norm"], group["mode"]
        return not (norm._is_elementwise(mode) or (isinstance(norm, BlockNorm) and mode == "normalized"))

    def _update_joint(
        self,
        groups: list[dict[str, Any]],
        params: list[list[Tensor]],
        grads: list[list[Tensor]],
        states: list[list[dict[str, Any]]],
        foreach: bool,
    ) -> None:
        """``scope="all_groups"``: one direction of the concatenated momenta of all such groups
        (the papers' R^d whatever the grouping), then each group's own lr and weight decay."""
        g0 = groups[0]
        for g in groups[1:]:
            for key in ("norm", "mode", "beta"):
                if g[key] != g0[key]:
                    raise ValueError(
                        f"scope='all_groups' takes one norm over all such groups, so they must share "
                        f"norm, mode and beta; got {key}={g0[key]!r} and {g[key]!r}"
                    )
        cs = [momentum_direction_input(self._betas(g), gr, st, foreach)
              for g, gr, st in zip(groups, grads, states)]
        flat = [c for cg in cs for c in cg]
        direction = g0["norm"]._direction(flat, _ops(foreach), g0["mode"], g0["beta"], False)
        start = 0
        for g, ps in zip(groups, params):
            d = direction[start:start + len(ps)]
            start += len(ps)
            ops = _ops(foreach)
            apply_weight_decay(ops, ps, g["lr"], g.get("weight_decay", 0.0))
            ops.axpy_(ps, d, -g["lr"])


def _lean_ok(norm: Norm) -> bool:
    """Whether :func:`_elementwise_loop` knows the norm's elementwise map (the l_p family), in
    eager mode (it passes lr as ``alpha=``, which inductor would freeze; see _backend._compiling)."""
    return type(norm) in (Lp, L2, Linf) and not torch.compiler.is_compiling()


def _elementwise_loop(
    group: dict[str, Any],
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    betas: tuple[float, float],
    foreach: bool = False,
) -> None:
    """The loop path of an elementwise direction (sign, s(c), l2's c): momentum, direction and
    update one tensor at a time with no per-tensor list building: the same ops and numbers as
    :func:`momentum_direction_input` then :func:`apply_direction`, with less Python per tensor
    (it matters with 1,000 small tensors)."""
    norm: Lp = group["norm"]
    lr, wd = group["lr"], group.get("weight_decay", 0.0)
    b1, b2 = betas
    sign, ident, owned = math.isinf(norm.p), norm.p == 2.0, b1 != b2
    fuse = _small_many(params)
    temps = 2 if not (sign or ident) else 1
    whole = not fuse or (foreach and temps == 1)  # the base class chunked the foreach path already
    for sl in [slice(0, len(params))] if whole else _small_chunks(params, foreach, temps):
        if fuse and sl.stop - sl.start > 1:  # small tensors: fused kernels (Python dominates)
            _elementwise_fused(norm, params[sl], grads[sl], states[sl], betas, lr, wd)
            continue
        for p, g, st in zip(params[sl], grads[sl], states[sl]):
            if b1 == 0.0 and b2 == 0.0:
                c = g
            elif not owned:
                c = st["momentum_buffer"].lerp_(g, 1.0 - b1)
            else:  # Lion: c = b1 m + (1 - b1) g (a temporary), then m <- b2 m + (1 - b2) g
                m = st["momentum_buffer"]
                c = torch.lerp(m, g, 1.0 - b1)
                m.lerp_(g, 1.0 - b2)
            if sign:
                d = c.sign_() if owned else torch.sign(c)
            elif ident:
                d = c
            else:
                (d,) = norm._map_div([c], None, _Ops)
            if wd:
                p.mul_(1.0 - lr * wd)
            p.add_(d, alpha=-lr)
            del d, c  # free this tensor's temporary before the next one is made


def _elementwise_fused(norm: Lp, params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]],
                       betas: tuple[float, float], lr: Any, wd: float) -> None:
    """:func:`_elementwise_loop` for a chunk of small tensors, with foreach kernels."""
    owned = betas[0] != betas[1]
    c = momentum_direction_input(betas, grads, states, True)
    if math.isinf(norm.p) and owned:
        torch._foreach_sign_(c)  # Lion's c is the chunk's temporary: its sign in place
        d = c
    elif math.isinf(norm.p):
        d = torch._foreach_sign(c)
    elif norm.p == 2.0:
        d = c
    else:
        d = norm._map_div(c, None, _FusedOps)
    apply_weight_decay(_FusedOps, params, lr, wd)
    torch._foreach_add_(params, d, alpha=-lr)


def momentum_direction_input(
    betas: tuple[float, float],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    foreach: bool,
    key: str = "momentum_buffer",
) -> list[Tensor]:
    """c = b1 m + (1-b1) g, then m <- b2 m + (1-b2) g (in place). Returns c."""
    b1, b2 = betas
    if b1 == 0.0 and b2 == 0.0:
        return grads
    ops = _ops(foreach)
    bufs = [s[key] for s in states]
    if b1 == b2:
        ops.lerp_(bufs, grads, 1.0 - b1)
        return bufs
    c = ops.lerp(bufs, grads, 1.0 - b1)
    ops.lerp_(bufs, grads, 1.0 - b2)
    return c


class SignSGD(SteepestDescent):
    """signSGD, x -= lr sign(g) (seed 000 Eq. 2; seed 004 Eq. 3); with ``momentum=b > 0`` it is
    Signum / M-SIGN-SGD (seed 001 Alg. 3): m = b m + (1-b) g, x -= lr sign(m).

    Default ``lr=3e-3`` (best 3e-3..1e-2 on the four small problems of docs/defaults.md; with
    ``momentum=0.9`` start at 1e-2). If you use AdamW at lr ``a``, start at about ``0.2 a``
    (0.1-0.3 a there).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 3e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        super().__init__(
            params, lr, Linf(), "unscaled", 1.0, momentum, "global", weight_decay,
            maximize=maximize, foreach=foreach, fused=fused, nonfinite=nonfinite,
        )


class ScaledSignSGD(SteepestDescent):
    """Norm-scaled sign descent, x -= lr ||g||_1 sign(g): steepest descent w.r.t. l_inf
    (seed 000 Eq. 11; seed 004 Alg. 1-2). ``scope`` picks the l1 norm over each param group
    (``"group"``), over all groups (``"all_groups"``: splitting parameters into groups, e.g. no
    weight decay on biases, leaves the update unchanged) or per tensor; see
    :class:`SteepestDescent`.

    Default ``lr=3e-5``. The step scales with ||g||_1, so with the number d of parameters in the
    scope, and the best lr moves with the model: 3e-5..1e-2 in docs/defaults.md, with lr * d
    between 0.2 and 7. Start near ``1/d``; relative to AdamW at ``a`` the best was 0.001-0.1 a.
    (The sweep's rule gave 1e-4, which diverged on the MNIST-1D CNN at 400 steps for 2 of 3 seeds.)
    """

    def __init__(
        self,
        params: Any,
        lr: float = 3e-5,
        scope: str = "global",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        super().__init__(
            params, lr, Linf(), "scaled", 1.0, momentum, scope, weight_decay,
            maximize=maximize, foreach=foreach, fused=fused, nonfinite=nonfinite,
        )


class LpDescent(SteepestDescent):
    """Stochastic l_p descent (seed 003, Alg. 1): x -= lr s(g), s_i(g) = sign(g_i)|g_i|^(1/(p-1)).

    ``eps > 0`` smooths the map: s_eps_i(g) = g_i / (|g_i|^((p-2)/(p-1)) + eps) (the paper's
    form; ``eps_mode="code"`` gives the authors' code's g_i (|g_i| + eps)^(-(p-2)/(p-1))).
    ``scaled=True`` uses the steepest-descent direction g# = s(g) ||g||_q^((p-2)/(p-1))
    (q = p/(p-1)) over ``scope``. ``p = 2`` is SGD and ``p = math.inf`` signSGD.

    Default ``lr=0.1`` (p = 3, unscaled; best 0.1-1 in docs/defaults.md); if you use AdamW at lr
    ``a``, start at about ``10 a`` (3-30 a there).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.1,
        p: float = 3.0,
        eps: float = 0.0,
        scaled: bool = False,
        scope: str = "global",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        eps_mode: str = "paper",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        if not isinstance(scaled, bool):
            raise ValueError(f"scaled must be a bool, got {scaled!r}")
        super().__init__(
            params, lr, Lp(p, eps, eps_mode), "scaled" if scaled else "unscaled", 1.0, momentum,
            scope, weight_decay, maximize=maximize, foreach=foreach, fused=fused, nonfinite=nonfinite,
        )


class CoordinateDescent(SteepestDescent):
    """Greedy coordinate descent, steepest descent w.r.t. l1 (seed 000, Eq. 33): only the
    coordinate with the largest |g_i| (over the group, or per tensor) moves, by lr g_i.

    Default ``lr=0.3``, about the largest stable step (docs/defaults.md); one coordinate moves
    per step, so it trains networks poorly at any lr.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.3,
        scope: str = "global",
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        super().__init__(
            params, lr, L1(), "scaled", 1.0, 0.0, scope, 0.0,
            maximize=maximize, foreach=foreach, fused=fused, nonfinite=nonfinite,
        )


class BlockNormalizedSGD(SteepestDescent):
    """Steepest descent w.r.t. the block norm max_B ||x_B||_2 (seed 000, App. A.2.2).

    ``mode="normalized"`` (default) moves every block by lr along g_B/||g_B||_2 (block-normalized
    gradient descent); ``"scaled"`` multiplies that by sum_B ||g_B||_2 (Eq. 37-38). Blocks are
    tensors (``blocks="tensor"``) or rows of matrices (``blocks="row"``).

    Default ``lr=0.3`` (in normalized mode each block moves by lr; best 0.3-1 in
    docs/defaults.md); if you use AdamW at lr ``a``, start at about ``13 a`` (10-30 a there).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.3,
        mode: str = "normalized",
        blocks: str = "tensor",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        beta: float = 1.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        super().__init__(
            params, lr, BlockNorm(blocks), mode, beta, momentum, "global", weight_decay,
            maximize=maximize, foreach=foreach, fused=fused, nonfinite=nonfinite,
        )


class Lion(SteepestDescent):
    """Lion (Chen et al., 2023), the baseline of seed 003: c = b1 m + (1-b1) g;
    x -= lr (sign(c) + wd x); m = b2 m + (1-b2) g. It is l_inf steepest descent (unscaled) on
    Lion's interpolated momentum.

    Default ``lr=1e-2`` (best 1e-3..1e-2 on the small problems of docs/defaults.md, where
    AdamW's best is 1e-2..1e-1); if you use AdamW at lr ``a``, start at about ``0.2 a`` (0.1-0.3
    a there), in line with Chen et al.'s advice of a 3-10x smaller lr.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        check_betas(betas)
        StepOptimizer.__init__(
            self,
            params,
            dict(
                lr=lr, betas=tuple(betas), weight_decay=weight_decay, norm=Linf(),
                mode="unscaled", beta=1.0, scope="global", maximize=maximize, foreach=foreach, fused=fused,
                nonfinite=nonfinite,
            ),
        )
