"""A norm defined outside the package gets every steepest-descent mode with no optimizer code."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch

from steepest import SteepestDescent
from steepest.norms import Factored, Linf, Norm, combine_lq, register_norm, tensor_norms


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


# ---------------------------------------------------------------- a user's l_inf, public methods only
class UserLinf(Norm):
    """l_inf written as a user would, with the public methods only (docs/design.md): the map
    sign(x), the dual ||z||_1 per tensor (combined over the scope), the primal max|x|. No private
    hook, no registration, nothing the optimizers know by name."""

    name = "user_linf"

    def map(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)

    def duals(self, xs, per_tensor=False):
        return combine_lq(torch.stack([x.abs().sum() for x in xs]), 1.0, per_tensor)

    def primals(self, xs, per_tensor=False):
        m = torch.stack([x.abs().amax() if x.numel() else x.new_zeros(()) for x in xs])
        return m if per_tensor else m.max().expand(len(xs))


class UserLinfTensorNorms(UserLinf):
    """The same norm with its reductions through the public ``tensor_norms`` (the built-in
    norms' kernels: one multi-tensor kernel for many small tensors) instead of a Python loop."""

    name = "user_linf_tensor_norms"

    def duals(self, xs, per_tensor=False):
        return combine_lq(tensor_norms(xs, 1.0), 1.0, per_tensor)

    def primals(self, xs, per_tensor=False):
        m = tensor_norms(xs, math.inf)
        return m if per_tensor else m.max().expand(len(xs))


SHAPES = [(64, 64), (4096,), (32, 16), (100,)]


def _run(norm: Norm, mode: str, momentum: float, measure: bool = False):
    from steepest._memory import step_peak_bytes

    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in SHAPES]
    opt = SteepestDescent(params, lr=1e-3, norm=norm, mode=mode, momentum=momentum, scope="group")
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
        opt.step()
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
    peak = step_peak_bytes(opt, params)
    return peak, [p.detach().clone() for p in params]


@pytest.mark.parametrize("user", [UserLinf, UserLinfTensorNorms])
@pytest.mark.parametrize("mode", ["unscaled", "scaled", "normalized", "soft"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_user_linf_matches_builtin_in_value_and_peak_memory(user, mode, momentum, monkeypatch):
    """A norm written outside the package gets the streaming path: the same direction as the
    built-in ``Linf`` (tolerance 1e-12: the l1 reductions may run different kernels, a foreach
    sum against a loop one, on chunks of small tensors, a few ulp apart; the scaled step
    lr ||g||_1 ~ 7 makes that ~1e-15 absolute on parameters near 0) and the same peak intermediate
    memory (step_peak_bytes: the meter of tests/optim/test_memory.py), one tensor's temporary at
    a time, not a direction per parameter."""
    import steepest.backend.policy as policy

    monkeypatch.setattr(policy, "_STREAM_CHUNK", 1024)  # the large tensors above one chunk
    peak_user, got = _run(user(), mode, momentum)
    peak_builtin, ref = _run(Linf(), mode, momentum)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # equal up to a few 0-d scalars (the reductions stack their per-tensor sums differently)
    assert abs(peak_user - peak_builtin) <= 64
    # at most the largest parameter (float64) plus scalars: no direction list of all parameters
    largest = max(math.prod(s) for s in SHAPES) * 8
    assert peak_user <= largest + 64 * len(SHAPES) + 4096


def test_user_linf_directions_are_the_definitions():
    z = [torch.randn(5, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    n = UserLinf()
    l1 = sum(x.abs().sum() for x in z)
    for mode, coef in {"unscaled": 1.0, "scaled": l1, "normalized": 1.0, "soft": l1 / (l1 + 0.5)}.items():
        got = n.direction(z, mode, beta=0.5)
        for g, x in zip(got, z):
            torch.testing.assert_close(g, coef * torch.sign(x))
    torch.testing.assert_close(n.dual(z), l1)
    torch.testing.assert_close(n.norm(z), max(x.abs().max() for x in z))
    # the default plan: no reductions for the map itself, the l1 norm for the scaled mode
    assert n.plan(z, "unscaled", 1.0, False) == (None, None)
    pre, post = n.plan(z, "scaled", 1.0, False)
    assert pre is None and torch.allclose(post, l1.expand(2))


def test_a_norm_without_the_public_methods_says_what_is_missing():
    class Empty(Norm):
        name = "empty"

    with pytest.raises(NotImplementedError, match="map"):
        Empty().direction(torch.ones(3), "scaled")


@pytest.mark.parametrize("q", [1.0, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("layout", ["many_small", "few_large"])
def test_tensor_norms_are_the_definitions(q, layout):
    """``tensor_norms`` against ``torch.linalg.vector_norm`` per tensor, on both routes of the
    execution layer (many small tensors: one multi-tensor kernel; large ones: the per-tensor
    loop), an empty tensor giving 0. Tolerance 1e-12 relative in float64: the multi-tensor
    kernels sum in another order than vector_norm."""
    g = torch.Generator().manual_seed(1)
    shapes = [(10,)] * 20 + [(0,), (3, 4)] if layout == "many_small" else [(300, 200), (0,), (70_000,)]
    xs = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    want = torch.stack([torch.linalg.vector_norm(x, q) if x.numel() else x.new_zeros(()) for x in xs])
    torch.testing.assert_close(tensor_norms(xs, q), want, rtol=1e-12, atol=0.0)
    assert tensor_norms([], q).shape == (0,)


def test_tensor_norms_rejects_q_below_one():
    with pytest.raises(ValueError, match="q must be a number >= 1"):
        tensor_norms([torch.ones(3)], 0.5)
