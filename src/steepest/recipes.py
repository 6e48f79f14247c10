"""``create_optimizer``: one call that picks the update of every parameter by its role.

A practitioner's question is "what do I put in place of AdamW, and at what lr?". The answer of
this module is a *recipe*: parameters are sorted by what they do in the model (:func:`detect_roles`)

* ``embedding``: a matrix that is *indexed* (``nn.Embedding``, ``__getitem__``, ``index_select``)
  or *added / concatenated* to the activations without a matmul (a positional embedding held as a
  plain ``nn.Parameter``, a ViT class token);
* ``head``: the matrix whose output is the model's output (the logits), tied or not;
* ``hidden`` / ``conv``: the other matrices / kernels, used in a matmul / convolution;
* ``vector``: gains, biases, scalars (``ndim < 2``);

and each role gets the update the recipe gives it (:data:`RECIPES`). Everything is one optimizer
(:class:`RecipeOptimizer`): one ``step()``, one ``state_dict``, and ``param_groups`` that are the
very group dicts of the optimizers inside, so ``torch.optim.lr_scheduler`` schedulers reach them.

The recipes' default learning rates were measured on ``steepest reproduce charlm-bench --preset
small-gpt`` (seed 0 sweep; docs/recipes.md gives the tables and their ratio to AdamW's best lr).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import steepest.optim as _optim
from steepest.optim import __all__ as _optim_all
from steepest.optim.layerwise import RECIPES as MODULAR_RECIPES
from steepest.optim.layerwise import Modular
from steepest.optim.muon import Muon
from steepest.optim.steepest import Lion, SignSGD
from steepest.roles import ROLES, RoleReport, detect_roles  # re-exported (moved there)

__all__ = [
    "RECIPES",
    "ROLES",
    "Recipe",
    "RecipeOptimizer",
    "RoleReport",
    "create_optimizer",
    "detect_roles",
]

# ----------------------------------------------------------------------------- one optimizer of several
class RecipeOptimizer(torch.optim.Optimizer):
    """Several optimizers (one per kind of update) stepped, saved and scheduled as one.

    ``param_groups`` are the group dicts of the optimizers inside (``children``), so a scheduler
    that writes ``group["lr"]`` changes theirs. ``state_dict()`` is in torch's format (``state``
    by parameter index, ``param_groups``) over all children in order, plus a ``recipe`` entry that
    ``load_state_dict`` uses to split it back. ``print(opt)`` shows the groups (:meth:`summary`).

    Schedulers that cycle momentum (``OneCycleLR``, ``CyclicLR``) need ``cycle_momentum=False``:
    a recipe's groups mix ``momentum`` (Muon, Signum) and ``betas`` (AdamW, Lion), and torch's
    schedulers write one kind for all groups, which ``defaults`` cannot name.
    """

    def __init__(self, children: list[torch.optim.Optimizer], name: str = "recipe", notes: Iterable[str] = ()) -> None:
        if not children:
            raise ValueError("RecipeOptimizer needs at least one optimizer")
        params = [p for c in children for g in c.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.children = list(children)
        self.recipe = name
        self.notes = list(notes)
        self.param_groups = [g for c in self.children for g in c.param_groups]
        self.defaults = {"lr": self.param_groups[0].get("lr")}
        self.state = collections.ChainMap(*(c.state for c in self.children))  # type: ignore[assignment]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "children"):
            raise NotImplementedError(
                "RecipeOptimizer: add parameters to one of opt.children (each has its own update), "
                "or build a new optimizer with create_optimizer")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for c in self.children:
            c.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        meta = []
        offset = 0
        for c in self.children:
            sd = c.state_dict()
            n = sum(len(g["params"]) for g in sd["param_groups"])
            for g in sd["param_groups"]:
                groups.append({**g, "params": [i + offset for i in g["params"]]})
            for k, v in sd["state"].items():
                state[int(k) + offset] = v
            meta.append({"class": type(c).__name__, "groups": len(sd["param_groups"]), "params": n,
                         "extra": {k: v for k, v in sd.items() if k not in ("state", "param_groups")}})
            offset += n
        return {"state": state, "param_groups": groups, "recipe": {"name": self.recipe, "children": meta}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rec = state_dict.get("recipe") if isinstance(state_dict, dict) else None
        if not isinstance(rec, dict) or "children" not in rec:
            raise ValueError("this state dict was not saved by a RecipeOptimizer (no 'recipe' entry)")
        metas = rec["children"]
        mine = [type(c).__name__ for c in self.children]
        if [m["class"] for m in metas] != mine:
            raise ValueError(f"this state dict was saved by a recipe of {[m['class'] for m in metas]}, "
                             f"this optimizer is made of {mine}")
        gi, offset = 0, 0
        for c, m in zip(self.children, metas):
            groups = state_dict["param_groups"][gi : gi + m["groups"]]
            n = m["params"]
            sub = {
                "state": {k - offset: v for k, v in state_dict["state"].items() if offset <= int(k) < offset + n},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in groups],
                **m["extra"],
            }
            c.load_state_dict(sub)
            gi += m["groups"]
            offset += n
        # the children replaced their group dicts: point at the new ones
        self.param_groups[:] = [g for c in self.children for g in c.param_groups]

    def summary(self) -> str:
        """One line per param group: role, update rule, lr, weight decay, parameters."""
        lines = [f"RecipeOptimizer({self.recipe!r}): {len(self.param_groups)} param group(s)"]
        for c in self.children:
            for g in c.param_groups:
                names = g.get("param_names") or [f"#{i}" for i in range(len(g["params"]))]
                shown = ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")
                count = sum(p.numel() for p in g["params"])
                lines.append(f"  {g.get('role', '?'):9s} {g.get('rule', type(c).__name__):38s} "
                             f"lr {g['lr']:.3g}  wd {g.get('weight_decay', 0.0):.3g}  "
                             f"{len(g['params'])} tensor{'s' if len(g['params']) != 1 else ''} / {count:,} values: {shown}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


# ----------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class Recipe:
    """A recipe: its default lr and weight decay (measured, docs/recipes.md), what each role gets."""

    name: str
    lr: float
    weight_decay: float
    rules: dict[str, str]  # role -> the update, in words (for summaries and docs)
    build: Callable[..., list[torch.optim.Optimizer]]


def _groups(by_role: dict[str, list[tuple[str, nn.Parameter]]], roles: Iterable[str], rule: str,
            lr: float, wd: float, overrides: dict[str, dict[str, Any]],
            extra: Callable[[str], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One param group per role present: decoupled weight decay on hidden, conv and head matrices
    only (not on embeddings, gains and biases), then the user's per-role ``overrides``."""
    out = []
    for role in roles:
        named = by_role.get(role, [])
        if not named:
            continue
        g: dict[str, Any] = {
            "params": [p for _, p in named], "param_names": [n for n, _ in named], "role": role,
            "lr": lr, "weight_decay": wd if role in ("hidden", "conv", "head") else 0.0,
        }
        if extra is not None:
            g.update(extra(role))
        g.update(overrides.get(role, {}))
        g["rule"] = rule if "rule" not in overrides.get(role, {}) else g["rule"]
        out.append(g)
    return out


def _strip_rule(groups: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[int, str]]:
    rules = {k: g.pop("rule") for k, g in enumerate(groups)}
    return groups, rules


def _with_rules(opt: torch.optim.Optimizer, rules: dict[int, str]) -> torch.optim.Optimizer:
    for k, g in enumerate(opt.param_groups):
        g["rule"] = rules[k]
    return opt


def _check_overrides(children: list[torch.optim.Optimizer], overrides: dict[str, dict[str, Any]]) -> None:
    """A per-role dict may only set options the optimizer of that role has (its ``defaults``,
    and ``rule``): a misspelt key would otherwise sit in the group unused, silently."""
    for role, ov in overrides.items():
        for child in children:
            if not any(g.get("role") == role for g in child.param_groups):
                continue
            unknown = sorted(set(ov) - set(child.defaults) - {"rule"})
            if unknown:
                raise ValueError(f"{role}=: unknown group option(s) {unknown} for the {role} role's "
                                 f"{type(child).__name__}; it takes {sorted(child.defaults)}")


def _adamw(groups: list[dict[str, Any]], options: dict[str, Any]) -> torch.optim.Optimizer:
    groups, rules = _strip_rule(groups)
    kw = {k: options[k] for k in ("betas", "eps") if k in options}
    opt = torch.optim.AdamW(groups, **kw)
    return _with_rules(opt, rules)


def _build_muon(by_role: Any, lr: float, wd: float, ov: dict[str, Any], options: dict[str, Any]) -> list[Any]:
    mats = _groups(by_role, ("hidden", "conv"), "Muon (match_rms_adamw, Nesterov 0.95)", lr, wd, ov)
    rest = _groups(by_role, ("embedding", "head", "vector"), "AdamW (torch)", lr, wd, ov)
    out: list[Any] = []
    if mats:
        mats, rules = _strip_rule(mats)
        kw = {k: options[k] for k in ("momentum", "nesterov", "ns_steps") if k in options}
        out.append(_with_rules(Muon(mats, lr=lr, weight_decay=wd, adjust_lr_fn="match_rms_adamw", **kw), rules))
    if rest:
        out.append(_adamw(rest, options))
    return out


def _modular_builder(which: str) -> Callable[..., list[Any]]:
    rule = {"steepest": "Modular 'steepest' norm of the role", "scion": "Modular 'scion' LMO of the role"}[which]

    def build(by_role: Any, lr: float, wd: float, ov: dict[str, Any], options: dict[str, Any]) -> list[Any]:
        def extra(role: str) -> dict[str, Any]:
            opts = dict(MODULAR_RECIPES[which][role])
            opts["norm"] = opts["norm"]()
            return opts

        groups = _groups(by_role, ROLES, rule, lr, wd, ov, extra)
        for g in groups:
            g["rule"] = f"{type(g['norm']).__name__} ({which} {g['role']})"
        groups, rules = _strip_rule(groups)
        return [_with_rules(Modular(groups, lr=lr, **options), rules)]

    return build


def _single(cls: Callable[..., torch.optim.Optimizer], rule: str, **fixed: Any) -> Callable[..., list[Any]]:
    def build(by_role: Any, lr: float, wd: float, ov: dict[str, Any], options: dict[str, Any]) -> list[Any]:
        groups, rules = _strip_rule(_groups(by_role, ROLES, rule, lr, wd, ov))
        return [_with_rules(cls(groups, lr=lr, **{**fixed, **options}), rules)]

    return build


def _build_adamw(by_role: Any, lr: float, wd: float, ov: dict[str, Any], options: dict[str, Any]) -> list[Any]:
    return [_adamw(_groups(by_role, ROLES, "AdamW (torch)", lr, wd, ov), options)]


_ADAM_WORDS = "AdamW (torch)"
#: The recipes. Default lrs, measured (docs/recipes.md, docs/results/charlm-bench):
#:
#: * ``"muon"`` and ``"adamw"``: 10^-1.5 / 2 ~ 0.0158, from the full charlm-bench model (1.84M
#:   parameters, 1,500 steps; seed-0 sweep on a x2 grid) together with the small GPT (117K, 250
#:   steps; sqrt(10) grid): AdamW's best on the full model (0.0079: 1.960, 0.0158: 1.527, 0.0316:
#:   2.314); Muon's full-model losses at 0.0079 / 0.0158 / 0.0316 are 1.278 / 1.283 / 2.237, and on
#:   the small GPT 0.0158 keeps Muon better than tuned AdamW on every seed where 0.0079 does not.
#: * ``"steepest"``: 0.0158, 1x AdamW's best as on the small GPT (where its best was AdamW's,
#:   0.032); on the full model 0.0158: 1.317 against 0.0316: 2.103.
#: * ``"scion"``: 10^-1.5 / 2 ~ 0.0158, its full-model seed-0 best, bracketed (0.0079: 1.345,
#:   0.0158: 1.312, 0.0316: 1.921; the rule registered in docs/recipes.md before the sweep
#:   finished); on the small GPT its best was 0.032.
#: * ``"lion"``: 0.01 / 16 = 0.000625, its full-model seed-0 best, bracketed (0.0003125: 1.585,
#:   0.000625: 1.534, 0.00125: 1.999, 0.0025: 2.288, 0.005: 2.449, 0.01: 2.850; the registered
#:   rule); on the small GPT its best was 0.01 (250 steps want a 16x larger lr than 1,500 here).
#: * ``"signum"``: 10^-2.5 / 8 ~ 0.000395, its full-model seed-0 best, bracketed (0.000198: 1.587,
#:   0.000395: 1.377, 0.00079: 1.387, 0.00158: 1.640, 0.00316: 2.058; the registered rule); on the
#:   small GPT its best was 10^-2.5 ~ 0.0032.
#:
#: Weight decay 0 by default for all (applied to matrices only).
RECIPES: dict[str, Recipe] = {
    "muon": Recipe("muon", 10**-1.5 / 2, 0.0, {
        "hidden": "Muon (Newton-Schulz polar factor, Nesterov 0.95, lr adjusted 0.2 sqrt(max(m, n)))",
        "conv": "Muon, kernels flattened to out x rest",
        "embedding": _ADAM_WORDS, "head": _ADAM_WORDS, "vector": _ADAM_WORDS}, _build_muon),
    "steepest": Recipe("steepest", 10**-1.5 / 2, 0.0, {
        "hidden": "Modular: spectral (Muon's update, match_rms_adamw)", "conv": "Modular: spectral",
        "embedding": "Modular: sign (l_inf), radius 0.2", "head": "Modular: sign (l_inf), radius 0.2",
        "vector": "Modular: sign (l_inf), radius 0.2"}, _modular_builder("steepest")),
    "scion": Recipe("scion", 10**-1.5 / 2, 0.0, {
        "hidden": "Modular: LMO of the RMS->RMS spectral norm", "conv": "Modular: spectral LMO",
        "embedding": "Modular: ColNorm LMO per token", "head": "Modular: sign/fan_in LMO, radius 60",
        "vector": "Modular: RMS-normalized"}, _modular_builder("scion")),
    "lion": Recipe("lion", 1e-2 / 16, 0.0, {r: "Lion (sign of interpolated momentum)" for r in ROLES},
                   _single(Lion, "Lion")),
    "signum": Recipe("signum", 10**-2.5 / 8, 0.0, {r: "Signum (sign of EMA momentum 0.9)" for r in ROLES},
                     _single(SignSGD, "Signum (momentum 0.9)", momentum=0.9)),
    "adamw": Recipe("adamw", 10**-1.5 / 2, 0.0, {r: _ADAM_WORDS for r in ROLES}, _build_adamw),
}

# _optim_all is imported by name: mypy cannot type `_optim.__all__` through the import cycle
# optim.noise -> steepest -> recipes -> optim
_PRESETS = tuple(n for n in _optim_all if n not in ("StepOptimizer", "layer_groups"))


def create_optimizer(
    model: nn.Module,
    name: str,
    lr: float | None = None,
    *,
    weight_decay: float | None = None,
    roles: dict[str, str] | None = None,
    example_input: Any = None,
    head_module: str | None = None,
    **options: Any,
) -> RecipeOptimizer:
    """One optimizer for ``model`` that gives each parameter the update of its role.

    Args:
        model: the model (its trainable parameters are optimized, tied ones once).
        name: a recipe of :data:`RECIPES` (``"muon"``, ``"steepest"``, ``"scion"``, ``"lion"``,
            ``"signum"``, ``"adamw"``) or an optimizer class of ``steepest.optim`` by its name
            (``"Lion"``, ``"Stacey"``, ...: that class on every parameter, one group per role).
        lr: the learning rate; ``None``: the recipe's default, measured (docs/recipes.md). For
            ``"muon"`` it is the AdamW-scale lr of every group: Muon's steps are RMS-matched to
            AdamW's (``adjust_lr_fn="match_rms_adamw"``), so one lr serves both.
        weight_decay: decoupled weight decay on the hidden, conv and head matrices (never on
            embeddings, gains or biases); ``None``: the recipe's default (0 for every recipe; note
            the classes' own defaults differ: ``Muon`` 0.1 as torch's, ``Modular`` 0).
        roles: ``{parameter name: role}`` overriding the detection (roles: ``embedding``,
            ``hidden``, ``conv``, ``head``, ``vector``).
        example_input: an input of the model (tensor, tuple of arguments or dict of keyword
            arguments); with it, roles are found by a forward pass (:func:`detect_roles`),
            without it by module types and names (the summary says which).
        head_module: the qualified name of the output module, for the fallback detection.
        **options: ``betas``/``eps`` (the AdamW parts), ``momentum``/``nesterov``/``ns_steps``
            (Muon), a role name with a dict of group options for that role (``head={"lr": 1e-3}``),
            or, for a class name, its constructor's keyword arguments.

    Returns:
        a :class:`RecipeOptimizer`: ``step()``, ``zero_grad()``, ``state_dict()``, schedulers,
        and ``print(opt)`` / ``opt.summary()`` say which group got what.

    Example::

        opt = steepest.create_optimizer(model, "muon", example_input=x[:1])
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=n, cycle_momentum=False)
        print(opt)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {name!r}")
    # an optimizer class by its exact name first ("Lion" the class, "lion" the recipe)
    key = "" if name in _PRESETS else name.lower()
    if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr)
                           or lr <= 0):
        raise ValueError(f"lr must be a finite number > 0 (or None for the recipe's default), got {lr!r}")
    if weight_decay is not None and (not isinstance(weight_decay, (int, float)) or isinstance(weight_decay, bool)
                                     or not math.isfinite(weight_decay) or weight_decay < 0):
        raise ValueError(f"weight_decay must be a finite number >= 0 (or None), got {weight_decay!r}")
    overrides = {r: options.pop(r) for r in ROLES if r in options}
    for r, o in overrides.items():
        if not isinstance(o, dict):
            raise ValueError(f"{r}= must be a dict of group options for the {r} role, got {o!r}")
        for k, low, what in (("lr", 0.0, "> 0"), ("weight_decay", None, ">= 0")):
            v = o.get(k)
            if k in o and (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
                           or (v <= 0 if low is not None else v < 0)):
                raise ValueError(f"{r}={{{k!r}: ...}} must be a finite number {what}, got {v!r}")
    report = detect_roles(model, example_input, roles, head_module)
    if not report.params:
        raise ValueError(f"create_optimizer: the model ({type(model).__name__}) has no parameters that "
                         "require grad")
    by_role: dict[str, list[tuple[str, nn.Parameter]]] = {r: [] for r in ROLES}
    for n, p in report.params.items():
        by_role[report.roles[n]].append((n, p))
    notes = [f"roles from {report.method}"
             + ("" if example_input is not None else " (pass example_input= to detect them by a forward pass)")]
    notes += [f"{n}: {why}" for n, why in report.how.items() if report.roles[n] == "embedding"
              or report.roles[n] == "head"]
    if key in RECIPES:
        recipe = RECIPES[key]
        allowed = {"muon": {"betas", "eps", "momentum", "nesterov", "ns_steps"},
                   "adamw": {"betas", "eps"}, "lion": {"betas"}, "signum": {"momentum"},
                   "steepest": {"momentum", "nesterov", "step", "mode"},
                   "scion": {"momentum", "nesterov", "step", "mode"}}[key]
        bad = sorted(set(options) - allowed)
        if bad:
            raise ValueError(f"create_optimizer({name!r}): unknown option(s) {bad}; this recipe takes "
                             f"{sorted(allowed)} and per-role dicts {ROLES}")
        the_lr = recipe.lr if lr is None else float(lr)
        wd = recipe.weight_decay if weight_decay is None else float(weight_decay)
        children = recipe.build(by_role, the_lr, wd, overrides, options)
        _check_overrides(children, overrides)
        notes.insert(0, f"lr {the_lr:g}" + (" (the recipe's default, measured on charlm-bench: docs/recipes.md)"
                                            if lr is None else "") + f", weight decay {wd:g} on matrices")
        return RecipeOptimizer(children, key, notes)
    if name in _PRESETS:
        cls = getattr(_optim, name)
        if lr is None:
            import inspect

            default = inspect.signature(cls.__init__).parameters.get("lr")
            if default is None or default.default is inspect.Parameter.empty:
                raise ValueError(f"create_optimizer({name!r}): pass lr= ({name} has no default lr)")
            the_lr = float(default.default)
        else:
            the_lr = float(lr)
        wd = 0.0 if weight_decay is None else float(weight_decay)
        groups, rules = _strip_rule(_groups(by_role, ROLES, name, the_lr, wd, overrides))
        if wd == 0.0:
            for g in groups:
                g.pop("weight_decay")
        opt = _with_rules(cls(groups, lr=the_lr, **options), rules)
        _check_overrides([opt], overrides)
        notes.insert(0, f"lr {the_lr:g}" + (f" ({name}'s default)" if lr is None else "")
                     + (f", weight decay {wd:g} on matrices" if wd else ""))
        return RecipeOptimizer([opt], name, notes)
    raise ValueError(f"create_optimizer: unknown name {name!r}; recipes: {tuple(RECIPES)}; "
                     f"optimizer classes: {_PRESETS}")
