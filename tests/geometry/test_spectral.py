"""The spectral view of the gradient (issue 13) against its definitions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from steepest.geometry.spectral import format_spectral_view, layer_spectrum, spectral_view


def test_known_singular_values():
    u, _ = torch.linalg.qr(torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    v, _ = torch.linalg.qr(torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    s = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    r = layer_spectrum("w", u @ torch.diag(s) @ v.T)
    assert r.spectral == pytest.approx(3.0) and r.nuclear == pytest.approx(6.0)
    assert r.frobenius == pytest.approx(math.sqrt(14))
    assert r.stable_rank == pytest.approx(14 / 9)
    assert r.nuclear_over_spectral == pytest.approx(2.0)
    assert r.phi_spectral == pytest.approx(36 / (4 * 14))  # ||s||_1^2 / (min(m, n) ||s||_2^2), 6 x 4


def test_extremes_and_suggestions():
    eye = layer_spectrum("eye", torch.eye(8))  # flat spectrum: phi_spec = 1, stable rank 8
    assert eye.phi_spectral == pytest.approx(1.0) and eye.stable_rank == pytest.approx(8.0)
    assert eye.phi_sign == pytest.approx(1 / 8)  # 8 nonzeros of 64 entries
    assert eye.suggest.startswith("spectral")
    ones = layer_spectrum("ones", torch.ones(5, 7))  # rank one, dense entries: sign
    assert ones.stable_rank == pytest.approx(1.0) and ones.phi_sign == pytest.approx(1.0)
    assert ones.suggest.startswith("sign")
    assert layer_spectrum("b", torch.randn(5)).suggest.startswith("elementwise")
    assert layer_spectrum("z", torch.zeros(3, 3)).suggest.startswith("none")
    conv = layer_spectrum("k", torch.randn(4, 3, 2, 2))
    assert conv.shape == (4, 3, 2, 2) and 1.0 <= conv.stable_rank <= 4.0


def test_model_view_uses_the_full_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(20, 5, dtype=torch.float64), torch.randint(0, 3, (20,))
    rows = spectral_view(model, nn.functional.cross_entropy, [(x[:10], y[:10]), (x[10:], y[10:])])
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert [r.name for r in rows] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    g = model[2].weight.grad
    assert rows[2].spectral == pytest.approx(float(torch.linalg.matrix_norm(g, 2)), rel=1e-9)
    assert rows[2].nuclear == pytest.approx(float(torch.linalg.matrix_norm(g, "nuc")), rel=1e-9)
    text = format_spectral_view(rows)
    assert "0.weight" in text and "stable rank" in text
