"""Operator norms and Modular/Muon with their step memory cut to the inherent buffers (issue 12).

The lean code paths (Newton-Schulz updating X in place by column blocks, the SVD polar written
over one of its factors, directions built in the storage of an owned input, Modular's two-pass
global scope) are checked against the plain formulas of docs/operator_norms.md written out here, in float64,
and the step's peak memory against the buffers each path is documented to keep.
"""

from __future__ import annotations

import pytest
import torch

import steepest.backend.policy as policy
from steepest import ColNorm, Linf, Modular, Muon, RowNorm, Spectral
from steepest._memory import step_peak_bytes
from steepest.backend import ops_for as _ops
from steepest.norms import L1ToLinf, newton_schulz, polar_svd

# Shapes that reach every branch: square (X swaps with A's storage), wide and tall with several
# column blocks (a partial last one), thin (blocks wider than A: a scratch buffer), a vector.
SHAPES = [(16, 16), (8, 20), (20, 8), (3, 50), (50, 3), (1, 30), (30, 1)]
COEFFS = (3.4445, -4.7750, 2.0315)


@pytest.fixture(params=[1 << 16, 24], ids=["chunk-default", "chunk-24"])
def chunk(request, monkeypatch):
    """The block size follows the optimizers' stream chunk; 24 elements forces several blocks
    (and partial ones) at these sizes."""
    monkeypatch.setattr(policy, "_STREAM_CHUNK", request.param)
    return request.param


def _ns_reference(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The quintic iteration as torch.optim.Muon writes it (new tensors every step)."""
    a, b, c = COEFFS
    x = g.T if g.size(0) > g.size(1) else g
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if g.size(0) > g.size(1) else x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overwrite", [False, True])
def test_newton_schulz_blocked_equals_the_plain_iteration(chunk, shape, overwrite):
    g = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    src = g.clone()
    out = newton_schulz(src, COEFFS, 5, 1e-7, overwrite=overwrite)
    # The same products, cut into column blocks: only the GEMM's blocking differs, in float64
    # that moves the last bits (entries are O(1); 1e-12 is ~1e4 ulps of slack).
    torch.testing.assert_close(out, _ns_reference(g), rtol=0, atol=1e-12)
    if not overwrite:
        assert torch.equal(src, g)  # the input is left alone unless the caller gives it up


@pytest.mark.parametrize("shape", SHAPES + [(12, 12)])
def test_polar_svd_blocked_equals_u_vt(chunk, shape):
    g = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    if shape == (12, 12):
        g = g[:, :5] @ g[:5, :]  # rank 5: the null directions are dropped
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    keep = (s > max(shape) * torch.finfo(s.dtype).eps * s.max()).to(s.dtype)
    p, nuc = polar_svd(g.clone())
    torch.testing.assert_close(p, (u * keep) @ vh, rtol=0, atol=1e-12)  # blocking only, as above
    torch.testing.assert_close(nuc, s.sum(), rtol=1e-14, atol=0)


NORMS = [Spectral("newton_schulz"), Spectral(scale="shape"), ColNorm(), ColNorm(scale="shape", transpose=True),
         RowNorm(), RowNorm(scale="shape"), L1ToLinf(scale="shape")]


@pytest.mark.parametrize("norm", NORMS, ids=repr)
@pytest.mark.parametrize("mode", ["unscaled", "normalized", "scaled", "soft"])
def test_owned_direction_equals_the_fresh_one(chunk, norm, mode):
    """A direction built in the input's storage (owned) is the one built in a new tensor."""
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(*s, dtype=torch.float64, generator=gen) for s in SHAPES]
    ref = norm.direction(xs, mode, beta=0.5, per_tensor=True)
    got = norm._direction([x.clone() for x in xs], _ops(False), mode, 0.5, True, owned=True)
    for r, d in zip(ref, got):
        torch.testing.assert_close(d, r, rtol=1e-12, atol=1e-14)  # reassociated divisions only


def _modular_reference(params, grads_per_step, norm, mode, lr, b, nonmatrix):
    """Modular's update from its definition (layerwise module docstring), every tensor's
    direction from the public ``norm.direction`` of the whole set at once (global scope)."""
    xs = [p.detach().clone() for p in params]
    ms = [torch.zeros_like(x) for x in xs]
    for grads in grads_per_step:
        us = []
        for m, g in zip(ms, grads):
            m.lerp_(g, 1 - b)
            us.append(g.lerp(m, b))
        for which, nrm in ((lambda x: x.dim() >= 2, norm), (lambda x: x.dim() < 2, nonmatrix)):
            idx = [i for i, x in enumerate(xs) if which(x)]
            ds = nrm.direction([us[i] for i in idx], mode, beta=1.0, per_tensor=False)
            for i, d in zip(idx, ds):
                xs[i].sub_(lr * d)
    return xs


@pytest.mark.parametrize("norm", [ColNorm(), RowNorm(scale="shape"), L1ToLinf(), Spectral("newton_schulz")], ids=repr)
@pytest.mark.parametrize("mode", ["scaled", "soft", "normalized"])
def test_modular_global_scope_equals_the_definition(norm, mode):
    """Global scope streams (two passes where the dual is made of reductions; Spectral's holds
    every direction): the same update as the direction of all tensors at once."""
    shapes = [(6, 9), (9, 6), (7,), (4,)]
    gen = torch.Generator().manual_seed(4)
    params = [torch.randn(*s, dtype=torch.float64, generator=gen).requires_grad_() for s in shapes]
    grads = [[torch.randn(*s, dtype=torch.float64, generator=gen) for s in shapes] for _ in range(3)]
    ref = _modular_reference(params, grads, norm, mode, 0.01, 0.8, Linf())
    opt = Modular(params, lr=0.01, norm=norm, mode=mode, scope="global", momentum=0.8,
                  nonmatrix_norm=Linf(), nonfinite="ignore")
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach(), r, rtol=0, atol=1e-12)  # float64, reassociation


def _peak_units(opt_fn, shapes):
    gen = torch.Generator().manual_seed(5)
    params = [torch.randn(*s, generator=gen).requires_grad_() for s in shapes]
    opt = opt_fn(params)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    unit = max(p.numel() * p.element_size() for p in params)
    # Beyond the matrix-sized buffers: 0-d scalars and per-column (row) norms, O(rows + cols)
    # elements (as tests/optim/test_memory.py, a 4 KiB slack).
    return (step_peak_bytes(opt, params) - 4096) / unit


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_peak_is_x_gram_and_update(nesterov):
    """Newton-Schulz keeps X (the Nesterov temporary itself, or a scaled copy of the momentum)
    plus A = X X^T and B = bA + cA^2 (m x m on the wide side): 3 of a square matrix's bytes,
    1 + 2 m/n of an m x n one. 256 x 64: 1.5, blocks through A's storage (m^2 >= the chunk)."""
    square = _peak_units(lambda ps: Muon(ps, nesterov=nesterov), [(128, 128)])
    tall = _peak_units(lambda ps: Muon(ps, nesterov=nesterov), [(1024, 256)])
    assert square <= 3.0
    assert tall <= 1.5


@pytest.mark.parametrize("norm", [ColNorm(), RowNorm(scale="shape"), L1ToLinf(scale="shape")], ids=repr)
@pytest.mark.parametrize("scope", ["per_tensor", "global"])
def test_reduction_norms_keep_one_tensor(norm, scope):
    """Directions that are an elementwise map after reductions need one tensor's bytes: the
    Nesterov temporary, overwritten by the direction (global scope: two passes)."""
    assert _peak_units(lambda ps: Modular(ps, norm=norm, mode="scaled", scope=scope, nonmatrix_norm=Linf()),
                       [(96, 64), (64,), (40, 96)]) <= 1.0


@pytest.mark.parametrize("shape", [(300, 100), (100, 300), (128, 128)])
@pytest.mark.parametrize("overwrite", [False, True])
def test_bfloat16_newton_schulz_is_torchs_bit_for_bit(shape, overwrite):
    """In bfloat16 the new X goes into a second buffer (no blocks): the same kernels on the same
    data as torch.optim.Muon's iteration, so the same bits, at sizes past the small-matrix tests."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    g = torch.randn(*shape, generator=torch.Generator().manual_seed(6))
    ref = _zeropower_via_newtonschulz(g, COEFFS, 5, 1e-7)
    assert torch.equal(newton_schulz(g.clone(), COEFFS, 5, 1e-7, torch.bfloat16, overwrite=overwrite), ref)


@pytest.mark.parametrize("norm", [ColNorm(), RowNorm(), ColNorm(transpose=True)], ids=repr)
def test_column_norms_by_row_blocks_match_the_definition(chunk, norm):
    """ColNorm's column norms over a row-major matrix are summed a block of rows at a time when
    the matrix spans 8 chunks (chunk-24: these do): the LMO ``M_:j / ||M_:j||_2`` (0 for a zero
    column) and the dual ``sum_j ||M_:j||_2``, written out with numpy-free float64 reductions."""
    m = torch.randn(40, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    m[:, 3] = 0.0
    m[5] = 0.0
    view = m.T if norm.transpose else m
    dim = norm._dim
    n = view.pow(2).sum(dim=dim, keepdim=True).sqrt()
    expected = torch.where(n > 0, view / torch.where(n > 0, n, 1.0), 0.0)
    got = norm.lmo(m)
    torch.testing.assert_close(got.T if norm.transpose else got, expected, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(norm.dual(m), n.sum(), rtol=1e-13, atol=0)  # float64 sums, reordered
