"""Adaptive batch sizes from gradient variance estimates [Bal21, Ch. 4].

Both controllers follow [Bal21, Alg. 1] ("SGD with Coupled Adaptive Batch Size"): after each
step, exponential moving averages of the step's statistics, started at zero and *not* bias
corrected, give the batch size of the *next* step, rounded to the nearest integer (halves round
up) and clipped to ``[min_batch, max_batch]``. The first step uses ``min_batch``.

* :class:`CABS` (Eq. 4.20): ``m = lr * sigma2_avg / f_avg`` with ``sigma2 = ||s||_1``.
* :class:`VarianceRatioBatchSize` (the "competitor", Eq. 4.18, after Byrd et al. 2012 and De et
  al. 2017): ``m = sigma2_avg / (theta^2 * gsq_avg)`` with ``gsq = ||g||^2``, smoothed, rounded
  and clipped exactly like CABS (Sec. 4.4.4).

``variance_sum`` is ``tr(Sigma)`` estimated by ``sum ||s||_1`` of Eq. 3.30 (the per-example
variance, divided by ``N - 1``), as :class:`steepest.stats.GradientMoments` computes it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from torch import Tensor

__all__ = ["CABS", "BatchSizeController", "VarianceRatioBatchSize"]

NONFINITE = ("raise", "skip")


def _check_int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")


def _check_positive(name: str, value: Any, hi: float = math.inf, hi_closed: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and value > 0 and (value <= hi if hi_closed else value < hi)
    if not ok:
        bound = f"(0, {hi}]" if hi_closed else "(0, inf)"
        raise ValueError(f"{name} must be a finite number in {bound}, got {value!r}")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"{name} must be a real scalar, got a tensor of shape "
                             f"{tuple(value.shape)} and dtype {value.dtype}")
        return float(value.detach())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


class BatchSizeController:
    """Shared machinery of Alg. 1: validation, EMAs started at zero, ``ROUND_CLIP``.

    Subclasses define ``_inputs`` (names of the averaged quantities) and ``_target`` (the
    unrounded batch size from the averages). ``batch_size`` is the size to use for the next
    step; ``update(...)`` returns it as well.

    Args:
        min_batch: smallest batch size, also the first one (Alg. 1: ``m <- m_min``); >= 2,
            since the variance of Eq. 3.30 needs two examples.
        max_batch: largest batch size, >= ``min_batch``.
        smoothing: the running-average constant ``mu`` in ``[0, 1)``.
        nonfinite: a NaN/inf (or negative) statistic raises ``ValueError`` (``"raise"``) or is
            ignored with a warning, leaving the averages and the batch size as they were
            (``"skip"``).
    """

    _inputs: tuple[str, ...] = ()

    def __init__(self, min_batch: int, max_batch: int, smoothing: float = 0.9,
                 nonfinite: str = "raise") -> None:
        _check_int("min_batch", min_batch, 2)
        _check_int("max_batch", max_batch, 2)
        if max_batch < min_batch:
            raise ValueError(f"max_batch must be >= min_batch ({min_batch}), got {max_batch}")
        ok = isinstance(smoothing, (int, float)) and not isinstance(smoothing, bool)
        if not (ok and 0.0 <= smoothing < 1.0):
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
        if nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
        self.min_batch = min_batch
        self.max_batch = max_batch
        self.smoothing = float(smoothing)
        self.nonfinite = nonfinite
        self.batch_size = min_batch
        self.steps = 0
        self.averages = dict.fromkeys(self._inputs, 0.0)

    # -------------------------------------------------------------- the rule
    def _target(self) -> float:
        raise NotImplementedError

    def round_clip(self, value: float) -> int:
        """``ROUND_CLIP`` of Alg. 1: nearest integer (halves up), clipped to the bounds.

        ``+inf`` gives ``max_batch``; ``nan`` (0/0: no noise and no signal) gives ``min_batch``.
        """
        if math.isnan(value):
            return self.min_batch
        if value >= self.max_batch:
            return self.max_batch
        return max(self.min_batch, min(self.max_batch, math.floor(value + 0.5)))

    def _observe(self, values: dict[str, float]) -> int:
        bad = {k: v for k, v in values.items() if not math.isfinite(v) or v < 0}
        if bad:
            msg = (f"{type(self).__name__}.update got non-finite or negative statistics {bad}; "
                   "they must be finite and >= 0")
            if self.nonfinite == "raise":
                raise ValueError(msg)
            warnings.warn(msg + "; skipping this update", RuntimeWarning, stacklevel=3)
            return self.batch_size
        mu = self.smoothing
        for k, v in values.items():
            self.averages[k] = mu * self.averages[k] + (1.0 - mu) * v
        self.steps += 1
        self.batch_size = self.round_clip(self._target())
        return self.batch_size

    def update(self, loss: Any, variance_sum: Any, grad_sq_norm: Any = None) -> int:
        """Feed one step's statistics; return the batch size for the next step."""
        raise NotImplementedError

    def update_from(self, result: Any) -> int:
        """:meth:`update` from a :class:`~steepest.stats.GradientMomentsResult`."""
        return self.update(result.loss, result.variance_sum, result.grad_sq_norm)

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "steps": self.steps,
                "averages": dict(self.averages)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state.get("averages", {})) != set(self._inputs):
            raise ValueError(f"state averages must have keys {self._inputs}, got "
                             f"{sorted(state.get('averages', {}))}")
        self.batch_size = int(state["batch_size"])
        self.steps = int(state["steps"])
        self.averages = {k: float(v) for k, v in state["averages"].items()}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(min_batch={self.min_batch}, max_batch={self.max_batch},"
                f" smoothing={self.smoothing}, batch_size={self.batch_size})")


class CABS(BatchSizeController):
    """Coupled Adaptive Batch Size [Bal21, Alg. 1, Eq. 4.20]: ``m = lr tr(Sigma) / f``.

    After step ``t`` with loss ``f`` and variance estimate ``s`` (Eq. 3.30)::

        sigma2 <- mu sigma2 + (1 - mu) ||s||_1      (sigma2 = 0 initially)
        f_avg  <- mu f_avg  + (1 - mu) f            (f_avg = 0 initially)
        m      <- ROUND_CLIP(lr sigma2 / f_avg, min_batch, max_batch)

    ``lr`` is the SGD learning rate the batch size is coupled to (set ``cabs.lr`` when a
    schedule changes it). CABS assumes a loss ``f >= 0`` with minimum near 0 (Sec. 4.4.2);
    ``f_avg = 0`` gives ``max_batch`` (or ``min_batch`` if ``sigma2 = 0`` too).
    ``grad_sq_norm`` is accepted for a uniform signature and ignored.
    """

    _inputs = ("variance_sum", "loss")

    def __init__(self, lr: float, min_batch: int, max_batch: int, smoothing: float = 0.9,
                 nonfinite: str = "raise") -> None:
        _check_positive("lr", lr)
        super().__init__(min_batch, max_batch, smoothing, nonfinite)
        self.lr = float(lr)

    def _target(self) -> float:
        sigma2, f_avg = self.averages["variance_sum"], self.averages["loss"]
        if f_avg == 0.0:
            return math.nan if sigma2 == 0.0 else math.inf
        return self.lr * sigma2 / f_avg

    def update(self, loss: Any, variance_sum: Any, grad_sq_norm: Any = None) -> int:
        return self._observe({"variance_sum": _as_float("variance_sum", variance_sum),
                              "loss": _as_float("loss", loss)})


class VarianceRatioBatchSize(BatchSizeController):
    """The "competitor" of [Bal21, Sec. 4.4] (Eq. 4.18): ``m = tr(Sigma)/(theta^2 ||g||^2)``,
    with CABS's smoothing (EMAs of ``||s||_1`` and of ``||g||^2``), rounding and clipping.

    ``theta`` in ``(0, 1]`` is the noise tolerance of Eq. 4.17 (De et al. suggest 1.0; the
    thesis tries 0.6, 0.8, 1.0). ``loss`` is accepted for a uniform signature and ignored.
    """

    _inputs = ("variance_sum", "grad_sq_norm")

    def __init__(self, theta: float, min_batch: int, max_batch: int, smoothing: float = 0.9,
                 nonfinite: str = "raise") -> None:
        _check_positive("theta", theta, hi=1.0, hi_closed=True)
        super().__init__(min_batch, max_batch, smoothing, nonfinite)
        self.theta = float(theta)

    def _target(self) -> float:
        sigma2, gsq = self.averages["variance_sum"], self.averages["grad_sq_norm"]
        if gsq == 0.0:
            return math.nan if sigma2 == 0.0 else math.inf
        return sigma2 / (self.theta**2 * gsq)

    def update(self, loss: Any, variance_sum: Any, grad_sq_norm: Any = None) -> int:
        if grad_sq_norm is None:
            raise ValueError("VarianceRatioBatchSize.update needs grad_sq_norm (||g||^2)")
        return self._observe({"variance_sum": _as_float("variance_sum", variance_sum),
                              "grad_sq_norm": _as_float("grad_sq_norm", grad_sq_norm)})
