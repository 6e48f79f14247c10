"""GradientMoments on a BatchNorm model: the first error gives advice that works (issue 14)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from steepest.stats.moments import GradientMoments


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()


def test_first_message_names_eval_and_fallback_and_following_it_works():
    model = _model()
    with pytest.raises(ValueError) as exc:
        GradientMoments(model)
    msg = str(exc.value)
    assert "BatchNorm" in msg and "eval()" in msg and "unsupported='fallback'" in msg
    # 'fallback' alone (the old advice) still fails, on BatchNorm in training mode
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    with pytest.raises(ValueError, match="batch statistics"), GradientMoments(model, unsupported="fallback"):
        nn.functional.cross_entropy(model(x), y).backward()
    # the advice as given: eval() and the fallback
    model.zero_grad()
    model.eval()
    with GradientMoments(model, unsupported="fallback"):
        nn.functional.cross_entropy(model(x), y).backward()
    # reference: per-example gradients by a loop; grad_var is their (unbiased) variance
    bn = model[1]
    per = []
    for i in range(len(x)):
        g = torch.autograd.grad(nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]),
                                bn.weight)[0]
        per.append(g)
    ref = torch.stack(per).var(0, unbiased=True)
    assert hasattr(bn.weight, "grad_var")
    # the same per-example gradients by two routes (vmap vs a loop): float64 rounding only
    torch.testing.assert_close(bn.weight.grad_var, ref, rtol=1e-8, atol=1e-12)


def test_without_running_statistics_only_freezing_or_other_norms_are_advised():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, track_running_stats=False))
    with pytest.raises(ValueError, match="track no running statistics"):
        GradientMoments(model)
