"""The advisor: the recommendation the geometry report ends in, --tighten, the automatic mode."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from steepest.geometry import dense as D
from steepest.geometry import models as M
from steepest.geometry.report import GeometryReport, _choose_mode, geometry_report


def _report(density: float, L2: float, lower: float, upper: float, certified: bool = True,
            d: int = 10, gnorm: float = 2.0) -> GeometryReport:
    return GeometryReport(
        name="t", dim=d, num_examples=1, loss=0.0, grad_norm=gnorm, density=density, L2=L2,
        lambda_max=L2, lambda_min=0.0, trace=L2, abs_trace=L2, rho_diag=0.5, rho_diag_stderr=0.0,
        linf_lower=lower, linf_lower_source="x", linf_upper=upper, linf_upper_source="y",
        linf_upper_certified=certified, mode="dense",
    )


def test_recommendation_follows_the_bracket_of_R():
    # R = phi d L2 / L_inf (Eq. 31): phi d L2 = 0.5 * 10 * 4 = 20
    sign = _report(0.5, 4.0, lower=8.0, upper=10.0).recommend()  # R in [2, 2.5]
    assert (sign.choice, sign.confidence, sign.norm) == ("sign", "high", "l_inf")
    assert sign.optimizer == "steepest.ScaledSignSGD"
    assert sign.lr == pytest.approx(1 / 10.0)  # 1/L_inf at the certified upper end (Eq. 29)
    assert sign.lr_gd == pytest.approx(1 / 4.0)  # 1/L_2 (Eq. 28)
    # ||g||_1 = sqrt(phi d) ||g||_2 (Eq. 30); SignSGD's first step equals ScaledSignSGD's
    assert sign.signsgd_lr == pytest.approx(math.sqrt(0.5 * 10) * 2.0 / 10.0)
    assert _report(0.5, 4.0, 8.0, 10.0, certified=False).recommend().confidence == "medium"
    assert _report(0.5, 4.0, 15.0, 18.0).recommend().confidence == "medium"  # R >= 1.11 only

    gd = _report(0.5, 4.0, lower=40.0, upper=40.0).recommend()  # R = 0.5
    assert (gd.choice, gd.confidence, gd.lr) == ("gd", "high", pytest.approx(0.25))
    assert _report(0.5, 4.0, 25.0, 40.0).recommend().confidence == "medium"  # R <= 0.8

    # the bracket contains 1: the side of its geometric midpoint, low confidence
    low = _report(0.5, 4.0, lower=10.0, upper=40.0).recommend()  # R in [0.5, 2], midpoint 1
    assert low.confidence == "low" and low.choice == "gd"
    low = _report(0.5, 4.0, lower=5.0, upper=40.0).recommend()  # R in [0.5, 4], midpoint 1.41
    assert (low.choice, low.confidence) == ("sign", "low")
    none = _report(math.nan, 4.0, 8.0, 10.0).recommend()
    assert none.choice == "none" and "none" in "\n".join(none.lines())


class _Quad(nn.Module):
    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(x0.clone())

    def forward(self, _: torch.Tensor) -> torch.Tensor:
        return self.x


def _quad_report(lam: float, theta: float, **kw):
    H = torch.as_tensor(D.rotated_quadratic(12, lam, theta, seed=0))
    x0 = torch.as_tensor(np.random.default_rng(0).standard_normal(12))
    loss = lambda x, Hm: 0.5 * x @ Hm @ x  # noqa: E731
    return geometry_report(_Quad(x0), loss, (torch.zeros(1, dtype=torch.float64), H), **kw), H, x0


def test_recommendation_on_rotated_quadratics_matches_the_exact_R():
    # seed 000 Fig. 3's corners: axis-aligned with an outlier eigenvalue favours sign descent,
    # rotated and well-conditioned favours gradient descent. R from the definition (Eq. 31) with
    # the exact L_inf (branch-and-bound) decides the expected choice.
    for lam, theta in ((1000.0, 0.0), (2.0, 1.0)):
        rep, H, x0 = _quad_report(lam, theta, mode="dense")
        g = H @ x0
        R = D.predicted_advantage(g, D.l2_smoothness(H), D.norm_inf1(H))
        rec = rep.recommend()
        assert rep.mode == "dense+exact"
        assert rec.choice == ("sign" if R > 1 else "gd")
        assert rec.lr_gd == pytest.approx(1 / D.l2_smoothness(H), rel=1e-9)
    assert _quad_report(1000.0, 0.0, mode="dense")[0].recommend().choice == "sign"
    assert _quad_report(2.0, 1.0, mode="dense")[0].recommend().choice == "gd"


def test_tighten_never_loosens_the_certified_lower_bound():
    # more sign-vector starts (the first ones are the same draws) and more iterations, each of
    # which never decreases ||H s||_1: the lower end can only rise
    kw = dict(mode="matrix-free", num_columns=4, num_probes=2, slq_steps=6, lb_random=1,
              lb_iterations=1)
    one = _quad_report(50.0, 0.5, **kw)[0]
    four = _quad_report(50.0, 0.5, tighten=4, **kw)[0]
    assert four.linf_lower >= one.linf_lower
    assert four.linf_search_hvps >= one.linf_search_hvps > 0 and four.tighten == 4
    exact = D.norm_inf1(_quad_report(50.0, 0.5, mode="dense")[1])
    assert four.linf_lower <= exact * (1 + 1e-9)  # still a certified lower bound
    with pytest.raises(ValueError, match="tighten"):
        _quad_report(50.0, 0.5, tighten=0)


def test_auto_mode_is_chosen_by_expected_cost(monkeypatch):
    torch.manual_seed(0)
    args = dict(probes=8, slq_steps=40, columns=128, lb_starts=8, lb_iterations=10)
    small = M.HessianOperator(nn.Linear(10, 10).double(), nn.functional.cross_entropy,
                              (torch.randn(20, 10, dtype=torch.float64), torch.randint(0, 10, (20,))))
    use, why = _choose_mode(small, dense_max=2000, **args)
    assert use and "dense chosen" in why  # d = 110, cheap products: the exact dense report
    assert not _choose_mode(small, dense_max=100, **args)[0]  # above --dense-max: never dense
    model = nn.Linear(30, 50).double()  # d = 1550
    data = (torch.randn(20, 30, dtype=torch.float64), torch.randint(0, 50, (20,)))
    op = M.HessianOperator(model, nn.functional.cross_entropy, data)
    # expensive products (as on a CNN over thousands of examples): d = 1550 columns cost more
    # than the ~700 products of the matrix-free estimates, so auto goes matrix-free
    real = op.matmat

    def slow(V):
        time.sleep(0.03 * (V.shape[1] if V.dim() == 2 else 1))
        return real(V)

    monkeypatch.setattr(op, "matmat", slow)
    use, why = _choose_mode(op, dense_max=2000, **args)
    assert not use and "matrix-free chosen by expected cost" in why
