"""Dense geometry functions against their definitions and the orderings seed 000 proves."""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import steepest.geometry as G

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ref_inf1(A: np.ndarray) -> float:
    """The definition (Eq. 19 at the cube's vertices): max over all 2^d sign vectors."""
    n = A.shape[1]
    S = np.array(list(itertools.product([-1.0, 1.0], repeat=n)))
    return float(np.abs(S @ A.T).sum(axis=1).max())


@st.composite
def square(draw, max_d: int = 7, kind: str = "any"):
    d = draw(st.integers(1, max_d))
    B = draw(arrays(np.float64, (d, d), elements=st.floats(-10, 10, allow_nan=False, width=32)))
    if kind == "sym":
        return B + B.T
    if kind == "psd":
        return B @ B.T
    return B


# ------------------------------------------------------------------------ exact ||H||_inf,1
@pytest.mark.parametrize("method", ["auto", "bnb", "enumerate", "brute"])
def test_exact_equals_plain_enumeration(method):
    rng = np.random.default_rng(0)
    cases = [(d, rng.standard_normal((d, d))) for d in range(1, 13)]
    cases += [(16, rng.standard_normal((16, 16))), (16, (lambda B: B @ B.T)(rng.standard_normal((16, 16))))]
    cases += [(16, G.rotated_quadratic(16, 100.0, 0.3, seed=3))]
    cases += [(5, rng.standard_normal((3, 5)))]  # rectangular
    for _, A in cases:
        ref = ref_inf1(A)
        val, s = G.norm_inf1(A, method=method, return_sign=True)
        assert val == pytest.approx(ref, rel=1e-12)
        # the returned sign vector certifies the value
        assert set(np.unique(s)) <= {-1.0, 1.0}
        assert float(np.abs(A @ s).sum()) == pytest.approx(val, rel=1e-12)


def test_bnb_equals_enumeration_at_moderate_d():
    rng = np.random.default_rng(1)
    for A in [rng.standard_normal((20, 20)), rng.choice([-1.0, 1.0], size=(20, 20))]:
        assert G.norm_inf1(A, method="bnb") == pytest.approx(G.norm_inf1(A, method="enumerate"), rel=1e-12)


def test_ties_and_degenerate_matrices():
    # rank one with equal entries: 2^(d-1) ties; all-zero; one nonzero column
    v = np.ones(14)
    assert G.norm_inf1(np.outer(v, v), method="bnb") == pytest.approx(14.0 * 14.0)
    assert G.norm_inf1(np.zeros((15, 15))) == 0.0
    A = np.zeros((15, 15))
    A[:, 3] = np.arange(15.0)
    assert G.norm_inf1(A) == pytest.approx(np.arange(15.0).sum())


@SETTINGS
@given(square(kind="sym"))
def test_l2_le_linf_le_d_l2(H):  # Eq. 23
    d = H.shape[0]
    L2, Linf = G.l2_smoothness(H), G.norm_inf1(H)
    tol = 1e-9 * (1 + L2 * d)
    assert L2 <= Linf + tol
    assert Linf <= d * L2 + tol


@SETTINGS
@given(square(kind="sym"))
def test_lower_le_exact_le_upper_symmetric(H):
    Linf = G.norm_inf1(H)
    tol = 1e-9 * (1 + G.entrywise_bound(H))
    assert G.lower_bound_eq22(H) <= Linf + tol  # Eq. 22
    assert G.heuristic_norm_inf1(H) <= Linf + tol
    assert Linf <= G.prop5_bound(H) + tol  # Prop. 5
    assert Linf <= G.entrywise_bound(H) + tol  # Eq. 80


@settings(max_examples=20, deadline=None)
@given(square(max_d=5, kind="psd"))
def test_psd_chain_linf_le_lsep_le_prop4(H):  # Prop. 4 and Prop. 6 (Eq. 27)
    pytest.importorskip("cvxpy")
    Linf = G.norm_inf1(H)
    tol = 1e-6 * (1 + G.entrywise_bound(H))
    Lsep = G.sep_smoothness(H)
    P4 = G.prop4_bound(H)
    assert Linf <= Lsep + tol
    assert Lsep <= P4 + tol
    assert P4 == pytest.approx(G.entrywise_bound(H), rel=1e-9, abs=1e-12)  # Eq. 81
    # the SDP value is attained by a feasible l: diag(l) - H is PSD and l >= 0
    val, l = G.sep_smoothness(H, return_weights=True)
    assert (l >= 0).all() and val == pytest.approx(l.sum())
    assert np.linalg.eigvalsh(np.diag(l) - H).min() >= -1e-9 * (1 + np.abs(H).max())


@settings(max_examples=15, deadline=None)
@given(square(max_d=5, kind="any"))
def test_sdp_bound_is_an_upper_bound_for_any_matrix(H):
    pytest.importorskip("cvxpy")
    Linf = G.norm_inf1(H)
    assert Linf <= G.sdp_bound(H) + 1e-7 * (1 + G.entrywise_bound(H))
    # relaxation gap at most Grothendieck's constant (< 1.783)
    assert G.sdp_bound(H) <= 1.783 * Linf + 1e-7 * (1 + G.entrywise_bound(H))


@SETTINGS
@given(
    st.floats(0.01, 100), st.floats(0.01, 100), st.floats(-1, 1),
)
def test_2x2_closed_form(a, dd, frac):  # App. B, Eq. 45-46
    b = frac * math.sqrt(a * dd) * 0.999  # keeps H positive definite
    H = np.array([[a, b], [b, dd]])
    expected = a + dd + 2 * abs(b)
    assert G.norm_inf1(H) == pytest.approx(expected, rel=1e-12)
    assert G.prop4_bound(H) == pytest.approx(expected, rel=1e-9)
    assert G.rho_diag(H) == pytest.approx((a + dd) / (a + dd + 2 * abs(b)), rel=1e-12)


def test_2x2_lsep_closed_form():
    pytest.importorskip("cvxpy")
    H = np.array([[2.0, -0.7], [-0.7, 1.0]])
    assert G.sep_smoothness(H) == pytest.approx(2.0 + 1.0 + 1.4, rel=1e-6)  # App. B


@SETTINGS
@given(square(kind="psd"))
def test_rho_diag_range(H):
    d = H.shape[0]
    if not np.abs(H).sum() > 0:
        assert math.isnan(G.rho_diag(H))
        return
    r = G.rho_diag(H)
    assert 1.0 / d - 1e-12 <= r <= 1.0 + 1e-12


def test_rho_diag_values():
    assert G.rho_diag(np.diag([1.0, 2.0, 3.0])) == 1.0
    assert G.rho_diag(np.ones((4, 4))) == pytest.approx(0.25)
    assert math.isnan(G.rho_diag(np.zeros((3, 3))))
    assert G.prop4_bound(np.zeros((3, 3))) == 0.0


def test_eq22_and_prop5_on_explicit_matrix():
    H = np.array([[2.0, 1.0], [1.0, 2.0]])  # eigenpairs 3, (1,1)/sqrt2 and 1, (1,-1)/sqrt2
    assert G.lower_bound_eq22(H) == pytest.approx(3.0 * 2.0)  # |lambda| ||v||_1 / ||v||_inf
    assert G.prop5_bound(H) == pytest.approx(3.0 * 2.0 + 1.0 * 2.0)
    assert G.l2_smoothness(H) == pytest.approx(3.0)


def test_prop4_rejects_indefinite():
    with pytest.raises(ValueError, match="positive semi-definite"):
        G.prop4_bound(np.array([[1.0, 0.0], [0.0, -1.0]]))


def test_heuristic_large_d_is_certified():
    rng = np.random.default_rng(2)
    B = rng.standard_normal((200, 200))
    H = B + B.T
    val, s = G.heuristic_norm_inf1(H, return_sign=True)
    assert float(np.abs(H @ s).sum()) == pytest.approx(val)
    assert val >= G.lower_bound_eq22(H) * 0.5  # a sanity floor, not a tight claim
    assert val <= G.prop5_bound(H) and val <= G.entrywise_bound(H)


def test_time_limit_gives_certified_bracket():
    rng = np.random.default_rng(3)
    B = rng.standard_normal((48, 48))
    H = B + B.T
    res = G.solve_norm_inf1(H, time_limit=0.05)
    assert not res.exact
    assert res.lower <= res.upper
    assert float(np.abs(H @ res.sign).sum()) == pytest.approx(res.lower)
    assert res.upper <= G.entrywise_bound(H) * (1 + 1e-12)
    with pytest.raises(TimeoutError, match="L_inf"):
        G.norm_inf1(H, time_limit=0.05)


# ------------------------------------------------------------------------ input handling
def test_input_types_agree():
    import scipy.sparse

    rng = np.random.default_rng(4)
    H = rng.standard_normal((6, 6))
    H[np.abs(H) < 0.7] = 0.0
    ref = G.norm_inf1(H)
    assert G.norm_inf1(torch.tensor(H)) == pytest.approx(ref)
    assert G.norm_inf1(torch.tensor(H).to_sparse()) == pytest.approx(ref)
    assert G.norm_inf1(scipy.sparse.csr_matrix(H)) == pytest.approx(ref)
    assert G.norm_inf1(H.tolist()) == pytest.approx(ref)


@pytest.mark.parametrize(
    "fn", [G.norm_inf1, G.l2_smoothness, G.rho_diag, G.prop5_bound, G.lower_bound_eq22, G.heuristic_norm_inf1]
)
def test_bad_matrices_raise(fn):
    with pytest.raises(ValueError, match="real"):
        fn(np.eye(3) * (1 + 1j))
    with pytest.raises(ValueError, match="NaN or inf"):
        fn(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="inf"):
        fn(np.array([[np.inf, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="2-d"):
        fn(np.ones(3))
    with pytest.raises(ValueError, match="non-empty"):
        fn(np.zeros((0, 0)))


def test_symmetric_only_functions_reject_asymmetric_and_nonsquare():
    A = np.array([[1.0, 2.0], [0.0, 1.0]])
    for fn in (G.prop4_bound, G.prop5_bound, G.lower_bound_eq22):
        with pytest.raises(ValueError, match="symmetric"):
            fn(A)
        with pytest.raises(ValueError, match="square"):
            fn(np.ones((2, 3)))


def test_argument_validation():
    with pytest.raises(ValueError, match="d <= 62"):
        G.norm_inf1(np.eye(63))
    with pytest.raises(ValueError, match="method"):
        G.norm_inf1(np.eye(3), method="magic")
    with pytest.raises(ValueError, match="time_limit"):
        G.solve_norm_inf1(np.eye(3), time_limit=0)
    with pytest.raises(ValueError, match="starts"):
        G.heuristic_norm_inf1(np.eye(3), starts=0)


def test_sep_smoothness_without_cvxpy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cvxpy", None)
    with pytest.raises(ImportError, match=r"steepest\[sdp\]"):
        G.sep_smoothness(np.eye(2))
    with pytest.raises(ImportError, match=r"steepest\[sdp\]"):
        G.sdp_bound(np.eye(2))


def test_sep_smoothness_size_guard():
    pytest.importorskip("cvxpy")
    with pytest.raises(ValueError, match="max_dim"):
        G.sep_smoothness(np.eye(10), max_dim=5)


# ------------------------------------------------------------------------ block versions
def _psd(d: int, seed: int) -> np.ndarray:
    B = np.random.default_rng(seed).standard_normal((d, d))
    return B @ B.T


def test_block_singletons_reduce_to_elementwise():
    H = _psd(6, 5)
    singles = [1] * 6
    assert G.rho_diag_block(H, singles) == pytest.approx(G.rho_diag(H))
    assert G.prop7_bound(H, singles) == pytest.approx(G.prop4_bound(H))
    assert G.entrywise_bound_block(H, singles) == pytest.approx(G.entrywise_bound(H))
    assert G.heuristic_norm_inf1_block(H, singles) <= G.norm_inf1(H) * (1 + 1e-12)


def test_block_one_block_is_spectral():
    H = _psd(5, 6)
    lmax = np.linalg.eigvalsh(H).max()
    assert G.rho_diag_block(H, [5]) == 1.0
    assert G.prop7_bound(H, [5]) == pytest.approx(lmax)  # ||H||_{2,2} = lambda_max
    assert G.heuristic_norm_inf1_block(H, [5]) == pytest.approx(lmax, rel=1e-9)


@SETTINGS
@given(square(max_d=6, kind="psd"), st.data())
def test_block_orderings(H, data):
    d = H.shape[0]
    cuts = sorted(data.draw(st.sets(st.integers(1, d - 1), max_size=d - 1))) if d > 1 else []
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, d])]
    lo = G.heuristic_norm_inf1_block(H, sizes)
    L2 = G.l2_smoothness(H)
    tol = 1e-9 * (1 + G.entrywise_bound(H))
    assert L2 <= lo + tol  # ||H||^B_inf,1 >= L_2, and the start from the top eigenvector shows it
    assert lo <= G.prop7_bound(H, sizes) + tol  # Prop. 7
    assert lo <= G.entrywise_bound_block(H, sizes) + tol  # Eq. 92


def test_block_index_lists_and_validation():
    H = _psd(4, 7)
    assert G.rho_diag_block(H, [[0, 2], [1, 3]]) == pytest.approx(
        G.rho_diag_block(H[np.ix_([0, 2, 1, 3], [0, 2, 1, 3])], [2, 2])
    )
    with pytest.raises(ValueError, match="sum to d"):
        G.rho_diag_block(H, [1, 2])
    with pytest.raises(ValueError, match="partition"):
        G.rho_diag_block(H, [[0, 1], [1, 2, 3]])


# ------------------------------------------------------------------------ density and R(x)
@SETTINGS
@given(arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e6, 1e6, allow_nan=False)))
def test_density_range(z):
    if not np.any(z):
        assert math.isnan(G.density(z))
        return
    phi = G.density(z)
    assert 1.0 / z.size - 1e-12 <= phi <= 1.0 + 1e-12


def test_density_values_and_inputs():
    assert G.density(np.ones(7)) == pytest.approx(1.0)
    assert G.density(-3 * np.ones(7)) == pytest.approx(1.0)
    e = np.zeros(10)
    e[3] = 5.0
    assert G.density(e) == pytest.approx(0.1)
    z = np.array([1.0, -2.0, 3.0])
    assert G.density(z) == pytest.approx(6.0**2 / (3 * 14.0))  # Eq. 30 by hand
    ts = [torch.tensor([1.0, -2.0]), torch.tensor([[3.0]])]
    assert G.density(ts) == pytest.approx(G.density(z))
    assert G.density(np.array([1e-200, 1e-200])) == pytest.approx(1.0)  # no underflow
    with pytest.raises(ValueError, match="NaN or inf"):
        G.density(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="real"):
        G.density(np.array([1j, 1.0]))
    with pytest.raises(ValueError, match="non-empty"):
        G.density(np.array([]))


def test_predicted_advantage_is_ratio_of_guarantees():
    rng = np.random.default_rng(8)
    H = G.rotated_quadratic(8, 30.0, 0.2, seed=1)
    g = rng.standard_normal(8)
    L2, Linf = G.l2_smoothness(H), G.norm_inf1(H)
    i_gd = np.sum(g**2) / L2  # Eq. 28
    i_sign = np.sum(np.abs(g)) ** 2 / Linf  # Eq. 29
    assert G.predicted_advantage(g, L2, Linf) == pytest.approx(i_sign / i_gd)  # Eq. 31
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="L2"):
            G.predicted_advantage(g, bad, Linf)
        with pytest.raises(ValueError, match="Linf"):
            G.predicted_advantage(g, L2, bad)


# ------------------------------------------------------------------------ rotated quadratics
def test_rotated_quadratic_definition():
    from scipy.stats import special_ortho_group

    d, lam = 6, 25.0
    H0 = G.rotated_quadratic(d, lam, 0.0, seed=3)
    np.testing.assert_allclose(H0, np.diag([1.0] * (d - 1) + [lam]), atol=1e-12)
    R = special_ortho_group.rvs(d, random_state=3)
    H1 = G.rotated_quadratic(d, lam, 1.0, seed=3)
    np.testing.assert_allclose(H1, R @ np.diag([1.0] * (d - 1) + [lam]) @ R.T, atol=1e-10)
    for theta in (0.1, 0.5, 0.9):
        H = G.rotated_quadratic(d, lam, theta, seed=3)
        assert H.dtype == np.float64 and np.array_equal(H, H.T)
        np.testing.assert_allclose(np.linalg.eigvalsh(H), [1.0] * (d - 1) + [lam], rtol=1e-10)
    # R^(1/2) R^(1/2) = R: the half rotation composes to the full one
    Hh = G.rotated_quadratic(d, lam, 0.5, seed=3)
    assert not np.allclose(Hh, H0) and not np.allclose(Hh, H1)
    np.testing.assert_array_equal(G.rotated_quadratic(d, lam, 0.4, seed=9), G.rotated_quadratic(d, lam, 0.4, seed=9))
    np.testing.assert_array_equal(G.rotated_quadratic(1, 4.0, 0.5), [[4.0]])


def test_rotation_increases_linf_on_average():
    # Fig. 3: L_inf grows as the quadratic is rotated away from the axes (L_2 stays lam_max);
    # it saturates near theta = 0.5, where the top eigenvector is already far from the axes
    thetas = (0.0, 0.1, 0.25, 0.5)
    vals = [np.mean([G.norm_inf1(G.rotated_quadratic(10, 50.0, th, seed=s)) for s in range(3)])
            for th in thetas]
    assert vals[0] == pytest.approx(50.0 + 9.0)
    assert all(a < b for a, b in zip(vals[:-1], vals[1:]))


def test_rotated_quadratic_validation():
    with pytest.raises(ValueError, match="d must"):
        G.rotated_quadratic(0, 2.0, 0.5)
    with pytest.raises(ValueError, match="lam_max"):
        G.rotated_quadratic(3, -2.0, 0.5)
    with pytest.raises(ValueError, match="theta"):
        G.rotated_quadratic(3, 2.0, 1.5)


def test_heuristic_very_large_uses_alternating_iteration_only():
    rng = np.random.default_rng(9)
    A = rng.standard_normal((4, 1_100_000))  # m n > 4e6: no flip phase
    val, s = G.heuristic_norm_inf1(A, starts=2, return_sign=True)
    assert float(np.abs(A @ s).sum()) == pytest.approx(val)
    assert float(np.abs(A.sum(axis=1)).sum()) <= val <= G.entrywise_bound(A)
