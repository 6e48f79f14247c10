"""Which optimizer and what learning rate for *this* model and loss: advice that measures.

:func:`advise` answers the practitioner's question by training, not by forecast: candidate
recipes are trained from the same initialisation on the data you pass, each over a
learning-rate grid around its default, and the best final loss wins. The steps it spends are
counted against a budget given in training runs (``budget=20``: at most twenty times
``steps_total`` steps, summed over all configurations), printed and returned.

Two ways to spend the budget:

* ``method="search"`` (the default, the one that passed its pre-registered validation,
  ``docs/advise.md``: 27 of 32 held-out cases within 1% of the tuned winner's final loss, at the
  default budget of 20 runs, 12 used on average): every configuration is trained for the
  *horizon that is judged* (``steps_total`` when the budget allows, else the longest horizon it
  allows) and scored by its final loss there; each candidate's lr is searched on a x3 grid of
  five values around its default, extended past an edge until the best is bracketed (as
  :func:`steepest.experiments.harness.log_grid_search` tunes). Its default shortlist is ``sgd``
  and ``muon`` (the l_2 geometry and Muon + AdamW).
* ``method="race"``: a short race (default budget 0.1 runs) by successive halving (Karnin, Koren &
  Somekh 2013; Jamieson & Talwalkar 2016), keeping the better quarter of the configurations at
  each rung and training them longer. It is cheap, and it *failed* its validation (2 of 32
  cases): on 100-step runs its short rungs ranked the eventual winner (SGD with momentum at a
  small lr, slow at first) about 20th of 63 configurations (median) after 3-12 steps. Use it as
  a first look, not as the answer.

The geometry of [BPL20] Sec. 4-5 is measured on a small sample as the explanation: diagonal
concentration ``rho_diag`` (Prop. 4), the l_inf vs l_2 smoothness ratio ``L_inf / (d L_2)``
(Eq. 23), the gradient density ``phi`` (Eq. 30) and the predicted advantage ``R`` of sign descent
(Eq. 31). The theory-only advisor of :meth:`steepest.geometry.GeometryReport.recommend` stays
available as ``method="theory"`` (no training; its validated hit rate, 5 of 32, is in
``docs/advise.md``).

>>> import torch, steepest
>>> from torch import nn
>>> x, y = torch.randn(256, 10), torch.randint(0, 3, (256,))
>>> adv = steepest.advise(lambda: nn.Linear(10, 3), nn.functional.cross_entropy, (x, y),
...                       steps_total=2000, explain=False)          # doctest: +SKIP
>>> print(adv)                                                     # doctest: +SKIP
>>> opt = adv.create_optimizer(model)                              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from steepest._cli_types import finite_float, int_at_least

__all__ = ["DEFAULT_BUDGET", "SEARCH_SHORTLIST", "Advice", "Candidate", "RaceEntry", "advise",
           "default_candidates",
           "plain_candidates"]

Make = Callable[[nn.Module, float], torch.optim.Optimizer]
LossFn = Callable[[Any, Any], torch.Tensor]

# Families, for the geometry explanation: which of [BPL20]'s two geometries a candidate's update
# follows ("sign": l_inf steepest descent and its momentum variants; "l2": gradient descent;
# "adaptive": diagonal preconditioning (Adam), between the two; "matrix": operator norms (Muon)).
FAMILIES = ("sign", "l2", "adaptive", "matrix", "other")


@dataclass
class Candidate:
    """One recipe in the race: ``make(model, lr)`` builds its optimizer over ``model``.

    ``lr`` is the centre of its learning-rate bracket: a number, or a function of the model
    (e.g. ``1/d`` for :class:`steepest.ScaledSignSGD`, whose step grows with the parameter count).
    A ``Candidate`` is itself a ``Callable[[nn.Module, float], Optimizer]``.
    """

    make: Make
    lr: float | Callable[[nn.Module], float]
    family: str = "other"
    description: str = ""

    def __post_init__(self) -> None:
        if not callable(self.make):
            raise ValueError(f"Candidate: make must be a callable make(model, lr), got {type(self.make).__name__}")
        if self.family not in FAMILIES:
            raise ValueError(f"Candidate: family must be one of {FAMILIES}, got {self.family!r}")

    def __call__(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return self.make(model, lr)

    def default_lr(self, model: nn.Module) -> float:
        return float(self.lr(model) if callable(self.lr) else self.lr)


def _nparams(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def plain_candidates() -> dict[str, Candidate]:
    """Single-class optimizers over all parameters (no role split): the fallback when
    :mod:`steepest.recipes` is not available. Centres: torch AdamW at 3e-3 (between torch's
    1e-3 and the 1e-2..1e-1 that small problems prefer, docs/defaults.md); the others at the
    ratio to AdamW that docs/defaults.md measured (SGD with momentum 0.9 at 10x, Signum and Lion
    at the classes' own defaults, about 0.2-1x)."""
    import steepest

    return {
        "adamw": Candidate(lambda m, lr: torch.optim.AdamW(_params(m), lr=lr), 3e-3, "adaptive",
                           "torch.optim.AdamW (weight_decay 0.01)"),
        "sgd": Candidate(lambda m, lr: torch.optim.SGD(_params(m), lr=lr, momentum=0.9), 3e-2,
                         "l2", "torch.optim.SGD(momentum=0.9)"),
        "signum": Candidate(lambda m, lr: steepest.SignSGD(_params(m), lr=lr, momentum=0.9), 3e-3,
                            "sign", "steepest.SignSGD(momentum=0.9)"),
        "lion": Candidate(lambda m, lr: steepest.Lion(_params(m), lr=lr), 3e-3, "sign",
                          "steepest.Lion"),
    }


# what each recipe of steepest.recipes is, for the explanation
_RECIPE_FAMILY = {"adamw": "adaptive", "muon": "matrix", "scion": "matrix", "steepest": "matrix",
                  "lion": "sign", "signum": "sign"}


# The centre of each recipe's lr bracket: the recipes' defaults when advise was validated
# (docs/advise.md; the small GPT's sweep). Pinned here, not read from RECIPES, so that a later
# change of a recipe's default does not change the validated advisor; the search extends its
# bracket past an edge anyway.
ADVISE_CENTRES = {"adamw": 10**-1.5, "muon": 10**-1.5, "steepest": 10**-1.5, "scion": 10**-1.5,
                  "lion": 1e-2, "signum": 10**-2.5}


def default_candidates(example_input: Any = None) -> dict[str, Candidate]:
    """The recipes of :func:`steepest.recipes.create_optimizer` ("adamw", "muon", "scion",
    "steepest", "lion", "signum"), each centred where the validation ran (:data:`ADVISE_CENTRES`,
    the recipes' defaults then), and "sgd" (``torch.optim.SGD(momentum=0.9)`` at
    3e-2, the l_2 geometry no recipe covers); ``example_input`` (an input of the model) lets the
    recipes find parameter roles by a forward pass. If :mod:`steepest.recipes` is not
    importable: :func:`plain_candidates`."""
    try:
        from steepest.recipes import RECIPES, create_optimizer
    except ImportError:
        return plain_candidates()

    def make(name: str) -> Make:
        def build(m: nn.Module, lr: float) -> torch.optim.Optimizer:
            kw = {} if example_input is None else {"example_input": example_input}
            return create_optimizer(m, name, lr=lr, **kw)
        return build

    out = {name: Candidate(make(name), float(ADVISE_CENTRES.get(name, RECIPES[name].lr)), fam,
                           f"steepest.create_optimizer(model, {name!r})")
           for name, fam in _RECIPE_FAMILY.items() if name in RECIPES}
    out["sgd"] = plain_candidates()["sgd"]  # the l_2 geometry, which no recipe covers
    return out


# method="search"'s default candidates: the l_2 geometry and Muon + AdamW, the two whose tuned
# lr won 29 of the 32 development cases of docs/advise.md (seeds 0/1 of the validation set)
SEARCH_SHORTLIST = ("sgd", "muon")
SEARCH_FACTORS = (1 / 9, 1 / 3, 1.0, 3.0, 9.0)  # five x3 steps around the default, as tuned
SEARCH_EXTEND = 8
# The budget (in runs of steps_total) when none is given: search's validated setting (20 runs;
# docs/results/advise-validation-v2) and the race's "a tenth of a run".
DEFAULT_BUDGET = {"search": 20.0, "race": 0.1, "theory": 0.1}


def search_candidates(example_input: Any = None) -> dict[str, Candidate]:
    """``method="search"``'s default candidates: :data:`SEARCH_SHORTLIST` out of
    :func:`default_candidates` (``adamw`` where ``muon`` is not available)."""
    every = default_candidates(example_input)
    out = {n: every[n] for n in SEARCH_SHORTLIST if n in every}
    if "muon" not in out and "adamw" in every:
        out["adamw"] = every["adamw"]
    return out


@dataclass
class RaceEntry:
    """One configuration of the race: its scores after each rung it ran (lower is better)."""

    candidate: str
    lr: float
    steps: int = 0
    scores: list[float] = field(default_factory=list)
    eliminated_at: int | None = None  # rung index; None for the finalists
    extension: bool = False  # added past the edge of the bracket in rung 0

    @property
    def score(self) -> float:
        return self.scores[-1] if self.scores else math.inf


@dataclass
class Advice:
    """What :func:`advise` found. ``str(advice)`` prints a compact report.

    ``winner`` and ``lr``: the recommended recipe and learning rate (``None``/``nan`` if every
    configuration diverged). ``table``: every configuration raced. ``budget_used``: steps spent
    (``steps_used``, summed over configurations) as a share of ``steps_total``. ``geometry``: the
    seed-000 report on the sample (``None`` with ``explain=False``), ``theory``: its
    recommendation (the theory-only advisor's answer).
    """

    method: str
    winner: str | None
    lr: float
    score: float
    steps_total: int
    budget: float
    steps_used: int
    table: list[RaceEntry] = field(default_factory=list)
    rungs: list[tuple[int, int]] = field(default_factory=list)  # (configurations, steps each so far)
    geometry: Any = None  # steepest.geometry.GeometryReport
    theory: Any = None  # steepest.geometry.report.Recommendation
    candidates: dict[str, Candidate] = field(default_factory=dict, repr=False)
    seconds: float = 0.0
    geometry_seconds: float = 0.0
    note: str = ""

    @property
    def budget_used(self) -> float:
        return self.steps_used / self.steps_total

    def create_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The recommended optimizer over ``model`` at the recommended lr."""
        if self.winner is None:
            raise RuntimeError(f"no recommendation: {self.note or 'every configuration diverged'}")
        return self.candidates[self.winner](model, self.lr)

    def ranking(self) -> list[RaceEntry]:
        """Configurations from best to worst: later rungs first, then by score."""
        return sorted(self.table, key=lambda e: (-len(e.scores), e.score))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method, "winner": self.winner, "lr": self.lr, "score": self.score,
            "steps_total": self.steps_total, "budget": self.budget, "steps_used": self.steps_used,
            "budget_used": self.budget_used, "rungs": self.rungs, "seconds": self.seconds,
            "geometry_seconds": self.geometry_seconds, "note": self.note,
            "table": [{"candidate": e.candidate, "lr": e.lr, "steps": e.steps,
                       "scores": e.scores, "eliminated_at": e.eliminated_at,
                       "extension": e.extension} for e in self.table],
        }
        if self.geometry is not None:
            out["geometry"] = self.geometry.to_dict()
        if self.theory is not None:
            from dataclasses import asdict

            out["theory"] = asdict(self.theory)
        return out

    def geometry_lines(self) -> list[str]:
        rep = self.geometry
        if rep is None:
            return []
        lo, hi = rep.advantage
        d = rep.dim
        ratio = (f"[{rep.linf_lower / (d * rep.L2):.3g}, {rep.linf_upper / (d * rep.L2):.3g}]"
                 if rep.L2 > 0 else "n/a (L_2 = 0)")
        lines = [
            f"why ([BPL20] geometry at the start, {rep.num_examples} examples, d = {d:,}, "
            f"{rep.seconds:.1f} s):",
            f"  gradient density phi = {rep.density:.3g}  (Eq. 30; 1 = dense, favours sign steps)",
            f"  diagonal concentration rho_diag = {rep.rho_diag:.3g}  (Prop. 4; 1 = diagonal)",
            f"  L_inf / (d L_2) in {ratio}  (Eq. 23; small favours sign steps)",
            f"  predicted advantage of sign descent R in [{lo:.3g}, {hi:.3g}]  (Eq. 31; > 1: sign)",
        ]
        if self.theory is not None and self.theory.choice != "none":
            th = {"sign": "sign descent (l_inf)", "gd": "gradient descent (l_2)"}[self.theory.choice]
            lines.append(f"  theory alone would pick {th}, confidence {self.theory.confidence}")
            if self.winner is not None and self.method in ("race", "search"):
                fam = self.candidates[self.winner].family
                if fam in ("sign", "l2"):
                    agree = (fam == "sign") == (self.theory.choice == "sign")
                    verdict = ("agrees with the theory" if agree else
                               "the measurement overrides the one-step theory")
                else:
                    verdict = "a geometry the two-way theory does not cover"
                what = "the race's" if self.method == "race" else "the search's"
                lines.append(f"  {what} winner is {self.winner} ({fam}): {verdict}")
        return lines

    def __str__(self) -> str:
        head = (f"advice ({self.method}): "
                + (f"{self.winner} at lr {self.lr:.3g}" if self.winner is not None
                   else f"none ({self.note})"))
        lines = [head]
        if self.method in ("race", "search"):
            what = ("rungs (configs x steps): " if self.method == "race" else
                    "configurations x horizon: ")
            # in runs where the budget is runs (the search's 20), as a share of one run below one
            spent = (f"{self.budget_used:.1f} runs of {self.steps_total:,} steps (allowed {self.budget:g})"
                     if self.budget >= 1 else
                     f"{100 * self.budget_used:.1f}% of a {self.steps_total:,}-step run (allowed "
                     f"{100 * self.budget:.1f}%)")
            lines.append(f"  budget: {self.steps_used:,} steps = {spent}, {self.seconds:.1f} s; {what}"
                         + ", ".join(f"{n}x{s}" for n, s in self.rungs))
            lines.append(f"  {'candidate':<12s} {'lr':>9s} {'steps':>6s}  "
                         + ("loss after each rung" if self.method == "race" else "final loss"))
            shown: list[RaceEntry] = []
            for e in self.ranking():  # every survivor of rung 0, else each candidate's best
                if len(e.scores) > 1 or all(s.candidate != e.candidate for s in shown):
                    shown.append(e)
            for e in shown:
                sc = " ".join(f"{s:.4g}" for s in e.scores)
                tag = "  <- winner" if (e.candidate == self.winner and e.lr == self.lr) else ""
                lines.append(f"  {e.candidate:<12s} {e.lr:>9.3g} {e.steps:>6d}  {sc}{tag}")
            if len(shown) < len(self.table):
                rest = ("stopped after the first rung" if self.method == "race" else
                        "at other learning rates, each candidate's best shown")
                lines.append(f"  ({len(self.table) - len(shown)} more configurations {rest})")
        elif self.theory is not None:
            lines += ["  " + s for s in self.theory.lines()[1:]]
        lines += self.geometry_lines()
        if self.note and self.winner is not None:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
def _is_batch(data: Any) -> bool:
    return isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], torch.Tensor)


class _Stream:
    """A configuration's own pass over ``data``: the same batches in the same order for every
    configuration, however their steps interleave (each has its own RNG state for the
    loader's shuffling and for dropout)."""

    def __init__(self, data: Any, seed: int) -> None:
        self.data = data
        self.epoch = 0
        self.it: Any = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.rng = torch.get_rng_state()
        # A loader with a generator of its own (DataLoader(generator=g), or its sampler's)
        # shuffles with it, not with the global RNG: each stream gets its own copy of it, seeded
        # from ``seed``, swapped in around every draw (so the user's generator is left as it was).
        gens = [getattr(data, "generator", None), getattr(getattr(data, "sampler", None), "generator", None)]
        self.gens: list[torch.Generator] = []
        for g in gens:
            if isinstance(g, torch.Generator) and all(g is not h for h in self.gens):
                self.gens.append(g)
        self.gen_states = [torch.Generator(device=g.device).manual_seed(seed + k).get_state()
                           for k, g in enumerate(self.gens)]

    def next(self) -> Any:
        if not self.gens:
            return self._next()
        saved = [g.get_state() for g in self.gens]
        for g, st in zip(self.gens, self.gen_states):
            g.set_state(st)
        try:
            return self._next()
        finally:
            self.gen_states = [g.get_state() for g in self.gens]
            for g, st in zip(self.gens, saved):
                g.set_state(st)

    def _next(self) -> Any:
        if _is_batch(self.data):
            return self.data
        if isinstance(self.data, Sequence):
            if not len(self.data):
                raise ValueError("data yielded no batches")
            b = self.data[self.epoch % len(self.data)]
            self.epoch += 1
            return b
        if self.it is None:
            self.it = iter(self.data)
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            self.it = iter(self.data)
            try:
                return next(self.it)
            except StopIteration:
                raise ValueError("data yielded no batches") from None


def _loss(model: nn.Module, loss_fn: LossFn, batch: Any) -> torch.Tensor:
    x, y = batch
    return loss_fn(model(x), y)


def _evaluate(model: nn.Module, loss_fn: LossFn, batches: list[Any]) -> float:
    was = model.training
    model.eval()
    total, n = 0.0, 0
    try:
        with torch.no_grad():
            for b in batches:
                k = len(b[0]) if hasattr(b[0], "__len__") else 1
                total += float(_loss(model, loss_fn, b)) * k
                n += k
    finally:
        model.train(was)
    v = total / max(n, 1)
    return v if math.isfinite(v) else math.inf


# ------------------------------------------------------------------------------------------
# the race
# ------------------------------------------------------------------------------------------
@dataclass
class _Trial:
    entry: RaceEntry
    model: nn.Module
    opt: torch.optim.Optimizer
    stream: _Stream
    order: int
    dead: bool = False


def _train(t: _Trial, loss_fn: LossFn, steps: int) -> int:
    """``steps`` more steps of trial ``t``; returns the steps spent (a diverged trial stops)."""
    done = 0
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(t.stream.rng)
        for _ in range(steps):
            if t.dead:
                break
            batch = t.stream.next()
            t.opt.zero_grad(set_to_none=True)
            loss = _loss(t.model, loss_fn, batch)
            done += 1
            if not torch.isfinite(loss):
                t.dead = True
                break
            loss.backward()
            t.opt.step()
        t.stream.rng = torch.get_rng_state()
    t.entry.steps += done
    return done


def _plan(n0: int, eta: int) -> list[int]:
    """Configurations per rung: ``n0``, then ``ceil(n/eta)`` down to a final rung of 2 (or 1)."""
    sizes = [n0]
    while sizes[-1] > 2:
        sizes.append(max(2, math.ceil(sizes[-1] / eta)))
    return sizes


def _check_positive_int(name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


def _check_lr(name: str, v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite number, got {v!r}") from None
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    return f


def _brackets(cands: Mapping[str, Candidate | Make], lrs: Any, base: nn.Module,
              default_factors: Sequence[float] = (1 / 3, 1.0, 3.0)) -> dict[str, list[float]]:
    """Each candidate's learning rates: absolute (a mapping), or factors of its default."""
    factors: list[float] = list(default_factors)
    absolute: Mapping[str, Any] = {}
    if isinstance(lrs, Mapping):
        unknown = sorted(set(lrs) - set(cands))
        if unknown:
            raise ValueError(f"lrs names unknown candidate(s) {unknown}; candidates: {list(cands)}")
        absolute = lrs
    elif lrs is not None:
        if isinstance(lrs, str | bytes) or not isinstance(lrs, Iterable):
            raise ValueError("lrs must be a sequence of factors of each candidate's default lr "
                             f"or a mapping name -> learning rates, got {lrs!r}")
        factors = [_check_lr("lrs (factor)", f) for f in lrs]
        if not factors:
            raise ValueError("lrs must not be empty")
    out: dict[str, list[float]] = {}
    for name, c in cands.items():
        if name in absolute:
            vals = absolute[name]
            if isinstance(vals, int | float):
                vals = [vals]
            grid = sorted({_check_lr(f"lrs[{name!r}]", v) for v in vals})
            if not grid:
                raise ValueError(f"lrs[{name!r}] must not be empty")
        elif isinstance(c, Candidate):
            centre = _check_lr(f"default lr of candidate {name!r}", c.default_lr(base))
            grid = sorted({centre * f for f in factors})
        else:
            raise ValueError(f"candidate {name!r} is a plain callable without a default lr: give "
                             f"its learning rates in lrs={{{name!r}: [...]}} or wrap it in "
                             "Candidate(make, lr=...) (from steepest.advise import Candidate)")
        out[name] = grid
    return out


def _as_model_fn(model_fn: Any) -> Callable[[], nn.Module]:
    if isinstance(model_fn, nn.Module):
        return lambda: copy.deepcopy(model_fn)
    if not callable(model_fn):
        raise ValueError(f"model_fn must be an nn.Module or a function returning one, got "
                         f"{type(model_fn).__name__}")
    return model_fn


def advise(
    model_fn: Callable[[], nn.Module] | nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    steps_total: int,
    budget: float | None = None,
    candidates: Mapping[str, Candidate | Make] | Sequence[str] | None = None,
    lrs: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    seed: int = 0,
    method: str = "search",
    eval_data: Any = None,
    eta: int = 4,
    extend: int | None = None,
    min_steps: int = 1,
    explain: bool = True,
    geometry_examples: int = 256,
    geometry_options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> Advice:
    """Train the candidates on your model and data; return the winner, its lr and why.

    Args:
        model_fn: a function returning a freshly initialised model, or a model (deep-copied).
            It is called once (under ``torch.manual_seed(seed)``) and every configuration starts
            from a copy of that one initialisation.
        loss_fn: ``loss_fn(model(x), y)``, a scalar (the batch mean).
        data: one batch ``(x, y)`` (full-batch training), a sequence of batches (cycled in
            order) or any re-iterable of batches such as a shuffling ``DataLoader`` (each
            configuration gets the same batch order: the loader is re-iterated under the same RNG
            state).
        steps_total: the length of the training run you are choosing for (optimizer steps).
        budget: how many training runs of ``steps_total`` steps the advice may spend, summed
            over all configurations (``0.1``: a tenth of one run; may exceed 1). Default
            :data:`DEFAULT_BUDGET` of the method: 20 for ``"search"`` (the validated setting),
            0.1 for ``"race"``. Too small a budget for the number of configurations is a
            ``ValueError`` naming the smallest that works.
        candidates: name -> :class:`Candidate` (or a callable ``make(model, lr)`` together with
            its learning rates in ``lrs``), or a list of built-in names (``["sgd", "muon"]``, as
            the command's ``--candidates``); default: the method's (``"search"``:
            :data:`SEARCH_SHORTLIST`; ``"race"``: :func:`default_candidates`).
        lrs: factors applied to each candidate's default lr (default: the method's,
            :data:`SEARCH_FACTORS` for ``"search"``, ``(1/3, 1, 3)`` for ``"race"``), or a
            mapping name -> absolute learning rates.
        seed: the initialisation and data-order seed; the same seed gives the same advice.
        method: ``"search"`` (default, validated: every configuration trained for the judged
            horizon, ``steps_total`` if the budget allows, and each candidate's lr searched
            until bracketed; default candidates :data:`SEARCH_SHORTLIST`, lr factors
            :data:`SEARCH_FACTORS`, ``extend`` :data:`SEARCH_EXTEND`), ``"race"`` (successive
            halving over short rungs; cheap, failed its validation) or ``"theory"`` (the
            geometry report's recommendation of [BPL20] Eq. 31, no training:
            ``torch.optim.SGD`` at ``1/L_2`` or ``steepest.ScaledSignSGD`` at ``1/L_inf``).
        eval_data: batches the configurations are scored on (mean loss, ``model.eval()``); default: ``data``
            itself when it is one batch, else the first 4 batches of ``data``.
        eta: successive halving keeps the best ``1/eta`` of the configurations at each rung
            (``>= 2``; 4 leaves fewer rungs, so each is longer); the final rung has 2.
        extend: a candidate whose best lr is at an edge of its bracket gets up to ``extend``
            more learning rates past that edge (spaced as the bracket): in the race's first
            rung (default 2), or at the search's horizon while the budget lasts (default 8).
        min_steps: the fewest steps a configuration gets in the first rung.
        explain: measure the geometry on ``geometry_examples`` examples of the first batch
            (:func:`steepest.geometry.geometry_report`, a few hundred Hessian-vector products;
            not counted in ``budget``, timed in ``geometry_seconds``).
        geometry_options: keyword arguments for ``geometry_report`` (e.g. ``{"mode": "dense"}``).
        progress: print one line per rung.

    Returns:
        :class:`Advice`.
    """
    t0 = time.perf_counter()
    if method not in ("race", "search", "theory"):
        raise ValueError(f"method must be 'race', 'search' or 'theory', got {method!r}")
    steps_total = _check_positive_int("steps_total", steps_total)
    budget = _check_lr("budget", DEFAULT_BUDGET[method] if budget is None else budget)
    eta = _check_positive_int("eta", eta, 2)
    extend = _check_positive_int("extend", (SEARCH_EXTEND if method == "search" else 2)
                                 if extend is None else extend, 0)
    min_steps = _check_positive_int("min_steps", min_steps)
    geometry_examples = _check_positive_int("geometry_examples", geometry_examples)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if data is None or (not _is_batch(data) and not isinstance(data, Iterable)):
        raise ValueError("data must be one batch (x, y), a sequence of batches or an iterable of "
                         f"batches, got {type(data).__name__}")
    make_model = _as_model_fn(model_fn)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = make_model()
    if not isinstance(base, nn.Module):
        raise ValueError(f"model_fn must return an nn.Module, got {type(base).__name__}")
    if not _params(base):
        raise ValueError("the model has no parameters that require grad")

    # the scoring batches, drawn once
    if eval_data is None:
        if _is_batch(data):
            evals = [data]
        else:
            s = _Stream(data, seed)
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(s.rng)
                evals = [s.next() for _ in range(4 if not isinstance(data, Sequence)
                                                 else min(4, len(data)))]
    else:
        evals = [eval_data] if _is_batch(eval_data) else list(eval_data)
        if not evals:
            raise ValueError("eval_data yielded no batches")

    geometry, theory, g_seconds = None, None, 0.0
    if explain or method == "theory":
        sample = data if _is_batch(data) else _first(data, seed)  # a training batch
        try:
            geometry, theory, g_seconds = _geometry(base, loss_fn, sample, geometry_examples, seed,
                                                    geometry_options)
        except (RuntimeError, NotImplementedError) as exc:
            if method == "theory":  # the answer itself: nothing to give without it
                raise
            # an explanation only: the advice stands without it (e.g. an op with no double
            # backward in the user's model)
            warnings.warn(
                f"steepest.advise: the geometry explanation failed ({type(exc).__name__}: {exc}); "
                "the advice is given without it (explain=False, or --no-explain, skips it)",
                UserWarning, stacklevel=2)
    if method == "theory":
        return _theory_advice(theory, geometry, steps_total, budget, g_seconds,
                              time.perf_counter() - t0)

    if candidates is None:
        first = data if _is_batch(data) else _first(data, seed)
        x0 = first[0][:1] if isinstance(first[0], torch.Tensor) else None
        candidates = (search_candidates if method == "search" else default_candidates)(
            example_input=x0)
    if isinstance(candidates, (list, tuple)) and all(isinstance(c, str) for c in candidates):
        # names of the built-in candidates, as the command's --candidates takes them
        first = data if _is_batch(data) else _first(data, seed)
        every = default_candidates(example_input=first[0][:1] if isinstance(first[0], torch.Tensor) else None)
        unknown = [c for c in candidates if c not in every]
        if unknown:
            raise ValueError(f"candidates: unknown name(s) {unknown}; the built-in ones are {tuple(every)}")
        candidates = {c: every[c] for c in candidates}
    if not isinstance(candidates, Mapping):
        raise ValueError("candidates must be a mapping name -> Candidate (or make(model, lr)), or a list of "
                         f"built-in candidate names; got {type(candidates).__name__}")
    cands: dict[str, Candidate | Make] = dict(candidates)
    if not cands:
        raise ValueError("candidates must name at least one optimizer")
    for name, c in cands.items():
        if not isinstance(name, str) or not callable(c):
            raise ValueError(f"candidates must map names to make(model, lr) callables; "
                             f"{name!r} -> {type(c).__name__}")
    grids = _brackets(cands, lrs, base, SEARCH_FACTORS if method == "search" else (1 / 3, 1, 3))
    as_cand = {n: c if isinstance(c, Candidate) else Candidate(c, grids[n][len(grids[n]) // 2])
               for n, c in cands.items()}
    if method == "search":
        return _search(base, loss_fn, data, evals, seed, as_cand, grids, steps_total, budget,
                       extend, min_steps, progress, geometry, theory, g_seconds, t0)

    n_planned = sum(len(g) + (1 if extend else 0) for g in grids.values())
    sizes = _plan(n_planned, eta)
    S = int(math.floor(budget * steps_total))
    r0 = min(S // (len(sizes) * n_planned), steps_total)
    if r0 < min_steps:
        need = len(sizes) * n_planned * min_steps
        raise ValueError(
            f"budget={budget:g} of steps_total={steps_total} is {S} steps; racing {n_planned} "
            f"configurations over {len(sizes)} rungs at >= {min_steps} step(s) each needs "
            f"{need} (budget >= {need / steps_total:.3g}), or fewer candidates / learning rates")

    spent = 0
    keep = sizes[1] if len(sizes) > 1 else 1
    trials: list[_Trial] = []  # the best `keep` so far (rung 0 streams: memory for `keep` models)
    table: list[RaceEntry] = []
    order = 0

    def run_config(name: str, lr: float, ext: bool) -> float:
        nonlocal spent, order, trials
        entry = RaceEntry(name, lr, extension=ext)
        table.append(entry)
        model = copy.deepcopy(base)
        try:
            opt = as_cand[name](model, lr)
        except Exception as exc:
            raise ValueError(f"candidate {name!r} failed to build its optimizer at lr={lr:g}: "
                             f"{exc}") from exc
        t = _Trial(entry, model, opt, _Stream(data, seed), order)
        order += 1
        spent += _train(t, loss_fn, r0)
        entry.scores.append(math.inf if t.dead else _evaluate(model, loss_fn, evals))
        trials.append(t)
        trials.sort(key=lambda u: (u.entry.score, u.order))
        for u in trials[keep:]:
            u.entry.eliminated_at = 0
        trials = trials[:keep]
        return entry.score

    for name, grid in grids.items():
        scores = {lr: run_config(name, lr, False) for lr in grid}
        lo_step = grid[1] / grid[0] if len(grid) > 1 else 3.0
        hi_step = grid[-1] / grid[-2] if len(grid) > 1 else 3.0
        for _ in range(extend if len(grid) > 1 else 0):
            best = min(scores, key=lambda v: (scores[v], abs(math.log(v / grid[len(grid) // 2]))))
            if not math.isfinite(scores[best]) or min(scores) < best < max(scores):
                break  # diverged everywhere, or the best is bracketed
            lr = best / lo_step if best == min(scores) else best * hi_step
            scores[lr] = run_config(name, lr, True)
    n_rung0 = len(table)
    rungs = [(n_rung0, r0)]
    if progress:
        print(f"advise: rung 0, {n_rung0} configurations x {r0} steps ({spent} steps)")

    # later rungs: the remaining budget split evenly over them, each survivor trained further
    later = _plan(n_rung0, eta)[1:]
    steps_so_far = r0
    for i, n in enumerate(later, start=1):
        survivors = [t for t in trials if math.isfinite(t.entry.score)][:n]
        for t in trials:
            if t not in survivors and t.entry.eliminated_at is None:
                t.entry.eliminated_at = i - 1
        trials = survivors
        if len(trials) <= 1:
            break
        share = (S - spent) // (len(later) - i + 1)
        delta = min(share // len(trials), steps_total - steps_so_far)
        if delta <= 0:
            break
        for t in trials:
            spent += _train(t, loss_fn, delta)
            t.entry.scores.append(math.inf if t.dead else _evaluate(t.model, loss_fn, evals))
        steps_so_far += delta
        trials.sort(key=lambda u: (u.entry.score, u.order))
        rungs.append((len(trials), steps_so_far))
        if progress:
            print(f"advise: rung {i}, {len(trials)} configurations x {steps_so_far} steps "
                  f"({spent} steps)")
    finalists = [t for t in trials if math.isfinite(t.entry.score)]
    finalists.sort(key=lambda u: (-len(u.entry.scores), u.entry.score, u.order))
    initial = _evaluate(base, loss_fn, evals)
    if finalists and not finalists[0].entry.score < initial:
        finalists = []  # nothing improved on the initialisation: no advice rather than a bad one
    if finalists:
        win = finalists[0].entry
        winner, lr, score, note = win.candidate, win.lr, win.score, ""
        g = sorted({e.lr for e in table if e.candidate == win.candidate})
        if win.lr in (g[0], g[-1]) and len(g) > 1:
            note = (f"{winner}'s lr is at the edge of what was tried ({g[0]:.3g}..{g[-1]:.3g}); "
                    "a wider lrs bracket may do better")
    else:
        winner, lr, score = None, math.nan, math.inf
        note = ("every configuration diverged or ended above the initial loss "
                f"{initial:.4g}; try smaller learning rates")
    return Advice(method="race", winner=winner, lr=lr, score=score, steps_total=steps_total,
                  budget=budget, steps_used=spent, table=table, rungs=rungs, geometry=geometry,
                  theory=theory, candidates=as_cand, seconds=time.perf_counter() - t0,
                  geometry_seconds=g_seconds, note=note)


def _next_lr(tried: Mapping[float, float], centre: float) -> float | None:
    """The search's next lr for one candidate, or ``None`` when it is done: the rule of
    :func:`steepest.experiments.harness.log_grid_search` (the best, ties to the one nearest the
    centre; one step past the edge it lies on, spaced as that edge's neighbours), and also done
    when the best loss is 0 (nothing left to gain) or fewer than two lrs were tried."""
    if len(tried) < 2:
        return None
    g = sorted(tried)
    best = min(g, key=lambda v: (tried[v], abs(math.log(v / centre))))
    if tried[best] == 0.0 or g[0] < best < g[-1]:
        return None
    return best / (g[1] / g[0]) if best == g[0] else best * (g[-1] / g[-2])


def _search(base: nn.Module, loss_fn: LossFn, data: Any, evals: list[Any], seed: int,
            cands: dict[str, Candidate], grids: dict[str, list[float]], steps_total: int,
            budget: float, extend: int, min_steps: int, progress: bool, geometry: Any,
            theory: Any, g_seconds: float, t0: float) -> Advice:
    """``method="search"``: every configuration trained for one horizon ``h`` (``steps_total``
    when ``budget`` pays for every grid point at full length) and scored by its final loss;
    extensions past a winning edge take turns over the candidates while the budget lasts."""
    S = int(math.floor(budget * steps_total))
    n0 = sum(len(g) for g in grids.values())
    h = min(steps_total, S // n0)
    if h < min_steps:
        need = n0 * min_steps
        raise ValueError(
            f"budget={budget:g} of steps_total={steps_total} is {S} steps; searching {n0} "
            f"configurations at >= {min_steps} step(s) each needs {need} (budget >= "
            f"{need / steps_total:.3g}), or fewer candidates / learning rates")
    spent = 0
    table: list[RaceEntry] = []
    tried: dict[str, dict[float, float]] = {n: {} for n in grids}

    def run_config(name: str, lr: float, ext: bool) -> None:
        nonlocal spent
        entry = RaceEntry(name, lr, extension=ext)
        table.append(entry)
        model = copy.deepcopy(base)
        try:
            opt = cands[name](model, lr)
        except Exception as exc:
            raise ValueError(f"candidate {name!r} failed to build its optimizer at lr={lr:g}: "
                             f"{exc}") from exc
        t = _Trial(entry, model, opt, _Stream(data, seed), len(table))
        spent += _train(t, loss_fn, h)
        entry.scores.append(math.inf if t.dead else _evaluate(model, loss_fn, evals))
        tried[name][lr] = entry.score

    for name, grid in grids.items():
        for lr in grid:
            run_config(name, lr, False)
    done: set[str] = set()
    n_ext = dict.fromkeys(grids, 0)
    while len(done) < len(grids) and S - spent >= h:
        for name, grid in grids.items():
            if name in done or S - spent < h:
                continue
            nxt = _next_lr(tried[name], grid[len(grid) // 2])
            if nxt is None or n_ext[name] >= extend:
                done.add(name)
                continue
            run_config(name, nxt, True)
            n_ext[name] += 1
    if progress:
        print(f"advise: search, {len(table)} configurations x {h} steps ({spent} steps)")
    initial = _evaluate(base, loss_fn, evals)
    order = {id(e): i for i, e in enumerate(table)}
    ok = [e for e in table if math.isfinite(e.score) and e.score < initial]
    note = ""
    if ok:
        win = min(ok, key=lambda e: (e.score, order[id(e)]))
        winner, lr, score = win.candidate, win.lr, win.score
        g = sorted(tried[winner])
        if win.lr in (g[0], g[-1]) and len(g) > 1 and win.score > 0:
            note = (f"{winner}'s lr is at the edge of what was tried ({g[0]:.3g}..{g[-1]:.3g}); "
                    "a larger budget or a wider lrs bracket may do better")
        if h < steps_total:
            note = (note + "; " if note else "") + (
                f"each configuration ran {h} of the {steps_total} steps (the budget pays for "
                f"{n0} full-length runs at budget >= {n0:g}): its lr is the best for {h} steps")
    else:
        winner, lr, score = None, math.nan, math.inf
        note = ("every configuration diverged or ended above the initial loss "
                f"{initial:.4g}; try smaller learning rates")
    return Advice(method="search", winner=winner, lr=lr, score=score, steps_total=steps_total,
                  budget=budget, steps_used=spent, table=table, rungs=[(len(table), h)],
                  geometry=geometry, theory=theory, candidates=cands,
                  seconds=time.perf_counter() - t0, geometry_seconds=g_seconds, note=note)


def _first(data: Any, seed: int) -> Any:
    s = _Stream(data, seed)
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(s.rng)
        return s.next()


def _geometry(model: nn.Module, loss_fn: LossFn, batch: Any, examples: int, seed: int,
              options: Mapping[str, Any] | None) -> tuple[Any, Any, float]:
    """The [BPL20] geometry report on up to ``examples`` examples of one batch, at the initialisation."""
    from steepest.geometry.report import geometry_report

    t = time.perf_counter()
    x, y = batch
    sample = (x[:examples], y[:examples])
    d = _nparams(model)
    # cheap settings by default: dense (exact) only for small d, few probes and columns
    opts: dict[str, Any] = {"mode": "dense" if d <= 300 else "matrix-free", "num_probes": 4,
                            "slq_steps": 20, "num_columns": 32, "lb_random": 2,
                            "lb_iterations": 4, "exact_time": 5.0}
    opts.update(options or {})
    m = copy.deepcopy(model)
    rep = geometry_report(m, loss_fn, sample, seed=seed, check_deterministic=False, **opts)
    return rep, rep.recommend(), time.perf_counter() - t


def theory_candidates() -> dict[str, Candidate]:
    """The two optimizers the theory-only advisor chooses between ([BPL20, Eq. 28-29])."""
    import steepest

    return {
        "sgd": Candidate(lambda m, lr: torch.optim.SGD(_params(m), lr=lr), 0.3, "l2",
                         "torch.optim.SGD (gradient descent, l_2)"),
        "scaled_sign": Candidate(lambda m, lr: steepest.ScaledSignSGD(_params(m), lr=lr),
                                 lambda m: 1.0 / _nparams(m), "sign",
                                 "steepest.ScaledSignSGD (l_inf steepest descent)"),
    }


def _theory_advice(theory: Any, geometry: Any, steps_total: int, budget: float,
                   g_seconds: float, seconds: float) -> Advice:
    cands = theory_candidates()
    if theory is None or theory.choice == "none":
        return Advice("theory", None, math.nan, math.nan, steps_total, budget, 0,
                      geometry=geometry, theory=theory, candidates=cands, seconds=seconds,
                      geometry_seconds=g_seconds,
                      note="zero gradient or curvature: the theory says nothing here")
    name, lr = ("scaled_sign", theory.lr_scaled_sign) if theory.choice == "sign" \
        else ("sgd", theory.lr_gd)
    return Advice("theory", name, float(lr), math.nan, steps_total, budget, 0, geometry=geometry,
                  theory=theory, candidates=cands, seconds=seconds, geometry_seconds=g_seconds)


# ------------------------------------------------------------------------------------------
# the `steepest advise` command
# ------------------------------------------------------------------------------------------
def add_arguments(parser: Any) -> None:
    """Options of ``steepest advise`` (registered by :mod:`steepest.cli`)."""
    parser.add_argument("problem", nargs="?",
                        help="built-in problem name (--list), 'quadratic' (a rotated quadratic of "
                             "[BPL20] App. D.2: --dim, --lam-max, --theta), module:function or "
                             "path/to/file.py:function returning (model, loss_fn, data)")
    parser.add_argument("--list", action="store_true", help="list the built-in problems and exit")
    parser.add_argument("--steps", type=int_at_least(1), default=None,
                        help="length of the training run to advise for (default: a built-in problem's own; "
                             "required for module:function)")
    parser.add_argument("--budget", type=finite_float(lo=0.0, lo_open=True), default=None,
                        help="steps the advice may spend, in runs of --steps (default: 20 for "
                             "search, the validated setting; 0.1 for race)")
    parser.add_argument("--method", choices=["search", "race", "theory"], default="search",
                        help="search (default, validated: every configuration run for the whole "
                             "--steps, lr searched until bracketed; default candidates sgd,muon; "
                             "needs --budget >= 10 for full length), race (successive halving "
                             "over short rungs: cheap, failed its validation) or theory ([BPL20] "
                             "Eq. 31 alone, no training)")
    parser.add_argument("--candidates", default=None,
                        help="comma-separated candidates, of adamw, muon, scion, steepest, lion, signum, "
                             "sgd (default: the method's: search sgd,muon; race all)")
    parser.add_argument("--lrs", default=None,
                        help="comma-separated factors of each candidate's default lr "
                             "(default 1/3,1,3; search: 1/9,1/3,1,3,9)")
    parser.add_argument("--seed", type=int_at_least(0), default=0,
                        help="initialisation and data-order seed")
    parser.add_argument("--examples", type=int_at_least(1), default=None,
                        help="use the first N training examples (default: all)")
    parser.add_argument("--batch", type=int_at_least(0), default=None,
                        help="batch size (default: the problem's; 0 = full batch)")
    parser.add_argument("--eta", type=int_at_least(2), default=4,
                        help="successive halving keeps 1/eta per rung")
    parser.add_argument("--dim", type=int_at_least(2), default=20,
                        help="quadratic: dimension (default 20)")
    parser.add_argument("--lam-max", type=finite_float(lo=0.0, lo_open=True), default=100.0,
                        help="quadratic: outlier eigenvalue (default 100)")
    parser.add_argument("--theta", type=finite_float(0.0, 1.0), default=0.3,
                        help="quadratic: rotation in [0, 1] (default 0.3)")
    parser.add_argument("--no-explain", action="store_true",
                        help="skip the geometry explanation (a few hundred Hessian-vector products)")
    parser.add_argument("--threads", type=int_at_least(0), default=1,
                        help="torch intra-op threads while advising (default 1: small models train "
                             "several times faster on one thread, and the same on every machine; "
                             "0: torch's default)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the advice as JSON")


def _problem(args: Any) -> tuple[str, Any, Any, Any, Any, int]:
    """(name, model, loss_fn, data, eval_data, default steps) for the command's problem."""
    from steepest.problems import get_problem, list_problems

    def batched(x: torch.Tensor, y: torch.Tensor, bs: int) -> Any:
        if bs == 0 or bs >= len(x):
            return (x, y)
        g = torch.Generator().manual_seed(args.seed)
        ds = torch.utils.data.TensorDataset(x, y)
        return torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, generator=g)

    if args.problem == "quadratic":
        import numpy as np

        from steepest.geometry.dense import rotated_quadratic

        if args.dim < 2 or not (0 <= args.theta <= 1) or not (args.lam_max > 0 and
                                                               math.isfinite(args.lam_max)):
            raise ValueError(f"quadratic needs --dim >= 2, --theta in [0, 1], --lam-max > 0; got "
                             f"{args.dim}, {args.theta}, {args.lam_max}")
        H = torch.as_tensor(rotated_quadratic(args.dim, args.lam_max, args.theta, seed=args.seed))
        x0 = torch.as_tensor(np.random.default_rng(1000 + args.seed).standard_normal(args.dim))

        class Quadratic(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.x = nn.Parameter(x0.clone())

            def forward(self, _: torch.Tensor) -> torch.Tensor:
                return self.x

        batch = (torch.zeros(1, dtype=torch.float64), H)
        return (f"quadratic d={args.dim} lam_max={args.lam_max:g} theta={args.theta:g}",
                Quadratic(), lambda x, h: 0.5 * x @ h @ x, batch, None, 100)
    if args.problem in list_problems():
        inst = get_problem(args.problem).build(seed=args.seed)
        x, y = inst.train.tensors
        if args.examples is not None:
            x, y = x[: args.examples], y[: args.examples]
        bs = inst.batch_size if args.batch is None else args.batch
        xt, yt = inst.test.tensors
        return (args.problem, inst.model, inst.loss_fn, batched(x, y, bs), (xt[:1024], yt[:1024]),
                inst.steps)
    if ":" not in args.problem:
        raise ValueError(f"unknown problem {args.problem!r}; built-in: quadratic, "
                         f"{', '.join(list_problems())}, or an entry point module:function")
    import inspect

    from steepest.geometry.command import load_entry_point

    fn = load_entry_point(args.problem)
    kwargs = {"seed": args.seed} if "seed" in inspect.signature(fn).parameters else {}
    out = fn(**kwargs)
    if not (isinstance(out, tuple | list) and len(out) == 3):
        raise ValueError(f"{args.problem} must return (model, loss_fn, data), got "
                         f"{type(out).__name__}")
    model, loss_fn, data = out
    if args.steps is None:  # a built-in problem knows its run's length; a user's model does not
        raise ValueError(f"--steps is needed for {args.problem}: the number of optimizer steps of the "
                         "training run you are choosing for (e.g. --steps 2000)")
    return args.problem, model, loss_fn, data, None, args.steps


def run(args: Any) -> int:
    """``steepest advise``: print the advice; bad input exits 2 with the reason."""
    import json
    import sys
    from pathlib import Path

    from steepest.problems import describe

    if args.list or not args.problem:
        print(f"{'quadratic':22s} rotated quadratic of [BPL20] App. D.2 (--dim, --lam-max, --theta)")
        for n, desc in describe().items():
            print(f"{n:22s} {desc}")
        if not args.list:
            print("\nusage: steepest advise PROBLEM (a name above or module:function)",
                  file=sys.stderr)
            return 2
        return 0

    def fail(msg: str) -> int:
        print(f"steepest advise: {msg}", file=sys.stderr)
        return 2

    for opt_name, lo in (("steps", 1), ("examples", 1), ("batch", 0), ("eta", 2)):
        val = getattr(args, opt_name)
        if val is not None and val < lo:
            return fail(f"--{opt_name} must be an integer >= {lo}, got {val}")
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        return fail(f"--budget must be a positive finite number (a share of --steps), got "
                    f"{args.budget}")
    lrs = None
    if args.lrs:
        try:
            lrs = [float(v) for v in args.lrs.split(",") if v.strip()]
        except ValueError:
            return fail(f"--lrs must be comma-separated positive numbers, got {args.lrs!r}")
    try:
        name, model, loss_fn, data, eval_data, default_steps = _problem(args)
        steps = args.steps if args.steps is not None else default_steps
        first = data if _is_batch(data) else _first(data, args.seed)
        cands: dict[str, Candidate] | None = None
        if args.candidates:
            x0 = first[0][:1] if isinstance(first[0], torch.Tensor) else None
            every = default_candidates(example_input=x0)
            wanted = [c.strip() for c in args.candidates.split(",") if c.strip()]
            unknown = [c for c in wanted if c not in every]
            if unknown or not wanted:
                return fail(f"--candidates: unknown {unknown or wanted!r}; choose from "
                            f"{', '.join(every)}")
            cands = {c: every[c] for c in wanted}
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads or threads)
        try:
            adv = advise(model, loss_fn, data, steps_total=steps, budget=args.budget,
                         candidates=cands, lrs=lrs, seed=args.seed, method=args.method,
                         eval_data=eval_data, eta=args.eta, explain=not args.no_explain)
        finally:
            torch.set_num_threads(threads)
    except (ValueError, ImportError) as exc:
        return fail(str(exc))
    print(f"problem: {name}, {_nparams(model):,} parameters, advising for a {steps:,}-step run")
    print(adv)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(adv.to_dict(), indent=2, default=str))
    return 0
