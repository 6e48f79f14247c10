"""Conformance records for the noise-aware optimizers (issue 4): the variance-adapted methods of
[Bal21, Ch. 5] / App. B and the Adam ablation of [BPL20, Sec. 2] / App. D.1."""

import math

import torch

from steepest import MSGD, MSVAG, SVAG, AdamAveraged, AdamShuffled, AdamStar
from tests.optim.optim_infos import OptimInfo


def attach_variance(params: list[torch.Tensor]) -> None:
    """Stand-in per-example statistics for MSVAG(variance="minibatch"): the suite sets gradients
    directly, so derive a positive ``grad_var`` deterministically from the gradient (same numbers
    for a complex parameter and its real view, and in every dtype) and a batch size of 8."""
    for p in params:
        if p.grad is None:
            continue
        g = torch.view_as_real(p.grad) if p.grad.is_complex() else p.grad
        var = 0.5 * g * g + 0.01
        p.grad_var = torch.view_as_complex(var.contiguous()) if p.grad.is_complex() else var
        p.grad_batch_size = 8


_LR = [({"lr": -1.0}, r"lr must be a finite number >= 0"), ({"lr": math.nan}, r"lr")]
_WD = [({"weight_decay": -0.1}, r"weight_decay must be a finite number >= 0")]
_BETA = [({"beta": 1.0}, r"beta must be in \[0.0, 1.0\)"), ({"beta": -0.1}, r"beta must be in"),
         ({"beta": math.nan}, r"beta must be in")]
_COMMON = [
    ({"nonfinite": "warn"}, r"nonfinite must be one of \(None, 'raise', 'skip', 'ignore'\)"),
    ({"foreach": "yes"}, r"foreach must be one of"),
    ({"maximize": 1}, r"maximize must be a bool"),
]
_ADAM = [
    ({"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0.0, 1.0\)"),
    ({"betas": (-0.1, 0.9)}, r"betas\[0\] must be in \[0.0, 1.0\)"),
    ({"betas": 0.9}, r"betas must be a pair"),
    ({"eps": -1e-8}, r"eps must be a finite number >= 0"),
    ({"eps": math.inf}, r"eps must be a finite number >= 0"),
]

INFOS = [
    OptimInfo("MSGD", MSGD, {}, lr=0.05, invalid=_LR + _WD + _BETA + _COMMON),
    OptimInfo("MSGD-beta0", MSGD, {"beta": 0.0}, lr=0.05),
    OptimInfo("MSGD-wd", MSGD, {"beta": 0.5, "weight_decay": 0.1}, lr=0.05, zero_grad_noop=False),
    OptimInfo("SVAG", SVAG, {}, lr=0.1, invalid=_LR + _WD + _BETA + _COMMON),
    OptimInfo("SVAG-beta0.5-wd", SVAG, {"beta": 0.5, "weight_decay": 0.1}, lr=0.1, zero_grad_noop=False),
    OptimInfo(
        "MSVAG", MSVAG, {}, lr=0.1,
        invalid=_LR + _WD + _BETA + _COMMON
        + [({"variance": "ema"}, r"variance must be one of \('moving_average', 'minibatch'\)")],
    ),
    OptimInfo("MSVAG-beta0", MSVAG, {"beta": 0.0}, lr=0.05),
    OptimInfo("MSVAG-wd", MSVAG, {"beta": 0.8, "weight_decay": 0.1}, lr=0.1, zero_grad_noop=False),
    OptimInfo(
        "MSVAG-minibatch", MSVAG, {"variance": "minibatch"}, lr=0.1, prepare=attach_variance,
        invalid=_BETA,
    ),
    OptimInfo("MSVAG-minibatch-beta0", MSVAG, {"variance": "minibatch", "beta": 0.0}, lr=0.1,
              prepare=attach_variance),
    OptimInfo("AdamStar", AdamStar, {}, lr=0.01, invalid=_LR + _WD + _BETA + _COMMON),
    OptimInfo("AdamStar-beta0.5-wd", AdamStar, {"beta": 0.5, "weight_decay": 0.1}, lr=0.01,
              zero_grad_noop=False),
    OptimInfo(
        "AdamShuffled", AdamShuffled, {}, lr=0.01, stochastic=True,
        invalid=_LR + _WD + _ADAM + _COMMON
        + [({"generator": 3}, r"generator must be a torch.Generator or None")],
    ),
    OptimInfo("AdamShuffled-eps0-wd", AdamShuffled, {"eps": 0.0, "weight_decay": 0.1}, lr=0.01,
              stochastic=True, zero_grad_noop=False),
    OptimInfo("AdamAveraged", AdamAveraged, {}, lr=0.01, invalid=_LR + _WD + _ADAM + _COMMON),
    OptimInfo("AdamAveraged-eps0-betas", AdamAveraged, {"eps": 0.0, "betas": (0.5, 0.9)}, lr=0.01),
]
