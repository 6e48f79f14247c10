"""Old module name of the steepest-descent engine and its presets (kept so that existing imports
work): the engine is :mod:`steepest.optim.engine`, the presets :mod:`steepest.optim.presets`.
New code imports them from :mod:`steepest.optim` or :mod:`steepest`."""

from steepest.optim.engine import SteepestDescent, apply_direction, momentum_direction_input
from steepest.optim.presets import (
    BlockNormalizedSGD,
    CoordinateDescent,
    Lion,
    LpDescent,
    ScaledSignSGD,
    SignSGD,
)

__all__ = [
    "BlockNormalizedSGD",
    "CoordinateDescent",
    "Lion",
    "LpDescent",
    "ScaledSignSGD",
    "SignSGD",
    "SteepestDescent",
    "apply_direction",
    "momentum_direction_input",
]
