"""The engine: steepest descent under a norm, one update rule for every preset.

One update rule ([BPL20, Sec. 3]; docs/design.md, "The one engine"):

    c_t = momentum scheme of g_t                        (c_t = g_t without momentum)
    d_t = direction(c_t)                                (the norm's, in one of four modes)
    x_{t+1} = s x_t - lr' * d_t                         (the step)

**Momentum schemes** (state ``momentum_buffer`` m, m_0 = 0): EMA ``m <- b m + (1 - b) g``,
``c = m`` (Signum; ``momentum=b``); Nesterov ``c = lerp(g, m, b)`` after the EMA
(torch.optim.Muon's form; ``nesterov=True``); Lion-style ``c = b1 m + (1 - b1) g``, then
``m <- b2 m + (1 - b2) g`` (``betas=(b1, b2)``, [Chen23]); heavy-ball (torch.optim.SGD's form;
``momentum=b, dampening=d``) ``m <- b m + (1 - d) g``, ``c = m``, with Nesterov (``nesterov=True``,
``d = 0`` only, as torch's) ``c = g + b m``. (``dampening=None``, the default, is the EMA, which
``d = b`` also gives up to rounding. m_0 = 0 here too: with ``d = 0``, torch's default, the first
step's ``m = g`` as torch's buffer, bit for bit; with ``d > 0`` torch starts its buffer at ``g``
where this gives ``(1 - d) g``, and the two then follow the same recurrence.)

**Directions** (:meth:`steepest.norms.Factored.coefficients`): ``scaled`` c# (Eq. 10),
``normalized`` c#/||c||_* (Eq. 49; the negative LMO), ``soft`` c#/(||c||_* + beta) (Eq. 52/57) or
``unscaled`` (the norm's map alone: sign(c), s(c), the polar factor), over a ``scope`` (the
group, all groups, or each tensor); a group's ``nonmatrix_norm`` gives its parameters with
``ndim < 2`` another norm (per-group norm: the modular norm of [Pethick25]).

**Steps**: ``s = 1 - lr wd`` (decoupled decay), times ``1 - lr`` for Scion's constrained step
(``step="constrained"``: with ``mode="normalized"`` it is ``x <- (1 - lr) x + lr radius lmo(c)``,
[Pethick25]); ``lr' = adjust(lr radius, shape)`` (``radius``, ``adjust_lr_fn``: torch.optim.Muon's
shape-adjusted lr, :func:`adjust_lr`).

Every named optimizer is a preset of :class:`SteepestDescent` (a norm, a mode, a momentum
scheme, a step): the elementwise ones in :mod:`steepest.optim.presets`, ``Modular`` (per-layer
norms) in :mod:`steepest.optim.layerwise`, ``Muon`` in :mod:`steepest.optim.muon`.

Two executions of the one rule: a group with the plain step (no step option) runs as lists
(momentum of every tensor, the plan's reductions, then the update, with the backend's
multi-tensor kernels; elementwise directions stream chunk by chunk); a group holding a step
option (:data:`STEP_OPTIONS`; every ``Modular`` group) runs one parameter at a time
(:meth:`SteepestDescent._update_per_parameter`: each parameter's own norm and lr, one matrix's
temporaries alive). With neutral step options the two agree up to rounding (the last bits:
a folded ``addcmul_`` against a scaled temporary).

The engine knows a norm only through its public methods (:class:`steepest.norms.Norm`:
``plan``, ``map``, ``map_``, ``map_all``, ``identity_map``, ``coordinates``, ``elementwise``,
``couples``, ``partial``), and the execution only through the backend it is handed
(:mod:`steepest.backend`), so a norm written outside the package streams as a built-in one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from steepest.backend import Backend, BatchedOps, LoopOps, is_dtensor, ops_for
from steepest.norms import MODES, Norm, _as_matrix, per_tensor_list
from steepest.optim import updates as _updates
from steepest.optim.base import (
    StepOptimizer,
    apply_weight_decay,
    check_betas,
    check_choice,
    check_range,
    update_is_finite,
)

__all__ = [
    "ADJUST_LR_FNS",
    "STEPS",
    "STEP_OPTIONS",
    "SteepestDescent",
    "adjust_lr",
    "apply_direction",
    "heavy_ball_",
    "heavy_ball_one_",
    "momentum_",
    "momentum_direction_input",
    "momentum_one_",
]

ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "none")
STEPS = ("descent", "constrained")
#: The step options and their neutral values (the plain step). A group without one takes its
#: neutral value; a group that sets one runs one parameter at a time.
STEP_OPTIONS: dict[str, Any] = {
    "nesterov": False, "adjust_lr_fn": None, "radius": 1.0, "step": "descent", "nonmatrix_norm": None,
}


def adjust_lr(lr: float, adjust_lr_fn: str | None, rows: int, cols: int) -> float:
    """torch.optim.Muon's shape adjustment of the step size of a ``rows x cols`` matrix:
    ``"original"`` (Jordan) ``lr sqrt(max(1, rows/cols))``; ``"match_rms_adamw"`` (Liu et al.
    2025, "Muon is Scalable", Sec. 2.2) ``0.2 lr sqrt(max(rows, cols))``; ``None`` / ``"none"``:
    ``lr`` unchanged. (torch's Muon treats ``None`` as ``"original"``; :class:`steepest.Muon`
    passes ``"original"`` for it.)"""
    if adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


def _per_parameter(group: dict[str, Any]) -> bool:
    """Whether the group holds a step option (:data:`STEP_OPTIONS`; ``Modular``'s groups hold
    all of them): then its step is taken one parameter at a time (each parameter's own norm,
    lr and shape), as ``Modular`` always took it (its numbers are unchanged to the last bit)."""
    return any(k in group for k in STEP_OPTIONS)


def apply_direction(
    group: dict[str, Any],
    params: list[Tensor],
    c: list[Tensor],
    norm: Norm,
    mode: str,
    backend: Backend,
    *,
    lr: float | None = None,
    beta: float = 1.0,
    owned: bool = False,
    who: str = "SteepestDescent",
) -> None:
    """``x <- (1 - lr wd) x - lr direction(c)``, the shared last line of every steepest method.

    ``owned``: ``c`` is a temporary of the caller's (Lion's interpolated momentum), so the map
    may overwrite it (``Norm.map_``) instead of allocating another parameter-sized tensor.

    Where the direction is ``post_i * map(c_i / pre_i)`` (:meth:`Norm.plan`), the scalars are
    folded into the update pass (``addcmul_``/``addcdiv_`` with a 0-d tensor) instead of a
    ``mul_`` pass over a direction temporary, and the map is built in one temporary per tensor
    (:meth:`Norm.map_all`); an identity map (l2, block norms) needs no temporary at all."""
    ops = backend.ops
    lr = group["lr"] if lr is None else lr
    per_tensor = group.get("scope", "global") == "per_tensor"
    wd = group.get("weight_decay", 0.0)
    coords = norm.coordinates(c, mode, beta, per_tensor)
    if coords is not None and all(p.is_contiguous() for p in params):
        # Coordinate descent moves one coordinate (per scope): update it alone instead of
        # adding a whole all-zero direction (3 passes over every parameter saved).
        apply_weight_decay(ops, params, lr, wd)
        for i, j, value in coords:
            if isinstance(j, Tensor):  # compiled: an index tensor (L1._coordinates_on_device)
                params[i].view(-1).index_add_(0, j, (value * -lr).to(params[i].dtype).reshape(1))
            else:
                params[i].view(-1)[j] -= lr * value
        return
    plan = norm.plan(c, mode, beta, per_tensor)
    if plan is None:
        direction = norm.direction(c, mode, beta=beta, per_tensor=per_tensor, foreach=backend.foreach)
        apply_weight_decay(ops, params, lr, wd)
        ops.axpy_(params, direction, -lr)
        return
    pre, post = plan
    # The plan's scalars are the update's reductions, taken before its first write: a finite
    # but huge gradient can overflow them (||g||_1 of float32 gradients near 1e38), which the
    # gradient check cannot see. Checking them is free (a few numbers; issue 21).
    # (``pre`` may be inf by design: a zero tensor's divisor, or an overflowed norm, whose map is
    # then 0, a finite step; only ``post`` multiplies the update.)
    if not update_is_finite(who, group, params, [post], f"the {mode} step's scale under {norm!r}"):
        return
    compiling = backend.compiling
    if norm.identity_map and pre is not None and backend.per_tensor(c):
        # map(z) = z: x / pre * post as one division inside the update (addcdiv_): no temporary.
        if isinstance(pre, Tensor):  # one vectorized division for all tensors
            dens = list((pre if post is None else torch.where(post > 0, pre / post, math.inf)).unbind(0))
        else:
            posts_ = per_tensor_list(post)
            dens = pre if posts_ is None else [torch.where(q > 0, d / q, math.inf) for d, q in zip(pre, posts_)]
        whole = [(slice(0, len(params)), None)]
        for sl, kops in backend.small_chunks(c, 1) if all(d.dim() == 0 for d in dens) else whole:
            if kops is not None:  # small tensors: fused kernels, a chunk at a time
                d = kops.div(c[sl], dens[sl])
                apply_weight_decay(kops, params[sl], lr, wd)
                kops.axpy_(params[sl], d, -lr)
                del d
                continue
            for p, x, den in zip(params[sl], c[sl], dens[sl]):
                apply_weight_decay(LoopOps, [p], lr, wd)
                _axpy_one_(p, x, lr, den, None, compiling)
        return
    if not backend.per_tensor(c):  # accelerators: all tensors at once (fused kernels)
        _apply_all(norm, params, c, pre, post, lr, wd, ops, owned)
        return
    # Loop path (and the foreach path on CPU, where torch's _foreach_* ops are a per-tensor loop
    # themselves): one tensor at a time, so that each temporary is freed before the next is made
    # (holding them all costs page faults on CPU: ~3x slower); many small tensors (per-tensor
    # Python would dominate) take fused kernels a chunk at a time (the backend's choice).
    pres, posts = per_tensor_list(pre), per_tensor_list(post)
    for sl, kops in backend.small_chunks(c, norm.map_temporaries):
        if kops is not None:
            _apply_small(norm, params[sl], c[sl], pre[sl] if pre is not None else None,
                         post[sl] if post is not None else None, lr, wd, kops)
            continue
        _apply_each(norm, params[sl], c[sl], pres and pres[sl], posts and posts[sl], owned, lr, wd,
                    compiling)


def _apply_each(norm: Norm, params: list[Tensor], c: list[Tensor], pres: Any, posts: Any,
                owned: bool, lr: Any, wd: float, compiling: bool) -> None:
    """The loop path's update, one tensor at a time (``pres``/``posts``: per-tensor 0-d scalars
    or ``None``), with at most one temporary alive."""
    identity = norm.identity_map
    for i, (p, x) in enumerate(zip(params, c)):
        den = None if pres is None else pres[i]
        if identity:
            d = x
        elif owned and den is None:
            d = norm.map_(x)  # the caller's temporary: e.g. sign(x) in place
        else:
            (d,) = norm.map_all([x], None if den is None else [den], LoopOps)
            den = None
        apply_weight_decay(LoopOps, [p], lr, wd)
        _axpy_one_(p, d, lr, den, None if posts is None else posts[i], compiling)
        del d  # free it before the next tensor's direction is made


def _apply_all(norm: Norm, params: list[Tensor], c: list[Tensor], pre: Any, post: Tensor | None,
               lr: Any, wd: float, ops: type[LoopOps], owned: bool) -> None:
    """``x <- (1 - lr wd) x - lr post * map(c / pre)`` with multi-tensor kernels, one temporary
    per tensor (none for the identity map without scalars, or an owned ``c``)."""
    if norm.identity_map and pre is None and post is None:
        d = c
    else:
        d = norm.map_all(c, per_tensor_list(pre), ops, owned=owned and pre is None)
        if post is not None:
            ops.mul_(d, list(post.unbind(0)))
    apply_weight_decay(ops, params, lr, wd)
    ops.axpy_(params, d, -lr)


def _apply_small(norm: Norm, params: list[Tensor], c: list[Tensor], pre: Any, post: Tensor | None,
                 lr: Any, wd: float, ops: type[LoopOps]) -> None:
    """:func:`_apply_all` for a loop-path chunk of small CPU tensors (eager): the per-tensor
    scalars as Python floats (a host read costs nothing on CPU), so that no 0-d tensor is made
    per tensor and ``post`` folds into the update's ``alpha`` (one pass fewer)."""
    pres = None if pre is None else (pre.tolist() if isinstance(pre, Tensor) else [float(v) for v in pre])
    posts = None if post is None else post.tolist()
    d = c if norm.identity_map and pres is None else norm.map_all(c, pres, ops)
    apply_weight_decay(ops, params, lr, wd)
    if posts is None:
        ops.axpy_(params, d, -lr)
    elif len(set(posts)) == 1:  # one scope: the same scalar for every tensor
        ops.axpy_(params, d, -lr * posts[0])
    else:
        d = ops.mul_scalars(c, posts) if d is c else ops.mul_scalars_(d, posts)
        ops.axpy_(params, d, -lr)


def _axpy_one_(p: Tensor, d: Tensor, lr: Any, den: Tensor | None, post: Tensor | None,
               compiling: bool) -> None:
    """``p <- p - lr * (d / den) * post`` (``None``: 1) in one pass: the 0-d scalars are folded
    into ``add_``/``addcmul_``/``addcdiv_`` instead of a separate pass scaling a temporary."""
    if compiling:  # no step-dependent Python float as value=/alpha= (see backend.ops._compiling)
        if den is not None:
            d = d / den
        if post is not None:
            d = d * post
        p.add_(d * -lr)
    elif den is None:
        if post is None:
            p.add_(d, alpha=-lr)
        else:
            p.addcmul_(d, post, value=-lr)
    elif post is None:
        p.addcdiv_(d, den, value=-lr)
    else:  # not made by the norms here (a plan with both pre and post); kept general
        p.addcmul_(d / den, post, value=-lr)


class SteepestDescent(StepOptimizer):
    """Steepest descent w.r.t. ``norm`` [BPL20, Sec. 3, Table 1]: the engine of every preset (see
    the module docstring).

    Args:
        params: parameters or param groups (each group may override every option).
        lr: step size ``>= 0``.
        norm: a :class:`steepest.norms.Norm`, e.g. ``Lp(3)``, ``Linf()``, ``BlockNorm()``,
            ``Spectral()``.
        mode: ``"scaled"`` x -= lr g# (Eq. 10); ``"normalized"`` x -= lr g#/||g||_* (Eq. 49);
            ``"soft"`` x -= lr g#/(||g||_* + beta) (Eq. 52/57); ``"unscaled"`` the norm's
            elementwise map only (sign(g) for Linf, s(g) of [STACEY, Alg. 1] for Lp).
        beta: the ``beta > 0`` of ``soft`` mode.
        momentum: ``b in [0, 1)``; the direction is taken of m = b m + (1-b) g (m_0 = 0).
        dampening: ``None`` (default: the EMA above) or ``d in [0, 1]``: heavy-ball momentum as
            torch.optim.SGD's, m = b m + (1 - d) g (m_0 = 0; ``d = 0``: torch's default, the
            classical heavy ball, whose first step equals torch's bit for bit; for ``d > 0``
            torch's first buffer is ``g`` where this one is ``(1 - d) g``). Not with Lion-style
            ``betas``; with ``nesterov=True`` only ``d = 0`` (as torch's SGD). A group option that
            enters the param groups only where set (the presets' checkpoints keep their keys).
        scope: where the norm is taken. ``"group"``: over all parameters of each param group as
            one vector; ``"all_groups"``: over all parameters of all groups with this scope (the
            papers' R^d, whatever the grouping: splitting biases into a no-decay group does not
            change the update); ``"per_tensor"``: over each tensor on its own. ``"global"``
            (default) is ``"group"``: splitting the parameters into groups (weight-decay
            splits) is the user's deliberate choice, so it does not warn (issue 21).
        weight_decay: decoupled weight decay, x -= lr wd x.
        nesterov: take the direction of ``lerp(g, m, b)`` (torch.optim.Muon's Nesterov form)
            instead of ``m``; with ``dampening=0`` (heavy ball) of ``g + b m`` (torch.optim.SGD's).
        adjust_lr_fn: ``None``/``"none"``, ``"original"`` or ``"match_rms_adamw"``
            (:func:`adjust_lr`): the lr of each parameter with ``ndim >= 2`` adjusted to its
            matrix shape (the decay keeps the unadjusted lr, as torch's Muon).
        radius: ``> 0``, multiplies the step (Scion's per-layer radius).
        step: ``"descent"`` or ``"constrained"`` (Scion's ``x <- (1 - lr) x + lr radius lmo``).
        nonmatrix_norm: the norm of the group's parameters with ``ndim < 2`` (e.g. ``Linf()``), or
            ``None`` (the group's norm).
        maximize: ascend instead of descend.
        foreach: ``None`` (loop on CPU, foreach on CUDA), ``True`` or ``False``.
        fused: ``True`` runs the step as compiled elementwise kernels (the fused backend,
            :mod:`steepest.backend.fused`: momentum, map and update in one pass per tensor,
            compiled once per dtype by ``torch.compile``; eager with one warning where compiling
            fails). Needs a pointwise :meth:`~steepest.norms.Norm.map` and, for the modes with a
            reduction, a per-tensor :meth:`~steepest.norms.Norm.partial` (the l_p norms and
            ``BlockNorm(blocks="tensor")``; not ``scope="all_groups"``); refused with a
            ``ValueError`` otherwise, and together with ``foreach=True``. ``None``/``False``: eager.
        nonfinite: ``None`` (default: ``"raise"`` on CPU, ``"ignore"`` elsewhere and when
            compiled), ``"raise"``, ``"skip"`` or ``"ignore"`` for NaN/inf gradients (see
            :mod:`steepest.optim.base`).

    The step options (``nesterov``, ``adjust_lr_fn``, ``radius``, ``step``, ``nonmatrix_norm``)
    enter the param groups only where given a value other than the neutral one
    (:data:`STEP_OPTIONS`): a group holding one is stepped one parameter at a time, and cannot
    have ``scope="all_groups"``.

    A zero gradient gives a zero step in every mode (no 0/0).

    Finite but extreme gradients (issue 21): the scaled, normalized and soft steps are built from
    reductions (``||g||_*``, ``||g||``) taken before the first write, and a gradient near the
    dtype's range can overflow them (``||g||_1`` of float32 gradients near 1e38). Those scalars
    are checked (free: a few numbers) under the ``nonfinite`` policy: ``"raise"`` (the CPU default)
    raises a ``FloatingPointError`` with no parameter written, ``"skip"`` warns and skips the
    step. (A momentum buffer has then already taken the gradient.) The unscaled (elementwise)
    maps stay finite for finite gradients.

    Default ``lr=0.3`` suits the default norm (l2: gradient descent; best 0.3-1 in the sweep of
    docs/defaults.md, 10-100x AdamW's best lr there). With another norm start from the matching
    preset's default (``ScaledSignSGD`` for scaled Linf, ``LpDescent`` for Lp, ``SignSGD`` for
    unscaled Linf).
    """

    _norm_keys = ("norm", "nonmatrix_norm")
    _optional_norm_keys = ("nonmatrix_norm",)
    #: Whether a norm defined on matrices only (:attr:`Norm.matrix_only`, e.g. the spectral norm)
    #: refuses parameters with ``ndim < 2`` that no ``nonmatrix_norm`` covers (as torch.optim.Muon
    #: refuses them); the engine itself views a vector as a column.
    _vectors_need_a_norm = False

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.3,
        *,
        norm: Norm | dict[str, Any] | str = "l2",
        mode: str = "scaled",
        beta: float = 1.0,
        momentum: float = 0.0,
        dampening: float | None = None,
        scope: str = "global",
        weight_decay: float = 0.0,
        nesterov: bool = False,
        adjust_lr_fn: str | None = None,
        radius: float = 1.0,
        step: str = "descent",
        nonmatrix_norm: Norm | dict[str, Any] | str | None = None,
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
            foreach=foreach,
            fused=fused,
            nonfinite=nonfinite,
        )
        given = dict(nesterov=nesterov, adjust_lr_fn=adjust_lr_fn, radius=radius, step=step,
                     nonmatrix_norm=nonmatrix_norm)
        # Only the step options that are set: the presets' param groups (and checkpoints) keep
        # their keys, and a group without one takes the plain step.
        defaults.update({k: v for k, v in given.items() if v is not None and v != STEP_OPTIONS[k]})
        if dampening is not None:  # only where set: the EMA's groups (and checkpoints) keep their keys
            defaults["dampening"] = dampening
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_choice("mode", group["mode"], MODES)
        b = group["beta"]
        if not isinstance(b, (int, float)) or isinstance(b, bool) or not math.isfinite(b) or b <= 0:
            raise ValueError(f"beta must be a finite number > 0, got {b!r}")
        if "betas" in group:
            check_betas(group["betas"])
        else:
            check_range("momentum", group["momentum"], 0.0, 1.0)
        if not isinstance(group.get("nesterov", False), bool):
            raise ValueError(f"nesterov must be a bool, got {group['nesterov']!r}")
        if group.get("nesterov") and "betas" in group:
            raise ValueError("nesterov=True takes the EMA momentum (momentum=b), not betas (Lion-style "
                             f"momentum is its own scheme); got betas={group['betas']!r}")
        d = group.get("dampening")
        if d is not None:
            check_range("dampening", d, 0.0, 1.0, hi_open=False)
            if "betas" in group:
                raise ValueError("dampening sets the heavy-ball momentum (momentum=b: m <- b m + "
                                 "(1 - dampening) g), not Lion-style betas (their own scheme); got "
                                 f"dampening={d!r} with betas={group['betas']!r}: pass dampening=None")
            if group.get("nesterov") and d != 0:
                raise ValueError("nesterov=True with heavy-ball momentum takes dampening=0 (c = g + b m, "
                                 f"as torch.optim.SGD's), or dampening=None (the EMA); got dampening={d!r}")
        check_choice("adjust_lr_fn", group.get("adjust_lr_fn"), ADJUST_LR_FNS)
        r = group.get("radius", 1.0)
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not math.isfinite(r) or r <= 0:
            raise ValueError(f"radius must be a finite number > 0, got {r!r}")
        check_choice("step", group.get("step", "descent"), STEPS)
        if group.get("scope") == "all_groups" and _per_parameter(group):
            raise ValueError(f"scope='all_groups' is not supported by {type(self).__name__}; use 'group' or "
                             f"'per_tensor' (a group with step options {[k for k in STEP_OPTIONS if k in group]} "
                             "is stepped one parameter at a time)")
        self._check_matrices(group)

    def _check_matrices(self, group: dict[str, Any]) -> None:
        """Refuse parameters with ndim < 2 under a matrix norm with no ``nonmatrix_norm``."""
        if not (self._vectors_need_a_norm and group["norm"].matrix_only) or group.get("nonmatrix_norm") is not None:
            return
        gi = next((k for k, g in enumerate(self.param_groups) if g is group), len(self.param_groups))
        bad = [self._named(gi, i, p) for i, p in enumerate(group["params"]) if p.dim() < 2]
        if bad:
            raise ValueError(
                f"{type(self).__name__} only supports matrix parameters (ndim >= 2) under the norm "
                f"{group['norm']!r}; found {', '.join(bad)}. Give them a norm: nonmatrix_norm="
                "steepest.norms.Linf() (sign descent) or a param group with its own norm, or "
                "optimize them with another optimizer (e.g. AdamW) as torch.optim.Muon requires."
            )

    def _named(self, group_index: int, i: int, p: Tensor) -> str:
        if group_index < len(self.param_groups):
            return super()._named(group_index, i, p)
        return f"parameter #{i} of size {p.size()} in the param group being added"

    @staticmethod
    def _dampening(group: dict[str, Any]) -> float | None:
        """The heavy-ball ``dampening`` of a group (``None``: the EMA, or Lion-style betas)."""
        return None if "betas" in group else group.get("dampening")

    @staticmethod
    def _betas(group: dict[str, Any]) -> tuple[float, float]:
        if "betas" in group:
            b1, b2 = group["betas"]
            return b1, b2
        m = group["momentum"]
        return m, m

    def _creates_state(self, group: dict[str, Any]) -> bool:
        # Only the momentum buffer, unless a subclass extends the state (its _init_state or
        # _init_group decides then).
        return self._extends_state(SteepestDescent) or any(self._betas(group))

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        if any(self._betas(group)):
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _streams(self, group: dict[str, Any]) -> bool:
        # Nothing couples the tensors (sign(m), Lion, s(g), l2): the base class hands _update a
        # chunk of tensors at a time on both paths (temporaries of one chunk at a time).
        return not _per_parameter(group) and bool(group["norm"].elementwise(group["mode"]))

    def _gather(self, gi: int, group: dict[str, Any]) -> list[tuple[int, Tensor, Tensor]]:
        items = super()._gather(gi, group)
        if _per_parameter(group):
            # The parameters' own ndims (``_update`` may get real views of complex ones, with one
            # more dimension): they pick each parameter's norm and lr.
            if not hasattr(self, "_ndims"):
                self._ndims: dict[int, list[int]] = {}
            self._ndims[id(group)] = [p.dim() for _, p, _ in items]
        return items

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        backend: Backend,
    ) -> None:
        if _per_parameter(group):
            self._update_per_parameter(group, params, grads, states)
            return
        betas, damp = self._betas(group), self._dampening(group)
        # On CPU the foreach path takes the loop path's code too: torch's _foreach_* ops are a
        # per-tensor loop there themselves, and all-at-once temporaries cost page faults. The
        # lean loop passes lr as ``alpha=``: eager only (see steepest.backend.ops._compiling).
        if backend.per_tensor(params) and self._streams(group) and not backend.compiling:
            _elementwise_loop(group, params, grads, states, betas, backend, damp)
            return
        c = momentum_direction_input(betas, grads, states, backend.foreach, dampening=damp)
        apply_direction(group, params, c, group["norm"], group["mode"], backend, beta=group["beta"],
                        owned=betas[0] != betas[1], who=type(self).__name__)

    def _fused_unsupported(self, group: dict[str, Any]) -> str | None:
        if _per_parameter(group):
            return ("with step options (nesterov, adjust_lr_fn, radius, step, nonmatrix_norm: "
                    "the per-parameter step has no fused kernel)")
        if group.get("scope") == "all_groups":
            return "with scope='all_groups' (one norm over several groups)"
        return _updates.steepest_fusable(group["norm"], group["mode"])

    def _fused_reduces_first(self, group: dict[str, Any]) -> bool:
        # A reduction pass (the norm's partials) reads every gradient before the first write.
        return not group["norm"].elementwise(group["mode"])

    def _fused_run(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        backend: Any,
    ) -> None:
        _updates.fused_steepest(group, params, grads, states, self._betas(group), backend,
                                who=type(self).__name__, dampening=self._dampening(group))

    def _update_per_parameter(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
    ) -> None:
        """The step of a group with step options, one parameter at a time (each temporary freed
        before the next is made; an operator norm's direction is per matrix anyway)."""
        b1, b2 = self._betas(group)
        damp = self._dampening(group)
        nesterov = group.get("nesterov", False)
        mode, beta = group["mode"], group["beta"]
        per_tensor = group["scope"] == "per_tensor"
        nm = group.get("nonmatrix_norm")
        ndims = getattr(self, "_ndims", {}).get(id(group), [p.dim() for p in params])
        sets: dict[int, tuple[Norm, list[int]]] = {}  # which norm each parameter follows
        for k, nd in enumerate(ndims):
            norm = nm if (nm is not None and nd < 2) else group["norm"]
            sets.setdefault(id(norm), (norm, []))[1].append(k)

        def direction_input(k: int, advance: bool = True) -> tuple[Tensor, bool]:
            """``(c, owned)``: the momentum scheme's direction input, and whether it is a temporary
            of ours (``advance=False``: remake it without advancing the momentum again)."""
            g = grads[k]
            if b1 == 0.0 and b2 == 0.0:
                return g, False
            m = states[k]["momentum_buffer"]
            if damp is not None:  # heavy ball: torch.optim.SGD's ops, in its order
                if advance:
                    heavy_ball_one_(m, g, b1, 1.0 - damp)
                return (g.add(m, alpha=b1), True) if nesterov else (m, False)
            if nesterov:
                if advance:
                    m.lerp_(g, 1 - b2)  # the same ops, in the same order, as torch.optim.Muon
                return g.lerp(m, b2), True
            if b1 == b2:
                if advance:
                    m.lerp_(g, 1 - b1)
                return m, False
            assert advance  # a Lion-style c needs the m before the step: not remade
            return momentum_one_(m, g, 1.0 - b1, 1.0 - b2), True

        for norm, idx in sets.values():
            if per_tensor or not norm.couples(mode):
                # Stream: one tensor at a time (the scope changes nothing here), each temporary
                # freed before the next is made; an owned input (Nesterov's) becomes the direction.
                for k in idx:
                    u, owned = direction_input(k)
                    d = norm.direction([u], mode, beta=beta, per_tensor=True, owned=owned)[0]
                    del u
                    _step_one_(group, params[k], d, ndims[k])
                    del d
                continue
            remakes = nesterov or b1 == b2
            partials = _partials(norm, idx, direction_input) if remakes else None
            if partials is not None:
                # A global plan made of per-tensor reductions (Norm.partial: an l_p norm's ||u||_q,
                # a column/row norm's dual): a first pass advances the momentum and takes them, a
                # second remakes each input (Nesterov's lerp, bitwise the same) and moves: one
                # tensor's temporaries at a time, not every tensor's direction.
                pre, post = norm.plan_partials(partials, [params[k] for k in idx], mode, beta, False)
                # The plan's reductions, before any write: a finite but huge gradient can
                # overflow them (issue 21); checking them is free.
                if not update_is_finite(type(self).__name__, group, [params[k] for k in idx],
                                        [post], f"the {mode} step's scale under {norm!r}"):
                    continue
                for i, k in enumerate(idx):
                    u, owned = direction_input(k, advance=False)
                    if pre is not None:
                        u = u.div_(pre[i]) if owned else u / pre[i]
                        owned = True
                    d = norm.map_(u) if owned else norm.map(u)
                    if d is u and not owned:
                        d = d.clone()  # the momentum buffer itself: d is scaled in place below
                    del u
                    if post is not None:
                        d.mul_(post[i])
                    _step_one_(group, params[k], d, ndims[k])
                    del d
            else:
                # The dual of every tensor before any moves (Spectral's <M, NS(M)>, l1 and block
                # norms): all directions at once.
                c = [direction_input(k)[0] for k in idx]
                for k, d in zip(idx, norm.direction(c, mode, beta=beta)):
                    _step_one_(group, params[k], d, ndims[k])

    def _update_joint(
        self,
        groups: list[dict[str, Any]],
        params: list[list[Tensor]],
        grads: list[list[Tensor]],
        states: list[list[dict[str, Any]]],
        backend: Backend,
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
        foreach = backend.foreach
        cs = [momentum_direction_input(self._betas(g), gr, st, foreach, dampening=self._dampening(g))
              for g, gr, st in zip(groups, grads, states)]
        flat = [c for cg in cs for c in cg]
        direction = g0["norm"].direction(flat, g0["mode"], beta=g0["beta"], foreach=foreach)
        start = 0
        for g, ps in zip(groups, params):
            d = direction[start:start + len(ps)]
            start += len(ps)
            ops = backend.ops
            apply_weight_decay(ops, ps, g["lr"], g.get("weight_decay", 0.0))
            ops.axpy_(ps, d, -g["lr"])


def _elementwise_loop(
    group: dict[str, Any],
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    betas: tuple[float, float],
    backend: Backend,
    dampening: float | None = None,
) -> None:
    """The loop path of an elementwise direction (sign, s(c), l2's c; any norm's
    :meth:`Norm.map`): momentum, direction and update one tensor at a time with no per-tensor
    list building: the same ops and numbers as :func:`momentum_direction_input` then
    :func:`apply_direction`, with less Python per tensor (it matters with 1,000 small tensors)."""
    norm: Norm = group["norm"]
    lr, wd = group["lr"], group.get("weight_decay", 0.0)
    b1, b2 = betas
    ident, owned = norm.identity_map, b1 != b2
    for sl, kops in backend.small_chunks(params, norm.map_temporaries):
        if kops is not None:  # small tensors: fused kernels (Python dominates)
            _elementwise_fused(norm, params[sl], grads[sl], states[sl], betas, lr, wd, kops, dampening)
            continue
        for p, g, st in zip(params[sl], grads[sl], states[sl]):
            if b1 == 0.0 and b2 == 0.0:
                c = g
            elif dampening is not None:
                c = heavy_ball_one_(st["momentum_buffer"], g, b1, 1.0 - dampening)
            else:
                c = momentum_one_(st["momentum_buffer"], g, 1.0 - b1, 1.0 - b2)
            d = c if ident else (norm.map_(c) if owned else norm.map(c))
            if wd:
                p.mul_(1.0 - lr * wd)
            p.add_(d, alpha=-lr)
            del d, c  # free this tensor's temporary before the next one is made


def _elementwise_fused(norm: Norm, params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]],
                       betas: tuple[float, float], lr: Any, wd: float, ops: type[LoopOps] = BatchedOps,
                       dampening: float | None = None) -> None:
    """:func:`_elementwise_loop` for a chunk of small tensors, with multi-tensor kernels."""
    owned = betas[0] != betas[1]
    c = momentum_direction_input(betas, grads, states, True, dampening=dampening)
    # Lion's c is the chunk's temporary: a sign map is made in place (Norm.map_all, owned)
    d = c if norm.identity_map else norm.map_all(c, None, ops, owned=owned)
    apply_weight_decay(ops, params, lr, wd)
    ops.axpy_(params, d, -lr)


def momentum_direction_input(
    betas: tuple[float, float],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    foreach: bool,
    key: str = "momentum_buffer",
    *,
    dampening: float | None = None,
) -> list[Tensor]:
    """c = b1 m + (1-b1) g, then m <- b2 m + (1-b2) g (in place). Returns c. With a
    ``dampening`` d (heavy ball, ``b1 == b2 == b``): m <- b m + (1 - d) g, c = m."""
    b1, b2 = betas
    if b1 == 0.0 and b2 == 0.0:
        return grads
    if dampening is not None:
        return heavy_ball_(ops_for(foreach), [s[key] for s in states], grads, b1, 1.0 - dampening)
    return momentum_(ops_for(foreach), [s[key] for s in states], grads, 1.0 - b1, 1.0 - b2)


def heavy_ball_one_(m: Tensor, g: Tensor, b: float, w: float) -> Tensor:
    """Heavy-ball momentum of one tensor as torch.optim.SGD computes it: ``m <- b m + w g`` with
    ``w = 1 - dampening`` (``mul_`` then ``add_``, torch's ops in torch's order, so that
    ``dampening=0`` steps as torch's SGD to the last bit); returns ``m``. (A separate function
    from :func:`momentum_one_`, whose EMA keeps its ``lerp``: ``b`` is given as it is, since
    ``1 - (1 - b)`` need not round back to ``b``.)"""
    return m.mul_(b).add_(g, alpha=w)


def heavy_ball_(ops: type[LoopOps], ms: list[Tensor], gs: list[Tensor], b: float, w: float) -> list[Tensor]:
    """:func:`heavy_ball_one_` on lists with the list ops ``ops`` (torch's foreach SGD: a
    multiply, then an add; compile-safe through the ops)."""
    ops.mul_scalar_(ms, b)
    return ops.axpy_(ms, gs, w)


def momentum_one_(m: Tensor, g: Tensor, w1: float, w2: float) -> Tensor:
    """The momentum schemes of one tensor, written once (the list form is :func:`momentum_`):
    EMA (``w1 == w2``, Signum): ``m <- m + w (g - m)``, returns ``m``; Lion-style (``w1 != w2``,
    [Chen23], Alg. 2): returns the fresh ``c = m + w1 (g - m)``, then
    ``m <- m + w2 (g - m)``. (``w = 1 - beta``.)"""
    if w1 == w2:
        return m.lerp_(g, w1)
    c = torch.lerp(m, g, w1)
    m.lerp_(g, w2)
    return c


def momentum_(ops: type[LoopOps], ms: list[Tensor], gs: list[Tensor], w1: float, w2: float) -> list[Tensor]:
    """:func:`momentum_one_` on lists with the list ops ``ops`` (compile-safe through them)."""
    if w1 == w2:
        return ops.lerp_(ms, gs, w1)
    c = ops.lerp(ms, gs, w1)
    ops.lerp_(ms, gs, w2)
    return c


def _partials(norm: Norm, idx: list[int], direction_input: Any) -> Tensor | None:
    """The norm's :meth:`Norm.partial` of every input (advancing the momentum), stacked; or
    ``None`` (the momentum untouched) where the norm has none."""
    if not idx or not norm.has_partial:
        return None
    partials = []
    for k in idx:
        u, owned = direction_input(k)
        v = norm.partial(u, owned)
        assert v is not None
        partials.append(v)
        del u
    return torch.stack(partials)


def _step_one_(group: dict[str, Any], p: Tensor, d: Tensor, ndim: int) -> None:
    """The per-parameter step: ``x <- s x - lr' d`` with ``s = (1 - lr) (1 - lr wd)`` under
    Scion's constrained step, else ``1 - lr wd``, and ``lr' = adjust(lr radius, shape)`` for
    ``ndim >= 2`` (see the module docstring)."""
    lr, wd = group["lr"], group.get("weight_decay", 0.0)
    lr = float(lr) if isinstance(lr, Tensor) else lr
    step_lr = lr * group.get("radius", 1.0)
    if ndim >= 2:
        rows, cols = _as_matrix(p).shape
        step_lr = adjust_lr(step_lr, group.get("adjust_lr_fn"), rows, max(cols, 1))
    if group.get("step") == "constrained":
        p.mul_(1.0 - lr)
    if wd:
        p.mul_(1.0 - lr * wd)
    if is_dtensor(p) and is_dtensor(d) and d.placements != p.placements:
        # FSDP2: a matrix direction comes out replicated (matmuls); take this rank's shard.
        d = d.redistribute(p.device_mesh, p.placements)
    # Through the backend op: under torch.compile a scheduled lr given as ``alpha=`` would be
    # frozen by inductor (see steepest.backend.ops._compiling).
    LoopOps.axpy_([p], [d], -step_lr)
