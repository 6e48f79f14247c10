"""What every ``steepest`` optimizer shares: validation, gradient gathering, the non-finite
policy, float32 compute for half-precision parameters, complex parameters, and checkpoints.

A concrete optimizer subclasses :class:`StepOptimizer` and implements two hooks:

* ``_init_state(group, p, state)``: lazily create ``self.state[p]`` tensors (shape of ``p``);
* ``_update(group, params, grads, states, foreach)``: one step on lists of tensors.

``_update`` is written once against lists: with ``foreach=False`` it runs the per-tensor loop
(the reference), with ``foreach=True`` the ``torch._foreach_*`` kernels (see
:mod:`steepest.norms` for the two backends). The base class hands it

* real views of complex parameters, gradients and state (a complex number is two reals, as
  ``torch.optim.Adam`` treats it);
* float32 working copies of float16/bfloat16 parameters, gradients and state, written back after
  the step (state is stored in the parameter's dtype, as ``torch.optim`` does, so that
  ``load_state_dict`` round-trips exactly);
* gradients already negated when ``maximize=True``.

Gradients that are NaN/inf raise a ``FloatingPointError`` naming the parameter (``nonfinite=
"raise"``, default), or make the whole step a no-op with a warning (``nonfinite="skip"``);
they are never written into the parameters. Sparse gradients raise a ``RuntimeError``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from steepest.norms import Norm, from_spec

__all__ = [
    "StepOptimizer",
    "apply_weight_decay",
    "check_choice",
    "check_lr",
    "check_range",
    "first_nonfinite",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
NONFINITE = ("raise", "skip")
SCOPES = ("global", "per_tensor")


# ------------------------------------------------------------------ validation helpers
def check_lr(lr: Any, name: str = "lr") -> None:
    lr = _plain(lr)
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(lr.shape)}")
        lr = float(lr)
    if not isinstance(lr, (int, float)) or math.isnan(lr) or math.isinf(lr) or lr < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {lr!r}")


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


def first_nonfinite(tensors: list[Tensor]) -> int | None:
    """Index of the first tensor holding a NaN/inf, or ``None``: one host sync when all are finite.

    Fast path: a sum is finite whenever every term is, and a sum is the cheapest reduction on CPU
    (~10x cheaper than max|x|). Only if some sum is not (a NaN/inf, or a rare overflow of huge
    finite values) is each tensor checked elementwise.
    """
    nonempty = [(k, t) for k, t in enumerate(tensors) if t.numel()]
    if not nonempty:
        return None
    if bool(torch.isfinite(torch.stack([t.sum() for _, t in nonempty])).all()):
        return None
    for k, t in nonempty:
        if not bool(torch.isfinite(t).all()):
            return k
    return None


def apply_weight_decay(ops: Any, params: list[Tensor], lr: float, wd: float) -> None:
    """Decoupled weight decay, ``x <- (1 - lr wd) x`` (Loshchilov & Hutter), shared by all."""
    if wd:
        ops.mul_scalar_(params, 1.0 - lr * wd)


# ------------------------------------------------------------------ the base class
class StepOptimizer(Optimizer):
    """Base of all ``steepest`` optimizers (see the module docstring for the contract)."""

    # Group options holding a Norm; stored as plain dicts in state_dict (weights_only-safe).
    _norm_keys: tuple[str, ...] = ("norm",)

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        defaults.setdefault("maximize", False)
        defaults.setdefault("foreach", None)
        defaults.setdefault("nonfinite", "raise")
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
        if not isinstance(group["maximize"], bool):
            raise ValueError(f"maximize must be a bool, got {group['maximize']!r}")
        if "weight_decay" in group:
            wd = group["weight_decay"]
            if not isinstance(wd, (int, float)) or not math.isfinite(wd) or wd < 0:
                raise ValueError(f"weight_decay must be a finite number >= 0, got {wd!r}")
        if "scope" in group:
            check_choice("scope", group["scope"], SCOPES)
        for key in self._norm_keys:
            if key in group:
                group[key] = from_spec(group[key])
                if not isinstance(group[key], Norm):  # pragma: no cover - from_spec guarantees
                    raise ValueError(f"{key} must be a steepest.norms.Norm")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._validate_group(self.param_groups[-1])

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
        for g in sd["param_groups"]:
            for key in self._norm_keys:
                if isinstance(g.get(key), Norm):
                    g[key] = g[key].to_spec()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # Older torch.optim checkpoints store ``step`` as a Python number; torch's own
        # optimizers convert it on load, and so do we (a float32 0-d tensor on the CPU).
        for state in self.state.values():
            if isinstance(state, dict) and "step" in state and not isinstance(state["step"], Tensor):
                state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32)
        for group in self.param_groups:
            for key in self._norm_keys:
                if key in group and not isinstance(group[key], Norm):
                    group[key] = from_spec(group[key])

    # ---- hooks for subclasses ---------------------------------------------------------------
    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        """Create the state of parameter ``p`` (called once, before its first step)."""

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        foreach: bool,
    ) -> None:
        raise NotImplementedError

    # ---- the step -----------------------------------------------------------------------------
    def _use_foreach(self, group: dict[str, Any], params: list[Tensor]) -> bool:
        if group["foreach"] is not None:
            return bool(group["foreach"])
        # On CPU the per-tensor loop is usually faster (DESIGN.md); foreach pays off on GPUs.
        return bool(params) and all(p.device.type == "cuda" for p in params)

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

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        gathered = [self._gather(gi, g) for gi, g in enumerate(self.param_groups)]
        ok, where = self._all_finite(gathered)
        if not ok:
            policies = {g["nonfinite"] for g in self.param_groups}
            if "raise" in policies:
                raise FloatingPointError(
                    f"{type(self).__name__}: non-finite (NaN or inf) gradient in {where}; "
                    "pass nonfinite='skip' to skip such steps with a warning"
                )
            warnings.warn(
                f"{type(self).__name__}: non-finite gradient in {where}; step skipped",
                RuntimeWarning,
                stacklevel=2,
            )
            return loss

        for group, items in zip(self.param_groups, gathered):
            if not items:
                continue
            params, grads, states, writeback = [], [], [], []
            for _, p, g in items:
                state = self.state[p]
                if not state:
                    self._init_state(group, p, state)
                wp, wg, wstate = p, g, state
                if p.is_complex():
                    wp, wg = torch.view_as_real(p), torch.view_as_real(g)
                    wstate = {k: _real(v) for k, v in state.items()}
                if group["maximize"]:
                    wg = -wg
                if p.dtype in _LOW_PRECISION:
                    wp, wg = wp.float(), wg.float()
                    wstate = {k: _upcast(v) for k, v in wstate.items()}
                if wstate is not state:
                    writeback.append((p, wp, state, wstate))
                params.append(wp)
                grads.append(wg)
                states.append(wstate)
            self._update(group, params, grads, states, self._use_foreach(group, params))
            for p, wp, state, wstate in writeback:
                _write_back(_real(p), wp)
                for k, w in wstate.items():
                    v = state.get(k)
                    if isinstance(v, Tensor) and isinstance(w, Tensor):
                        _write_back(_real(v), w)
                    else:
                        state[k] = w
        return loss


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
