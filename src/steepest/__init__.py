"""steepest: steepest descent under any norm for PyTorch.

Sign-based, l_p, coordinate, block-normalized and accelerated non-Euclidean optimizers built on
one norm abstraction (:mod:`steepest.norms`), plus noise-aware training (:mod:`steepest.stats`),
geometry diagnostics (:mod:`steepest.geometry`), natural-gradient and empirical-Fisher
descent for GLMs (:mod:`steepest.fisher`), distributed sign compression
(:mod:`steepest.distributed`) and the papers' experiments (:mod:`steepest.experiments`).
"""

from steepest import fisher, norms
from steepest.advise import advise  # the function (the module: sys.modules['steepest.advise'])
from steepest.fisher import EmpiricalFisherDescent, NaturalGradientDescent
from steepest.norms import L1, L2, BlockNorm, ColNorm, L1ToLinf, Linf, Lp, Norm, RowNorm, Spectral
from steepest.optim import (
    MSGD,
    MSVAG,
    SVAG,
    AdamAveraged,
    AdamShuffled,
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

__version__ = "0.1.0"

__all__ = [
    "L1",
    "L2",
    "MSGD",
    "MSVAG",
    "SVAG",
    "AdamAveraged",
    "AdamShuffled",
    "AdamStar",
    "BlockNorm",
    "BlockNormalizedSGD",
    "ColNorm",
    "CoordinateDescent",
    "EFSignSGD",
    "EmpiricalFisherDescent",
    "L1ToLinf",
    "Linf",
    "Lion",
    "Lp",
    "LpDescent",
    "Modular",
    "Muon",
    "NaturalGradientDescent",
    "Norm",
    "RowNorm",
    "ScaledSignSGD",
    "SignSGD",
    "Spectral",
    "Stacey",
    "SteepestDescent",
    "StepOptimizer",
    "advise",
    "create_optimizer",
    "fisher",
    "layer_groups",
    "norms",
]
