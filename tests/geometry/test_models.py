"""Matrix-free curvature estimates against dense float64 Hessians (torch.func.hessian)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import steepest.geometry as G
from steepest.geometry import models as M
from steepest.geometry.report import geometry_report

# torch.func.hessian (the test oracle) triggers a torch-internal deprecation warning
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def tiny_problem(seed: int = 0):
    """A 3-4-2 tanh MLP (26 parameters), cross-entropy, 12 examples in uneven batches."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(12, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (12,))
    batches = [(x[:5], y[:5]), (x[5:10], y[5:10]), (x[10:], y[10:])]
    return model, nn.functional.cross_entropy, batches, (x, y)


def reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Dense Hessian and gradient of the mean loss over all examples, by torch.func."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    numels = [p.numel() for p in model.parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(w):
        ps = {n: t.view(s) for n, t, s in zip(names, w.split(numels), shapes)}
        return nn.functional.cross_entropy(torch.func.functional_call(model, ps, (x,)), y)

    H = torch.func.hessian(f)(w0)
    g = torch.func.grad(f)(w0)
    return H.numpy(), g.numpy()


@pytest.fixture(scope="module")
def tiny():
    model, loss, batches, (x, y) = tiny_problem()
    H, g = reference(model, x, y)
    return model, loss, batches, H, g


def test_hvp_and_dense_match_reference(tiny):
    model, loss, batches, H, g = tiny
    op = M.HessianOperator(model, loss, batches)
    assert op.dim == 26 and op.num_examples == 12
    np.testing.assert_allclose(op.dense().numpy(), H, atol=1e-12)
    v = torch.randn(26, dtype=torch.float64)
    np.testing.assert_allclose(op.matvec(v).numpy(), H @ v.numpy(), atol=1e-12)
    np.testing.assert_allclose(M.hvp(model, loss, batches, v).numpy(), H @ v.numpy(), atol=1e-12)
    V = torch.randn(26, 3, dtype=torch.float64)
    np.testing.assert_allclose(op.matmat(V).numpy(), H @ V.numpy(), atol=1e-12)
    np.testing.assert_allclose(op.to_scipy() @ V.numpy(), H @ V.numpy(), atol=1e-12)
    _, grad = op.gradient()
    np.testing.assert_allclose(grad.numpy(), g, atol=1e-13)


def test_loop_fallback_matches_batched(tiny):
    model, loss, batches, H, _ = tiny
    op = M.HessianOperator(model, loss, batches)
    op._batched_ok = False  # the per-vector double backward path
    V = torch.randn(26, 4, dtype=torch.float64)
    np.testing.assert_allclose(op.matmat(V).numpy(), H @ V.numpy(), atol=1e-12)


def test_single_batch_and_param_subset(tiny):
    model, loss, batches, _, _ = tiny
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    op_one = M.HessianOperator(model, loss, (x, y))
    op_many = M.HessianOperator(model, loss, batches)
    np.testing.assert_allclose(op_one.dense().numpy(), op_many.dense().numpy(), atol=1e-12)
    # last layer only: the matching diagonal block of the full Hessian
    last = list(model[2].parameters())
    op_last = M.HessianOperator(model, loss, batches, params=last)
    assert op_last.dim == 10
    np.testing.assert_allclose(op_last.dense().numpy(), op_many.dense().numpy()[16:, 16:], atol=1e-12)


def test_spectrum(tiny):
    model, loss, batches, H, _ = tiny
    op = M.HessianOperator(model, loss, batches)
    lam, V = np.linalg.eigh(H)
    lmax, v = M.top_eigenvalue(op)
    assert lmax == pytest.approx(lam[-1], rel=1e-8)
    assert abs(float(v @ V[:, -1])) == pytest.approx(1.0, abs=1e-6)
    lmin, _ = M.top_eigenvalue(op, which="SA")
    assert lmin == pytest.approx(lam[0], rel=1e-6, abs=1e-10)
    assert M.l2_smoothness_model(op) == pytest.approx(G.l2_smoothness(H), rel=1e-8)
    vals, _ = M.top_eigenvalues(op, 3)
    np.testing.assert_allclose(vals, lam[::-1][:3], rtol=1e-8)
    with pytest.raises(ValueError, match="which"):
        M.top_eigenvalues(op, which="XX")
    with pytest.raises(ValueError, match="k must"):
        M.top_eigenvalues(op, 0)


def test_hutchinson_trace_within_its_standard_deviation(tiny):
    model, loss, batches, H, _ = tiny
    op = M.HessianOperator(model, loss, batches)
    k = 400
    est, se = M.hutchinson_trace(op, num_samples=k, seed=1)
    off = H - np.diag(np.diag(H))
    sd = math.sqrt(2 * (off**2).sum() / k)  # Var[v^T H v] = 2 sum_{i != j} H_ij^2 (Rademacher)
    assert abs(est - np.trace(H)) <= 5 * sd
    assert 0.5 * sd < se < 2 * sd


def test_hutchinson_diagonal_within_its_standard_deviation(tiny):
    model, loss, batches, H, _ = tiny
    op = M.HessianOperator(model, loss, batches)
    k = 400
    est = M.hutchinson_diagonal(op, num_samples=k, seed=2).numpy()
    off = H - np.diag(np.diag(H))
    sd = np.sqrt((off**2).sum(1) / k) + 1e-15  # Var[v_i (Hv)_i] = sum_{j != i} H_ij^2
    assert np.max(np.abs(est - np.diag(H)) / sd) < 5


def test_slq_abs_trace(tiny):
    model, loss, batches, H, _ = tiny
    op = M.HessianOperator(model, loss, batches)
    lam, V = np.linalg.eigh(H)
    absH = (V * np.abs(lam)) @ V.T
    k = 60
    # with steps >= d the Gauss quadrature is exact per probe: an unbiased Hutchinson estimate
    # of tr|H| with Var = 2 sum_{i != j} |H|_ij^2
    est, _ = M.slq_trace(op, np.abs, num_probes=k, steps=26, seed=3)
    sd = math.sqrt(2 * ((absH - np.diag(np.diag(absH))) ** 2).sum() / k)
    assert abs(est - np.abs(lam).sum()) <= 5 * sd
    # f = identity gives the trace
    est_tr, _ = M.slq_trace(op, lambda t: t, num_probes=k, steps=26, seed=3)
    assert abs(est_tr - lam.sum()) <= 5 * math.sqrt(2 * ((H - np.diag(np.diag(H))) ** 2).sum() / k)


def test_diagonal_concentration(tiny):
    model, loss, batches, H, _ = tiny
    op = M.HessianOperator(model, loss, batches)
    dc = M.diagonal_concentration(op, num_columns=100)
    assert dc.exact and dc.columns == 26
    assert dc.rho == pytest.approx(G.rho_diag(H), rel=1e-10)
    assert dc.abs_sum == pytest.approx(G.entrywise_bound(H), rel=1e-10)
    # sampled columns: an estimate within a few of its standard errors
    errs = []
    for seed in range(5):
        s = M.diagonal_concentration(op, num_columns=16, seed=seed)
        assert not s.exact and s.stderr > 0
        errs.append(abs(s.rho - G.rho_diag(H)) / s.stderr)
    assert np.median(errs) < 3


def test_inf1_lower_bound_is_certified(tiny):
    model, loss, batches, H, g = tiny
    op = M.HessianOperator(model, loss, batches)
    exact = G.norm_inf1(H)
    _, V = np.linalg.eigh(H)
    lb = M.inf1_lower_bound(op, eigvecs=[V[:, -1]], extra={"grad": torch.tensor(g)}, seed=0)
    s = lb.sign.numpy()
    assert set(np.unique(s)) <= {-1.0, 1.0}
    assert lb.value == pytest.approx(float(np.abs(H @ s).sum()), rel=1e-12)
    assert lb.value <= exact * (1 + 1e-12)
    # never worse than its own starts (the sign iteration only increases ||H s||_1)
    top_sign = np.where(V[:, -1] >= 0, 1.0, -1.0)
    assert lb.value >= float(np.abs(H @ top_sign).sum()) * (1 - 1e-12)
    assert lb.value >= float(np.abs(H @ np.ones(26)).sum()) * (1 - 1e-12)
    assert set(lb.values) >= {"ones", "eigvec0", "grad", "random0"}


def test_gradient_density_and_training_log(tiny):
    model, loss, batches, _, g = tiny
    assert M.gradient_density(model, loss, batches) == pytest.approx(G.density(g), rel=1e-12)
    m2, loss2, batches2, _ = tiny_problem(seed=1)
    opt = torch.optim.SGD(m2.parameters(), lr=0.5)
    hist = M.density_along_training(m2, loss2, batches2, opt, 7, eval_data=batches2, every=3)
    assert [t for t, _, _ in hist] == [0, 3, 6, 7]
    assert all(1 / 26 <= phi <= 1 for _, _, phi in hist)
    assert hist[-1][1] < hist[0][1]  # full-batch loss went down
    with pytest.raises(ValueError, match="every"):
        M.density_along_training(m2, loss2, batches2, opt, 3, eval_data=batches2, every=0)


def test_validation(tiny):
    model, loss, batches, _, _ = tiny
    with pytest.raises(ValueError, match="single tensor"):
        M.HessianOperator(model, loss, torch.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        M.HessianOperator(model, loss, [])
    with pytest.raises(ValueError, match="pair"):
        M.HessianOperator(model, loss, [(torch.zeros(2, 3),)])
    op = M.HessianOperator(model, loss, batches)
    with pytest.raises(ValueError, match="length dim"):
        op.matvec(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_samples"):
        M.hutchinson_trace(op, num_samples=0)
    frozen = nn.Linear(2, 2)
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="require grad"):
        M.HessianOperator(frozen, loss, batches)


def test_nondeterministic_model_is_rejected():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 2)).double().train()
    data = (torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    op = M.HessianOperator(model, nn.functional.cross_entropy, data)
    with pytest.raises(ValueError, match="deterministic"):
        op.check_deterministic()
    model.eval()
    op.check_deterministic()


def test_zero_curvature_linear_loss():
    model = nn.Linear(3, 1, bias=False).double()
    data = (torch.randn(4, 3, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64))
    op = M.HessianOperator(model, lambda out, y: (out - y).mean(), data)
    # Exact zeros: no parameter's gradient has a graph, so no double backward runs at all.
    with pytest.warns(RuntimeWarning, match=r"gradient w.r.t. the model's output does not depend .* linear in it"):
        np.testing.assert_array_equal(op.dense().numpy(), np.zeros((3, 3)))


class _OnceSquare(torch.autograd.Function):
    """mean((x - y)^2) with a backward autograd cannot differentiate again."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return ((x - y) ** 2).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return g * 2 * (x - y) / x.numel(), None


def test_once_differentiable_loss_warns_instead_of_a_silent_zero():
    """A @once_differentiable Function at the loss makes autograd return its gradient without a
    graph (no error): the Hessian would lack the loss-curvature term silently (only 2.bias's row
    would be all zero). The operator warns; a twice-differentiable loss gets no warning."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    data = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64))
    op = M.HessianOperator(model, _OnceSquare.apply, data)
    with pytest.warns(RuntimeWarning, match=r"no loss-curvature term .*once_differentiable"):
        op.matvec(torch.ones(op.dim, dtype=torch.float64))
    ok = M.HessianOperator(model, lambda out, y: ((out - y) ** 2).mean(), data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ok.matvec(torch.ones(ok.dim, dtype=torch.float64)).abs().sum() > 0


def test_report_dense_exact_and_matrix_free_agree_with_reference(tiny):
    model, loss, batches, H, g = tiny
    exact = G.norm_inf1(H)
    lam = np.linalg.eigvalsh(H)
    rep = geometry_report(model, loss, batches, mode="dense", exact_max=30)
    assert rep.mode == "dense+exact"
    assert rep.linf_lower == pytest.approx(exact) and rep.linf_upper == pytest.approx(exact)
    assert rep.L2 == pytest.approx(np.abs(lam).max())
    assert rep.lambda_bar == pytest.approx(np.abs(lam).mean())
    assert rep.rho_diag == pytest.approx(G.rho_diag(H))
    assert rep.density == pytest.approx(G.density(g))
    lo, _ = rep.advantage
    assert lo == pytest.approx(G.predicted_advantage(g, np.abs(lam).max(), exact))
    text = rep.format()
    assert "L_2 = max|lambda|" in text and "R in [" in text

    mf = geometry_report(model, loss, batches, mode="matrix-free", num_columns=64, slq_steps=26)
    assert mf.mode == "matrix-free"
    assert mf.L2 == pytest.approx(np.abs(lam).max(), rel=1e-6)
    assert mf.lambda_max == pytest.approx(lam.max(), rel=1e-6)
    assert mf.rho_diag == pytest.approx(G.rho_diag(H))  # all 26 columns: exact
    assert mf.linf_upper_certified
    assert mf.linf_lower <= exact * (1 + 1e-9) <= mf.linf_upper * (1 + 1e-9)
    assert mf.to_dict()["verdict"] == mf.verdict()
    with pytest.raises(ValueError, match="mode"):
        geometry_report(model, loss, batches, mode="nope")


def test_verdict_follows_the_bracket():
    from steepest.geometry.report import GeometryReport

    def rep(lower, upper, phi=1.0, L2=1.0, d=10):
        return GeometryReport(
            name="x", dim=d, num_examples=1, loss=0.0, grad_norm=1.0, density=phi, L2=L2,
            lambda_max=L2, lambda_min=0.0, trace=L2, abs_trace=L2, rho_diag=1.0,
            rho_diag_stderr=0.0, linf_lower=lower, linf_lower_source="a", linf_upper=upper,
            linf_upper_source="b", linf_upper_certified=True, mode="dense",
        )

    # R = phi d L2 / L_inf = 10 / L_inf
    assert rep(2.0, 5.0).verdict().startswith("sign descent")  # R in [2, 5]
    assert rep(20.0, 50.0).verdict().startswith("gradient descent")  # R in [0.2, 0.5]
    assert rep(5.0, 20.0).verdict().startswith("undecided")  # R in [0.5, 2]
    assert rep(5.0, 20.0).advantage == pytest.approx((0.5, 2.0))
    assert rep(2.0, 5.0, phi=math.nan).verdict().startswith("undetermined")
    assert rep(5.0, 20.0).outlier_ratio == pytest.approx(10.0)


def test_parameter_with_a_constant_gradient_is_named():
    """A loss curved in the model's output but linear in one parameter (an offset added to the
    loss): the parameter is named, and its Hessian row and column are zero."""
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 1).double()
            self.shift = nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x):
            return self.lin(x), self.shift

    data = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64))
    model = Model()
    op = M.HessianOperator(model, lambda out, y: ((out[0] - y) ** 2).mean() + out[1], data)
    with pytest.warns(RuntimeWarning, match=r"gradient of shift does not depend"):
        H = op.dense()
    k = [p is model.shift for p in op.params].index(True)
    rest = [i for i in range(op.dim) if i != k]
    # Exact zeros, not rounding: the operator fills a parameter autograd returns nothing for
    # (no graph, or unused) with zeros, on every CPU.
    assert torch.all(H[k] == 0) and torch.all(H[:, k] == 0) and H[rest][:, rest].abs().sum() > 0


class _OnceTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class _Act(nn.Module):
    def forward(self, x):
        return _OnceTanh.apply(x)


def test_once_differentiable_inside_the_model_is_refused():
    """Inside the model, autograd cuts the double backward at the @once_differentiable Function
    without an error (the first layer's Hessian-vector products came out ~1e-17, against O(1)
    with torch.tanh): the operator refuses, naming the parameters behind it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), _Act(), nn.Linear(4, 2)).double()
    data = (torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,)))
    op = M.HessianOperator(model, nn.functional.cross_entropy, data)
    with pytest.raises(ValueError, match=r"gradient of 0.weight, 0.bias passes through .*once_differentiable"):
        op.matvec(torch.ones(op.dim, dtype=torch.float64))
    model[1] = nn.Tanh()
    ok = M.HessianOperator(model, nn.functional.cross_entropy, data)
    assert ok.matvec(torch.ones(ok.dim, dtype=torch.float64))[:12].abs().max() > 1e-3
