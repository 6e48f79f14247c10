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

:class:`Modular` is a preset of the engine, :class:`steepest.optim.engine.SteepestDescent`, with
these defaults: the momentum schemes, directions and steps are the engine's (its step options).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim.optimizer import ParamsT

from steepest.norms import ColNorm, L1ToLinf, Linf, Norm, Spectral
from steepest.optim.base import StepOptimizer
from steepest.optim.engine import ADJUST_LR_FNS, SteepestDescent, adjust_lr
from steepest.roles import detect_roles

__all__ = ["ADJUST_LR_FNS", "RECIPES", "ROLES", "Modular", "adjust_lr", "classify", "layer_groups"]

ROLES = ("embedding", "hidden", "conv", "head", "vector")


class Modular(SteepestDescent):
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

    Every group holds every option (its checkpoints too), so the engine steps it one parameter
    at a time.
    """

    _vectors_need_a_norm = True

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
        norm = Spectral("newton_schulz") if norm is None else norm
        StepOptimizer.__init__(self, params, dict(
            lr=lr, norm=norm, mode=mode, beta=beta, momentum=momentum, nesterov=nesterov, scope=scope,
            weight_decay=weight_decay, adjust_lr_fn=adjust_lr_fn, radius=radius, step=step,
            nonmatrix_norm=nonmatrix_norm, maximize=maximize, foreach=foreach, nonfinite=nonfinite,
        ))


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
