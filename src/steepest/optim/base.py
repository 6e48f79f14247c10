"""What every ``steepest`` optimizer shares: validation, gradient gathering, the non-finite
policy, float32 compute for half-precision parameters, complex parameters, and checkpoints.

A concrete optimizer subclasses :class:`StepOptimizer` and implements two hooks:

* ``_init_state(group, p, state)``: lazily create ``self.state[p]`` tensors (shape of ``p``);
* ``_update(group, params, grads, states, backend)``: one step on lists of tensors.

``_update`` is written once against lists, with the list ops of ``backend.ops``: the execution
layer (:mod:`steepest.backend`) picks the backend once per group and step (:func:`steepest.
backend.select`: the per-tensor loop, the multi-tensor (foreach) kernels, or a registered fused
backend) and the chunks it runs on. The base class hands it

* real views of complex parameters, gradients and state (a complex number is two reals, as
  ``torch.optim.Adam`` treats it);
* float32 working copies of float16/bfloat16 parameters, gradients and state, written back after
  the step (state is stored in the parameter's dtype, as ``torch.optim`` does, so that
  ``load_state_dict`` round-trips exactly);
* gradients already negated when ``maximize=True``.

Gradients that are NaN/inf raise a ``FloatingPointError`` naming the parameter (``nonfinite=
"raise"``), or make the whole step a no-op with a warning (``nonfinite="skip"``); they are then
never written into the parameters. Both checks read one flag back to the host every step (a
device sync on accelerators, a graph break under ``torch.compile``). ``nonfinite="ignore"``
checks nothing, as ``torch.optim``'s optimizers do (NaN/inf then flow into the parameters).
The default, ``nonfinite=None``, is ``"raise"`` on CPU (where the check costs no sync) and
``"ignore"`` on every other device (CUDA, MPS, XLA, meta) and while ``torch.compile`` traces
the step, so that the default never stalls a device or breaks a graph; pass ``"raise"`` or
``"skip"`` to keep the check there. Sparse gradients raise a ``RuntimeError``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from operator import attrgetter, itemgetter
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from steepest.backend import Backend, NonFinite, compiling, nonfinite_policy, select
from steepest.norms import Norm, from_spec

__all__ = [
    "StepOptimizer",
    "apply_weight_decay",
    "check_choice",
    "check_group_lr",
    "check_lr",
    "check_param_dtypes",
    "check_range",
    "first_nonfinite",
    "scalar_dtype",
    "update_is_finite",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Dtypes whose tensors the step converts (float32 working copies, real views).
_CONVERTED = frozenset({torch.float16, torch.bfloat16, torch.complex32, torch.complex64, torch.complex128})
# Per-tensor tests of every step as C-level passes (map of an attrgetter), in eager mode: a
# Python generator over 1,000 small tensors costs ~50-100 us a pass (docs/performance.md, issue
# 18). torch.compile cannot call an attrgetter without a graph break: traced, generators.
_DTYPE, _IS_META, _PARAM = attrgetter("dtype"), attrgetter("is_meta"), itemgetter(1)
NONFINITE = (None, "raise", "skip", "ignore")
# "global" (the default) and "group": the norm over all parameters of each param group (the papers'
# R^d when the model is one group); splitting parameters into groups (e.g. no weight decay on
# biases) is the user's usual, deliberate choice, so the default never warns about it (issue 21);
# "all_groups": one norm over every group with this scope (R^d however the parameters are
# grouped); "per_tensor": each tensor on its own.
SCOPES = ("global", "group", "all_groups", "per_tensor")
# Top-level key of a state dict naming the optimizer class that saved it.
STATE_TAG = "steepest_optimizer"


# ------------------------------------------------------------------ validation helpers
def check_lr(lr: Any, name: str = "lr") -> None:
    lr = _plain(lr)
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(lr.shape)}")
        lr = float(lr)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or math.isnan(lr) or math.isinf(lr) \
            or lr < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {lr!r}")


def check_param_dtypes(optimizer: str, group_index: int, group: dict[str, Any]) -> None:
    """Refuse parameters that are neither floating point nor complex (issue 21), naming them:
    an integer or bool parameter would silently truncate every update (or fail in a kernel)."""
    names = group.get("param_names")
    for i, p in enumerate(group["params"]):
        if not (p.is_floating_point() or p.is_complex()):
            who = f"parameter {names[i]!r}" if names is not None else f"parameter #{i}"
            raise ValueError(
                f"{optimizer}: {who} (shape {tuple(p.shape)}, dtype {p.dtype}) in param group "
                f"{group_index} is not a floating-point tensor; optimizers update floating-point "
                "(float16, bfloat16, float32, float64) or complex parameters: convert it "
                "(e.g. .float()) or leave it out"
            )


def check_group_lr(optimizer: str, group_index: int, group: dict[str, Any]) -> None:
    """Re-check a param group's ``lr`` at each step (issue 21): it may have been set after
    construction (by hand or by a scheduler). Cheap: one comparison for a Python number; for a
    tensor its shape, dtype and device, and its value only on the CPU (no host sync elsewhere,
    nor while ``torch.compile`` traces the step)."""
    lr = group["lr"]
    if type(lr) is float or type(lr) is int:  # the usual case
        if 0 <= lr < math.inf:  # False for NaN
            return
    elif isinstance(lr, Tensor):
        params = group["params"]
        device_ok = lr.device.type == "cpu" or not params or lr.device == params[0].device
        if lr.numel() == 1 and lr.is_floating_point() and device_ok:
            if lr.device.type != "cpu" or compiling() or 0 <= float(lr) < math.inf:
                return
    elif not isinstance(lr, bool) and isinstance(_plain(lr), (int, float)):  # numpy scalars
        group["lr"] = _plain(lr)
        return check_group_lr(optimizer, group_index, group)
    what = f"a tensor of shape {tuple(lr.shape)}, dtype {lr.dtype} on {lr.device}" \
        if isinstance(lr, Tensor) else f"{lr!r} of type {type(lr).__name__}"
    raise ValueError(
        f"{optimizer}: param group {group_index} has lr = {what}; lr must be a finite number "
        ">= 0, or a 1-element floating-point tensor holding one (on the CPU or the parameters' "
        "device)"
    )


def check_range(
    name: str,
    value: Any,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    hi_open: bool = True,
) -> None:
    """Raise ``ValueError`` unless ``value`` lies in the interval (open/closed as given)."""
    value = _plain(value)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_betas(betas: Any, name: str = "betas") -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2) in [0, 1), got {betas!r}")
    for i, b in enumerate(betas):
        check_range(f"{name}[{i}]", b, 0.0, 1.0)


def scalar_dtype() -> torch.dtype:
    """The dtype of step counters, as torch.optim's: float64 when that is the default dtype, else
    float32 (a float32 counter is exact up to 2^24 steps)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def first_nonfinite(tensors: list[Tensor]) -> int | None:
    """Index of the first tensor holding a NaN/inf, or ``None``: one host sync when all are finite.

    Fast path: a sum is finite whenever every term is, and a sum is the cheapest reduction on CPU
    (~10x cheaper than max|x|). Only if some sum is not (a NaN/inf, or a rare overflow of huge
    finite values) is each tensor checked elementwise.
    """
    # Meta tensors hold no values: nothing to check (and .item() would raise on them).
    if not compiling() and all(map(Tensor.numel, tensors)) and not any(map(_IS_META, tensors)):
        nonempty = list(enumerate(tensors))  # the usual case, without a Python test per tensor
    else:
        nonempty = [(k, t) for k, t in enumerate(tensors) if t.numel() and t.device.type != "meta"]
    if not nonempty:
        return None
    if bool(torch.isfinite(torch.stack([t.sum() for _, t in nonempty])).all()):
        return None
    for k, t in nonempty:
        if not bool(torch.isfinite(t).all()):
            return k
    return None


def update_is_finite(
    who: str, group: dict[str, Any], params: list[Tensor], scalars: list[Any], what: str
) -> bool:
    """Check the reductions an update is built from (its scale, e.g. ``||g||_1``), before the
    update's first write to a parameter (issue 21): finite but huge gradients (|g| ~ 1e38 in
    float32) can overflow them although the gradient check passed. The group's ``nonfinite``
    policy decides as for a non-finite gradient: ``"raise"`` (the default on CPU) raises a
    ``FloatingPointError`` naming ``what``, ``"skip"`` warns and returns ``False`` (the caller
    writes nothing), ``"ignore"`` (the default elsewhere) checks nothing. Cheap: ``scalars`` are
    a few entries per tensor, read once (the CPU's usual host read); momentum buffers updated
    before the check keep their (finite) new values."""
    policy = nonfinite_policy(group["nonfinite"], params)
    if policy == "ignore":
        return True
    flat: list[Tensor] = []
    for t in scalars:
        flat.extend(t if isinstance(t, (list, tuple)) else [t] if isinstance(t, Tensor) else [])
    if not flat or any(type(t).__name__ == "DTensor" for t in flat):
        return True  # (a sharded step: its own reductions; the gradient check still ran)
    if all(bool(torch.isfinite(t).all()) for t in flat):
        return True
    dtype = params[0].dtype if params else flat[0].dtype
    msg = (f"{who}: the update is not finite: {what} overflowed {dtype} (the gradients are "
           "finite but too large for this dtype); no parameter was written")
    if policy == "raise":
        raise FloatingPointError(msg + "; pass nonfinite='skip' to skip such steps with a warning")
    warnings.warn(msg + "; step skipped", RuntimeWarning, stacklevel=4)
    return False


def apply_weight_decay(ops: Any, params: list[Tensor], lr: float, wd: float) -> None:
    """Decoupled weight decay, ``x <- (1 - lr wd) x`` (Loshchilov & Hutter), shared by all."""
    if wd:
        ops.mul_scalar_(params, 1.0 - lr * wd)


# ------------------------------------------------------------------ the base class
class StepOptimizer(Optimizer):
    """Base of all ``steepest`` optimizers (see the module docstring for the contract)."""

    # Group options holding a Norm; stored as plain dicts in state_dict (weights_only-safe).
    _norm_keys: tuple[str, ...] = ("norm",)
    # Those of them that may be None (no norm).
    _optional_norm_keys: tuple[str, ...] = ()

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        defaults.setdefault("maximize", False)
        defaults.setdefault("foreach", None)
        defaults.setdefault("fused", None)
        defaults.setdefault("nonfinite", None)
        super().__init__(params, defaults)

    # ---- validation ---------------------------------------------------------------------
    def _validate_group(self, group: dict[str, Any]) -> None:
        """Check a param group's options; subclasses extend (and call super)."""
        for k, v in group.items():
            if k != "params":  # numpy scalars (lr=np.float32(1e-3)) become Python numbers
                group[k] = _plain(v)
        check_lr(group["lr"])
        check_choice("nonfinite", group["nonfinite"], NONFINITE)
        check_choice("foreach", group["foreach"], (None, True, False))
        check_choice("fused", group.get("fused"), (None, True, False))
        if not isinstance(group["maximize"], bool):
            raise ValueError(f"maximize must be a bool, got {group['maximize']!r}")
        if "weight_decay" in group:
            wd = group["weight_decay"]
            if not isinstance(wd, (int, float)) or not math.isfinite(wd) or wd < 0:
                raise ValueError(f"weight_decay must be a finite number >= 0, got {wd!r}")
        if "scope" in group:
            check_choice("scope", group["scope"], SCOPES)
            if group["scope"] == "all_groups" and type(self)._update_joint is StepOptimizer._update_joint:
                raise ValueError(f"scope='all_groups' is not supported by {type(self).__name__}; "
                                 "use 'group' or 'per_tensor'")
        for key in self._norm_keys:
            if key in group and not (group[key] is None and key in self._optional_norm_keys):
                _check_norm_spec(key, group[key])
                group[key] = from_spec(group[key])
                if not isinstance(group[key], Norm):  # pragma: no cover - from_spec guarantees
                    raise ValueError(f"{key} must be a steepest.norms.Norm")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        check_param_dtypes(type(self).__name__, len(self.param_groups) - 1, self.param_groups[-1])
        self._validate_group(self.param_groups[-1])
        group = self.param_groups[-1]
        if group.get("fused"):  # after the subclass's checks (norms are Norm objects by now)
            me = type(self).__name__
            if group["foreach"]:
                raise ValueError(f"{me}: fused=True and foreach=True are exclusive (each picks the "
                                 "backend that runs the step): pass one of them")
            why = self._fused_unsupported(group)
            if why:
                raise ValueError(f"fused=True is not supported by {me} {why}; use fused=None "
                                 "(the default: the eager loop or foreach backend)")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Old checkpoints may lack options added later: fill them from the defaults.
        for group in self.param_groups:
            for k, v in self.defaults.items():
                if k != "differentiable":  # torch's own __setstate__ adds it to defaults
                    group.setdefault(k, v)

    # ---- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd[STATE_TAG] = type(self).__name__  # checked by load_state_dict
        for g in sd["param_groups"]:
            for key in self._norm_keys:
                if isinstance(g.get(key), Norm):
                    g[key] = g[key].to_spec()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._check_origin(state_dict)
        if isinstance(state_dict, dict) and STATE_TAG not in state_dict:
            self._check_state_keys(state_dict)  # untagged: check the layout before loading anything
        state_dict = {k: v for k, v in state_dict.items() if k != STATE_TAG}
        super().load_state_dict(state_dict)
        # Older torch.optim checkpoints store ``step`` as a Python number; torch's own
        # optimizers convert it on load, and so do we (a 0-d tensor on the CPU, of scalar_dtype()).
        for state in self.state.values():
            if isinstance(state, dict) and "step" in state and not isinstance(state["step"], Tensor):
                state["step"] = torch.tensor(float(state["step"]), dtype=scalar_dtype())
        for group in self.param_groups:
            for key in self._norm_keys:
                if key in group and group[key] is not None and not isinstance(group[key], Norm):
                    group[key] = from_spec(group[key])

    def _check_origin(self, state_dict: dict[str, Any]) -> None:
        """Refuse a state dict saved by another optimizer (issue 14): loading it would fail later
        (AdamW's into Lion) or silently turn this optimizer into the other one (torch copies the
        saved group options, so Lion's loaded into SignSGD makes SignSGD step as Lion)."""
        me = type(self).__name__
        saved = state_dict.get(STATE_TAG) if isinstance(state_dict, dict) else None
        if saved is not None and saved != me:
            raise ValueError(f"this state dict was saved by {saved}, not {me}: an optimizer's state "
                             f"dict only loads into the same optimizer class")
        if saved is None and isinstance(state_dict, dict):
            # Untagged (an older checkpoint of ours, or another library's optimizer): refuse
            # option keys that belong to other optimizers and are not ours.
            import inspect

            ours = set(self.defaults) | {"params", "param_names"}
            own_args = set(inspect.signature(type(self).__init__).parameters)  # e.g. an older key
            foreign = _foreign_option_keys() - ours - own_args
            for i, g in enumerate(state_dict.get("param_groups", [])):
                bad = sorted(set(g) & foreign)
                if bad:
                    raise ValueError(
                        f"this state dict is not from {me}: param group {i} has options {bad} that "
                        f"{me} does not have (it was saved by another optimizer); {me} takes "
                        f"{sorted(ours - {'params', 'param_names'})}"
                    )

    def _check_state_keys(self, state_dict: dict[str, Any]) -> None:
        """Every per-parameter state entry of an untagged state dict must be one this optimizer
        creates with the saved group's options (e.g. no ``exp_avg_sq`` in SignSGD's state)."""
        me = type(self).__name__
        saved_state = state_dict.get("state", {})
        for g in state_dict.get("param_groups", []):
            expected: set[str] | None = None
            for idx in g.get("params", []):
                st = saved_state.get(idx)
                if not isinstance(st, dict) or not st:
                    continue
                if expected is None:
                    probe: dict[str, Any] = {}
                    try:  # the state layout depends on the options only, not on the shape
                        self._init_state({**self.defaults, **g}, torch.zeros(1), probe)
                    except Exception:  # pragma: no cover - an option the probe cannot use
                        break
                    expected = set(probe)
                extra = sorted(set(st) - expected)
                if extra:
                    raise ValueError(
                        f"this state dict is not from {me} with these options: parameter state "
                        f"has {extra}, {me} keeps {sorted(expected) or 'no state'}"
                    )

    # ---- hooks for subclasses ---------------------------------------------------------------
    def _fused_unsupported(self, group: dict[str, Any]) -> str | None:
        """Why ``fused=True`` cannot run this group (``None``: it can). An optimizer with fused
        kernels (:mod:`steepest.optim.updates`) overrides this and :meth:`_fused_run`."""
        return "(it has no fused kernels)"

    def _fused_reduces_first(self, group: dict[str, Any]) -> bool:
        """Whether this group's fused step makes a reduction over every gradient before its first
        write and checks them for NaN/inf there (raising :class:`steepest.backend.NonFinite`), so
        that ``step`` leaves the group out of its scan (:mod:`steepest.backend.fused`)."""
        return False

    def _fused_run(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        backend: Any,
    ) -> None:
        """One step of a ``fused=True`` group on the fused backend: the stored tensors (real
        views of complex ones; half precision and ``maximize`` are the kernels' to handle), one
        call per group; calls the drivers of :mod:`steepest.optim.updates`."""
        raise NotImplementedError

    def _streams(self, group: dict[str, Any]) -> bool:
        """Whether ``_update`` on one tensor at a time equals ``_update`` on the whole group (no
        reduction or state couples the tensors): then the loop path streams tensor by tensor."""
        return False

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        """Create the state of parameter ``p`` (called once, before its first step)."""

    def _creates_state(self, group: dict[str, Any]) -> bool:
        """Whether :meth:`_init_state` creates any state for this group's hyper-parameters
        (default: whether the class defines it). A stateless step (SignSGD, BlockNormalizedSGD)
        then skips :meth:`_init_group`, which would otherwise walk every parameter each step to
        find its state still empty (0.1-0.8 ms of a 9-13 ms step on 1,000 tensors, measured;
        docs/performance.md, "Per-tensor Python work"). A class that overrides
        ``_init_group`` creates its state there: True."""
        return self._extends_state(StepOptimizer)

    def _extends_state(self, base: type[StepOptimizer]) -> bool:
        """Whether this class makes state beyond ``base``'s: it overrides ``base``'s
        :meth:`_init_state`, or :meth:`_init_group` (where a class may create state itself)."""
        cls = type(self)
        return (cls._init_state is not base._init_state
                or cls._init_group is not StepOptimizer._init_group)

    def _init_group(self, group: dict[str, Any]) -> None:
        """Create the state of the group's parameters that have a gradient and no state yet.

        Named as in ``torch.optim``: while tracing a step, dynamo runs a method of this name
        eagerly instead of tracing it, then marks every state tensor a static, id-guarded graph
        attribute. A compiled step then fetches no state tensor per call (otherwise one O(k)
        walk of ``self.state``'s keys per tensor), and a replaced state fails the guard and
        recompiles (docs/performance.md, "dynamo's per-tensor fetch of the state").
        """
        for p in group["params"]:
            if p.grad is not None:
                state = self.state[p]
                if not state:
                    self._init_state(group, p, state)

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        backend: Backend,
    ) -> None:
        raise NotImplementedError

    def _update_joint(
        self,
        groups: list[dict[str, Any]],
        params: list[list[Tensor]],
        grads: list[list[Tensor]],
        states: list[list[dict[str, Any]]],
        backend: Backend,
    ) -> None:
        """One step of all groups with ``scope="all_groups"`` together (their norm spans them
        all); lists are per group. Optimizers that support that scope override this."""
        raise NotImplementedError

    # ---- the step -----------------------------------------------------------------------------
    def _refuse(self, policies: set[str], where: str, loss: Any) -> Any:
        """The non-finite policy, before anything was written: raise, or skip with a warning."""
        if "raise" in policies:
            raise FloatingPointError(
                f"{type(self).__name__}: non-finite (NaN or inf) gradient in {where}; "
                "pass nonfinite='skip' to skip such steps with a warning"
            )
        warnings.warn(
            f"{type(self).__name__}: non-finite gradient in {where}; step skipped",
            RuntimeWarning,
            stacklevel=3,
        )
        return loss

    def _use_foreach(self, group: dict[str, Any], params: list[Tensor]) -> bool:
        """Whether the group's step runs multi-tensor kernels (see :func:`steepest.backend.select`)."""
        return select(group, params).foreach

    def _named(self, group_index: int, i: int, p: Tensor) -> str:
        group = self.param_groups[group_index]
        names = group.get("param_names")
        if names is not None:
            return f"parameter {names[i]!r} (shape {tuple(p.shape)}) in param group {group_index}"
        return f"parameter #{i} (shape {tuple(p.shape)}) in param group {group_index}"

    def _gather(self, gi: int, group: dict[str, Any]) -> list[tuple[int, Tensor, Tensor]]:
        items = []
        for i, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients "
                    f"({self._named(gi, i, p)}); use a dense gradient (e.g. nn.Embedding(sparse=False))"
                )
            items.append((i, p, g))
        return items

    def _all_finite(self, gathered: list[list[tuple[int, Tensor, Tensor]]]) -> tuple[bool, str]:
        flat = [(gi, i, p, g) for gi, items in enumerate(gathered) for (i, p, g) in items]
        k = first_nonfinite([g for *_, g in flat])
        if k is None:
            return True, ""
        gi, i, p, _ = flat[k]
        return False, self._named(gi, i, p)

    @staticmethod
    def _nonfinite_policy(group: dict[str, Any], items: list[tuple[int, Tensor, Tensor]]) -> str:
        """The group's non-finite policy; ``None`` resolves per device (module docstring)."""
        return nonfinite_policy(group["nonfinite"], [p for _, p, _g in items])

    @staticmethod
    def _working(
        group: dict[str, Any], items: list[tuple[int, Tensor, Tensor]], states: list[dict[str, Any]],
        copies: bool = True,
    ) -> tuple[list[Tensor], list[Tensor], list[dict[str, Any]], list[Any]]:
        """The tensors ``_update`` works on (module docstring): real views of complex ones,
        float32 copies of half-precision ones, negated gradients under ``maximize``; and what
        must be written back after the update. ``states`` are the items' ``self.state`` entries.
        ``copies=False`` (a backend that takes the stored tensors, :attr:`Backend.working_copies`):
        only the real views."""
        params = [p for _, p, _g in items]
        grads = [g for _, _p, g in items]
        if not copies:
            if not any(map(Tensor.is_complex, params)):
                return params, grads, states, []
            return ([_real(p) for p in params], [_real(g) for g in grads],
                    [{k: _real(v) for k, v in st.items()} for st in states], [])
        maximize = group["maximize"]
        if not maximize and (not any(p.dtype in _CONVERTED for p in params) if compiling()
                             else _CONVERTED.isdisjoint(map(_DTYPE, params))):
            return params, grads, states, []  # the usual case: nothing to convert
        wps, wgs, wstates, writeback = [], [], [], []
        for p, g, state in zip(params, grads, states):
            wp, wg, wstate = p, g, state
            if p.is_complex():
                wp, wg = torch.view_as_real(p), torch.view_as_real(g)
                wstate = {k: _real(v) for k, v in state.items()}
            if maximize:
                wg = -wg
            if p.dtype in _LOW_PRECISION:
                wp, wg = wp.float(), wg.float()
                wstate = {k: _upcast(v) for k, v in wstate.items()}
            if wstate is not state:
                writeback.append((p, wp, state, wstate))
            wps.append(wp)
            wgs.append(wg)
            wstates.append(wstate)
        return wps, wgs, wstates, writeback

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        for gi, group in enumerate(self.param_groups):
            check_group_lr(type(self).__name__, gi, group)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        gathered = [self._gather(gi, g) for gi, g in enumerate(self.param_groups)]
        resolved = [self._nonfinite_policy(g, items) for g, items in zip(self.param_groups, gathered)]
        policies = set(resolved) - {"ignore"}
        # Only groups that check are scanned (empty lists keep the group indices).
        checked = [items if pol != "ignore" else [] for pol, items in zip(resolved, gathered)]
        # The one place the path is decided (steepest.backend), once per group and step.
        backends = [select(g, [p for _, p, _g in items]) if items and g.get("scope") != "all_groups"
                    else None for g, items in zip(self.param_groups, gathered)]
        # A group whose backend checks the gradients in a reduction made before its first write
        # (the fused backend's two-pass updates) skips the scan and steps first, so that nothing
        # is written when it refuses; one such group at most (a second could refuse after the
        # first wrote). steepest.backend.fused says why.
        deferred = next((gi for gi, (g, b) in enumerate(zip(self.param_groups, backends))
                         if b is not None and checked[gi] and b.defers_check(self, g)), None)
        if deferred is not None:
            checked[deferred] = []
        ok, where = self._all_finite(checked) if policies else (True, "")
        if not ok:
            return self._refuse(policies, where, loss)

        joint: list[tuple[dict[str, Any], list[Tensor], list[Tensor], list[dict[str, Any]], list[Any]]] = []
        order = list(range(len(self.param_groups)))
        if deferred is not None:
            order.insert(0, order.pop(deferred))
        for gi in order:
            group, items = self.param_groups[gi], gathered[gi]
            if not items:
                continue
            ps = [p for _, p, _g in items]
            creates = self._creates_state(group)
            if creates and compiling():  # dynamo runs _init_group eagerly; the state is read after it
                self._init_group(group)
            states = [self.state[p] for p in ps]
            if creates and not all(states):  # eager: fills the empty dicts in place
                self._init_group(group)
            backend = backends[gi]
            if backend is None:  # scope="all_groups": stepped below, with the other such groups
                joint.append((group, *self._working(group, items, states)))
                continue
            if not backend.working_copies:
                # The backend reads and writes the stored tensors itself (the fused kernels:
                # half precision in float32 registers, maximize as a sign), in its own chunks.
                for sl in backend.chunks(ps):
                    params, grads, wstates, _ = self._working(group, items[sl], states[sl], False)
                    try:
                        backend.run(self, group, params, grads, wstates)
                    except NonFinite as nf:  # raised before the group's first write
                        i, p, _g = items[sl][nf.index]
                        return self._refuse({resolved[gi]}, self._named(gi, i, p), loss)
                continue
            if self._streams(group):
                # Elementwise updates, a chunk of tensors at a time on every backend: each
                # chunk's temporaries (and its float32 working copies of half-precision tensors,
                # or the negated gradients of maximize=True) are freed before the next chunk's
                # are made (peak memory: one chunk instead of a temporary per parameter; and fewer
                # page faults on CPU, where freed chunks are reused). Small tensors share a chunk,
                # so that the per-call overhead stays amortized.
                for sl in backend.chunks(ps):
                    params, grads, wstates, writeback = self._working(group, items[sl], states[sl])
                    backend.run(self, group, params, grads, wstates)
                    _write_back_all(writeback)
            else:
                params, grads, wstates, writeback = self._working(group, items, states)
                backend.run(self, group, params, grads, wstates)
                _write_back_all(writeback)
        if joint:
            groups, params_j, grads_j, states_j, writebacks = (list(t) for t in zip(*joint))
            backend = select(groups[0], [p for ps in params_j for p in ps])
            self._update_joint(groups, params_j, grads_j, states_j, backend)
            for wb in writebacks:
                _write_back_all(wb)
        return loss


def _check_norm_spec(key: str, spec: Any) -> None:
    """A clear error for what cannot be a norm (``norm=42``, ``norm=Linf`` without ``()``)."""
    from steepest.norms import _REGISTRY

    if isinstance(spec, (Norm, str, dict)):
        return
    hint = ""
    if isinstance(spec, type) and issubclass(spec, Norm):
        hint = f" (did you mean {spec.__name__}(), an instance?)"
    raise ValueError(
        f"{key} must be a steepest.norms.Norm instance (e.g. Lp(3), Linf(), BlockNorm()), a norm "
        f"name (one of {sorted(_REGISTRY)}) or a dict from Norm.to_spec(); got {spec!r} "
        f"of type {type(spec).__name__}{hint}"
    )


def _write_back_all(writeback: list[tuple[Tensor, Tensor, dict[str, Any], dict[str, Any]]]) -> None:
    """Copy float32 / real-view working parameters and state back into the stored tensors."""
    for p, wp, state, wstate in writeback:
        _write_back(_real(p), wp)
        for k, w in wstate.items():
            v = state.get(k)
            if isinstance(v, Tensor) and isinstance(w, Tensor):
                _write_back(_real(v), w)
            else:
                state[k] = w


# Option names of torch.optim's optimizers; with those of every StepOptimizer they identify a
# state dict saved by another optimizer.
_TORCH_OPTION_KEYS = frozenset({
    "lr", "betas", "eps", "weight_decay", "amsgrad", "momentum", "dampening", "nesterov", "alpha",
    "centered", "lr_decay", "initial_accumulator_value", "rho", "lambd", "t0", "etas", "step_sizes",
    "momentum_decay", "decoupled_weight_decay", "capturable", "differentiable", "fused", "maximize",
    "foreach", "max_iter", "max_eval", "tolerance_grad", "tolerance_change", "history_size",
    "line_search_fn", "ns_coefficients", "ns_steps", "adjust_lr_fn",
})


def _foreign_option_keys() -> set[str]:
    import inspect

    # Every optimizer class of the package: StepOptimizer's subclasses and the others (Fisher's),
    # found through torch's Optimizer (importing steepest.fisher here would make the two modules
    # import each other; importing steepest.optim imports the package, and so steepest.fisher).
    keys = set(_TORCH_OPTION_KEYS)
    todo: list[type[Optimizer]] = list(Optimizer.__subclasses__())
    seen: set[type[Optimizer]] = set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        if issubclass(cls, StepOptimizer) or cls.__module__ == "steepest.fisher":
            keys |= {n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "params")}
    return keys


def _plain(v: Any) -> Any:
    """A numpy scalar as the Python number it holds (inside tuples/lists too); else ``v``."""
    if type(v).__module__ == "numpy" and hasattr(v, "item") and getattr(v, "ndim", None) == 0:
        return v.item()
    if isinstance(v, (tuple, list)) and any(type(x).__module__ == "numpy" for x in v):
        return type(v)(_plain(x) for x in v)
    return v


def _real(v: Any) -> Any:
    return torch.view_as_real(v) if isinstance(v, Tensor) and v.is_complex() else v


def _upcast(v: Any) -> Any:
    return v.float() if isinstance(v, Tensor) and v.dtype in _LOW_PRECISION else v


def _write_back(target: Tensor, work: Tensor) -> None:
    """Copy a working tensor into the stored one unless it already is (a view of) it."""
    if work.data_ptr() == target.data_ptr() and work.dtype == target.dtype:
        return
    target.copy_(work)
