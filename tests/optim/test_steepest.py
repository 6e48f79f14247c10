"""The steepest-descent family against the update rules of the papers, written out by hand."""

from __future__ import annotations

import math

import lion_pytorch  # the reference implementation (a test dependency)
import pytest
import torch

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

D = torch.float64


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 3, dtype=D, generator=g)
    b = torch.randn(3, dtype=D, generator=g)
    return w, b


def _grads(t, seed=7):
    g = torch.Generator().manual_seed(seed + t)
    return torch.randn(4, 3, dtype=D, generator=g), torch.randn(3, dtype=D, generator=g)


def _steps(opt, params, n):
    for t in range(n):
        for p, g in zip(params, _grads(t)):
            p.grad = g.clone()
        opt.step()


def _clone(ts):
    return [t.clone().requires_grad_() for t in ts]


def test_signsgd_is_x_minus_lr_sign_g():  # [BPL20, Eq. 2]
    x0 = _pair()
    ps = _clone(x0)
    _steps(SignSGD(ps, lr=0.1), ps, 1)
    for p, x, g in zip(ps, x0, _grads(0)):
        torch.testing.assert_close(p.detach(), x - 0.1 * torch.sign(g))


def test_signum_momentum_and_weight_decay():  # [Bal21, Alg. 3] (M-SIGN-SGD)
    x = list(_pair())
    ps = _clone(x)
    _steps(SignSGD(ps, lr=0.1, momentum=0.9, weight_decay=0.5), ps, 3)
    m = [torch.zeros_like(t) for t in x]
    for t in range(3):
        for i, g in enumerate(_grads(t)):
            m[i] = 0.9 * m[i] + 0.1 * g
            x[i] = x[i] * (1 - 0.1 * 0.5) - 0.1 * torch.sign(m[i])
    for p, r in zip(ps, x):
        torch.testing.assert_close(p.detach(), r)


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_scaled_signsgd_uses_l1_norm_over_scope(scope):  # [BPL20, Eq. 11], [ScaledSign, Alg. 1]
    x0 = _pair()
    ps = _clone(x0)
    _steps(ScaledSignSGD(ps, lr=0.01, scope=scope), ps, 1)
    gs = _grads(0)
    total = sum(g.abs().sum() for g in gs)
    for p, x, g in zip(ps, x0, gs):
        scale = total if scope == "global" else g.abs().sum()
        torch.testing.assert_close(p.detach(), x - 0.01 * scale * torch.sign(g))


@pytest.mark.parametrize("p", [2.0, 3.0, 4.5, 8.0])
def test_lp_descent_unscaled_and_scaled(p):  # [STACEY, Alg. 1] and its scaled form
    x0 = _pair()
    gs = _grads(0)
    q = p / (p - 1)
    qnorm = torch.cat([g.reshape(-1) for g in gs]).abs().pow(q).sum() ** (1 / q)
    for scaled in (False, True):
        ps = _clone(x0)
        _steps(LpDescent(ps, lr=0.01, p=p, scaled=scaled), ps, 1)
        for prm, x, g in zip(ps, x0, gs):
            s = torch.sign(g) * g.abs() ** (1 / (p - 1))
            if scaled:
                s = s * qnorm ** ((p - 2) / (p - 1))
            torch.testing.assert_close(prm.detach(), x - 0.01 * s)


def test_lp_descent_p2_is_sgd_and_pinf_is_signsgd():
    x0 = _pair()
    a, b, c, d = _clone(x0), _clone(x0), _clone(x0), _clone(x0)
    _steps(LpDescent(a, lr=0.05, p=2), a, 3)
    _steps(torch.optim.SGD(b, lr=0.05), b, 3)
    _steps(LpDescent(c, lr=0.05, p=math.inf), c, 3)
    _steps(SignSGD(d, lr=0.05), d, 3)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)
    for u, v in zip(c, d):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("eps_mode", ["paper", "code"])
def test_lp_descent_eps_smoothing(eps_mode):
    x0 = _pair()
    ps = _clone(x0)
    p, eps = 4.0, 0.05
    _steps(LpDescent(ps, lr=0.01, p=p, eps=eps, eps_mode=eps_mode), ps, 1)
    e = (p - 2) / (p - 1)
    for prm, x, g in zip(ps, x0, _grads(0)):
        s = g / (g.abs() ** e + eps) if eps_mode == "paper" else g * (g.abs() + eps) ** (-e)
        torch.testing.assert_close(prm.detach(), x - 0.01 * s)


def test_coordinate_descent_moves_one_coordinate():  # [BPL20, Eq. 33]
    x0 = _pair()
    ps = _clone(x0)
    _steps(CoordinateDescent(ps, lr=0.5), ps, 1)
    gs = _grads(0)
    flat = torch.cat([g.reshape(-1) for g in gs])
    i = int(flat.abs().argmax())
    moved = torch.cat([(p.detach() - x).reshape(-1) for p, x in zip(ps, x0)])
    expected = torch.zeros_like(flat)
    expected[i] = -0.5 * flat[i]
    torch.testing.assert_close(moved, expected)


def test_block_normalized_sgd():  # [BPL20, App. A.2.2]
    x0 = _pair()
    gs = _grads(0)
    ps = _clone(x0)
    _steps(BlockNormalizedSGD(ps, lr=0.1), ps, 1)
    for prm, x, g in zip(ps, x0, gs):
        torch.testing.assert_close(prm.detach(), x - 0.1 * g / g.norm())
    # Rows as blocks, scaled mode: (sum of all row norms) * row / ||row||.
    ps = _clone(x0)
    _steps(BlockNormalizedSGD(ps, lr=0.1, blocks="row", mode="scaled"), ps, 1)
    total = gs[0].norm(dim=1).sum() + gs[1].norm()
    torch.testing.assert_close(ps[0].detach(), x0[0] - 0.1 * total * gs[0] / gs[0].norm(dim=1, keepdim=True))
    torch.testing.assert_close(ps[1].detach(), x0[1] - 0.1 * total * gs[1] / gs[1].norm())


@pytest.mark.parametrize("norm", [L2(), Linf(), L1(), Lp(3), BlockNorm()], ids=repr)
def test_steepest_descent_modes(norm):  # [BPL20, Eq. 10, 49, 52/57]
    x0 = _pair()
    gs = list(_grads(0))
    sharp = norm.sharp(gs)
    dual = norm.dual(gs)
    expected = {
        "scaled": [s for s in sharp],
        "normalized": [s / dual for s in sharp],
        "soft": [s / (dual + 0.3) for s in sharp],
    }
    for mode, direction in expected.items():
        ps = _clone(x0)
        _steps(SteepestDescent(ps, lr=0.02, norm=norm, mode=mode, beta=0.3), ps, 1)
        for prm, x, dvec in zip(ps, x0, direction):
            torch.testing.assert_close(prm.detach(), x - 0.02 * dvec)


def test_steepest_descent_l2_with_momentum_is_ema_sgd():
    x = list(_pair())
    ps = _clone(x)
    _steps(SteepestDescent(ps, lr=0.1, norm=L2(), momentum=0.5), ps, 3)
    m = [torch.zeros_like(t) for t in x]
    for t in range(3):
        for i, g in enumerate(_grads(t)):
            m[i] = 0.5 * m[i] + 0.5 * g
            x[i] = x[i] - 0.1 * m[i]
    for p, r in zip(ps, x):
        torch.testing.assert_close(p.detach(), r)


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_ef_signsgd_matches_eq12(scope):  # [ScaledSign, Eq. 12]
    x = list(_pair())
    ps = _clone(x)
    _steps(EFSignSGD(ps, lr=0.1, scope=scope), ps, 4)
    e = [torch.zeros_like(t) for t in x]
    for t in range(4):
        gs = _grads(t)
        pvec = [0.1 * g + ei for g, ei in zip(gs, e)]
        if scope == "global":
            n = sum(v.numel() for v in pvec)
            l1 = sum(v.abs().sum() for v in pvec)
            deltas = [l1 / n * torch.sign(v) for v in pvec]
        else:
            deltas = [v.abs().sum() / v.numel() * torch.sign(v) for v in pvec]
        x = [xi - di for xi, di in zip(x, deltas)]
        e = [v - di for v, di in zip(pvec, deltas)]
    for p, r in zip(ps, x):
        torch.testing.assert_close(p.detach(), r)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lion_matches_lion_pytorch(wd):
    x0 = _pair()
    a, b = _clone(x0), _clone(x0)
    _steps(Lion(a, lr=0.01, betas=(0.9, 0.99), weight_decay=wd), a, 6)
    _steps(lion_pytorch.Lion(b, lr=0.01, betas=(0.9, 0.99), weight_decay=wd), b, 6)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


def test_foreach_default_is_loop_on_cpu():
    p = torch.zeros(3, requires_grad=True)
    opt = SignSGD([p], lr=0.1)
    assert opt._use_foreach(opt.param_groups[0], [p]) is False


# ---------------------------------------------------------------- property tests (hypothesis)
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_shape = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)
_dtype = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])


@settings(max_examples=30, deadline=None)
@given(shapes=st.lists(_shape, min_size=1, max_size=3), dtype=_dtype, seed=st.integers(0, 2**16))
def test_signsgd_moves_every_nonzero_coordinate_by_lr(shapes, dtype, seed):
    """For any shapes and dtypes: shape and dtype kept, |x' - x| = lr exactly where g != 0
    (up to the dtype's rounding of x - lr), and 0 where g == 0."""
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]
    grads = [torch.randn(s, generator=g).round().to(dtype) for s in shapes]  # many exact zeros
    for p, gr in zip(ps, grads):
        p.grad = gr
    before = [p.detach().clone() for p in ps]
    SignSGD(ps, lr=0.25).step()
    for p, b, gr in zip(ps, before, grads):
        assert p.shape == b.shape and p.dtype == dtype
        expected = (b.double() - 0.25 * torch.sign(gr.double())).to(dtype)
        # Bitwise on purpose: x - lr sign(g) is one correctly rounded subtraction in every code
        # path, and rounding the exact float64 difference to a format of <= 24 bits gives the
        # same value (double rounding is innocuous for +/- when 53 >= 2 * 24 + 2).
        assert torch.equal(p.detach(), expected)


@settings(max_examples=30, deadline=None)
@given(
    shapes=st.lists(_shape, min_size=1, max_size=3),
    p=st.one_of(st.just(math.inf), st.floats(2.0, 12.0)),
    scaled=st.booleans(),
    scope=st.sampled_from(["global", "per_tensor"]),
)
def test_lp_descent_step_is_a_descent_direction(shapes, p, scaled, scope):
    """<g, x - x'> >= 0 for every l_p step (it is lr * <g, s(g)> = lr * sum |g_i|^(p/(p-1)) ...)."""
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=g, dtype=D).requires_grad_() for s in shapes]
    grads = [torch.randn(s, generator=g, dtype=D) for s in shapes]
    for prm, gr in zip(ps, grads):
        prm.grad = gr
    before = [prm.detach().clone() for prm in ps]
    LpDescent(ps, lr=0.1, p=p, scaled=scaled, scope=scope).step()
    inner = sum(float((gr * (b - prm.detach())).sum()) for prm, b, gr in zip(ps, before, grads))
    assert inner >= 0.0
    assert all(torch.isfinite(prm).all() for prm in ps)
