"""Norms against their definitions [BPL20, Sec. 3.1, Table 1, App. A.1, Lemma 4]."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize

from steepest.norms import L1, L2, BlockNorm, Linf, Lp, from_spec

NORMS = [L2(), Linf(), L1(), Lp(3), Lp(2.5), Lp(4), Lp(8), BlockNorm(), BlockNorm("row")]
IDS = [repr(n) for n in NORMS]


def _cat(xs):
    return torch.cat([x.reshape(-1) for x in xs])


def primal_np(norm, xs):
    """The primal norm from its definition, on the concatenated numpy vector."""
    if isinstance(norm, BlockNorm):
        blocks = []
        for x in xs:
            if norm.blocks == "row" and x.dim() >= 2:
                blocks += [r.reshape(-1).numpy() for r in x]
            else:
                blocks.append(x.reshape(-1).numpy())
        return max((np.linalg.norm(b) for b in blocks), default=0.0)
    v = _cat(xs).numpy()
    p = {"l2": 2, "linf": np.inf, "l1": 1}.get(norm.name, getattr(norm, "p", None))
    return np.linalg.norm(v, ord=p) if v.size else 0.0


def dual_np(norm, xs):
    if isinstance(norm, BlockNorm):
        tot = 0.0
        for x in xs:
            if norm.blocks == "row" and x.dim() >= 2:
                tot += sum(np.linalg.norm(r.reshape(-1).numpy()) for r in x)
            else:
                tot += np.linalg.norm(x.reshape(-1).numpy())
        return tot
    v = _cat(xs).numpy()
    q = {"l2": 2, "linf": 1, "l1": np.inf}.get(norm.name)
    if q is None:
        q = 1 if math.isinf(norm.p) else norm.p / (norm.p - 1)
    return np.linalg.norm(v, ord=q)


shapes = st.lists(
    st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), min_size=1, max_size=3
)


@st.composite
def tensor_lists(draw):
    out = []
    for shape in draw(shapes):
        arr = draw(
            arrays(np.float64, shape, elements=st.floats(-10, 10, allow_nan=False, allow_subnormal=False, width=64))
        )
        out.append(torch.from_numpy(arr))
    return out


@pytest.mark.parametrize("norm", NORMS, ids=IDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(xs=tensor_lists())
def test_lemma4_identities(norm, xs):
    """<z, z#> = ||z#||^2 = ||z||_*^2 [BPL20, Lemma 4], and the dual against numpy."""
    s = norm.sharp(xs)
    d = float(norm.dual(xs))
    assert d == pytest.approx(dual_np(norm, xs), rel=1e-9, abs=1e-9)
    inner = float(_cat(xs) @ _cat(s))
    sq = primal_np(norm, s) ** 2
    assert inner == pytest.approx(d**2, rel=1e-9, abs=1e-9)
    assert sq == pytest.approx(d**2, rel=1e-9, abs=1e-9)
    # The LMO is a unit vector attaining the dual norm: <z, lmo> = ||z||_*, ||lmo|| = 1.
    u = norm.lmo(xs)
    if d > 0:
        assert primal_np(norm, u) == pytest.approx(1.0, rel=1e-9)
        assert float(_cat(xs) @ _cat(u)) == pytest.approx(d, rel=1e-9)
    # Primal norm matches numpy.
    assert float(norm.norm(xs)) == pytest.approx(primal_np(norm, xs), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("norm", NORMS, ids=IDS)
@settings(max_examples=25, deadline=None)
@given(xs=tensor_lists())
def test_foreach_backend_matches_loop(norm, xs):
    for per_tensor in (False, True):
        for mode in ("scaled", "normalized", "soft", "unscaled"):
            a = norm.direction(xs, mode, per_tensor=per_tensor, foreach=False)
            b = norm.direction(xs, mode, per_tensor=per_tensor, foreach=True)
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def _numeric_sharp(norm, z: np.ndarray) -> float:
    """max_x <z,x> - 1/2 ||x||^2 by a numerical optimizer from several starts."""
    shape = [(z.size,)]

    def neg(x):
        xs = [torch.from_numpy(x.reshape(shape[0]))]
        return -(z @ x - 0.5 * primal_np(norm, xs) ** 2)

    best = np.inf
    rng = np.random.default_rng(0)
    for x0 in [z, np.sign(z), rng.normal(size=z.size), np.zeros(z.size)]:
        res = minimize(neg, x0, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
        best = min(best, res.fun)
    return -best


@pytest.mark.parametrize("norm", [n for n in NORMS if not isinstance(n, BlockNorm)] + [BlockNorm()], ids=repr)
@pytest.mark.parametrize("seed", range(3))
def test_sharp_maximizes_the_defining_objective(norm, seed):
    """z# attains max_x <z,x> - 1/2||x||^2 = 1/2 ||z||_*^2 [BPL20, Eq. 32], and no numerical
    optimizer finds a better x."""
    z = np.random.default_rng(seed).normal(size=3)
    zt = torch.from_numpy(z)
    s = norm.sharp(zt).numpy()
    value = z @ s - 0.5 * primal_np(norm, [torch.from_numpy(s)]) ** 2
    assert value == pytest.approx(0.5 * float(norm.dual(zt)) ** 2, rel=1e-9)
    assert _numeric_sharp(norm, z) <= value + 1e-6


def test_table1_closed_forms():
    z = torch.tensor([3.0, -4.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(L2().sharp(z), z)
    torch.testing.assert_close(Linf().sharp(z), 8.0 * torch.sign(z))
    torch.testing.assert_close(L1().sharp(z), torch.tensor([0.0, -4.0, 0.0, 0.0], dtype=torch.float64))
    # Lp with p = 3, q = 3/2: sign(z)|z|^(1/2) ||z||_q^(1/2).
    q = 1.5
    expected = torch.sign(z) * z.abs() ** 0.5 * torch.linalg.vector_norm(z, q) ** 0.5
    torch.testing.assert_close(Lp(3).sharp(z), expected)
    # Block norm (Eq. 37-38): (sum_B ||z_B||) z_B / ||z_B||.
    xs = [torch.tensor([3.0, 4.0], dtype=torch.float64), torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)]
    out = BlockNorm().sharp(xs)
    torch.testing.assert_close(out[0], 7.0 * xs[0] / 5.0)
    torch.testing.assert_close(out[1], 7.0 * xs[1] / 2.0)


def test_lp_extremes_match_l2_and_linf():
    z = torch.randn(10, dtype=torch.float64)
    torch.testing.assert_close(Lp(2).sharp(z), L2().sharp(z))
    torch.testing.assert_close(Lp(math.inf).sharp(z), Linf().sharp(z))
    # As p grows the l_p sharp approaches the l_inf sharp.
    err = [float((Lp(p).sharp(z) - Linf().sharp(z)).abs().max()) for p in (4, 16, 256)]
    assert err[0] > err[1] > err[2]


def test_lp_eps_forms():
    z = torch.tensor([-2.0, 0.0, 0.5], dtype=torch.float64)
    p, eps = 4.0, 0.1
    e = (p - 2) / (p - 1)
    paper = Lp(p, eps, "paper").direction(z, "unscaled")
    code = Lp(p, eps, "code").direction(z, "unscaled")
    torch.testing.assert_close(paper, z / (z.abs() ** e + eps))
    torch.testing.assert_close(code, z * (z.abs() + eps) ** (-e))


def test_list_in_list_out_and_tensor_in_tensor_out():
    z = torch.randn(3, 2)
    assert isinstance(Linf().sharp(z), torch.Tensor)
    out = Linf().sharp([z, z])
    assert isinstance(out, list) and len(out) == 2
    # Global scope: the l1 norm of the concatenation (twice that of one copy).
    torch.testing.assert_close(out[0], 2 * Linf().sharp(z))


def test_per_tensor_scope_equals_norm_of_each_tensor():
    xs = [torch.randn(3, 2, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    for norm in NORMS:
        got = norm.direction(xs, "scaled", per_tensor=True)
        for g, x in zip(got, xs):
            torch.testing.assert_close(g, norm.sharp(x))


@pytest.mark.parametrize("norm", NORMS, ids=IDS)
def test_zero_vector_is_zero_everywhere(norm):
    xs = [torch.zeros(3, 2), torch.zeros(0), torch.zeros(4)]
    for mode in ("scaled", "normalized", "soft", "unscaled"):
        for per_tensor in (False, True):
            for d in norm.direction(xs, mode, per_tensor=per_tensor):
                assert torch.equal(d, torch.zeros_like(d))
    assert float(norm.dual(xs)) == 0.0 and float(norm.norm(xs)) == 0.0


def test_large_p_and_large_values_stay_finite():
    z = torch.tensor([1e30, -1e-30, 0.0, 3.0], dtype=torch.float32)
    for p in (8.0, 64.0, 1e6):
        for eps in (0.0, 1e-8):
            d = Lp(p, eps).direction(z, "scaled")
            assert torch.isfinite(d).all(), (p, eps)
            assert torch.isfinite(Lp(p).norm(z))


def test_coordinate_descent_ties_pick_one_coordinate():
    z = torch.tensor([1.0, -2.0, 2.0])
    s = L1().sharp(z)
    assert int((s != 0).sum()) == 1 and float(s[1]) == -2.0


def test_spec_round_trip_and_errors():
    for n in NORMS + [Lp(5, 1e-3, "code")]:
        assert from_spec(n.to_spec()) == n
    assert from_spec("linf") == Linf()
    with pytest.raises(ValueError, match=r"p must be a real number >= 2"):
        Lp(1.5)
    with pytest.raises(ValueError, match="p must"):
        Lp(float("nan"))
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        Lp(3, -1.0)
    with pytest.raises(ValueError, match="eps_mode must be"):
        Lp(3, 0.1, "fast")
    with pytest.raises(ValueError, match="unknown norm"):
        from_spec({"name": "nuclear"})
    with pytest.raises(ValueError, match="blocks must be"):
        BlockNorm("col")
    with pytest.raises(ValueError, match="mode must be one of"):
        L2().direction(torch.ones(2), "fast")


@pytest.mark.parametrize("norm", NORMS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiny_vectors_have_unit_lmo(norm, dtype):
    """Tiny inputs never give inf/NaN (no 1/||z|| overflow): the LMO is a unit vector, or exactly
    zero when the norm itself underflows to 0 (then the vector is treated as the zero vector)."""
    tiny = torch.finfo(dtype).tiny
    for scale in (4.0, 1 / 64):  # normal and subnormal entries
        z = torch.tensor([tiny * scale, -tiny * scale / 2, 0.0], dtype=dtype)
        u = norm.lmo(z)
        assert torch.isfinite(u).all()
        size = primal_np(norm, [u.double()])
        if float(norm.dual(z)) == 0.0:
            assert size == 0.0
        else:
            assert size == pytest.approx(1.0, rel=1e-4 if scale < 1 else 1e-6)


@pytest.mark.parametrize("norm", NORMS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("where", ["squares-subnormal", "squares-overflow"])
def test_l2_based_norms_exact_where_squares_under_or_overflow(norm, dtype, where):
    """Entries whose squares are subnormal (|x| ~ sqrt(tiny), e.g. 1.6e-162 in float64, which
    hypothesis found) or overflow (|x| ~ sqrt(max)) must still give the dual norm of the
    definition and a unit LMO: sqrt(sum x^2) would be off by up to 30% or inf there."""
    fi = torch.finfo(dtype)
    base = math.sqrt(fi.tiny) / 3 if where == "squares-subnormal" else math.sqrt(fi.max) * 2
    z = torch.tensor([[base, base], [-base / 2, base / 4]], dtype=dtype)
    ref = dual_np(norm, [z.double() / base]) * base  # the definition, on rescaled entries
    assert float(norm.dual(z)) == pytest.approx(ref, rel=1e-5)
    u = norm.lmo(z)
    assert torch.isfinite(u).all()
    assert primal_np(norm, [u.double()]) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_l1_sync_free_units_equal_the_host_choice(per_tensor, seed):
    """The sync-free one-hot units (accelerators, torch.compile) pick the same coordinate as the
    host path: first maximal |x| in concatenation order, ties and zero tensors included."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randint(-3, 4, s, generator=g).double() for s in [(3, 4), (5,), (2, 2, 2)]]
    xs.append(torch.zeros(4, dtype=torch.float64))  # a zero tensor moves nothing
    xs.append(torch.randn(3, 2, dtype=torch.float64, generator=g).t())  # non-contiguous
    from steepest.backend import LoopOps as _Ops

    host = L1()._factor(xs, _Ops, per_tensor)
    dev = L1._factor_on_device(xs, _Ops.norms(xs, math.inf), per_tensor)
    for a, b in zip(host.unit, dev.unit):
        assert torch.equal(a, b)  # one-hot of exact values: no rounding anywhere
    assert torch.equal(host.dual, dev.dual)
    moved = sum(int((u != 0).sum()) for u in dev.unit)
    assert moved == (sum(1 for x in xs if x.abs().max() > 0) if per_tensor else 1)
