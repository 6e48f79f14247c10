"""steepest.fisher against definitions: torch.func Jacobians/Hessians, per-example autograd loops
and the expectation of Eq. 7.2 computed by enumeration/quadrature, all in float64.

Tolerances: 1e-10 (relative to the matrix scale) where two float64 computations of the same
quantity take different kernel orders (einsum vs autograd vs a Python loop); statistical checks
state their own bound in a comment.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import steepest
from steepest.fisher import (
    GLM,
    EmpiricalFisherDescent,
    NaturalGradientDescent,
    conjugate_gradient,
    cosine_similarity,
    empirical_fisher,
    empirical_fisher_vp,
    fisher,
    fisher_vp,
)

D64 = torch.float64
TOL = 1e-10


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    scale = max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max())


def make(likelihood: str, n: int = 9, d: int = 3, C: int = 4, seed: int = 0,
         reduction: str = "sum", variance: float = 1.0) -> GLM:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=D64)
    if likelihood == "gaussian":
        return GLM(X, torch.randn(n, generator=g, dtype=D64) * 2, "gaussian",
                   variance=variance, reduction=reduction)
    if likelihood == "bernoulli":
        return GLM(X, torch.randint(0, 2, (n,), generator=g).to(D64), "bernoulli",
                   reduction=reduction)
    return GLM(X, torch.randint(0, C, (n,), generator=g), "categorical", num_classes=C,
               reduction=reduction)


def theta_for(m: GLM, seed: int = 1, batch: tuple[int, ...] = ()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, m.num_params, generator=g, dtype=D64)


def nll_reference(m: GLM, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log p(y | x) for one example, written directly from the likelihood (Gaussian without
    the constant), independent of GLM's vectorized code."""
    if m.likelihood == "gaussian":
        return (y - x @ theta) ** 2 / (2 * m.variance)
    if m.likelihood == "bernoulli":
        p = torch.sigmoid(x @ theta)
        return -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    W = theta.reshape(m.num_features, m.num_classes)
    return -torch.log_softmax(x @ W, dim=-1)[y]


LIKS = ["gaussian", "bernoulli", "categorical"]


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("lik", LIKS)
def test_per_example_gradients_match_autograd_loop(lik):
    m = make(lik)
    th = theta_for(m)
    G = m.per_example_gradients(th)
    for n in range(m.num_examples):
        t = th.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(nll_reference(m, t, m.features[n], m.targets[n]), t)
        _close(G[n], g)
    _close(m.per_example_losses(th),
           torch.stack([nll_reference(m, th, m.features[n], m.targets[n])
                        for n in range(m.num_examples)]))


@pytest.mark.parametrize("lik", LIKS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gradient_is_autograd_of_loss(lik, reduction):
    m = make(lik, reduction=reduction)
    th = theta_for(m)
    _close(m.gradient(th), torch.func.grad(m.loss)(th))
    scale = 1.0 / m.num_examples if reduction == "mean" else 1.0
    _close(m.gradient(th), m.per_example_gradients(th).sum(0) * scale)


# ------------------------------------------------------------------ the Fisher
@pytest.mark.parametrize("lik", LIKS)
def test_fisher_is_ggn_from_torch_func_jacobians(lik):
    """Eq. 7.14 / D.7: F = sum_n J_n^T hess_f(-log p) J_n with J_n from torch.func.jacrev of the
    model outputs and hess_f from torch.func.hessian of the per-example NLL in f."""
    m = make(lik)
    th = theta_for(m)
    J = torch.func.jacrev(m.outputs)(th)  # (N, [C,] P)
    F = torch.zeros(m.num_params, m.num_params, dtype=D64)
    for n in range(m.num_examples):
        f_n = m.outputs(th)[n]
        if lik == "gaussian":
            h = torch.func.hessian(lambda f, n=n: (m.targets[n] - f) ** 2 / (2 * m.variance))(f_n)
        elif lik == "bernoulli":
            h = torch.func.hessian(
                lambda f, n=n: torch.nn.functional.softplus(f) - m.targets[n] * f)(f_n)
        else:
            h = torch.func.hessian(lambda f, n=n: -torch.log_softmax(f, -1)[m.targets[n]])(f_n)
        Jn = J[n].reshape(-1, m.num_params)
        F += Jn.T @ h.reshape(Jn.shape[0], Jn.shape[0]) @ Jn
    _close(m.fisher(th), F)


@pytest.mark.parametrize("lik", LIKS)
def test_fisher_equals_hessian_for_glm(lik):
    """Prop. 7.1 + linear f (Eq. D.18): the Fisher of a canonical GLM is the loss Hessian."""
    m = make(lik)
    th = theta_for(m)
    _close(m.fisher(th), torch.func.hessian(m.loss)(th))


@pytest.mark.parametrize("lik", LIKS)
def test_fisher_is_expected_outer_product_eq_7_2(lik):
    """Eq. 7.2 by definition: sum_n E_{y ~ p_theta(y|x_n)}[g_n(y) g_n(y)^T]. Discrete labels:
    exact enumeration. Gaussian: Gauss-Hermite quadrature with 5 nodes, exact for the
    polynomial (degree 2 in y) integrand."""
    m = make(lik, n=6)
    th = theta_for(m)
    F = torch.zeros(m.num_params, m.num_params, dtype=D64)
    for n in range(m.num_examples):
        x = m.features[n]
        if lik == "gaussian":
            nodes, weights = np.polynomial.hermite_e.hermegauss(5)
            f = x @ th
            ys = [f + math.sqrt(m.variance) * float(t) for t in nodes]
            ws = [float(w) / math.sqrt(2 * math.pi) for w in weights]
        elif lik == "bernoulli":
            p1 = torch.sigmoid(x @ th)
            ys, ws = [torch.tensor(0.0, dtype=D64), torch.tensor(1.0, dtype=D64)], [1 - p1, p1]
        else:
            probs = torch.softmax(x @ th.reshape(m.num_features, m.num_classes), -1)
            ys, ws = [torch.tensor(c) for c in range(m.num_classes)], list(probs)
        for y, w in zip(ys, ws):
            t = th.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(nll_reference(m, t, x, y), t)
            F += w * torch.outer(g, g)
    _close(m.fisher(th), F)


@pytest.mark.parametrize("lik", LIKS)
def test_empirical_fisher_is_sum_of_outer_products_eq_7_3(lik):
    m = make(lik)
    th = theta_for(m)
    G = torch.func.jacrev(m.per_example_losses)(th)  # (N, P) by autograd
    _close(m.empirical_fisher(th), G.T @ G)
    mm = make(lik, reduction="mean")
    _close(mm.empirical_fisher(th), G.T @ G / m.num_examples)
    _close(mm.fisher(th), m.fisher(th) / m.num_examples)


@pytest.mark.parametrize("lik", LIKS)
def test_matrix_free_products_and_batches(lik):
    m = make(lik)
    th = theta_for(m, batch=(2, 3))
    v = theta_for(m, seed=5, batch=(2, 3))
    F, E = m.fisher(th), m.empirical_fisher(th)
    _close(m.fisher_vp(th, v), (F @ v.unsqueeze(-1)).squeeze(-1))
    _close(m.empirical_fisher_vp(th, v), (E @ v.unsqueeze(-1)).squeeze(-1))
    # a batch of parameters gives the same matrices as one at a time
    for i in range(2):
        for j in range(3):
            _close(F[i, j], m.fisher(th[i, j]))
            _close(E[i, j], m.empirical_fisher(th[i, j]))
            _close(m.gradient(th)[i, j], m.gradient(th[i, j]))


def test_functional_forms_match_glm():
    m = make("categorical")
    th, v = theta_for(m), theta_for(m, seed=3)
    kw = dict(num_classes=m.num_classes)
    _close(fisher(m.features, th, "categorical", **kw), m.fisher(th))
    _close(empirical_fisher(m.features, m.targets, th, "categorical", **kw),
           m.empirical_fisher(th))
    _close(fisher_vp(m.features, th, v, "categorical", **kw), m.fisher_vp(th, v))
    _close(empirical_fisher_vp(m.features, m.targets, th, v, "categorical", **kw),
           m.empirical_fisher_vp(th, v))


def test_gaussian_noise_variance_scales_fisher_and_ef():
    m1, m2 = make("gaussian", variance=1.0), make("gaussian", variance=2.5)
    th = theta_for(m1)
    _close(m2.fisher(th), m1.fisher(th) / 2.5)
    _close(m2.empirical_fisher(th), m1.empirical_fisher(th) / 2.5**2)  # residuals / s2, squared


def test_fisher_does_not_depend_on_labels_but_ef_does():
    m = make("bernoulli")
    flipped = GLM(m.features, 1 - m.targets, "bernoulli")
    th = theta_for(m)
    _close(flipped.fisher(th), m.fisher(th))
    assert float((flipped.empirical_fisher(th) - m.empirical_fisher(th)).abs().max()) > 1e-3
    # without targets the Fisher still works
    _close(GLM(m.features, None, "bernoulli").fisher(th), m.fisher(th))


@pytest.mark.parametrize("lik", LIKS)
def test_ef_is_noncentral_second_moment_eq_7_22(lik):
    """Eq. 7.22: with the stochastic gradient g = N g_n, n uniform (sum loss),
    N F~ = Cov[g] + grad R grad R^T (population covariance over the N examples)."""
    m = make(lik)
    th = theta_for(m)
    N = m.num_examples
    g = N * m.per_example_gradients(th)
    cov = (g - g.mean(0)).T @ (g - g.mean(0)) / N
    grad = m.gradient(th)
    _close(N * m.empirical_fisher(th), cov + torch.outer(grad, grad))


def test_ef_equals_fisher_at_uniform_predictions_logistic():
    """App. D.3 (Eq. D.33): at theta = 0, (sigma - y)^2 = 1/4 = sigma (1 - sigma) for y in
    {0, 1}, so the EF and the Fisher coincide."""
    m = make("bernoulli")
    th = torch.zeros(m.num_params, dtype=D64)
    _close(m.empirical_fisher(th), m.fisher(th))


def test_ef_vanishes_where_fisher_does_not_when_data_is_fit():
    """Sec. 7.4.1, Eq. 7.18: with zero residuals the EF is 0 while the Fisher (= Hessian) is not."""
    X = torch.randn(10, 3, dtype=D64, generator=torch.Generator().manual_seed(2))
    th = torch.tensor([1.0, -2.0, 0.5], dtype=D64)
    m = GLM(X, X @ th, "gaussian")
    # residuals are rounding errors (~1e-16; einsum vs matmul), so EF entries are ~1e-32
    assert float(m.empirical_fisher(th).abs().max()) < 1e-25
    _close(m.fisher(th), X.T @ X)


# ------------------------------------------------------------------ statistics
def test_ef_close_to_fisher_at_optimum_of_well_specified_model_only():
    """Eq. 7.20-7.21: with N large and a correctly specified model, EF/N -> F/N at the MLE.
    Least squares, y = X w + eps, eps ~ N(0, 1), N = 20000: the EF's entries are means of
    eps_n^2 x x^T, relative sampling error ~ sqrt(2 kurt/N) ~ 2%, so a 10% bound on the
    generalized eigenvalues fails with negligible probability. With noise variance 2 (model
    assumes 1, Table D.2 misspecified A) the EF is ~2x the Fisher instead."""
    g = torch.Generator().manual_seed(0)
    N = 20000
    X = torch.cat([torch.randn(N, 2, generator=g, dtype=D64), torch.ones(N, 1, dtype=D64)], 1)
    w = torch.tensor([1.0, -0.5, 1.0], dtype=D64)
    for noise_var, expected in [(1.0, 1.0), (2.0, 2.0)]:
        y = X @ w + math.sqrt(noise_var) * torch.randn(N, generator=g, dtype=D64)
        m = GLM(X, y, "gaussian", reduction="mean")
        th = torch.linalg.lstsq(X, y.unsqueeze(-1)).solution.squeeze(-1)
        F, E = m.fisher(th), m.empirical_fisher(th)
        L = torch.linalg.cholesky(F)
        Li = torch.linalg.inv(L)
        ev = torch.linalg.eigvalsh(Li @ E @ Li.T)
        assert float(ev.min()) > 0.9 * expected and float(ev.max()) < 1.1 * expected, ev


def test_ef_expectation_over_model_labels_is_fisher_logistic():
    """E_{y ~ p_theta}[EF(theta)] = F(theta) (Eq. 7.2 vs 7.3): exact for a Bernoulli model by
    enumerating each label, the EF being a sum of per-example terms."""
    m = make("bernoulli", n=8)
    th = theta_for(m)
    p1 = torch.sigmoid(m.outputs(th))
    E = torch.zeros(m.num_params, m.num_params, dtype=D64)
    for label, w in [(0.0, 1 - p1), (1.0, p1)]:
        m_y = GLM(m.features, torch.full((8,), label, dtype=D64), "bernoulli")
        G = m_y.per_example_gradients(th)
        E += (G * w.unsqueeze(-1)).T @ G
    _close(E, m.fisher(th))


@pytest.mark.parametrize("lik", LIKS)
def test_monte_carlo_fisher_is_unbiased(lik):
    """Eq. 7.24: the one-sample estimate averages to the Fisher. 4000 draws: the Monte Carlo
    error of each entry is ~ std/sqrt(4000) ~ 1.6% of the entry scale; bound 8% of the Fisher's
    largest entry (5 standard errors)."""
    m = make(lik, n=6)
    th = theta_for(m) * 0.5
    F = m.fisher(th)
    est = m.monte_carlo_fisher(th, samples=4000, generator=torch.Generator().manual_seed(0))
    assert float((est - F).abs().max()) < 0.08 * float(F.abs().max())
    with pytest.raises(ValueError, match="samples"):
        m.monte_carlo_fisher(th, samples=0)


# ------------------------------------------------------------------ preconditioned steps
def test_ngd_on_least_squares_is_gauss_newton_and_newton():
    """One NGD step with lr = 1, no damping lands on the least-squares solution: F is X^T X/s2
    (Gauss-Newton, Eq. 7.8) and the loss Hessian (Newton), for any noise variance."""
    g = torch.Generator().manual_seed(4)
    X, y = torch.randn(30, 4, generator=g, dtype=D64), torch.randn(30, generator=g, dtype=D64)
    star = torch.linalg.lstsq(X, y.unsqueeze(-1)).solution.squeeze(-1)
    for var in (1.0, 0.3):
        m = GLM(X, y, "gaussian", variance=var)
        th = torch.randn(4, generator=g, dtype=D64)
        newton = th - torch.linalg.solve(torch.func.hessian(m.loss)(th), m.gradient(th))
        gn = th - torch.linalg.solve(X.T @ X, X.T @ (X @ th - y))
        ngd = th - m.natural_gradient(th, 0.0)
        _close(ngd, star, 1e-9)
        _close(ngd, newton, 1e-9)
        _close(ngd, gn, 1e-9)
        p = th.clone().requires_grad_(True)
        opt = NaturalGradientDescent([p], m, lr=1.0, damping=0.0)
        m.loss(p).backward()
        opt.step()
        _close(p.detach(), star, 1e-9)


@pytest.mark.parametrize("lik", LIKS)
@pytest.mark.parametrize("curv", ["fisher", "empirical"])
def test_preconditioned_gradient_solves_damped_system(lik, curv):
    m = make(lik)
    th = theta_for(m)
    lam = 1e-2
    M = m.curvature(th, curv) + lam * torch.eye(m.num_params, dtype=D64)
    d = m.preconditioned_gradient(th, lam, curv)
    _close(M @ d, m.gradient(th))
    _close(m.preconditioned_gradient(th, lam, curv, solver="cg"), d, 1e-8)
    batch = theta_for(m, batch=(3,))
    _close(m.preconditioned_gradient(batch, lam, curv)[1],
           m.preconditioned_gradient(batch[1], lam, curv))


def test_undamped_is_pseudo_inverse_and_softmax_null_direction():
    """damping = 0 gives M^+ g. For softmax, F is singular along W -> W + w 1^T and the gradient
    is orthogonal to that direction, so M^+ g solves M d = g."""
    m = make("categorical", n=20)
    th = theta_for(m)
    F = m.fisher(th)
    null = torch.zeros(m.num_features, m.num_classes, dtype=D64)
    null[0] = 1.0
    _close(F @ null.reshape(-1), torch.zeros(m.num_params, dtype=D64))
    assert abs(float(m.gradient(th) @ null.reshape(-1))) < 1e-12
    d = m.natural_gradient(th, 0.0)
    _close(F @ d, m.gradient(th), 1e-8)


@pytest.mark.parametrize("cls,curv", [(NaturalGradientDescent, "fisher"),
                                      (EmpiricalFisherDescent, "empirical")])
def test_optimizers_match_functional_updates(cls, curv):
    """Eq. D.31 / D.32 iterated: the optimizer on a (d, C) parameter equals the functional
    update on the flat vector. With p.grad from GLM.gradient both run the same kernels on the
    same data (bitwise); with p.grad from autograd the gradient differs in the last bits."""
    m = make("categorical")
    W = theta_for(m).reshape(m.num_features, m.num_classes).clone().requires_grad_(True)
    W2 = W.detach().clone().requires_grad_(True)
    th = W.detach().reshape(-1).clone()
    opt, opt2 = cls([W], m, lr=0.5, damping=1e-3), cls([W2], m, lr=0.5, damping=1e-3)
    for _ in range(3):
        W.grad = m.gradient(W.detach().reshape(-1)).reshape(W.shape)
        opt.step()
        opt2.zero_grad()
        m.loss(W2.reshape(-1)).backward()
        opt2.step()
        th = th - 0.5 * m.preconditioned_gradient(th, 1e-3, curv)
    assert torch.equal(W.detach().reshape(-1), th)
    _close(W2.detach().reshape(-1), th, 1e-9)


def test_optimizer_two_tensors_cg_and_step_model():
    g = torch.Generator().manual_seed(7)
    X, y = torch.randn(40, 3, generator=g, dtype=D64), torch.randint(0, 2, (40,), generator=g)
    m = GLM(torch.cat([X, torch.ones(40, 1, dtype=D64)], 1), y.to(D64), "bernoulli",
            reduction="mean")
    w = torch.zeros(3, dtype=D64, requires_grad=True)
    b = torch.zeros(1, dtype=D64, requires_grad=True)
    opt = NaturalGradientDescent([w, b], m, lr=1.0, damping=1e-4, solver="cg")
    for _ in range(15):
        opt.zero_grad()
        m.loss(torch.cat([w, b])).backward()
        opt.step()
    theta = torch.cat([w, b]).detach()
    assert float(m.gradient(theta).norm()) < 1e-8  # damped Newton converges on logistic loss
    # step(model=...) uses another (e.g. mini-batch) model's curvature for that step
    sub = GLM(m.features[:10], m.targets[:10], "bernoulli", reduction="mean")
    p = torch.zeros(4, dtype=D64, requires_grad=True)
    opt2 = EmpiricalFisherDescent([p], m, lr=1.0, damping=1e-2)
    sub.loss(p).backward()
    grad = p.grad.clone()
    opt2.step(model=sub)
    _close(p.detach(), -sub.preconditioned_gradient(torch.zeros(4, dtype=D64), 1e-2,
                                                    "empirical", gradient=grad))


def test_conjugate_gradient_and_cosine():
    A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=D64)
    b = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=D64)
    x = conjugate_gradient(lambda v: v @ A.T, b)
    _close(x @ A.T, b)
    assert float(cosine_similarity(torch.tensor([1.0, 0.0]), torch.tensor([-2.0, 0.0]))) == -1.0
    assert float(cosine_similarity(torch.zeros(2), torch.ones(2))) == 0.0


# ------------------------------------------------------------------ validation
def test_glm_validation():
    X = torch.randn(5, 2, dtype=D64)
    with pytest.raises(ValueError, match="likelihood"):
        GLM(X, None, "poisson")
    with pytest.raises(ValueError, match="reduction"):
        GLM(X, None, "gaussian", reduction="avg")
    with pytest.raises(ValueError, match="features"):
        GLM(X[0], None)
    with pytest.raises(ValueError, match="finite"):
        GLM(X * float("nan"), None)
    with pytest.raises(ValueError, match="variance"):
        GLM(X, None, "gaussian", variance=0.0)
    with pytest.raises(ValueError, match="variance"):
        GLM(X, None, "bernoulli", variance=2.0)
    with pytest.raises(ValueError, match="targets"):
        GLM(X, torch.ones(4, dtype=D64))
    with pytest.raises(ValueError, match="0 or 1"):
        GLM(X, torch.full((5,), 2.0, dtype=D64), "bernoulli")
    with pytest.raises(ValueError, match="class indices"):
        GLM(X, torch.tensor([0, 1, 2, 3, 4]), "categorical", num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        GLM(X, None, "categorical")
    with pytest.raises(ValueError, match="num_classes"):
        GLM(X, None, "categorical", num_classes=1)
    m = GLM(X, None, "bernoulli")
    with pytest.raises(ValueError, match="theta"):
        m.fisher(torch.zeros(3, dtype=D64))
    with pytest.raises(ValueError, match="no targets"):
        m.loss(torch.zeros(2, dtype=D64))
    m = GLM(X, torch.ones(5, dtype=D64), "gaussian")
    with pytest.raises(ValueError, match="damping"):
        m.natural_gradient(torch.zeros(2, dtype=D64), -1.0)
    with pytest.raises(ValueError, match="damping > 0"):
        m.natural_gradient(torch.zeros(2, dtype=D64), 0.0, solver="cg")
    with pytest.raises(ValueError, match="curvature"):
        m.preconditioned_gradient(torch.zeros(2, dtype=D64), 1.0, "hessian")


def test_optimizer_validation_and_nonfinite():
    X = torch.randn(5, 2, dtype=D64)
    m = GLM(X, torch.ones(5, dtype=D64), "gaussian")
    p = torch.zeros(2, dtype=D64, requires_grad=True)
    with pytest.raises(ValueError, match="lr"):
        NaturalGradientDescent([p], m, lr=-1.0)
    with pytest.raises(ValueError, match="damping"):
        NaturalGradientDescent([p], m, damping=float("inf"))
    with pytest.raises(ValueError, match="entries"):
        NaturalGradientDescent([torch.zeros(3, requires_grad=True)], m)
    with pytest.raises(ValueError, match="GLM"):
        EmpiricalFisherDescent([p], "not a model")
    with pytest.raises(ValueError, match="one parameter group"):
        NaturalGradientDescent([{"params": [p]}, {"params": [torch.zeros(1)]}], m)
    opt = NaturalGradientDescent([p], m)
    opt.step()  # no gradient: no-op
    assert torch.equal(p.detach(), torch.zeros(2, dtype=D64))
    p.grad = torch.tensor([float("nan"), 1.0], dtype=D64)
    with pytest.raises(FloatingPointError):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(2, dtype=D64))


def test_exported():
    assert steepest.NaturalGradientDescent is NaturalGradientDescent
    assert steepest.EmpiricalFisherDescent is EmpiricalFisherDescent
    assert steepest.fisher.GLM is GLM
