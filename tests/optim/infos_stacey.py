"""Conformance records for STACEY ([STACEY, Alg. 2-4]; issue 3).

``zero_grad_noop``: from a fresh state a zero gradient keeps c = m = 0, so y = x and the mirror
step leaves z = x_0 = x; the coupling x = tau z + (1 - tau) y is then x again (bit-exact: it is
computed as a lerp, and the scaled mirror step maps z to itself when c = 0). So a zero gradient
is a no-op for every variant and every tau, unless decoupled weight decay shrinks x.

The records use the default ``alpha=None`` (alpha tied to lr), under which a group with
``lr = 0`` is frozen, as the param-group test requires. With an explicit alpha the mirror step
and the coupling move x even at lr = 0 (faithful to Alg. 2-4, where only eta_t is scheduled);
tests/optim/test_stacey.py covers that case.
"""

import math

from steepest import Stacey
from tests.optim.optim_infos import OptimInfo

_INVALID = [
    ({"lr": -1.0}, r"lr must be a finite number >= 0"),
    ({"alpha": -0.1}, r"alpha must be in \[0.0, inf\)"),
    ({"alpha": math.nan}, r"alpha must be in"),
    ({"tau": 1.5}, r"tau must be in \[0.0, 1.0\]"),
    ({"tau": -0.1}, r"tau must be in \[0.0, 1.0\]"),
    ({"p": 1.5}, r"p must be in \[2.0, inf\]"),
    ({"p": math.nan}, r"p must be in"),
    ({"p": math.inf, "variant": "pp"}, r"p must be a finite real number >= 2 for variant 'pp'"),
    ({"p": math.inf, "variant": "2p"}, r"p must be a finite real number >= 2 for variant '2p'"),
    ({"eps": -1e-8}, r"eps must be in \[0.0, inf\)"),
    ({"eps": math.inf}, r"eps must be in \[0.0, inf\)"),
    ({"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0.0, 1.0\)"),
    ({"betas": (-0.1, 0.9)}, r"betas\[0\] must be in \[0.0, 1.0\)"),
    ({"betas": 0.9}, r"betas must be a pair"),
    ({"weight_decay": -0.1}, r"weight_decay must be a finite number >= 0"),
    ({"variant": "p3"}, r"variant must be one of \('p2', 'pp', '2p'\)"),
    ({"eps_mode": "exact"}, r"eps_mode must be one of \('code', 'paper'\)"),
    ({"nonfinite": "warn"}, r"nonfinite must be one of \(None, 'raise', 'skip', 'ignore'\)"),
]

INFOS = [
    OptimInfo("Stacey-p2-p3", Stacey, {"p": 3.0, "tau": 0.1}, lr=0.02, invalid=_INVALID),
    OptimInfo(
        "Stacey-p2-p8-paper-eps-wd", Stacey,
        {"p": 8.0, "tau": 0.05, "eps": 1e-3, "eps_mode": "paper", "weight_decay": 0.05},
        lr=0.02, zero_grad_noop=False,
    ),
    OptimInfo("Stacey-p2-pinf", Stacey, {"p": math.inf, "tau": 0.1}, lr=0.01),
    OptimInfo("Stacey-p2-p2-tau0", Stacey, {"p": 2.0, "tau": 0.0}, lr=0.05),
    OptimInfo("Stacey-pp-p3", Stacey, {"p": 3.0, "tau": 0.1, "variant": "pp"}, lr=0.02),
    OptimInfo("Stacey-pp-p8", Stacey, {"p": 8.0, "tau": 0.1, "variant": "pp"}, lr=0.02),
    OptimInfo(
        "Stacey-pp-p4-wd-tau1", Stacey,
        {"p": 4.0, "tau": 1.0, "variant": "pp", "weight_decay": 0.01}, lr=0.05,
        zero_grad_noop=False,
    ),
    OptimInfo("Stacey-2p-p3", Stacey, {"p": 3.0, "tau": 0.1, "variant": "2p"}, lr=0.05),
    OptimInfo(
        "Stacey-2p-p6-nomomentum", Stacey,
        {"p": 6.0, "tau": 0.2, "variant": "2p", "betas": (0.0, 0.0)}, lr=0.05,
    ),
    OptimInfo(
        "Stacey-p2-p3-explicit-alpha", Stacey, {"p": 3.0, "tau": 0.1, "alpha": 0.05}, lr=0.02,
        lr_zero_freezes=False,
    ),
    OptimInfo(
        "Stacey-pp-p4-explicit-alpha", Stacey, {"p": 4.0, "tau": 0.1, "alpha": 0.02, "variant": "pp"},
        lr=0.02, lr_zero_freezes=False,
    ),
]
