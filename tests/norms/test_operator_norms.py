"""Operator norms (docs/operator_norms.md): Spectral, ColNorm, RowNorm, L1ToLinf against their definitions.

References are computed independently with numpy (SVD, column/row norms) on the matrix view
``out x rest`` of each tensor; the group (``global``) norm is the modular one: max over tensors of
``c_i N(M_i)``, dual ``sum_i N_*(M_i) / c_i``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from steepest.norms import (
    ColNorm,
    L1ToLinf,
    Linf,
    RowNorm,
    Spectral,
    from_spec,
    newton_schulz,
    polar_svd,
)

NORMS = [
    Spectral(),
    Spectral(scale="shape"),
    Spectral(transpose=True, scale=2.5),
    ColNorm(),
    ColNorm(scale="shape"),
    ColNorm(scale="shape", transpose=True),
    RowNorm(),
    RowNorm(scale="shape"),
    L1ToLinf(),
    L1ToLinf(scale="shape"),
]
IDS = [repr(n) for n in NORMS]


def _mat(x: torch.Tensor, transpose: bool) -> np.ndarray:
    a = x.numpy()
    m = a.reshape(1, 1) if a.ndim == 0 else a.reshape(-1, 1) if a.ndim == 1 else a.reshape(a.shape[0], -1)
    return m.T if transpose else m


def _c(norm, x) -> float:
    """The shape factor from the class documentation, recomputed here."""
    if norm.scale == "none":
        return 1.0
    if norm.scale != "shape":
        return float(norm.scale)
    rows, cols = _mat(x, norm.transpose).shape
    return {
        "spectral": math.sqrt(cols / rows),
        "colnorm": 1 / math.sqrt(rows),
        "rownorm": math.sqrt(cols),
        "l1_linf": float(cols),
    }[norm.name]


def _base_np(norm, m: np.ndarray) -> tuple[float, float]:
    """(base norm, base dual) of one matrix, from the definitions."""
    if m.size == 0:
        return 0.0, 0.0
    if norm.name == "spectral":
        s = np.linalg.svd(m, compute_uv=False)
        return float(s.max()), float(s.sum())
    if norm.name in ("colnorm", "rownorm"):
        n = np.linalg.norm(m, axis=0 if norm.name == "colnorm" else 1)
        return float(n.max()), float(n.sum())
    return float(np.abs(m).max()), float(np.abs(m).sum())


def primal_np(norm, xs) -> float:
    return max((_c(norm, x) * _base_np(norm, _mat(x, norm.transpose))[0] for x in xs), default=0.0)


def dual_np(norm, xs) -> float:
    return sum(_base_np(norm, _mat(x, norm.transpose))[1] / _c(norm, x) for x in xs)


def _dot(xs, ys) -> float:
    return float(sum((x * y).sum() for x, y in zip(xs, ys)))


shapes = st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), min_size=1, max_size=3)


@st.composite
def tensor_lists(draw):
    out = []
    for shape in draw(shapes):
        arr = draw(arrays(np.float64, shape, elements=st.floats(-10, 10, allow_nan=False, allow_subnormal=False)))
        out.append(torch.from_numpy(arr))
    return out


@pytest.mark.parametrize("norm", NORMS, ids=IDS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(xs=tensor_lists())
def test_lemma4_identities_global_scope(norm, xs):
    """<z, z#> = ||z#||^2 = ||z||_*^2 [BPL20, Lemma 4] for the modular group norm, the dual and
    primal against numpy, and the LMO a unit vector attaining the dual."""
    d = float(norm.dual(xs))
    assert d == pytest.approx(dual_np(norm, xs), rel=1e-8, abs=1e-8)
    assert float(norm.norm(xs)) == pytest.approx(primal_np(norm, xs), rel=1e-8, abs=1e-10)
    s = norm.sharp(xs)
    # SVD-based quantities of near-rank-deficient matrices carry ~1e-12 relative error (LAPACK).
    assert _dot(xs, s) == pytest.approx(d**2, rel=1e-8, abs=1e-8)
    assert primal_np(norm, s) ** 2 == pytest.approx(d**2, rel=1e-8, abs=1e-8)
    u = norm.lmo(xs)
    if d > 1e-6:
        assert primal_np(norm, u) == pytest.approx(1.0, rel=1e-8)
        assert _dot(xs, u) == pytest.approx(d, rel=1e-8)


@pytest.mark.parametrize("norm", NORMS, ids=IDS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(xs=tensor_lists())
def test_lemma4_identities_per_tensor(norm, xs):
    f = norm.factor(xs, per_tensor=True)
    sharp = norm.direction(xs, "scaled", per_tensor=True)
    for x, s, dual in zip(xs, sharp, f.dual):
        assert float(dual) == pytest.approx(dual_np(norm, [x]), rel=1e-8, abs=1e-8)
        assert float((x * s).sum()) == pytest.approx(float(dual) ** 2, rel=1e-8, abs=1e-8)
        assert primal_np(norm, [s]) ** 2 == pytest.approx(float(dual) ** 2, rel=1e-8, abs=1e-8)
    # modes from the factorisation: normalized = sharp / dual, soft = sharp / (dual + beta)
    for mode, coef in (("normalized", lambda d: 1 / d), ("soft", lambda d: 1 / (d + 2.0))):
        got = norm.direction(xs, mode, beta=2.0, per_tensor=True)
        for s, g, dual in zip(sharp, got, f.dual):
            if float(dual) > 0:
                torch.testing.assert_close(g, s * coef(dual), rtol=1e-9, atol=1e-12)


def test_spectral_closed_forms():
    """sharp = ||G||_nuc U V^T, LMO = U V^T on a matrix with known SVD; conv kernels are out x rest."""
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(6, 3, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(4, 3, generator=g, dtype=torch.float64))
    s = torch.tensor([5.0, 2.0, 0.5], dtype=torch.float64)
    m = u @ torch.diag(s) @ v.T
    torch.testing.assert_close(Spectral().sharp(m), 7.5 * u @ v.T)
    torch.testing.assert_close(Spectral().lmo(m), u @ v.T)
    torch.testing.assert_close(Spectral().direction(m, "unscaled"), u @ v.T)
    assert float(Spectral().dual(m)) == pytest.approx(7.5) and float(Spectral().norm(m)) == pytest.approx(5.0)
    # RMS->RMS scaling: LMO = sqrt(fan_out / fan_in) U V^T
    torch.testing.assert_close(Spectral(scale="shape").lmo(m), math.sqrt(6 / 4) * u @ v.T)
    k = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(Spectral().lmo(k), polar_svd(k.reshape(4, 12))[0].reshape(4, 3, 2, 2))
    # A vector is a column: spectral norm = l2 norm, polar factor = v / ||v||.
    vec = torch.tensor([3.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(Spectral().lmo(vec), vec / 5)


def test_rank_deficient_polar_drops_null_directions():
    m = torch.outer(torch.tensor([1.0, 2.0, 2.0]), torch.tensor([0.0, 3.0, 4.0])).double()
    p = polar_svd(m)[0]
    torch.testing.assert_close(p, m / (3 * 5))  # rank one: U V^T = u v^T
    torch.testing.assert_close(Spectral("newton_schulz", ns_steps=30, ns_coefficients=(1.5, -0.5, 0.0)).lmo(m), p)


def test_colnorm_rownorm_l1linf_closed_forms():
    m = torch.tensor([[3.0, 0.0, 1.0], [4.0, 0.0, -1.0]], dtype=torch.float64)
    col = torch.tensor([[0.6, 0.0, 2**-0.5], [0.8, 0.0, -(2**-0.5)]], dtype=torch.float64)
    torch.testing.assert_close(ColNorm().lmo(m), col)
    torch.testing.assert_close(ColNorm().sharp(m), (5 + 2**0.5) * col)
    row = m / torch.tensor([[10**0.5], [17**0.5]], dtype=torch.float64)
    torch.testing.assert_close(RowNorm().lmo(m), row)
    torch.testing.assert_close(RowNorm(scale="shape").lmo(m), row / 3**0.5)  # Scion RowNorm(normalized=True)
    torch.testing.assert_close(ColNorm(scale="shape").lmo(m), col * 2**0.5)  # columns of RMS 1
    torch.testing.assert_close(L1ToLinf(scale="shape").lmo(m), torch.sign(m) / 3)  # Scion Sign
    # Tiny columns: their squares are subnormal, so the norms are taken after scaling by max|entry|.
    tiny = torch.tensor([[3.2e-161, 1.0], [1e-161, 0.0]], dtype=torch.float64)
    u = ColNorm().lmo(tiny)
    r = math.hypot(3.2, 1.0)
    torch.testing.assert_close(u[:, 0], torch.tensor([3.2 / r, 1.0 / r], dtype=torch.float64), rtol=1e-14, atol=0)
    # On a vector ColNorm(shape) is Scion's BiasRMS g / rms(g).
    v = torch.tensor([1.0, -2.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(ColNorm(scale="shape").lmo(v), v / v.square().mean().sqrt())


@settings(max_examples=20, deadline=None)
@given(xs=tensor_lists())
def test_l1linf_is_linf_per_tensor_and_global(xs):
    """The entrywise max norm is l_inf on the tensor; its modular global form is l_inf on the
    concatenation (a max of maxes), so both scopes agree with Linf."""
    for per_tensor in (False, True):
        for mode in ("scaled", "normalized", "unscaled"):
            a = L1ToLinf().direction(xs, mode, per_tensor=per_tensor)
            b = Linf().direction(xs, mode, per_tensor=per_tensor)
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_global_scope_is_the_modular_norm():
    """Spectral with scope global: max_i sigma_max(M_i); dual = sum of nuclear norms; each
    matrix moves along D U_i V_i^T (the modular reading, [BN24])."""
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)]
    nuc = [torch.linalg.matrix_norm(x, "nuc") for x in xs]
    assert float(Spectral().dual(xs)) == pytest.approx(float(sum(nuc)))
    assert float(Spectral().norm(xs)) == pytest.approx(max(float(torch.linalg.matrix_norm(x, 2)) for x in xs))
    for x, s in zip(xs, Spectral().sharp(xs)):
        torch.testing.assert_close(s, sum(nuc) * polar_svd(x)[0])


@pytest.mark.parametrize("norm", NORMS + [Spectral("newton_schulz")], ids=IDS + ["NS"])
def test_zero_matrix_gives_zero_step(norm):
    xs = [torch.zeros(3, 2), torch.zeros(0, 4), torch.zeros(5)]
    for mode in ("scaled", "normalized", "soft", "unscaled"):
        for per_tensor in (False, True):
            for d in norm.direction(xs, mode, per_tensor=per_tensor):
                assert torch.equal(d, torch.zeros_like(d)), mode
    assert float(norm.dual(xs)) == 0.0 and float(norm.norm(xs)) == 0.0


@pytest.mark.parametrize("shape", [(64, 64), (128, 32), (32, 200)])
def test_newton_schulz_orthogonality_error(shape):
    """NS with torch's quintic coefficients gives U S' V^T with S' in a band around 1 (not U V^T:
    the coefficients trade convergence for a steep slope at 0, torch/optim/_muon.py docstring).
    Bound, ours: singular values of NS(G) within [0.6, 1.25] (Jordan reports roughly
    Uniform(0.5, 1.5) in bf16; float32 is tighter) for the singular values of G with
    sigma_i >= 5e-3 ||G||_F. The first run applied the band to all of them and failed on the
    square case, whose smallest sigma_i is ~1e-3 ||G||_F: five steps amplify sigma/||G||_F by at
    most a^5 ~ 490, so smaller ones stay below the band (they barely move the update).
    A classical cubic Newton-Schulz (1.5, -0.5, 0) run long converges to U V^T (float32)."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    s_in = torch.linalg.svdvals(g.double())
    sv = torch.linalg.svdvals(newton_schulz(g).double())  # same descending order (monotone map)
    big = s_in >= 5e-3 * torch.linalg.norm(g.double())
    assert 0.6 <= float(sv[big].min()) and float(sv.max()) <= 1.25
    exact = polar_svd(g.double())[0].float()
    cubic = newton_schulz(g, (1.5, -0.5, 0.0), steps=60)
    assert float((cubic - exact).abs().max()) < 1e-5
    # Same singular vectors: NS(G) = U f(S) V^T, so NS(G) V = U f(S) has columns along U.
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    proj = u.T @ newton_schulz(g.double()) @ vh.T  # diagonal f(S)
    off = proj - torch.diag(torch.diagonal(proj))
    assert float(off.abs().max()) < 1e-10


def test_newton_schulz_matches_torch_muon_bitwise_in_bfloat16():
    from torch.optim._muon import _zeropower_via_newtonschulz

    for shape in [(8, 5), (5, 8), (16, 16)]:
        g = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
        ours = newton_schulz(g, dtype=torch.bfloat16)
        ref = _zeropower_via_newtonschulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7)
        assert torch.equal(ours, ref)  # same ops, same order, same dtype


def test_ns_dtype_auto_is_input_dtype_on_cpu_and_bfloat16_option():
    g = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = Spectral("newton_schulz").lmo(g)
    b = Spectral("newton_schulz", ns_dtype="bfloat16").lmo(g)
    assert a.dtype == b.dtype == torch.float64
    torch.testing.assert_close(a, newton_schulz(g))
    # bf16 has an 8-bit mantissa: entries of the unit-ish factor agree to ~1e-2 (ours: 5e-2).
    torch.testing.assert_close(a, b, rtol=0, atol=5e-2)


def test_spec_round_trip_and_bad_options():
    for n in NORMS + [Spectral("newton_schulz", ns_coefficients=(2.0, -1.5, 0.5), ns_steps=7, ns_dtype="bfloat16")]:
        assert from_spec(n.to_spec()) == n
    with pytest.raises(ValueError, match="polar must be 'svd' or 'newton_schulz'"):
        Spectral("qr")
    with pytest.raises(ValueError, match=r"ns_steps must be an integer in \[1, 100\)"):
        Spectral(ns_steps=0)
    with pytest.raises(ValueError, match="ns_coefficients must be three finite numbers"):
        Spectral(ns_coefficients=(1.0, 2.0))
    with pytest.raises(ValueError, match="ns_eps must be a finite number > 0"):
        Spectral(ns_eps=0.0)
    with pytest.raises(ValueError, match="ns_dtype must be one of"):
        Spectral(ns_dtype="float16")
    with pytest.raises(ValueError, match=r"scale must be one of \('none', 'shape'\) or a finite number > 0"):
        ColNorm(scale=-1.0)
    with pytest.raises(ValueError, match="transpose must be a bool"):
        RowNorm(transpose="yes")
    with pytest.raises(ValueError, match="mode must be one of"):
        Spectral().direction(torch.ones(2, 2), "fast")
