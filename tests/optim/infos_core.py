"""Conformance records for the steepest-descent family (the foundation issue)."""

import math

from steepest import (
    L1,
    L2,
    BlockNorm,
    BlockNormalizedSGD,
    CoordinateDescent,
    EFSignSGD,
    Linf,
    Lion,
    Lp,
    LpDescent,
    ScaledSignSGD,
    SignSGD,
    SteepestDescent,
)
from tests.optim.optim_infos import OptimInfo

_LR = [({"lr": -1.0}, r"lr must be a finite number >= 0"), ({"lr": math.nan}, r"lr")]
_WD = [({"weight_decay": -0.1}, r"weight_decay must be a finite number >= 0")]
_MOM = [({"momentum": 1.0}, r"momentum must be in \[0.0, 1.0\)"), ({"momentum": -0.1}, r"momentum")]
_COMMON = [
    ({"nonfinite": "warn"}, r"nonfinite must be one of \(None, 'raise', 'skip', 'ignore'\)"),
    ({"foreach": "yes"}, r"foreach must be one of"),
]

INFOS = [
    OptimInfo("SignSGD", SignSGD, {}, lr=0.01, invalid=_LR + _WD + _MOM + _COMMON),
    OptimInfo("Signum", SignSGD, {"momentum": 0.9, "weight_decay": 0.01}, lr=0.01, zero_grad_noop=False),
    OptimInfo(
        "ScaledSignSGD", ScaledSignSGD, {}, lr=0.002,
        invalid=_LR + [({"scope": "layer"}, r"scope must be one of \('global', 'group', 'all_groups', 'per_tensor'\)")],
    ),
    OptimInfo("ScaledSignSGD-per_tensor", ScaledSignSGD, {"scope": "per_tensor"}, lr=0.005),
    OptimInfo(
        "LpDescent-p3", LpDescent, {"p": 3.0}, lr=0.01,
        invalid=_LR + [({"p": 1.5}, r"p must be a real number >= 2"), ({"eps": -1.0}, r"eps must be"),
                       ({"eps_mode": "x"}, r"eps_mode must be 'paper' or 'code'"),
                       ({"scaled": "yes"}, r"scaled must be a bool")],
    ),
    OptimInfo("LpDescent-p4-eps-paper", LpDescent, {"p": 4.0, "eps": 1e-3}, lr=0.01),
    OptimInfo("LpDescent-p8-eps-code", LpDescent, {"p": 8.0, "eps": 1e-3, "eps_mode": "code"}, lr=0.01),
    OptimInfo("LpDescent-p3-scaled", LpDescent, {"p": 3.0, "scaled": True}, lr=0.01),
    OptimInfo("LpDescent-p3-scaled-per_tensor", LpDescent, {"p": 3.0, "scaled": True, "scope": "per_tensor"}, lr=0.01),
    OptimInfo("LpDescent-pinf", LpDescent, {"p": math.inf}, lr=0.01),
    OptimInfo("CoordinateDescent", CoordinateDescent, {}, lr=0.3, steps=80, decrease=0.9, invalid=_LR),
    OptimInfo("CoordinateDescent-per_tensor", CoordinateDescent, {"scope": "per_tensor"}, lr=0.3),
    OptimInfo(
        "BlockNormalizedSGD", BlockNormalizedSGD, {}, lr=0.02,
        invalid=_LR + [({"mode": "fast"}, r"mode must be one of"), ({"blocks": "col"}, r"blocks must be")],
    ),
    OptimInfo("BlockNormalizedSGD-rows-scaled", BlockNormalizedSGD, {"blocks": "row", "mode": "scaled"}, lr=0.01),
    OptimInfo("EFSignSGD", EFSignSGD, {}, lr=0.05, invalid=_LR + _WD),
    OptimInfo("EFSignSGD-per_tensor", EFSignSGD, {"scope": "per_tensor"}, lr=0.05),
    OptimInfo(
        "Lion", Lion, {"weight_decay": 0.01}, lr=0.01, zero_grad_noop=False,
        invalid=_LR + [({"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0.0, 1.0\)"),
                       ({"betas": 0.9}, r"betas must be a pair")],
    ),
    OptimInfo("Lion-nowd", Lion, {}, lr=0.01, zero_grad_noop=False),
    OptimInfo(
        "SteepestDescent-l2-scaled", SteepestDescent, {"norm": L2()}, lr=0.1,
        invalid=_LR + [({"norm": "l7"}, r"unknown norm"), ({"mode": "hard"}, r"mode must be one of"),
                       ({"mode": "soft", "beta": 0.0}, r"beta must be a finite number > 0")],
    ),
    OptimInfo("SteepestDescent-linf-normalized", SteepestDescent, {"norm": Linf(), "mode": "normalized"}, lr=0.01),
    OptimInfo("SteepestDescent-l1-normalized", SteepestDescent, {"norm": L1(), "mode": "normalized"}, lr=0.3, steps=80, decrease=0.9),
    OptimInfo("SteepestDescent-lp3-soft", SteepestDescent, {"norm": Lp(3), "mode": "soft", "beta": 0.5}, lr=0.05),
    OptimInfo("SteepestDescent-lp5-normalized-per_tensor", SteepestDescent, {"norm": Lp(5), "mode": "normalized", "scope": "per_tensor"}, lr=0.02),
    OptimInfo("SteepestDescent-block-soft-momentum", SteepestDescent, {"norm": BlockNorm(), "mode": "soft", "momentum": 0.5}, lr=0.05, zero_grad_noop=False),
    OptimInfo("SteepestDescent-linf-scaled-momentum", SteepestDescent, {"norm": "linf", "momentum": 0.9, "weight_decay": 0.1}, lr=0.002, zero_grad_noop=False),
    # heavy-ball momentum (torch.optim.SGD's form: dampening), on the list path and, with
    # Nesterov (a step option), on the per-parameter path
    OptimInfo(
        "SteepestDescent-l2-heavy-ball", SteepestDescent,
        {"norm": L2(), "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.01}, lr=0.01, zero_grad_noop=False,
        invalid=[({"dampening": 1.5}, r"dampening must be in \[0.0, 1.0\]"),
                 ({"dampening": 0.5, "nesterov": True}, r"nesterov=True with heavy-ball momentum takes dampening=0")],
    ),
    OptimInfo("SteepestDescent-linf-unscaled-heavy-ball-nesterov", SteepestDescent,
              {"norm": Linf(), "mode": "unscaled", "momentum": 0.9, "dampening": 0.0, "nesterov": True},
              lr=0.002, zero_grad_noop=False),
]
