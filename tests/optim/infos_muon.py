"""Conformance records for Muon and the per-layer Modular optimizer (issue 13).

The suite's parameters include vectors (a bias, a no-grad vector): Muon refuses them unless a
norm is assigned, so every Muon record sets ``nonmatrix_norm`` (tests/optim/test_muon.py checks
the refusal). Records with weight decay or Scion's constrained step move x under a zero gradient
(``zero_grad_noop=False``); at ``lr = 0`` both shrink factors are 1, so a group with ``lr = 0``
stays frozen. Operator norms view the vectors as columns (RowNorm of a vector is sign descent).
"""

from steepest import ColNorm, Linf, Modular, Muon, RowNorm, Spectral, SteepestDescent
from steepest.norms import L1ToLinf
from tests.optim.optim_infos import OptimInfo

_INVALID = [
    ({"lr": -1.0}, r"lr must be a finite number >= 0"),
    ({"momentum": 1.0}, r"momentum must be in \[0.0, 1.0\)"),
    ({"weight_decay": -0.1}, r"weight_decay must be a finite number >= 0"),
    ({"adjust_lr_fn": "sqrt"}, r"adjust_lr_fn must be one of \(None, 'original', 'match_rms_adamw'"),
    ({"ns_steps": 0}, r"ns_steps must be an integer in \[1, 100\)"),
    ({"ns_coefficients": (1.0, 2.0)}, r"ns_coefficients must be three finite numbers"),
    ({"ns_dtype": "half"}, r"ns_dtype must be one of"),
    ({"nonfinite": "sometimes"}, r"nonfinite must be one of"),
]
_MODULAR_INVALID = [
    ({"lr": -1.0}, r"lr must be a finite number >= 0"),
    ({"mode": "fast"}, r"mode must be one of"),
    ({"radius": 0.0}, r"radius must be a finite number > 0"),
    ({"step": "frank-wolfe"}, r"step must be one of \('descent', 'constrained'\)"),
    ({"nesterov": 1}, r"nesterov must be a bool"),
    ({"scope": "layer"}, r"scope must be one of"),
    ({"beta": 0.0}, r"beta must be a finite number > 0"),
]

INFOS = [
    OptimInfo("Muon", Muon, {"nonmatrix_norm": Linf(), "weight_decay": 0.0}, lr=0.02, invalid=_INVALID),
    OptimInfo(
        "Muon-wd-match_rms_adamw", Muon, {"nonmatrix_norm": Linf(), "adjust_lr_fn": "match_rms_adamw"},
        lr=0.02, zero_grad_noop=False,
    ),
    OptimInfo("Muon-svd-no-nesterov", Muon, {"nonmatrix_norm": "l2", "polar": "svd", "nesterov": False,
                                             "weight_decay": 0.0}, lr=0.02),
    OptimInfo("Muon-no-momentum", Muon, {"nonmatrix_norm": Linf(), "momentum": 0.0, "weight_decay": 0.0}, lr=0.01),
    OptimInfo(
        "Modular-scion-constrained", Modular,
        {"norm": Spectral("newton_schulz", scale="shape"), "mode": "normalized", "nonmatrix_norm": ColNorm(scale="shape"),
         "step": "constrained", "radius": 5.0, "momentum": 0.9, "nesterov": False},
        lr=0.02, zero_grad_noop=False, invalid=_MODULAR_INVALID,
    ),
    OptimInfo(
        "Modular-colnorm-global-scaled", Modular,
        {"norm": ColNorm(), "mode": "scaled", "scope": "global", "nonmatrix_norm": Linf(), "momentum": 0.5},
        lr=0.005,
    ),
    OptimInfo(
        "Modular-rownorm-soft", Modular, {"norm": RowNorm(scale="shape"), "mode": "soft", "beta": 0.5}, lr=0.05,
    ),
    # The operator norms in the plain steepest-descent optimizer (vectors are columns there).
    OptimInfo("SteepestDescent-spectral-normalized", SteepestDescent,
              {"norm": Spectral(), "mode": "normalized", "scope": "per_tensor"}, lr=0.02),
    OptimInfo("SteepestDescent-spectral-ns-scaled-momentum", SteepestDescent,
              {"norm": Spectral("newton_schulz", scale="shape"), "mode": "scaled", "momentum": 0.5}, lr=0.002),
    OptimInfo(
        "Modular-sign-shape-wd", Modular,
        {"norm": L1ToLinf(scale="shape"), "mode": "normalized", "weight_decay": 0.1, "nesterov": False},
        lr=0.03, zero_grad_noop=False,
    ),
]
