"""Muon against torch.optim.Muon and against the update written from its definition (docs/operator_norms.md)."""

from __future__ import annotations

import pytest
import torch

from steepest import Linf, Muon
from steepest.norms import newton_schulz, polar_svd

SHAPES = [(8, 5), (5, 8), (16, 16), (3, 12)]


def _grads(step: int, shapes, dtype=torch.float32):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def _params(shapes, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]


@pytest.mark.parametrize("adjust_lr_fn", [None, "original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_torch_muon_bitwise_with_bfloat16_newton_schulz(adjust_lr_fn, nesterov):
    """Same inputs, same options, ns_dtype='bfloat16' (torch's): the same kernels run on the same
    data in the same order, so parameters and momentum agree bit for bit after 6 steps."""
    a, b = _params(SHAPES), _params(SHAPES)
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    ref = torch.optim.Muon(a, **kw)
    ours = Muon(b, ns_dtype="bfloat16", **kw)
    for t in range(6):
        for x, y, g in zip(a, b, _grads(t, SHAPES)):
            x.grad, y.grad = g.clone(), g.clone()
        ref.step()
        ours.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
        assert torch.equal(ref.state[x]["momentum_buffer"], ours.state[y]["momentum_buffer"])


def _reference_muon(params, grads_per_step, lr, wd, b, nesterov, adjust):
    """The update from docs/operator_norms.md, written out in float64."""
    xs = [p.detach().double().clone() for p in params]
    ms = [torch.zeros_like(x) for x in xs]
    for grads in grads_per_step:
        for x, m, g in zip(xs, ms, grads):
            g = g.double()
            m.mul_(b).add_(g, alpha=1 - b)
            u = (1 - b) * g + b * m if nesterov else m
            rows, cols = x.shape
            ratio = max(1, rows / cols) ** 0.5 if adjust == "original" else 0.2 * max(rows, cols) ** 0.5
            x.mul_(1 - lr * wd).sub_(lr * ratio * newton_schulz(u))
    return xs


@pytest.mark.parametrize("adjust_lr_fn", ["original", "match_rms_adamw"])
def test_float32_default_matches_the_definition(adjust_lr_fn):
    """ns_dtype='auto' runs Newton-Schulz in float32 on CPU. Against a float64 reference of the
    definition: tolerance 1e-5 absolute on parameters of size ~1 after 5 steps of lr 0.02
    (float32 rounding, 6e-8 relative, grows through 5 quintic NS steps whose slope is at most
    a = 3.4 per step, 3.4^5 ~ 460, to ~3e-5 relative on the unit-size update; times lr ratio
    <= 0.2 * 4: < 3e-5 * 0.02 * 5 steps ~ 3e-6; 1e-5 leaves room)."""
    ps = _params(SHAPES)
    steps = [_grads(t, SHAPES) for t in range(5)]
    opt = Muon(ps, lr=0.02, weight_decay=0.05, adjust_lr_fn=adjust_lr_fn)
    for grads in steps:
        for p, g in zip(ps, grads):
            p.grad = g
        opt.step()
    ref = _reference_muon(_params(SHAPES), steps, 0.02, 0.05, 0.95, True, adjust_lr_fn)
    for p, r in zip(ps, ref):
        torch.testing.assert_close(p.double(), r, rtol=0, atol=1e-5)


def test_float32_and_torch_bfloat16_differ_by_bfloat16_rounding_only():
    """Default (float32 NS) against torch's Muon (bfloat16 NS): bfloat16 keeps 8 bits, so the
    unit-size update differs by up to ~1e-2 per entry; after 5 steps of lr 0.02 parameters differ
    by < 5 * 0.02 * 2e-2 = 2e-3 (ours, from bf16's 2^-8 = 4e-3 relative rounding, x5 for NS)."""
    a, b = _params(SHAPES), _params(SHAPES)
    ref, ours = torch.optim.Muon(a, lr=0.02), Muon(b, lr=0.02)
    for t in range(5):
        for x, y, g in zip(a, b, _grads(t, SHAPES)):
            x.grad, y.grad = g.clone(), g.clone()
        ref.step()
        ours.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=2e-3)


def test_non_matrix_parameters_are_refused_with_their_names():
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"'bias' \(shape \(3,\)\).*nonmatrix_norm"):
        Muon(model.named_parameters())
    with pytest.raises(ValueError, match=r"parameter #1 \(shape \(3,\)\)"):
        Muon(model.parameters())
    with pytest.raises(ValueError, match=r"shape \(\)"):
        Muon([torch.zeros(2, 2, requires_grad=True), torch.zeros((), requires_grad=True)])
    # A later group is checked too.
    opt = Muon([model.weight])
    with pytest.raises(ValueError, match="only supports matrix parameters"):
        opt.add_param_group({"params": [model.bias]})
    # Assigned a norm, they train: sign descent of the Nesterov momentum, lr not shape-adjusted.
    opt = Muon(model.parameters(), lr=0.1, weight_decay=0.0, nonmatrix_norm=Linf())
    model.weight.grad = torch.ones(3, 4)
    model.bias.grad = torch.tensor([1.0, -2.0, 0.0])
    before = model.bias.detach().clone()
    opt.step()
    torch.testing.assert_close(model.bias.detach(), before - 0.1 * torch.tensor([1.0, -1.0, 0.0]))


def test_conv_kernels_are_flattened_to_out_by_rest():
    k = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(0), requires_grad=True)
    m = k.detach().reshape(4, 12).clone().requires_grad_()
    ok, om = Muon([k], lr=0.02), Muon([m], lr=0.02)
    for t in range(3):
        g = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(t))
        k.grad, m.grad = g, g.reshape(4, 12).clone()
        ok.step()
        om.step()
    # A tolerance, not bitwise: the (4, 3, 2, 2) and (4, 12) momentum buffers are different
    # tensors (elementwise kernels may take other SIMD paths); a wrong flattening would be O(1).
    torch.testing.assert_close(k.detach().reshape(4, 12), m.detach(), rtol=1e-6, atol=1e-7)


def test_svd_polar_moves_along_u_vt_and_zero_gradient_is_a_zero_step():
    p = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    x0 = p.detach().clone()
    opt = Muon([p], lr=0.1, weight_decay=0.0, momentum=0.0, polar="svd")
    g = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p.grad = g
    opt.step()
    torch.testing.assert_close(p.detach(), x0 - 0.1 * (6 / 4) ** 0.5 * polar_svd(g)[0])
    p.grad = torch.zeros_like(g)
    x1 = p.detach().clone()
    opt.step()
    assert torch.equal(p.detach(), x1)


def test_state_dict_stores_the_norm_as_plain_values():
    p = torch.randn(3, 3, requires_grad=True)
    opt = Muon([p], nonmatrix_norm=Linf())
    sd = opt.state_dict()
    assert sd["param_groups"][0]["norm"]["name"] == "spectral"
    assert sd["param_groups"][0]["nonmatrix_norm"] == {"name": "linf"}
