"""M-SGD, SVAG, M-SVAG (both variance estimates) and Adam* against [Bal21, Ch. 5] / App. B.

The references below are written from the thesis' closed forms, not from the recursions the
optimizers use: the bias-corrected averages as explicit convex combinations (Eq. B.23),
rho(beta, t) as the sum of the squared weights (Eq. B.26) and, for the minibatch variant, the
variance of m_t as the weighted sum of Eq. B.33 (the optimizer tracks it with the beta^2 EMA of
Eq. B.34).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from steepest import MSGD, MSVAG, SVAG, AdamStar
from steepest.optim.noise import rho

D = torch.float64


# ----------------------------------------------------------------------------- references
def c(beta: float, t: int, s: int) -> float:
    """Weight of g_s in the bias-corrected EMA m_t (Eq. B.23)."""
    return (1 - beta) / (1 - beta ** (t + 1)) * beta ** (t - s)


def ema(beta: float, seq: list[torch.Tensor]) -> torch.Tensor:
    t = len(seq) - 1
    return sum(c(beta, t, s) * x for s, x in enumerate(seq))


def rho_sum(beta: float, t: int) -> float:
    return sum(c(beta, t, s) ** 2 for s in range(t + 1))


def reference(kind: str, x0: torch.Tensor, gs: list[torch.Tensor], lr: float, beta: float):
    """Alg. 2 (msvag), Alg. 4 (svag), Alg. 5 (adamstar) with s_0 = 0 (Sec. 5.4.4)."""
    x = x0.clone()
    for t in range(len(gs)):
        m = ema(beta, gs[: t + 1])
        v = ema(beta, [g * g for g in gs[: t + 1]])
        r = rho_sum(beta, t)
        s = torch.zeros_like(m) if t == 0 else (v - m * m) / (1 - r)
        if kind == "svag":
            x = x - lr * m * m / (m * m + s) * gs[t]
        elif kind == "msvag":
            x = x - lr * m * m / (m * m + r * s) * m
        else:
            x = x - lr * torch.sqrt(m * m / (m * m + r * s)) * torch.sign(m)
    return x


def noisy_grads(T: int, shape=(4, 3), seed=0) -> list[torch.Tensor]:
    """Gradients with a signal (mean) and noise of varying relative size per coordinate."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(shape, generator=g, dtype=D)
    scale = torch.rand(shape, generator=g, dtype=D) * 3
    return [mean + scale * torch.randn(shape, generator=g, dtype=D) for _ in range(T)]


def run(opt_cls, x0, gs, **kw):
    p = x0.clone().requires_grad_()
    opt = opt_cls([p], **kw)
    for g in gs:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt


OPTS = {"svag": SVAG, "msvag": MSVAG, "adamstar": AdamStar}


# ----------------------------------------------------------------------------- rho
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99])
def test_rho_is_the_sum_of_squared_ema_weights(beta):  # Eq. 5.15 = Eq. B.26
    for t in range(40):
        assert rho(beta, t) == pytest.approx(rho_sum(beta, t), rel=1e-12)


def test_rho_values_and_limits():
    assert rho(0.9, 0) == 1.0  # Var[m_0] = Var[g_0]: 1 - rho vanishes at t = 0
    assert rho(0.9, 1) == pytest.approx((0.1 * 0.1 + 0.09 * 0.09) / 0.19**2 * 1, rel=1e-12)
    assert rho(0.9, 10_000) == pytest.approx(0.1 / 1.9, rel=1e-12)  # Eq. B.27
    assert rho(0.0, 7) == 1.0
    with pytest.raises(ValueError, match=r"beta must be in \[0.0, 1.0\)"):
        rho(1.0, 3)
    with pytest.raises(ValueError, match=r"t must be >= 0"):
        rho(0.9, -1)


# ----------------------------------------------------------------------------- M-SGD
def test_msgd_is_sgd_along_the_bias_corrected_ema():  # Alg. 3
    gs = noisy_grads(6)
    x0 = torch.randn(4, 3, dtype=D)
    got, opt = run(MSGD, x0, gs, lr=0.1, beta=0.8)
    x = x0.clone()
    for t in range(len(gs)):
        x = x - 0.1 * ema(0.8, gs[: t + 1])
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)
    st = opt.state[opt.param_groups[0]["params"][0]]
    assert st["step"].dtype == torch.float32 and st["step"].dim() == 0 and float(st["step"]) == 6
    # The buffer is the un-corrected EMA m~ (Alg. 3).
    torch.testing.assert_close(st["exp_avg"], ema(0.8, gs) * (1 - 0.8**6), rtol=1e-12, atol=1e-12)


def test_msgd_first_step_is_sgd_and_beta0_is_sgd():
    gs = noisy_grads(3)
    x0 = torch.randn(4, 3, dtype=D)
    one, _ = run(MSGD, x0, gs[:1], lr=0.1, beta=0.9)
    torch.testing.assert_close(one, x0 - 0.1 * gs[0], rtol=1e-14, atol=1e-14)
    plain, _ = run(MSGD, x0, gs, lr=0.1, beta=0.0)
    torch.testing.assert_close(plain, x0 - 0.1 * sum(gs), rtol=1e-14, atol=1e-14)


def test_msgd_weight_decay_is_decoupled():
    gs = noisy_grads(2)
    x0 = torch.randn(4, 3, dtype=D)
    got, _ = run(MSGD, x0, gs, lr=0.1, beta=0.5, weight_decay=0.2)
    x = x0.clone()
    for t in range(2):
        x = x * (1 - 0.1 * 0.2) - 0.1 * ema(0.5, gs[: t + 1])
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- SVAG, M-SVAG, Adam*
@pytest.mark.parametrize("kind", list(OPTS))
@pytest.mark.parametrize("beta", [0.5, 0.9])
@pytest.mark.parametrize("foreach", [False, True])
def test_against_the_algorithm_boxes(kind, beta, foreach):  # Alg. 2, 4, 5
    gs = noisy_grads(12, seed=1)
    x0 = torch.randn(4, 3, dtype=D)
    got, _ = run(OPTS[kind], x0, gs, lr=0.05, beta=beta, foreach=foreach)
    torch.testing.assert_close(got, reference(kind, x0, gs, 0.05, beta), rtol=1e-10, atol=1e-12)


def test_first_steps_by_hand():  # Sec. 5.4.4: s_0 = 0
    g0 = torch.tensor([0.5, -2.0, 3.0], dtype=D)
    x0 = torch.tensor([1.0, 1.0, 1.0], dtype=D)
    for cls in (SVAG, MSVAG):
        x1, _ = run(cls, x0, [g0], lr=0.1)
        torch.testing.assert_close(x1, x0 - 0.1 * g0, rtol=1e-14, atol=1e-14)  # an SGD step
    x1, _ = run(AdamStar, x0, [g0], lr=0.1)
    torch.testing.assert_close(x1, x0 - 0.1 * torch.sign(g0), rtol=1e-14, atol=1e-14)  # signSGD

    # Second step of M-SVAG with beta = 0.5, written out: m~ = 0.5 g0 -> 0.25 g0 + 0.5 g1.
    g1 = torch.tensor([1.5, -1.0, -3.0], dtype=D)
    b = 0.5
    m = (0.25 * g0 + 0.5 * g1) / 0.75
    v = (0.25 * g0**2 + 0.5 * g1**2) / 0.75
    r = 0.5 * 1.25 / (1.5 * 0.75)  # rho(0.5, 1) = (1-b)(1+b^2)/((1+b)(1-b^2))
    s = (v - m**2) / (1 - r)
    x2, _ = run(MSVAG, x0, [g0, g1], lr=0.1, beta=b)
    torch.testing.assert_close(x2, x0 - 0.1 * g0 - 0.1 * m**2 / (m**2 + r * s) * m)


@pytest.mark.parametrize("kind", list(OPTS))
def test_beta0_reduces_to_sgd_or_signsgd(kind):
    gs = noisy_grads(5, seed=2)
    x0 = torch.randn(4, 3, dtype=D)
    got, _ = run(OPTS[kind], x0, gs, lr=0.1, beta=0.0)
    step = (lambda g: torch.sign(g)) if kind == "adamstar" else (lambda g: g)
    torch.testing.assert_close(got, x0 - 0.1 * sum(step(g) for g in gs), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kind", list(OPTS))
@pytest.mark.parametrize("foreach", [False, True])
def test_no_update_where_m_and_v_are_zero(kind, foreach):  # Sec. 5.4.4: no eps, 0/0 := 0
    gs = noisy_grads(6, seed=3)
    for g in gs:
        g[:, 1] = 0.0  # this column never sees a gradient: m = v = 0 there
    x0 = torch.randn(4, 3, dtype=D)
    got, opt = run(OPTS[kind], x0, gs, lr=0.1, foreach=foreach)
    assert torch.isfinite(got).all()
    assert torch.equal(got[:, 1], x0[:, 1])
    assert not torch.equal(got[:, 0], x0[:, 0])
    for v in opt.state[opt.param_groups[0]["params"][0]].values():
        assert torch.isfinite(v).all()


@pytest.mark.parametrize("kind", list(OPTS))
def test_no_update_where_m_is_zero_but_v_is_not(kind):
    # beta = 0.5: m~ = 0.5 g0, then 0.25 g0 + 0.5 g1 = 0 for g1 = -g0/2, while v > 0:
    # gamma = 0 (SVAG, M-SVAG) and sign(m) = 0 (Adam*), so step 2 leaves x alone.
    g0 = torch.tensor([1.0, 2.0], dtype=D)
    g1 = torch.tensor([-0.5, 1.0], dtype=D)
    x0 = torch.zeros(2, dtype=D)
    x1, _ = run(OPTS[kind], x0, [g0], lr=0.1, beta=0.5)
    x2, _ = run(OPTS[kind], x0, [g0, g1], lr=0.1, beta=0.5)
    assert x2[0] == x1[0] and x2[1] != x1[1]


def test_state_layout():
    p = torch.zeros(3, requires_grad=True)
    opt = MSVAG([p], lr=0.1)
    assert len(opt.state) == 0  # lazy
    p.grad = torch.ones(3)
    opt.step()
    st = opt.state[p]
    assert set(st) == {"step", "exp_avg", "exp_avg_sq"}
    assert st["step"].dtype == torch.float32 and st["step"].shape == ()


# ----------------------------------------------------------------------------- fused eager steps
ALL = {"msgd": MSGD, **OPTS}


@pytest.mark.parametrize("kind", list(ALL))
@pytest.mark.parametrize("dtype", [torch.float32, D])
def test_loop_chunk_of_small_tensors_equals_the_per_tensor_loop(kind, dtype):
    # The loop path runs a CPU stream chunk of several small tensors with the torch._foreach_*
    # kernels (steepest.backend.policy.chunk_ops); on CPU those call the same per-tensor ATen
    # kernels, so the result equals each tensor stepped alone (one tensor per optimizer: the plain
    # per-tensor ops). Tolerance 4 ulp relative (ours): the kernels are the same today, but
    # foreach and per-tensor are two code paths, which may round differently on another CPU or
    # torch build; a wrong coefficient or a skipped tensor is off by O(1) relative.
    # Zeros and a m = 0 < v coordinate included.
    shapes = [(4, 3), (5,), (2, 2, 2), (1,)]
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=dtype) for s in shapes] for _ in range(5)]
    for gs in grads:
        gs[0][:, 1] = 0.0
    grads[1][1][0] = -0.5 * grads[0][1][0]  # beta = 0.5: m~ = 0.5 g0, then exactly 0 (v~ > 0)
    together = [x.clone().requires_grad_() for x in xs]
    alone = [x.clone().requires_grad_() for x in xs]
    opt = ALL[kind](together, lr=0.1, beta=0.5, weight_decay=0.1, foreach=False)
    opts = [ALL[kind]([p], lr=0.1, beta=0.5, weight_decay=0.1, foreach=False) for p in alone]
    for gs in grads:
        for p, q, gr in zip(together, alone, gs):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        for o in opts:
            o.step()
    eps = torch.finfo(dtype).eps
    for p, q in zip(together, alone):
        torch.testing.assert_close(p, q, rtol=4 * eps, atol=0)
        assert torch.isfinite(p).all()


@pytest.mark.parametrize("kind", list(OPTS))
@pytest.mark.parametrize("foreach", [False, True])
def test_fused_step_matches_the_reference_form(kind, foreach, monkeypatch):
    # The eager fused step (steepest.optim.noise._adapted_step_, AdamStar._fused_update) against
    # the reference form that compiled and DTensor steps run (forced here by eager_fused_ok -> False), in
    # float64 over steps with large, tiny and cancelling moments. Tolerance 1e-12 relative: the two
    # forms round the same factor differently (v~/m~/m~ + 1/K vs 1 + e/m~/m~) by a few ulp, and
    # the cancellation v~ - a m~^2 can amplify that by the noise-to-signal ratio of a coordinate.
    import steepest.backend.policy as policy

    g = torch.Generator().manual_seed(3)
    scale = torch.tensor([1.0, 1e-3, 1e3, 1.0, 0.0, 5.0], dtype=D)
    gs = [scale * (1.0 + 0.3 * torch.randn(6, generator=g, dtype=D)) for _ in range(8)]
    for gr in gs:
        gr[5] = -2.0  # a constant gradient: zero variance, gamma = 1 (s = 0 up to rounding)
    x0 = torch.randn(6, dtype=D)
    fused, _ = run(OPTS[kind], x0, gs, lr=0.05, beta=0.7, foreach=foreach)
    monkeypatch.setattr(policy, "eager_fused_ok", lambda params: False)
    ref, _ = run(OPTS[kind], x0, gs, lr=0.05, beta=0.7, foreach=foreach)
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-15)
    assert fused[4] == x0[4]  # m = v = 0: no update
    # gamma = 1 at every step: 8 steps of lr * 2 (SVAG, M-SVAG: m = g = -2) or lr (Adam*: sign)
    step = 0.05 * (1.0 if kind == "adamstar" else 2.0)
    torch.testing.assert_close(fused[5], x0[5] + 8 * step, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- minibatch variance
def _data(seed, n=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=D)
    y = torch.randn(n, 2, generator=g, dtype=D)
    return x, y


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).to(D)


def _per_example_grads(model, x, y):
    """Stacked per-example gradients of l_i = ||f(x_i) - y_i||^2 / 2, one loop iteration each."""
    out = []
    for i in range(x.shape[0]):
        model.zero_grad()
        (0.5 * (model(x[i : i + 1]) - y[i : i + 1]).pow(2).sum()).backward()
        out.append([p.grad.clone() for p in model.parameters()])
    return [torch.stack(gs) for gs in zip(*out)]


def _attach_by_hand(model, x, y):
    """p.grad = mean of the individual gradients, p.grad_var = their 1/(N-1) variance (Eq. 3.30)."""
    for p, G in zip(model.parameters(), _per_example_grads(model, x, y)):
        p.grad = G.mean(0)
        p.grad_var = G.var(0, unbiased=True)
        p.grad_batch_size = G.shape[0]


@pytest.mark.parametrize("foreach", [False, True])
def test_minibatch_msvag_against_eq_b33(foreach):  # Alg. 6 with Var[m_t] from Eq. B.33
    beta, lr, T = 0.8, 0.05, 6
    model, ref = _model(), _model()
    opt = MSVAG(model.parameters(), lr=lr, beta=beta, variance="minibatch", foreach=foreach)
    hist_g: list[list[torch.Tensor]] = []
    hist_s: list[list[torch.Tensor]] = []
    for t in range(T):
        x, y = _data(t)
        _attach_by_hand(model, x, y)
        opt.step()
        Gs = _per_example_grads(ref, x, y)
        hist_g.append([G.mean(0) for G in Gs])
        hist_s.append([G.var(0, unbiased=True) / G.shape[0] for G in Gs])  # Var of the mean
        with torch.no_grad():
            for j, p in enumerate(ref.parameters()):
                m = sum(c(beta, t, s) * hist_g[s][j] for s in range(t + 1))
                sbar = sum(c(beta, t, s) ** 2 * hist_s[s][j] for s in range(t + 1))
                p -= lr * m * m / (m * m + sbar) * m
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_minibatch_first_step_is_variance_adapted():  # Alg. 6 at t = 0: rho = 1, r = s_mb
    p = torch.tensor([1.0, -1.0, 0.0], dtype=D, requires_grad=True)
    opt = MSVAG([p], lr=0.5, variance="minibatch")
    g = torch.tensor([2.0, -1.0, 0.0], dtype=D)
    p.grad, p.grad_var, p.grad_batch_size = g.clone(), torch.tensor([4.0, 9.0, 1.0], dtype=D), 4
    opt.step()
    s_mb = torch.tensor([1.0, 2.25, 0.25], dtype=D)
    expected = torch.tensor([1.0, -1.0, 0.0], dtype=D) - 0.5 * g**2 / (g**2 + s_mb) * g
    torch.testing.assert_close(p.detach(), expected, rtol=1e-14, atol=1e-14)


def test_minibatch_wiring_with_gradient_moments():
    """The documented training loop: GradientMoments during backward feeds MSVAG; the same run
    driven by a per-example loop gives the same parameters."""
    from steepest.stats import GradientMoments

    a, b = _model(), _model()
    oa = MSVAG(a.parameters(), lr=0.05, variance="minibatch")
    ob = MSVAG(b.parameters(), lr=0.05, variance="minibatch")
    for t in range(4):
        x, y = _data(t)
        oa.zero_grad()
        with GradientMoments(a):
            loss = 0.5 * (a(x) - y).pow(2).sum(1).mean()
            loss.backward()
        oa.step()
        _attach_by_hand(b, x, y)
        ob.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11)


def test_minibatch_missing_or_bad_statistics():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = MSVAG([p], lr=0.1, variance="minibatch")
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match=r"grad_var .*grad_batch_size.*GradientMoments"):
        opt.step()
    p.grad_var, p.grad_batch_size = torch.ones(2), 4
    with pytest.raises(ValueError, match=r"grad_var of parameter #0 .* shaped like the parameter"):
        opt.step()
    for n in (1, 2.0, True, None):
        p.grad_var, p.grad_batch_size = torch.ones(3), n
        with pytest.raises((ValueError, RuntimeError), match=r"grad_batch_size"):
            opt.step()
    assert torch.equal(p.detach(), torch.zeros(3)) and len(opt.state) == 0


def test_minibatch_stale_statistics_warn():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = MSVAG([p], lr=0.1, variance="minibatch")
    p.grad, p.grad_var, p.grad_batch_size = torch.ones(3), torch.ones(3), 4
    opt.step()
    with pytest.warns(RuntimeWarning, match="same, unmodified tensor"):
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p.grad_var.mul_(2.0)  # refreshed in place: no warning
        opt.step()
        p.grad_var = torch.ones(3)  # or a new tensor
        opt.step()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_minibatch_nonfinite_variance(bad):
    model = torch.nn.Linear(3, 2)
    opt = MSVAG(model.named_parameters(), lr=0.1, variance="minibatch")
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad, p.grad_var, p.grad_batch_size = torch.ones_like(p), torch.ones_like(p), 8
    model.bias.grad_var[1] = bad
    with pytest.raises(FloatingPointError, match=r"grad_var of parameter 'bias'"):
        opt.step()
    opt.param_groups[0]["nonfinite"] = "skip"
    with pytest.warns(RuntimeWarning, match="step skipped") as rec:
        opt.step()
    assert len(rec) == 1  # a rejected step consumed nothing: retrying is not "stale"
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert len(opt.state) == 0


def test_minibatch_negative_variance_is_clamped():
    p = torch.nn.Parameter(torch.zeros(2, dtype=D))
    opt = MSVAG([p], lr=0.1, variance="minibatch")
    p.grad, p.grad_var, p.grad_batch_size = torch.tensor([1.0, 1.0], dtype=D), torch.tensor([-1e-3, 0.0], dtype=D), 4
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, -0.1], dtype=D), rtol=0, atol=0)
