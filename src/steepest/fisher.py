"""The Fisher, the "empirical Fisher", natural-gradient descent and EF-preconditioned descent
for generalized linear models ([Bal21]: Balles, *Noise-Aware Stochastic Optimization*, Ch. 7 and
App. D; Kunstner, Balles & Hennig 2019).

A generalized linear model (GLM) here is ``p(y | x) = p(y | f)`` with ``f = f(x, theta)`` linear
in the parameters (``f_n = x_n^T theta``, or ``f_n = W^T x_n`` for ``C`` classes) and an
exponential-family likelihood with natural parameter ``f``:

===============  ==========================  =====================  ==========================
``likelihood``   ``-log p(y | f)``           ``grad_f`` (residual)  ``hess_f`` (Eq. D.9/D.16)
===============  ==========================  =====================  ==========================
``gaussian``     ``(y - f)^2 / (2 s2)``      ``(f - y) / s2``       ``1 / s2``
``bernoulli``    ``softplus(f) - y f``       ``sigmoid(f) - y``     ``s (1 - s)``
``categorical``  ``logsumexp(f) - f_y``      ``pi - e_y``           ``diag(pi) - pi pi^T``
===============  ==========================  =====================  ==========================

(``s2`` is the noise variance, ``variance=``; the Gaussian loss drops the constant
``log(2 pi s2) / 2``.) The loss is Eq. 7.1, ``R(theta) = sum_n -log p(y_n | f_n)``, or its mean
with ``reduction="mean"`` (the convention of App. D.3, which rescales the Fisher and the EF by
``1/N`` as well). With ``J_n`` the Jacobian of ``f_n`` and ``g_n = grad_theta -log p(y_n | f_n)``
(example ``n``'s own gradient, never divided by ``N``):

* :meth:`GLM.fisher`: ``F = sum_n E_{y ~ p_theta(y | x_n)}[g_n(y) g_n(y)^T]`` (Eq. 7.2), computed
  in closed form as ``sum_n J_n^T hess_f J_n`` (Prop. 7.1, Eq. 7.14 / D.7 / D.17). For a GLM the
  model is linear in ``theta``, so this is also the Hessian of the loss (Eq. D.18).
* :meth:`GLM.empirical_fisher`: ``F~ = sum_n g_n g_n^T`` with the *training* labels (Eq. 7.3).
* :meth:`GLM.fisher_vp` / :meth:`GLM.empirical_fisher_vp`: the same products with a vector,
  matrix-free (``J^T H (J v)`` and ``G^T (G v)``, never forming a ``P x P`` matrix or the
  ``N x P`` per-example gradients).
* :meth:`GLM.monte_carlo_fisher`: the unbiased one-sample estimate of Eq. 7.24 (labels drawn
  from the model), which costs what the EF costs.
* :meth:`GLM.preconditioned_gradient`: ``(M + lambda I)^{-1} grad R`` with ``M`` the Fisher
  (natural gradient, Eq. D.31) or the EF (Eq. D.32), by a dense solve or matrix-free conjugate
  gradients.

:class:`NaturalGradientDescent` and :class:`EmpiricalFisherDescent` are the two updates as
``torch.optim.Optimizer`` s (``theta <- theta - lr (M + damping I)^{-1} grad``, Eq. D.31/D.32),
preconditioning whatever gradient the user's ``backward`` left in ``p.grad``.

Parameters are flat: ``theta`` has ``P = d`` entries (``gaussian``, ``bernoulli``) or
``P = d C`` (``categorical``: ``W`` of shape ``(d, C)`` flattened row-major, so
``theta[i * C + c] = W[i, c]``); every method also takes a batch of parameters ``(..., P)`` and
returns results with the same leading shape (used to run many step sizes at once). Add a column of
ones to the features for a bias. For ``categorical`` the Fisher is singular along
``W -> W + w 1^T`` (adding one vector to every class changes no probability); the gradient is
orthogonal to that direction, so the damped solve and the ``damping=0`` pseudo-inverse are well
defined.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from steepest.optim.base import STATE_TAG, StepOptimizer, check_group_lr, check_param_dtypes

__all__ = [
    "CURVATURES",
    "GLM",
    "LIKELIHOODS",
    "EmpiricalFisherDescent",
    "FisherPreconditionedDescent",
    "NaturalGradientDescent",
    "conjugate_gradient",
    "cosine_similarity",
    "empirical_fisher",
    "empirical_fisher_vp",
    "fisher",
    "fisher_vp",
]

LIKELIHOODS = ("gaussian", "bernoulli", "categorical")
CURVATURES = ("fisher", "empirical")
REDUCTIONS = ("sum", "mean")
SOLVERS = ("dense", "cg")


def _check_nonneg(name: str, value: Any) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class GLM:
    """A generalized linear model on fixed data: features ``(N, d)``, targets ``(N,)``.

    Args:
        features: ``(N, d)`` real floating tensor (the model's features; a column of ones gives
            a bias).
        targets: ``(N,)``: real numbers (``gaussian``), 0/1 (``bernoulli``) or class indices in
            ``[0, num_classes)`` (``categorical``). May be ``None`` when only the Fisher is
            needed (it does not depend on the labels, Prop. 7.1); the loss, gradient and EF then
            raise.
        likelihood: ``"gaussian"`` (least squares), ``"bernoulli"`` (logistic regression) or
            ``"categorical"`` (softmax / multinomial regression).
        variance: the Gaussian noise variance ``s2 > 0`` the model assumes (``gaussian`` only).
        num_classes: ``C >= 2`` for ``categorical`` (default: ``max(targets) + 1``).
        reduction: ``"sum"`` (Eq. 7.1-7.3) or ``"mean"`` (App. D.3: loss, gradient, Fisher and
            EF divided by ``N``).
    """

    def __init__(
        self,
        features: Tensor,
        targets: Tensor | None = None,
        likelihood: str = "gaussian",
        *,
        variance: float = 1.0,
        num_classes: int | None = None,
        reduction: str = "sum",
    ) -> None:
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[0] < 1 \
                or features.shape[1] < 1:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features)
            raise ValueError(f"features must be a 2-D tensor (N, d) with N, d >= 1, got {shape}")
        if not features.is_floating_point():
            raise ValueError(f"features must be a real floating tensor, got {features.dtype}")
        if not bool(torch.isfinite(features).all()):
            raise ValueError("features must be finite (found NaN or inf)")
        if likelihood == "gaussian":
            if isinstance(variance, bool) or not isinstance(variance, (int, float)) \
                    or not math.isfinite(variance) or variance <= 0:
                raise ValueError(f"variance must be a finite number > 0, got {variance!r}")
        elif variance != 1.0:
            raise ValueError(f"variance applies only to likelihood='gaussian', got "
                             f"variance={variance!r} with likelihood={likelihood!r}")
        n = features.shape[0]
        if targets is not None:
            if not isinstance(targets, Tensor) or targets.shape != (n,):
                shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets)
                raise ValueError(f"targets must be a tensor of shape ({n},), got {shape}")
            if targets.is_floating_point() and not bool(torch.isfinite(targets).all()):
                raise ValueError("targets must be finite (found NaN or inf)")
            if likelihood == "bernoulli" and not bool(((targets == 0) | (targets == 1)).all()):
                raise ValueError("targets must be 0 or 1 for likelihood='bernoulli'")
        if likelihood == "categorical":
            if num_classes is None:
                if targets is None:
                    raise ValueError("num_classes is required for likelihood='categorical' "
                                     "without targets")
                num_classes = int(targets.max()) + 1
            if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
                raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
            if targets is not None:
                if targets.is_floating_point() and not bool((targets == targets.round()).all()):
                    raise ValueError("targets must be integer class indices for "
                                     "likelihood='categorical'")
                if bool((targets < 0).any()) or bool((targets >= num_classes).any()):
                    raise ValueError(f"targets must be class indices in [0, {num_classes}), got "
                                     f"values in [{int(targets.min())}, {int(targets.max())}]")
                targets = targets.long()
        elif num_classes is not None:
            raise ValueError("num_classes applies only to likelihood='categorical'")
        self.features = features
        self.targets = targets
        self.likelihood = likelihood
        self.variance = float(variance)
        self.num_classes = num_classes if likelihood == "categorical" and num_classes is not None else 1
        self.reduction = reduction

    # ------------------------------------------------------------------ shapes and helpers
    @property
    def num_examples(self) -> int:
        return self.features.shape[0]

    @property
    def num_features(self) -> int:
        return self.features.shape[1]

    @property
    def num_params(self) -> int:
        """``P = d`` or ``d C`` (categorical)."""
        return self.num_features * self.num_classes

    def _scale(self) -> float:
        return 1.0 / self.num_examples if self.reduction == "mean" else 1.0

    def _x(self, like: Tensor) -> Tensor:
        return self.features.to(dtype=like.dtype, device=like.device)

    def _check_theta(self, theta: Tensor, name: str = "theta") -> Tensor:
        if not isinstance(theta, Tensor) or theta.ndim < 1 or theta.shape[-1] != self.num_params:
            shape = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta)
            raise ValueError(f"{name} must be a tensor of shape (..., {self.num_params}) "
                             f"(P = d{' C' if self.num_classes > 1 else ''}), got {shape}")
        if not theta.is_floating_point():
            raise ValueError(f"{name} must be a real floating tensor, got {theta.dtype}")
        return theta

    def _y(self, like: Tensor) -> Tensor:
        if self.targets is None:
            raise ValueError("this GLM has no targets: pass targets= to use the loss, the "
                             "gradient or the empirical Fisher")
        if self.likelihood == "categorical":
            return self.targets.to(device=like.device)
        return self.targets.to(dtype=like.dtype, device=like.device)

    def _matrix(self, theta: Tensor) -> Tensor:
        """``theta`` (..., P) as ``W`` (..., d, C) (categorical) or ``w`` (..., d)."""
        if self.likelihood == "categorical":
            return theta.reshape(*theta.shape[:-1], self.num_features, self.num_classes)
        return theta

    def _jvp(self, v: Tensor) -> Tensor:
        """``J v``: the change of every output ``f_n`` along ``v`` (..., N[, C])."""
        X = self._x(v)
        if self.likelihood == "categorical":
            return torch.einsum("nd,...dc->...nc", X, self._matrix(v))
        return torch.einsum("nd,...d->...n", X, v)

    def _vjp(self, u: Tensor) -> Tensor:
        """``J^T u`` for output cotangents ``u`` (..., N[, C]) -> (..., P)."""
        X = self._x(u)
        if self.likelihood == "categorical":
            out = torch.einsum("nd,...nc->...dc", X, u)
            return out.reshape(*out.shape[:-2], self.num_params)
        return torch.einsum("nd,...n->...d", X, u)

    # ------------------------------------------------------------------ model quantities
    def outputs(self, theta: Tensor) -> Tensor:
        """The natural parameters ``f_n = x_n^T theta`` (..., N) or ``W^T x_n`` (..., N, C)."""
        return self._jvp(self._check_theta(theta))

    def probabilities(self, theta: Tensor) -> Tensor:
        """``sigmoid(f)`` (bernoulli) or ``softmax(f)`` (categorical); the mean ``f`` (gaussian)."""
        f = self.outputs(theta)
        if self.likelihood == "bernoulli":
            return torch.sigmoid(f)
        if self.likelihood == "categorical":
            return torch.softmax(f, dim=-1)
        return f

    def _nll_terms(self, f: Tensor, y: Tensor) -> Tensor:
        if self.likelihood == "gaussian":
            return (y - f) ** 2 / (2 * self.variance)
        if self.likelihood == "bernoulli":
            return torch.nn.functional.softplus(f) - y * f
        fy = torch.gather(f, -1, y.expand(*f.shape[:-1]).unsqueeze(-1)).squeeze(-1)
        return torch.logsumexp(f, dim=-1) - fy

    def _residuals(self, f: Tensor, y: Tensor) -> Tensor:
        """``grad_f -log p(y_n | f_n)`` (the generalized residual of Eq. 7.16 / D.26)."""
        if self.likelihood == "gaussian":
            return (f - y) / self.variance
        if self.likelihood == "bernoulli":
            return torch.sigmoid(f) - y
        r = torch.softmax(f, dim=-1)
        return r - torch.nn.functional.one_hot(y, self.num_classes).to(r.dtype)

    def per_example_losses(self, theta: Tensor) -> Tensor:
        """``-log p(y_n | f_n)`` (..., N) (Gaussian: without the constant)."""
        f = self.outputs(theta)
        return self._nll_terms(f, self._y(f))

    def loss(self, theta: Tensor) -> Tensor:
        """``R(theta)``, Eq. 7.1 (sum) or its mean (App. D.3)."""
        return self.per_example_losses(theta).sum(-1) * self._scale()

    def accuracy(self, theta: Tensor) -> Tensor:
        """Fraction of correct labels (bernoulli: ``f > 0``; categorical: argmax)."""
        f = self.outputs(theta)
        y = self._y(f)
        if self.likelihood == "bernoulli":
            return ((f > 0).to(f.dtype) == y).to(f.dtype).mean(-1)
        if self.likelihood == "categorical":
            return (f.argmax(-1) == y).to(f.dtype).mean(-1)
        raise ValueError("accuracy needs likelihood='bernoulli' or 'categorical'")

    def residuals(self, theta: Tensor) -> Tensor:
        """``grad_f -log p(y_n | f_n)`` for every example (..., N[, C])."""
        f = self.outputs(theta)
        return self._residuals(f, self._y(f))

    def output_hessians(self, theta: Tensor) -> Tensor:
        """``hess_f -log p(y | f_n)`` (independent of ``y``): ``1/s2`` (..., N), ``s(1-s)``
        (..., N), or ``diag(pi) - pi pi^T`` (..., N, C, C) (Eq. D.9, D.33, D.16)."""
        f = self.outputs(theta)
        if self.likelihood == "gaussian":
            return torch.full_like(f, 1.0 / self.variance)
        if self.likelihood == "bernoulli":
            return torch.sigmoid(f) * torch.sigmoid(-f)
        pi = torch.softmax(f, dim=-1)
        return torch.diag_embed(pi) - pi.unsqueeze(-1) * pi.unsqueeze(-2)

    def _hvp_outputs(self, f: Tensor, u: Tensor) -> Tensor:
        """``hess_f u`` per example without forming ``C x C`` matrices."""
        if self.likelihood == "gaussian":
            return u / self.variance
        if self.likelihood == "bernoulli":
            return torch.sigmoid(f) * torch.sigmoid(-f) * u
        pi = torch.softmax(f, dim=-1)
        return pi * u - pi * (pi * u).sum(-1, keepdim=True)

    def gradient(self, theta: Tensor) -> Tensor:
        """``grad R(theta) = sum_n g_n`` (or the mean), shape (..., P)."""
        return self._vjp(self.residuals(theta)) * self._scale()

    def per_example_gradients(self, theta: Tensor) -> Tensor:
        """``g_n = J_n^T grad_f -log p(y_n | f_n)`` (Eq. D.20), shape (..., N, P). Never divided
        by ``N``, whatever the reduction."""
        r = self.residuals(theta)
        X = self._x(r)
        if self.likelihood == "categorical":
            g = X.unsqueeze(-1) * r.unsqueeze(-2)  # (..., N, d, C)
            return g.reshape(*g.shape[:-2], self.num_params)
        return X * r.unsqueeze(-1)

    # ------------------------------------------------------------------ curvature
    def fisher(self, theta: Tensor) -> Tensor:
        """The Fisher, Eq. 7.2, in the closed form of Prop. 7.1: ``sum_n J_n^T hess_f J_n``
        (Eq. D.7 / D.10 / D.17), shape (..., P, P). Equal to the Hessian of the loss (GLM)."""
        theta = self._check_theta(theta)
        X = self._x(theta)
        if self.likelihood == "gaussian":
            F = (X.T @ X / self.variance).expand(*theta.shape[:-1], self.num_params,
                                                  self.num_params)
            return F * self._scale()
        f = self._jvp(theta)
        if self.likelihood == "bernoulli":
            w = torch.sigmoid(f) * torch.sigmoid(-f)
            return (X.T * w.unsqueeze(-2)) @ X * self._scale()  # X^T diag(w) X as one matmul
        # categorical: sum_n (x x^T) kron diag(pi) - (x kron pi)(x kron pi)^T
        pi = torch.softmax(f, dim=-1)
        d, C = self.num_features, self.num_classes
        # block (a, a) of the first term: X^T diag(pi[:, a]) X, as one batched matmul
        diag = (X.T * pi.transpose(-1, -2).unsqueeze(-2)) @ X  # (..., C, d, d)
        F = torch.diag_embed(diag.permute(*range(theta.ndim - 1), -2, -1, -3))  # (..., d, d, C, C)
        F = F.permute(*range(theta.ndim - 1), -4, -2, -3, -1)
        z = (X.unsqueeze(-1) * pi.unsqueeze(-2)).reshape(*pi.shape[:-1], d * C)  # (..., N, P)
        F = F.reshape(*theta.shape[:-1], d * C, d * C) - z.transpose(-1, -2) @ z
        return F * self._scale()

    def empirical_fisher(self, theta: Tensor) -> Tensor:
        """The "empirical Fisher", Eq. 7.3: ``sum_n g_n g_n^T`` with the training labels,
        shape (..., P, P)."""
        theta = self._check_theta(theta)
        if self.likelihood != "categorical":
            # g_n = r_n x_n, so sum_n g_n g_n^T = X^T diag(r^2) X: one matmul, no (N, P) tensor
            r = self.residuals(theta)
            X = self._x(theta)
            return (X.T * (r * r).unsqueeze(-2)) @ X * self._scale()
        G = self.per_example_gradients(theta)
        return G.transpose(-1, -2) @ G * self._scale()

    def fisher_vp(self, theta: Tensor, v: Tensor) -> Tensor:
        """``F v = J^T H (J v)`` without forming ``F`` (..., P)."""
        theta = self._check_theta(theta)
        v = self._check_theta(v, "v")
        return self._vjp(self._hvp_outputs(self._jvp(theta), self._jvp(v))) * self._scale()

    def empirical_fisher_vp(self, theta: Tensor, v: Tensor) -> Tensor:
        """``F~ v = sum_n g_n (g_n^T v) = J^T (r_n r_n^T J_n v)`` without forming ``F~`` or
        the per-example gradients (..., P)."""
        r = self.residuals(theta)
        u = self._jvp(self._check_theta(v, "v"))
        if self.likelihood == "categorical":
            s = (r * u).sum(-1, keepdim=True)  # g_n^T v = r_n^T J_n v
        else:
            s = r * u
        return self._vjp(r * s) * self._scale()

    def monte_carlo_fisher(self, theta: Tensor, samples: int = 1,
                           generator: torch.Generator | None = None) -> Tensor:
        """Eq. 7.24: ``sum_n g_n(y~_n) g_n(y~_n)^T`` with ``y~_n ~ p_theta(y | x_n)`` drawn from
        the model (not the training labels), averaged over ``samples`` draws; an unbiased
        estimate of :meth:`fisher` at the cost of the EF. Shape (..., P, P)."""
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
        theta = self._check_theta(theta)
        f = self._jvp(theta)
        X = self._x(theta)
        total = torch.zeros(*theta.shape[:-1], self.num_params, self.num_params,
                            dtype=theta.dtype, device=theta.device)
        # draws are vectorized in chunks of at most ~4M per-example gradient entries
        chunk = max(1, (1 << 22) // max(1, f.numel() * self.num_features))
        done = 0
        while done < samples:
            k = min(chunk, samples - done)
            fk = f.expand(k, *f.shape)
            if self.likelihood == "gaussian":
                eps = torch.randn(fk.shape, generator=generator, dtype=f.dtype, device=f.device)
                y = fk + math.sqrt(self.variance) * eps
            elif self.likelihood == "bernoulli":
                u = torch.rand(fk.shape, generator=generator, dtype=f.dtype, device=f.device)
                y = (u < torch.sigmoid(fk)).to(f.dtype)
            else:
                # inverse-CDF sampling, one uniform per example
                cdf = torch.softmax(fk, dim=-1).cumsum(-1)
                u = torch.rand(fk.shape[:-1] + (1,), generator=generator, dtype=f.dtype,
                               device=f.device)
                y = (cdf[..., :-1] < u).sum(-1)
            r = self._residuals(fk, y)
            if self.likelihood == "categorical":
                G = (X.unsqueeze(-1) * r.unsqueeze(-2)).reshape(*r.shape[:-1], self.num_params)
            else:
                G = X * r.unsqueeze(-1)
            total = total + (G.transpose(-1, -2) @ G).sum(0)
            done += k
        return total * (self._scale() / samples)

    def curvature(self, theta: Tensor, kind: str = "fisher") -> Tensor:
        """The dense matrix ``kind``: ``"fisher"`` (Eq. 7.2) or ``"empirical"`` (Eq. 7.3)."""
        if kind not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {kind!r}")
        return self.fisher(theta) if kind == "fisher" else self.empirical_fisher(theta)

    def preconditioned_gradient(
        self,
        theta: Tensor,
        damping: float,
        curvature: str = "fisher",
        *,
        gradient: Tensor | None = None,
        solver: str = "dense",
        cg_max_iter: int | None = None,
        cg_tol: float = 1e-12,
    ) -> Tensor:
        """``(M + damping I)^{-1} grad R(theta)``: the natural gradient (``M`` = Fisher,
        Eq. D.31) or the EF-preconditioned gradient (``M`` = EF, Eq. D.32), shape (..., P).

        ``gradient`` replaces ``grad R`` (e.g. a mini-batch gradient). ``damping = 0`` gives the
        minimum-norm solution ``M^+ grad`` (pseudo-inverse; what App. D.3 calls "without
        damping" for the cosine similarity). ``solver="cg"`` solves matrix-free with conjugate
        gradients on :meth:`fisher_vp` / :meth:`empirical_fisher_vp` (``damping > 0``).
        """
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        damping = _check_nonneg("damping", damping)
        theta = self._check_theta(theta)
        g = self.gradient(theta) if gradient is None else self._check_theta(gradient, "gradient")
        g = g.expand(*torch.broadcast_shapes(theta.shape, g.shape))
        if solver == "cg":
            if damping <= 0:
                raise ValueError("solver='cg' needs damping > 0 (the curvature may be singular)")
            mvp = self.fisher_vp if curvature == "fisher" else self.empirical_fisher_vp
            return conjugate_gradient(lambda v: mvp(theta, v) + damping * v, g,
                                      max_iter=cg_max_iter, tol=cg_tol)
        M = self.curvature(theta, curvature)
        if damping == 0:
            return (torch.linalg.pinv(M, hermitian=True) @ g.unsqueeze(-1)).squeeze(-1)
        eye = torch.eye(self.num_params, dtype=M.dtype, device=M.device)
        return torch.linalg.solve(M + damping * eye, g)

    def natural_gradient(self, theta: Tensor, damping: float, **kwargs: Any) -> Tensor:
        """``(F + damping I)^{-1} grad R`` (Eq. D.31)."""
        return self.preconditioned_gradient(theta, damping, "fisher", **kwargs)

    def empirical_fisher_gradient(self, theta: Tensor, damping: float, **kwargs: Any) -> Tensor:
        """``(F~ + damping I)^{-1} grad R`` (Eq. D.32)."""
        return self.preconditioned_gradient(theta, damping, "empirical", **kwargs)


# ---------------------------------------------------------------------- functional forms
def fisher(features: Tensor, theta: Tensor, likelihood: str = "gaussian", **kwargs: Any) -> Tensor:
    """``GLM(features, None, likelihood, **kwargs).fisher(theta)`` (Eq. 7.2 / D.7)."""
    return GLM(features, None, likelihood, **kwargs).fisher(theta)


def empirical_fisher(features: Tensor, targets: Tensor, theta: Tensor,
                     likelihood: str = "gaussian", **kwargs: Any) -> Tensor:
    """``GLM(features, targets, likelihood, **kwargs).empirical_fisher(theta)`` (Eq. 7.3)."""
    return GLM(features, targets, likelihood, **kwargs).empirical_fisher(theta)


def fisher_vp(features: Tensor, theta: Tensor, v: Tensor, likelihood: str = "gaussian",
              **kwargs: Any) -> Tensor:
    """Matrix-free ``F v`` (see :meth:`GLM.fisher_vp`)."""
    return GLM(features, None, likelihood, **kwargs).fisher_vp(theta, v)


def empirical_fisher_vp(features: Tensor, targets: Tensor, theta: Tensor, v: Tensor,
                        likelihood: str = "gaussian", **kwargs: Any) -> Tensor:
    """Matrix-free ``F~ v`` (see :meth:`GLM.empirical_fisher_vp`)."""
    return GLM(features, targets, likelihood, **kwargs).empirical_fisher_vp(theta, v)


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, *,
                       max_iter: int | None = None, tol: float = 1e-12) -> Tensor:
    """Solve ``A x = b`` for symmetric positive definite ``A`` given as ``matvec``; ``b`` may
    carry leading batch dimensions (one system per row, solved together). Stops when every
    residual satisfies ``||r|| <= tol ||b||`` or after ``max_iter`` (default ``2 P``) steps."""
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    n = b.shape[-1]
    max_iter = 2 * n if max_iter is None else max_iter
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"cg_max_iter must be an integer >= 1, got {max_iter!r}")
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(-1, keepdim=True)
    stop = (tol * b.norm(dim=-1, keepdim=True)) ** 2
    for _ in range(max_iter):
        if bool((rs <= stop).all()):
            break
        Ap = matvec(p)
        pAp = (p * Ap).sum(-1, keepdim=True)
        active = rs > stop
        alpha = torch.where(active, rs / torch.where(pAp > 0, pAp, torch.ones_like(pAp)),
                            torch.zeros_like(rs))
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = (r * r).sum(-1, keepdim=True)
        beta = torch.where(active, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)),
                           torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    return x


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """``<a, b> / (||a|| ||b||)`` over the last dimension (0 where either is zero)."""
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den > 0, (a * b).sum(-1) / torch.where(den > 0, den, 1.0), 0.0)


# ---------------------------------------------------------------------- optimizers
class FisherPreconditionedDescent(Optimizer):
    """``theta <- theta - lr (M(theta) + damping I)^{-1} g`` ([Bal21, Eq. D.31] / D.32) with
    ``M`` the Fisher (``curvature="fisher"``: natural-gradient descent) or the empirical Fisher
    (``curvature="empirical"``: EFGD) of ``model`` at the current parameters, and ``g`` the
    gradient in ``p.grad`` (from the user's ``backward``; for the full-batch method of the
    thesis, the gradient of ``model.loss``).

    The parameters (one group; the curvature couples them all) are taken together as one flat
    vector of ``model.num_params`` entries, in the order given (a ``(d, C)`` tensor flattens
    row-major, matching :class:`GLM`). ``step(model=...)`` evaluates the curvature on another
    :class:`GLM` for that step (e.g. the current mini-batch). ``solver="cg"`` solves
    matrix-free (conjugate gradients on the curvature-vector product).

    Raises ``ValueError`` for invalid options (also an ``lr`` set on the group later) and for
    non-floating parameters, ``FloatingPointError`` for a NaN/inf gradient or an update that is
    not finite (the curvature can overflow at huge parameters; nothing is written),
    ``RuntimeError`` for sparse gradients. State dicts carry the class name and load only into
    the same class, as every ``steepest`` optimizer's; ``copy.deepcopy`` and pickle keep
    ``model``.
    """

    def __init__(
        self,
        params: ParamsT,
        model: GLM,
        lr: float = 1.0,
        *,
        damping: float = 1e-8,
        curvature: str = "fisher",
        solver: str = "dense",
        cg_max_iter: int | None = None,
        cg_tol: float = 1e-12,
    ) -> None:
        _check_nonneg("lr", lr)
        _check_nonneg("damping", damping)
        if not isinstance(model, GLM):
            raise ValueError(f"model must be a steepest.fisher.GLM, got {type(model).__name__}")
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if solver == "cg" and damping <= 0:
            raise ValueError("solver='cg' needs damping > 0 (the curvature may be singular)")
        defaults = dict(lr=lr, damping=damping, curvature=curvature, solver=solver,
                        cg_max_iter=cg_max_iter, cg_tol=cg_tol)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("FisherPreconditionedDescent takes one parameter group (the "
                             f"curvature couples all parameters), got {len(self.param_groups)}")
        n = sum(p.numel() for p in self.param_groups[0]["params"])
        if n != model.num_params:
            raise ValueError(f"the parameters have {n} entries but the model has "
                             f"P = {model.num_params} (d = {model.num_features}, "
                             f"C = {model.num_classes})")
        self.model = model

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        check_param_dtypes(type(self).__name__, len(self.param_groups) - 1, self.param_groups[-1])

    # ---- copies and checkpoints (issue 21): the same guarantees as StepOptimizer's
    def __getstate__(self) -> dict[str, Any]:
        # torch.optim.Optimizer pickles defaults, state and param groups only; the model is part
        # of this optimizer (deepcopy and pickle lost it: AttributeError at the next step).
        state = super().__getstate__()
        state["model"] = self.model
        return state

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd[STATE_TAG] = type(self).__name__  # checked by load_state_dict, here and in StepOptimizer
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # StepOptimizer's origin check reads only ``defaults`` and the class's signature, which
        # this class has too: another optimizer's state dict (tagged, or with its option keys) is
        # refused instead of copying its options here.
        StepOptimizer._check_origin(self, state_dict)  # type: ignore[arg-type]
        me = type(self).__name__
        if isinstance(state_dict, dict) and any(state_dict.get("state", {}).values()):
            raise ValueError(f"this state dict is not from {me}: it has per-parameter state, "
                             f"which {me} does not keep")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != STATE_TAG})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None,
             model: GLM | None = None) -> Any:
        group = self.param_groups[0]
        check_group_lr(type(self).__name__, 0, group)  # may have been set after construction
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        model = getattr(self, "model", None) if model is None else model
        if not isinstance(model, GLM):
            raise ValueError(f"model must be a steepest.fisher.GLM, got {type(model).__name__}")
        _check_nonneg("damping", group["damping"])
        params: list[Tensor] = group["params"]
        if all(p.grad is None for p in params):
            return loss
        if sum(p.numel() for p in params) != model.num_params:
            raise ValueError(f"model has P = {model.num_params} parameters, the group has "
                             f"{sum(p.numel() for p in params)}")
        grads = []
        for i, p in enumerate(params):
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError("FisherPreconditionedDescent does not support sparse gradients")
            g = torch.zeros_like(p) if p.grad is None else p.grad
            if not bool(torch.isfinite(g).all()):
                raise FloatingPointError(f"non-finite gradient in parameter {i} "
                                         f"(shape {tuple(p.shape)})")
            grads.append(g.reshape(-1))
        theta = torch.cat([p.detach().reshape(-1) for p in params])
        direction = model.preconditioned_gradient(
            theta, group["damping"], group["curvature"], gradient=torch.cat(grads),
            solver=group["solver"], cg_max_iter=group["cg_max_iter"], cg_tol=group["cg_tol"])
        # The update is written only if it is finite: the curvature can overflow at huge
        # parameters (the EF of |theta| ~ 1e20 in float32), which no gradient check sees.
        new_theta = theta.add(direction, alpha=-group["lr"])
        if not bool(torch.isfinite(new_theta).all()):
            raise FloatingPointError(
                f"{type(self).__name__}: the update is not finite (NaN or inf; the {group['curvature']} "
                f"curvature or the solve overflowed {theta.dtype} at these parameters, "
                f"max |theta| = {float(theta.abs().max()):.3g}); nothing was written")
        offset = 0
        for p in params:
            k = p.numel()
            p.copy_(new_theta[offset:offset + k].view_as(p))
            offset += k
        return loss


class NaturalGradientDescent(FisherPreconditionedDescent):
    """Natural-gradient descent, ``theta <- theta - lr (F + damping I)^{-1} g`` ([Bal21],
    Eq. D.31; ``F`` the Fisher of Eq. 7.2 by Prop. 7.1). On least squares with ``lr = 1``,
    ``damping = 0`` it is Gauss-Newton and Newton's method (one step to the minimum)."""

    def __init__(self, params: ParamsT, model: GLM,
                 lr: float = 1.0, *, damping: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(params, model, lr, damping=damping, curvature="fisher", **kwargs)


class EmpiricalFisherDescent(FisherPreconditionedDescent):
    """EF-preconditioned descent (EFGD), ``theta <- theta - lr (F~ + damping I)^{-1} g`` (seed
    001, Eq. D.32; ``F~`` the empirical Fisher of Eq. 7.3). Ch. 7 shows why this is not an
    approximate natural gradient far from a well-specified optimum."""

    def __init__(self, params: ParamsT, model: GLM,
                 lr: float = 1.0, *, damping: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(params, model, lr, damping=damping, curvature="empirical", **kwargs)
