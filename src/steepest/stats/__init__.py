"""Noise-aware training: per-example gradient statistics and adaptive batch sizes.

* :class:`GradientMoments` / :func:`gradient_moments`: mini-batch gradient ``g``, elementwise
  variance of the individual gradients ``s`` [Bal21, Eq. 3.30], ``tr(Sigma)``, ``||g||^2`` and
  the noise-to-signal ratio (Eq. 4.9), reduced inside the ordinary backward pass; writes
  ``p.grad_var`` and ``p.grad_batch_size`` for ``MSVAG(variance="minibatch")``.
* :class:`CABS` [Bal21, Alg. 1, Eq. 4.20] and :class:`VarianceRatioBatchSize` (Eq. 4.18):
  batch-size controllers; :class:`AdaptiveBatchSampler` / :func:`adaptive_loader` draw batches
  of the size they ask for.

See docs/noise_aware.md for the scaling contract and a training loop.
"""

from steepest.stats.cabs import CABS, BatchSizeController, VarianceRatioBatchSize
from steepest.stats.moments import GradientMoments, GradientMomentsResult, gradient_moments
from steepest.stats.sampler import AdaptiveBatchSampler, adaptive_loader

__all__ = [
    "CABS",
    "AdaptiveBatchSampler",
    "BatchSizeController",
    "GradientMoments",
    "GradientMomentsResult",
    "VarianceRatioBatchSize",
    "adaptive_loader",
    "gradient_moments",
]
