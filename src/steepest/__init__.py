"""steepest: steepest descent under any norm for PyTorch.

Sign-based, l_p, coordinate, block-normalized and accelerated non-Euclidean optimizers built on
one norm abstraction (:mod:`steepest.norms`), plus noise-aware training (:mod:`steepest.stats`),
geometry diagnostics (:mod:`steepest.geometry`), natural-gradient and empirical-Fisher
descent for GLMs (:mod:`steepest.fisher`), distributed sign compression
(:mod:`steepest.distributed`) and the papers' experiments (:mod:`steepest.experiments`).

The top level exports what most code needs, in three groups: the core optimizers, the norms,
and the recipes (``create_optimizer``, ``advise``, ``layer_groups``). Special-purpose classes
live in their submodules: the Adam ablations of [BPL20, Fig. 1] (``AdamShuffled``,
``AdamAveraged``) in :mod:`steepest.optim`, the GLM-only optimizers
(``NaturalGradientDescent``, ``EmpiricalFisherDescent``) in :mod:`steepest.fisher`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from steepest import fisher, norms
from steepest.advise import advise  # the function (the module: sys.modules['steepest.advise'])
from steepest.norms import L1, L2, BlockNorm, ColNorm, L1ToLinf, Linf, Lp, Norm, RowNorm, Spectral
from steepest.optim import (
    MSGD,
    MSVAG,
    SVAG,
    AdamStar,
    BlockNormalizedSGD,
    CoordinateDescent,
    EFSignSGD,
    Lion,
    LpDescent,
    Modular,
    Muon,
    ScaledSignSGD,
    SignSGD,
    Stacey,
    SteepestDescent,
    StepOptimizer,
    layer_groups,
)
from steepest.recipes import create_optimizer

if TYPE_CHECKING:
    # Type checkers see the compatibility names below with their real types ("X as X" marks
    # them as re-exported); at run time the module __getattr__ provides them.
    from steepest.fisher import EmpiricalFisherDescent as EmpiricalFisherDescent
    from steepest.fisher import NaturalGradientDescent as NaturalGradientDescent
    from steepest.optim import AdamAveraged as AdamAveraged
    from steepest.optim import AdamShuffled as AdamShuffled

__version__ = "0.1.0"

# Grouped by topic, not sorted (hence the noqa): the groups are what a reader looks for.
__all__ = [  # noqa: RUF022
    # Core optimizers: the steepest-descent family (one update, any norm) ...
    "SteepestDescent",
    "SignSGD",
    "ScaledSignSGD",
    "EFSignSGD",
    "LpDescent",
    "CoordinateDescent",
    "BlockNormalizedSGD",
    # ... operator norms per layer ...
    "Muon",
    "Modular",
    # ... sign momentum and accelerated non-Euclidean descent ...
    "Lion",
    "Stacey",
    # ... noise-aware (variance-adapted) methods ...
    "MSGD",
    "SVAG",
    "MSVAG",
    "AdamStar",
    # ... and the base class for writing another.
    "StepOptimizer",
    # Norms (the module, and the built-in norms).
    "norms",
    "Norm",
    "L1",
    "L2",
    "Linf",
    "Lp",
    "L1ToLinf",
    "BlockNorm",
    "RowNorm",
    "ColNorm",
    "Spectral",
    # Recipes: build an optimizer for a model, or pick one by a budgeted search (advise).
    "create_optimizer",
    "advise",
    "layer_groups",
    # Submodules with their own exports (GLM-only optimizers: steepest.fisher).
    "fisher",
]

# Names that were top-level exports and now live in their submodules. They stay importable from
# here without a warning: they are not deprecated, only not advertised (so neither `from steepest
# import *` nor the API overview lists them), and a warning would fail code run with -W error.
_SUBMODULE_EXPORTS = {
    "AdamAveraged": "steepest.optim",
    "AdamShuffled": "steepest.optim",
    "EmpiricalFisherDescent": "steepest.fisher",
    "NaturalGradientDescent": "steepest.fisher",
}


if not TYPE_CHECKING:  # hidden from type checkers, so that `steepest.Typo` stays an error there

    def __getattr__(name: str) -> Any:
        module = _SUBMODULE_EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'steepest' has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)
