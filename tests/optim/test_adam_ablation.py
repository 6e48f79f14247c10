"""AdamShuffled and AdamAveraged [BPL20, Sec. 2, Eq. 5/59, App. D.1] against torch.optim.Adam.

Adam's moments do not depend on the parameters, so feeding Adam and a variant the same gradient
sequence gives both the same m, v at every step: each step of the variant must then be Adam's
step with the magnitudes gamma = |m|/(sqrt(v)+eps) permuted (shuffled) or averaged, per tensor.
"""

from __future__ import annotations

import io

import pytest
import torch

from steepest import AdamAveraged, AdamShuffled

D = torch.float64


def _grads(t: int, shapes, dtype=D, seed=11):
    g = torch.Generator().manual_seed(seed + t)
    # Varying scales per entry, so that gamma really differs across coordinates.
    return [torch.randn(s, generator=g, dtype=D).mul(torch.rand(s, generator=g, dtype=D) * 4).to(dtype)
            for s in shapes]


def _params(shapes, dtype=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=D).to(dtype).requires_grad_() for s in shapes]


def _clone(ps):
    return [p.detach().clone().requires_grad_() for p in ps]


def _side_by_side(variant, shapes, steps, adam_cls=torch.optim.Adam, adam_kw=None, **kw):
    """Yield (adam step, variant step) per tensor and step, from identical gradients."""
    pa = _params(shapes)
    pv = _clone(pa)
    adam = adam_cls(pa, **(adam_kw or {}))
    opt = variant(pv, **kw)
    for t in range(steps):
        gs = _grads(t, shapes)
        before_a, before_v = [p.detach().clone() for p in pa], [p.detach().clone() for p in pv]
        for p, q, g in zip(pa, pv, gs):
            p.grad, q.grad = g.clone(), g.clone()
        adam.step()
        opt.step()
        yield [(p.detach() - b, q.detach() - c) for p, b, q, c in zip(pa, before_a, pv, before_v)]


# ----------------------------------------------------------------------------- one-element tensors
@pytest.mark.parametrize("cls", [AdamAveraged, AdamShuffled])
@pytest.mark.parametrize("dtype", [torch.float32, D])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kw", [{}, {"betas": (0.5, 0.9), "eps": 1e-3}, {"weight_decay": 0.1}])
def test_scalar_parameters_equal_torch_adam_exactly(cls, dtype, foreach, kw):
    shapes = [(1,), (), (1, 1)]
    pa = _params(shapes, dtype)
    pv = _clone(pa)
    ref_cls = torch.optim.AdamW if "weight_decay" in kw else torch.optim.Adam
    ref = ref_cls(pa, lr=0.01, foreach=foreach, **kw)
    opt = cls(pv, lr=0.01, foreach=foreach, **kw)
    for t in range(25):
        for p, q, g in zip(pa, pv, _grads(t, shapes, dtype)):
            p.grad, q.grad = g.clone(), g.clone()
        ref.step()
        opt.step()
        # Bitwise on purpose: on one-element tensors both run the same elementwise ATen ops in
        # the same order (torch's addcdiv computes p + (value * m) / denom, as we do), each
        # correctly rounded, so no CPU or SIMD path can separate them.
        for p, q in zip(pa, pv):
            assert torch.equal(p, q), (t, p, q)
    for p, q in zip(pa, pv):
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ref.state[p][k], opt.state[q][k]), k


# ----------------------------------------------------------------------------- shuffled
SHAPES = [(6, 5), (5,), (2, 3, 4)]


def test_shuffled_step_is_a_permutation_of_adams_step_magnitudes():
    moved = False
    for pairs in _side_by_side(AdamShuffled, SHAPES, 8, adam_kw={"lr": 0.01}, lr=0.01):
        for da, dv in pairs:
            # Same signs (sign(m)), magnitudes a permutation of Adam's, not left in place.
            assert torch.equal(torch.sign(dv), torch.sign(da))
            torch.testing.assert_close(
                dv.abs().flatten().sort().values, da.abs().flatten().sort().values,
                rtol=1e-12, atol=1e-15,
            )
            moved |= not torch.allclose(dv.abs(), da.abs(), rtol=1e-6, atol=0)
    assert moved


def test_shuffled_uses_one_randperm_per_tensor_from_the_generator():
    gen, twin = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    steps = _side_by_side(AdamShuffled, SHAPES, 4, adam_kw={"lr": 0.01}, lr=0.01, generator=gen)
    for pairs in steps:
        for da, dv in pairs:
            perm = torch.randperm(da.numel(), generator=twin)
            expected = (da.abs().flatten()[perm] * torch.sign(dv).flatten()).view_as(dv)
            torch.testing.assert_close(dv, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("index64", [False, True], ids=["int32", "int64"])
@pytest.mark.parametrize("dtype", [torch.float32, D])
@pytest.mark.parametrize("eps", [1e-8, 0.0])
@pytest.mark.parametrize("foreach", [False, True])
def test_shuffled_chunked_gather_is_the_same_permutation(dtype, eps, foreach, index64, monkeypatch):
    # Tensors above the stream chunk take the chunked path (steepest.optim.adam_ablation.
    # _shuffled_step_: gathers through the permutation in chunks that live in the consumed index
    # bytes). A stream chunk of 8 entries sends the 30- and 24-entry tensors there (chunks of
    # 4, 2, 3, 4, 6, 9, 2 entries of the 30 for float32; slower growth for float64), the
    # 5-entry one through the whole-tensor path. Expected: torch.optim.Adam's step
    # magnitudes through torch.randperm of a twin generator (int64), with the signs of Adam's step;
    # exact permutation, magnitudes to rounding: the steps are differences of parameters, each
    # parameter rounded once by Adam and once by us (at a different, permuted entry), so up to
    # an ulp of |p| apart (atol 4 eps max|p|), plus a few ulp of the step (rtol 1e-6 / 1e-12).
    # index64: the int64 permutation of other devices and of tensors past 2^31 entries (other
    # chunk sizes: 8-byte indices), forced here on the CPU.
    import steepest.backend.policy as policy
    import steepest.optim.adam_ablation as ablation

    monkeypatch.setattr(policy, "_STREAM_CHUNK", 8)
    if index64:
        monkeypatch.setattr(ablation, "_randperm", lambda n, gen, device: torch.randperm(
            n, generator=gen, device=device))
    gen, twin = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    shapes = [(6, 5), (5,), (2, 3, 4), (0,)]
    pa = [p.to(dtype).detach().requires_grad_() for p in _params(shapes)]
    pv = _clone(pa)
    adam = torch.optim.Adam(pa, lr=0.01, eps=eps)
    opt = AdamShuffled(pv, lr=0.01, eps=eps, generator=gen, foreach=foreach)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for t in range(4):
        before_a, before_v = [p.detach().clone() for p in pa], [p.detach().clone() for p in pv]
        for p, q, g in zip(pa, pv, _grads(t, shapes, dtype)):
            if g.numel():
                g[..., 0] = 0.0  # m = v = 0 entries: sign 0, and gamma 0 when eps = 0
            p.grad, q.grad = g.clone(), g.clone()
        adam.step()
        opt.step()
        for p, b, q, c in zip(pa, before_a, pv, before_v):
            # eps = 0: Adam's 0/0 is NaN where m = v = 0; ours is 0/0 := 0 (no update).
            da, dv = torch.nan_to_num(p.detach() - b, nan=0.0), q.detach() - c
            assert torch.isfinite(dv).all()
            b = torch.nan_to_num(b, nan=0.0)
            perm = torch.randperm(da.numel(), generator=twin)
            # sign(da) = -sign(m): Adam's step is 0 exactly where m = 0, and so must ours be.
            expected = (da.abs().flatten()[perm] * torch.sign(da).flatten()).view_as(dv)
            atol = 4 * torch.finfo(dtype).eps * max(float(b.abs().max()) if b.numel() else 0.0, 1.0)
            torch.testing.assert_close(dv, expected, rtol=tol, atol=atol)


def test_shuffled_is_reproducible_and_resumes_exactly():
    def run(seed, steps, opt=None, ps=None, start=0):
        ps = ps if ps is not None else _params(SHAPES)
        opt = opt or AdamShuffled(ps, lr=0.01, generator=torch.Generator().manual_seed(seed))
        for t in range(start, start + steps):
            for p, g in zip(ps, _grads(t, SHAPES)):
                p.grad = g
            opt.step()
        return ps, opt

    a, _ = run(1, 6)
    b, _ = run(1, 6)
    c, _ = run(2, 6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    # Resume from a checkpoint (through torch.save/weights_only): the generator state travels too.
    ps, opt = run(1, 3)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    ps2 = _clone(ps)
    opt2 = AdamShuffled(ps2, lr=0.01, generator=torch.Generator().manual_seed(999))
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    run(1, 3, opt, ps, start=3)
    run(1, 3, opt2, ps2, start=3)
    for x, y, z in zip(ps, ps2, a):
        assert torch.equal(x, y) and torch.equal(x, z)


def test_shuffled_without_generator_uses_the_global_rng():
    outs = []
    for _ in range(2):
        ps = _params(SHAPES)
        opt = AdamShuffled(ps, lr=0.01)
        torch.manual_seed(3)
        for t in range(3):
            for p, g in zip(ps, _grads(t, SHAPES)):
                p.grad = g
            opt.step()
        outs.append(ps)
    assert all(torch.equal(x, y) for x, y in zip(*outs))


# ----------------------------------------------------------------------------- averaged
@pytest.mark.parametrize("foreach", [False, True])
def test_averaged_step_is_the_mean_magnitude_times_sign_per_tensor(foreach):
    kw = {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}
    for pairs in _side_by_side(AdamAveraged, SHAPES, 6, adam_kw=kw, foreach=foreach, **kw):
        for da, dv in pairs:
            expected = da.abs().mean() * torch.sign(da)
            torch.testing.assert_close(dv, expected, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("cls", [AdamAveraged, AdamShuffled])
@pytest.mark.parametrize("foreach", [False, True])
def test_eps0_no_update_where_m_and_v_vanish(cls, foreach):
    p = torch.zeros(4, 3, dtype=D, requires_grad=True)
    opt = cls([p], lr=0.1, eps=0.0, foreach=foreach)
    for t in range(3):
        g = _grads(t, [(4, 3)])[0]
        g[:, 0] = 0.0
        p.grad = g
        opt.step()
    assert torch.isfinite(p).all()
    assert torch.equal(p[:, 0], torch.zeros(4, dtype=D))
    if cls is AdamAveraged:
        # The mean magnitude is > 0, so every coordinate with m != 0 moves.
        assert (p[:, 1:] != 0).all()
    else:
        # Shuffling hands the vanished coordinates' zero magnitudes to random others (that is
        # the ablation), so a coordinate may draw 0 at every step (about 4% each over 3 steps,
        # depending on the RNG state the test order leaves): only "some move" is a property.
        assert (p[:, 1:] != 0).any()


def test_eps0_on_scalars_is_signsgd_magnitude_lr():
    # With eps = 0 and one step, gamma = |m|/sqrt(v) = 1 (m = g, v = g^2 after bias correction).
    p = torch.tensor([0.0, 0.0], dtype=D, requires_grad=True)
    opt = AdamAveraged([p], lr=0.1, eps=0.0)
    p.grad = torch.tensor([3.0, -0.5], dtype=D)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, 0.1], dtype=D))

