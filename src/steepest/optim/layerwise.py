"""Per-layer geometry in one optimizer: each param group gets the norm that suits its layer.

modula gives every module its own norm and dualizes the gradient module by module; Scion
([Pethick25], "Training Deep Learning Models with Norm-Constrained LMOs") does the same
with LMOs and per-layer radii; ``torch.optim.Muon`` is one such choice (spectral, for hidden
matrices). Here all of them are one optimizer, :class:`Modular`, whose param groups carry a norm
each, and :func:`layer_groups` builds those groups from a model by layer kind.

The update of :class:`Modular`, per parameter (docs/operator_norms.md):

    m <- b m + (1 - b) g                          (EMA momentum; m_0 = 0)
    u  = lerp(g, m, b) if nesterov else m         (torch.optim.Muon's Nesterov form)
    d  = direction_norm(u, mode)                  (steepest.norms: scaled | normalized | soft | unscaled)
    x <- (1 - lr wd) x - lr * adjust(shape) * radius * d                  (step="descent")
    x <- (1 - lr) x    - lr * adjust(shape) * radius * d                  (step="constrained")

``direction(u, "normalized") = -lmo(u)``, so ``step="constrained"`` with ``mode="normalized"`` is
Scion's constrained step ``x <- (1 - lr) x + lr * radius * lmo(m)`` (a Frank-Wolfe step onto the
norm ball of the given radius), and ``step="descent"`` its unconstrained one. One
``state_dict``, one scheduler, one ``step()`` for the whole model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import ParamsT

from steepest.backend import Backend, LoopOps, is_dtensor
from steepest.norms import (
    MODES,
    ColNorm,
    L1ToLinf,
    Linf,
    Norm,
    Spectral,
    _as_matrix,
    from_spec,
)
from steepest.optim.base import StepOptimizer, check_choice, check_range, update_is_finite
from steepest.roles import detect_roles

__all__ = ["ADJUST_LR_FNS", "RECIPES", "ROLES", "Modular", "adjust_lr", "classify", "layer_groups"]

ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "none")
STEPS = ("descent", "constrained")
ROLES = ("embedding", "hidden", "conv", "head", "vector")


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


def _direction_of(norm: Norm, u: Tensor, owned: bool, mode: str, beta: float) -> Tensor:
    """The direction of one tensor; built in ``u``'s storage where ``u`` is ``owned`` (a
    temporary of the caller's) and the norm can (operator norms; sign descent)."""
    return norm.direction([u], mode, beta=beta, per_tensor=True, owned=owned)[0]


def _matrix_only(norm: Norm) -> bool:
    """The spectral norm (Muon's geometry) takes vectors only by explicit choice, as
    torch.optim.Muon refuses them; the other operator norms define vectors as columns."""
    return norm.matrix_only


class Modular(StepOptimizer):
    """Steepest descent with a norm per param group (modular geometry; see the module docstring).

    Args:
        params: parameters or param groups; each group may override every option below, which
            is how layers get their own norms (see :func:`layer_groups`).
        lr: step size ``>= 0``.
        norm: the group's :class:`steepest.norms.Norm` (default ``Spectral("newton_schulz")``).
            Operator norms view a tensor as a matrix ``out x rest`` (a vector as a column); a
            group under the spectral norm refuses parameters with fewer than 2 dimensions unless
            ``nonmatrix_norm`` is set, exactly as ``torch.optim.Muon`` refuses them.
        nonmatrix_norm: the norm for parameters with ``ndim < 2`` of the group (e.g. ``Linf()``:
            sign descent), or ``None``.
        mode: ``"unscaled"`` (default: the norm's unit direction, e.g. Muon's polar factor),
            ``"normalized"`` (the negative LMO, ``d = sharp / dual``), ``"scaled"`` or ``"soft"``.
        beta: the ``soft`` mode's ``beta > 0``.
        momentum: ``b in [0, 1)``; EMA momentum ``m <- b m + (1-b) g``.
        nesterov: use ``lerp(g, m, b)`` (torch.optim.Muon's Nesterov form) instead of ``m``.
        scope: ``"per_tensor"`` (default; each matrix its own geometry) or ``"global"`` (the
            modular norm of the group: max over tensors, dual = sum of duals).
        weight_decay: decoupled, ``x <- (1 - lr wd) x``, with the unadjusted ``lr`` (as torch's Muon).
        adjust_lr_fn: ``None``/``"none"``, ``"original"`` or ``"match_rms_adamw"`` (:func:`adjust_lr`),
            applied to parameters with ``ndim >= 2``, from their matrix shape.
        radius: ``> 0``, multiplies the step (Scion's per-layer radius).
        step: ``"descent"`` or ``"constrained"`` (Scion's ``x <- (1 - lr) x + lr radius lmo``).
        maximize, foreach, nonfinite: as every ``steepest`` optimizer (``foreach`` has no fused
            path here: the direction is per matrix).
    """

    _NONMATRIX = "nonmatrix_norm"

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        *,
        norm: Norm | dict[str, Any] | str | None = None,
        mode: str = "unscaled",
        beta: float = 1.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        scope: str = "per_tensor",
        weight_decay: float = 0.0,
        adjust_lr_fn: str | None = None,
        radius: float = 1.0,
        step: str = "descent",
        nonmatrix_norm: Norm | dict[str, Any] | str | None = None,
        maximize: bool = False,
        foreach: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            norm=Spectral("newton_schulz") if norm is None else norm,
            mode=mode,
            beta=beta,
            momentum=momentum,
            nesterov=nesterov,
            scope=scope,
            weight_decay=weight_decay,
            adjust_lr_fn=adjust_lr_fn,
            radius=radius,
            step=step,
            nonmatrix_norm=nonmatrix_norm,
            maximize=maximize,
            foreach=foreach,
        )
        if nonfinite is not None:  # else the base class's default policy
            defaults["nonfinite"] = nonfinite
        super().__init__(params, defaults)

    # ---- validation ---------------------------------------------------------------------
    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_choice("mode", group["mode"], MODES)
        b = group["beta"]
        if not isinstance(b, (int, float)) or isinstance(b, bool) or not math.isfinite(b) or b <= 0:
            raise ValueError(f"beta must be a finite number > 0, got {b!r}")
        check_range("momentum", group["momentum"], 0.0, 1.0)
        if not isinstance(group["nesterov"], bool):
            raise ValueError(f"nesterov must be a bool, got {group['nesterov']!r}")
        check_choice("adjust_lr_fn", group["adjust_lr_fn"], ADJUST_LR_FNS)
        r = group["radius"]
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not math.isfinite(r) or r <= 0:
            raise ValueError(f"radius must be a finite number > 0, got {r!r}")
        check_choice("step", group["step"], STEPS)
        if group.get(self._NONMATRIX) is not None:
            group[self._NONMATRIX] = from_spec(group[self._NONMATRIX])
        self._check_matrices(group)

    def _check_matrices(self, group: dict[str, Any]) -> None:
        """Refuse parameters with ndim < 2 under a matrix norm with no ``nonmatrix_norm``."""
        if not _matrix_only(group["norm"]) or group.get(self._NONMATRIX) is not None:
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

    # ---- checkpoints: nonmatrix_norm travels as a plain dict, like norm ---------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        for g in sd["param_groups"]:
            if isinstance(g.get(self._NONMATRIX), Norm):
                g[self._NONMATRIX] = g[self._NONMATRIX].to_spec()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            if group.get(self._NONMATRIX) is not None and not isinstance(group[self._NONMATRIX], Norm):
                group[self._NONMATRIX] = from_spec(group[self._NONMATRIX])

    # ---- the update ---------------------------------------------------------------------
    def _gather(self, gi: int, group: dict[str, Any]) -> list[tuple[int, Tensor, Tensor]]:
        items = super()._gather(gi, group)
        if not hasattr(self, "_ndims"):
            self._ndims: dict[int, list[int]] = {}
        self._ndims[id(group)] = [p.dim() for _, p, _ in items]
        return items

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        backend: Backend,
    ) -> None:
        b, nesterov = group["momentum"], group["nesterov"]
        mode, beta = group["mode"], group["beta"]
        per_tensor = group["scope"] == "per_tensor"
        nm = group.get(self._NONMATRIX)
        # Which norm each parameter follows, by the parameter's own ndim (``params`` may be real
        # views of complex ones, with one more dimension; _gather recorded the true ndims).
        ndims = getattr(self, "_ndims", {}).get(id(group), [p.dim() for p in params])
        sets: dict[int, tuple[Norm, list[int]]] = {}
        for k, nd in enumerate(ndims):
            norm = nm if (nm is not None and nd < 2) else group["norm"]
            sets.setdefault(id(norm), (norm, []))[1].append(k)

        def direction_input(k: int, advance: bool = True) -> tuple[Tensor, bool]:
            """``(u, owned)``: the direction's input, and whether it is a temporary of ours."""
            g = grads[k]
            if b == 0:
                return g, False
            buf = states[k]["momentum_buffer"]
            if advance:
                buf.lerp_(g, 1 - b)  # the same ops, in the same order, as torch.optim.Muon
            return (g.lerp(buf, b), True) if nesterov else (buf, False)

        for norm, idx in sets.values():
            if per_tensor or not norm.couples(mode):
                # Stream: one tensor at a time (the scope changes nothing here), each temporary
                # freed before the next is made; an owned input (Nesterov's) becomes the direction.
                for k in idx:
                    u, owned = direction_input(k)
                    d = _direction_of(norm, u, owned, mode, beta)
                    del u
                    self._apply(group, params[k], d, ndims[k])
                    del d
                continue
            partials = self._partials(norm, idx, direction_input)
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
                    self._apply(group, params[k], d, ndims[k])
                    del d
            else:
                # The dual of every tensor before any moves (Spectral's <M, NS(M)>, l1 and block
                # norms): all directions at once.
                c = [direction_input(k)[0] for k in idx]
                for k, d in zip(idx, norm.direction(c, mode, beta=beta)):
                    self._apply(group, params[k], d, ndims[k])

    @staticmethod
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

    @staticmethod
    def _apply(group: dict[str, Any], p: Tensor, d: Tensor, ndim: int) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        lr = float(lr) if isinstance(lr, Tensor) else lr
        step_lr = lr * group["radius"]
        if ndim >= 2:
            rows, cols = _as_matrix(p).shape
            step_lr = adjust_lr(step_lr, group["adjust_lr_fn"], rows, max(cols, 1))
        if group["step"] == "constrained":
            p.mul_(1.0 - lr)
        if wd:
            p.mul_(1.0 - lr * wd)
        if is_dtensor(p) and is_dtensor(d) and d.placements != p.placements:
            # FSDP2: a matrix direction comes out replicated (matmuls); take this rank's shard.
            d = d.redistribute(p.device_mesh, p.placements)
        # Through the backend op: under torch.compile a scheduled lr given as ``alpha=`` would be
        # frozen by inductor (see steepest.backend.ops._compiling).
        LoopOps.axpy_([p], [d], -step_lr)


# ------------------------------------------------------------------ building groups from a model
def classify(
    model: nn.Module, head: str | nn.Module | None = None, example_input: Any = None
) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Sort a model's trainable parameters by layer kind (each parameter once, tied ones once).

    With ``example_input`` (a tensor, a tuple of positional arguments or a dict of keyword
    arguments), the roles are those of :func:`steepest.roles.detect_roles` (one forward pass
    records how each parameter is used: indexed or added without a matmul = embedding, the
    matmul giving the output = head, ...). Without it, by module types and names:

    * ``embedding``: weights of ``nn.Embedding`` / ``nn.EmbeddingBag``, and plain parameters with
      ``ndim >= 2`` named ``pos*``, ``wpe``, ``wte``, ``embed*`` or ``token*`` (a positional
      embedding held as an ``nn.Parameter``: orthogonalizing it as a hidden matrix is wrong);
    * ``head``: the weight of the output layer: ``head`` (a module, or its qualified name), by
      default the last ``nn.Linear`` registered in the model (skipped if it is tied to an embedding);
    * ``conv``: other parameters with ``ndim > 2`` (conv kernels);
    * ``hidden``: other matrices (``ndim == 2``);
    * ``vector``: biases, gains and scalars (``ndim < 2``).
    """
    modules = dict(model.named_modules())
    if example_input is not None:
        if isinstance(head, nn.Module):
            names = [n for n, m in modules.items() if m is head]
            if not names:
                raise ValueError("head must be a submodule of the model")
            head = names[0]
        if head is not None and not isinstance(head, str):
            raise ValueError(f"head must be a module, a module name or None, got {head!r}")
        report = detect_roles(model, example_input, head_module=head)
        by_name = dict(model.named_parameters())
        found: dict[str, list[tuple[str, nn.Parameter]]] = {r: [] for r in ROLES}
        for name, role in report.roles.items():
            found[role].append((name, by_name[name]))
        return found
    if isinstance(head, str):
        if head not in modules:
            raise ValueError(f"head must name a submodule of the model; {head!r} is not one")
        head_module: nn.Module | None = modules[head]
    elif isinstance(head, nn.Module) or head is None:
        head_module = head
        if head is None:
            linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
            head_module = linears[-1] if linears else None
    else:
        raise ValueError(f"head must be a module, a module name or None, got {head!r}")
    embed_ids = {
        id(m.weight) for m in modules.values() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
    }
    head_ids = {id(p) for p in head_module.parameters() if p.dim() >= 2} if head_module is not None else set()
    out: dict[str, list[tuple[str, nn.Parameter]]] = {r: [] for r in ROLES}
    for name, p in model.named_parameters():  # named_parameters() yields a tied parameter once
        if not p.requires_grad:
            continue
        if id(p) in embed_ids or (p.dim() >= 2 and _embedding_name(name)):
            role = "embedding"
        elif id(p) in head_ids:
            role = "head"
        elif p.dim() > 2:
            role = "conv"
        elif p.dim() == 2:
            role = "hidden"
        else:
            role = "vector"
        out[role].append((name, p))
    return out


def _embedding_name(name: str) -> bool:
    """A plain parameter named as an embedding (GPT-2's ``wpe``/``wte``, ``pos*``, ``embed*``,
    ``token*``), by its own (last) name."""
    leaf = name.rsplit(".", 1)[-1].lower()
    return leaf in ("wpe", "wte") or leaf.startswith(("pos", "embed", "token"))


def _spectral() -> Spectral:
    return Spectral("newton_schulz")


#: Group options per layer kind. ``steepest`` (our defaults, following the anchors): Muon for
#: hidden matrices and conv kernels (spectral, Nesterov, RMS matched to AdamW as [Liu25]),
#: sign descent (l1->l_inf per entry) for embeddings, head, gains and biases, at radius 0.2 so
#: that every update has entry RMS ~0.2 lr (the sign step has RMS 1; the "match_rms_adamw"
#: spectral step 0.2, [Liu25] Sec. 2.2). ``scion``: [Pethick25]'s choices, LMOs
#: (``mode="normalized"``) of shape-scaled norms: ColNorm on each token's embedding, spectral
#: RMS->RMS for hidden matrices, sign/fan_in for the head at 60x the hidden radius (their GPT
#: example), RMS-normalized vectors (BiasRMS); EMA momentum 0.9, no Nesterov.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "steepest": {
        "hidden": dict(norm=_spectral, mode="unscaled", adjust_lr_fn="match_rms_adamw", nesterov=True),
        "conv": dict(norm=_spectral, mode="unscaled", adjust_lr_fn="match_rms_adamw", nesterov=True),
        "embedding": dict(norm=Linf, mode="unscaled", radius=0.2, nesterov=True),
        "head": dict(norm=Linf, mode="unscaled", radius=0.2, nesterov=True),
        "vector": dict(norm=Linf, mode="unscaled", radius=0.2, nesterov=True),
    },
    "scion": {
        "hidden": dict(norm=lambda: Spectral("newton_schulz", scale="shape"), mode="normalized"),
        "conv": dict(norm=lambda: Spectral("newton_schulz", scale="shape"), mode="normalized"),
        "embedding": dict(norm=lambda: ColNorm(scale="shape", transpose=True), mode="normalized"),
        "head": dict(norm=lambda: L1ToLinf(scale="shape"), mode="normalized", radius=60.0),
        "vector": dict(norm=lambda: ColNorm(scale="shape"), mode="normalized"),
    },
}
for _opts in RECIPES["scion"].values():
    _opts.update(momentum=0.9, nesterov=False)


def layer_groups(
    model: nn.Module,
    recipe: str = "steepest",
    *,
    head: str | nn.Module | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    example_input: Any = None,
) -> list[dict[str, Any]]:
    """Param groups for :class:`Modular`, one per layer kind present (:func:`classify`; with
    ``example_input``, by one forward pass, :func:`steepest.roles.detect_roles`).

    ``recipe`` is a key of :data:`RECIPES`; ``overrides`` maps a role to group options that
    replace the recipe's (e.g. ``{"head": {"norm": ColNorm(), "radius": 10.0}}``). Each group
    carries ``role`` and ``param_names`` (so errors and reports name parameters).

    Example::

        opt = Modular(layer_groups(model, "steepest"), lr=3e-3, weight_decay=0.0)
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {recipe!r}")
    overrides = overrides or {}
    unknown = set(overrides) - set(ROLES)
    if unknown:
        raise ValueError(f"overrides keys must be roles {ROLES}, got {sorted(unknown)}")
    groups = []
    for role, named in classify(model, head, example_input).items():
        if not named:
            continue
        opts = dict(RECIPES[recipe][role])
        opts["norm"] = opts["norm"]()  # a fresh norm object per group
        opts.update(overrides.get(role, {}))
        groups.append({"params": list(named), "role": role, **opts})
    return groups
