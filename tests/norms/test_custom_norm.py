"""A norm defined outside the package gets every steepest-descent mode with no optimizer code."""

from __future__ import annotations

import io
from typing import Any

import torch

from steepest import SteepestDescent
from steepest.norms import Factored, Norm, combine_lq, register_norm


@register_norm
class ScaledL2(Norm):
    """||x|| = c ||x||_2: dual ||z||_2 / c, sharp z / c^2."""

    name = "scaled_l2"

    def __init__(self, c: float = 2.0) -> None:
        self.c = float(c)

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name, "c": self.c}

    def _primal(self, xs, ops, per_tensor):
        return self.c * combine_lq(ops.norms(xs, 2.0), 2.0, per_tensor)

    def _factor(self, xs, ops, per_tensor):
        dual = combine_lq(ops.norms(xs, 2.0), 2.0, per_tensor) / self.c
        return Factored([x.clone() for x in xs], torch.full_like(dual, 1 / self.c**2), dual)


def test_custom_norm_lemma4_and_modes():
    z = torch.randn(7, dtype=torch.float64)
    n = ScaledL2(3.0)
    s = n.sharp(z)
    torch.testing.assert_close(s, z / 9)
    torch.testing.assert_close((z @ s), n.dual(z) ** 2)
    torch.testing.assert_close(n.norm(s) ** 2, n.dual(z) ** 2)
    for mode, expected in {
        "scaled": z / 9,
        "normalized": z / 9 / (z.norm() / 3),
        "soft": z / 9 / (z.norm() / 3 + 0.5),
    }.items():
        torch.testing.assert_close(n.direction(z, mode, beta=0.5), expected)


def test_custom_norm_optimizer_checkpoint_round_trip():
    p = torch.randn(4, 3, requires_grad=True)
    opt = SteepestDescent([p], lr=0.1, norm=ScaledL2(2.0), mode="normalized")
    p.grad = torch.randn(4, 3)
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt2 = SteepestDescent([p], lr=0.1, norm="l2")
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.param_groups[0]["norm"] == ScaledL2(2.0)
