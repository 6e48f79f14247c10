"""Optimizers: every one a ``torch.optim.Optimizer`` built on :mod:`steepest.norms`."""

from steepest.optim.adam_ablation import AdamAveraged, AdamShuffled
from steepest.optim.base import StepOptimizer
from steepest.optim.ef import EFSignSGD
from steepest.optim.engine import SteepestDescent
from steepest.optim.layerwise import Modular, layer_groups
from steepest.optim.muon import Muon
from steepest.optim.noise import MSGD, MSVAG, SVAG, AdamStar
from steepest.optim.presets import (
    BlockNormalizedSGD,
    CoordinateDescent,
    Lion,
    LpDescent,
    ScaledSignSGD,
    SignSGD,
)
from steepest.optim.stacey import Stacey

__all__ = [
    "MSGD",
    "MSVAG",
    "SVAG",
    "AdamAveraged",
    "AdamShuffled",
    "AdamStar",
    "BlockNormalizedSGD",
    "CoordinateDescent",
    "EFSignSGD",
    "Lion",
    "LpDescent",
    "Modular",
    "Muon",
    "ScaledSignSGD",
    "SignSGD",
    "Stacey",
    "SteepestDescent",
    "StepOptimizer",
    "layer_groups",
]
