"""Muon: steepest descent under the spectral norm with Nesterov momentum (docs/operator_norms.md).

``torch.optim.Muon`` (torch/optim/_muon.py; Jordan's Muon; [Liu25]) as a preset of
:class:`steepest.optim.layerwise.Modular` with the :class:`steepest.norms.Spectral` norm:

    m <- b m + (1 - b) g;   u = lerp(g, m, b)  (Nesterov)  or  u = m
    x <- (1 - lr wd) x - lr' NS(u),   lr' = adjust(lr, shape)

``NS(u)`` is the Newton-Schulz polar factor (the spectral norm's unit direction, ``mode=
"unscaled"``), ``adjust`` is ``"original"`` (``lr sqrt(max(1, rows/cols))``, the default, as
torch's ``None``) or ``"match_rms_adamw"`` (``0.2 lr sqrt(max(rows, cols))``). With
``ns_dtype="bfloat16"`` the operations are torch's, in torch's order (tests compare parameters
after several steps). Differences from ``torch.optim.Muon``, all opt-in or documented:

* ``ns_dtype="auto"`` (default) runs Newton-Schulz in bfloat16 on CUDA (as torch) but in the
  parameter's dtype on CPU (float32: more accurate; see benchmarks/spectral.py for the cost);
* conv kernels (``ndim > 2``) are accepted and flattened to ``out x rest`` (Jordan's Muon does the
  same; torch refuses them); parameters with ``ndim < 2`` are refused with an error naming them,
  as torch does, unless ``nonmatrix_norm`` (or a group with its own norm) says how to move them;
* complex parameters are pairs of reals (torch refuses them), half-precision parameters are
  updated in float32, non-finite gradients raise (``nonfinite``), like every ``steepest`` optimizer.

Memory: one matrix at a time (both ``foreach`` settings), and for it only what Newton-Schulz
needs: X (the Nesterov temporary itself, scaled in place), ``A = X X^T`` and
``B = b A + c A^2`` (``m x m``, ``m`` the smaller side), so a step's peak beyond the state is
``1 + 2m/n`` times the largest matrix's bytes on CPU in float32 (3 for a square matrix, 1.5 for
a 4d x d MLP matrix; :func:`steepest.norms.newton_schulz`). In bfloat16 a second X buffer is
kept (2.5 and 2.25; torch.optim.Muon's step: 3 and 2.25, measured with steepest._memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.optim.optimizer import ParamsT

from steepest.norms import NS_COEFFICIENTS, NS_EPS, NS_STEPS, Norm, Spectral
from steepest.optim.base import check_choice
from steepest.optim.layerwise import Modular

__all__ = ["Muon"]


class Muon(Modular):
    """Muon (torch.optim.Muon's options and defaults; see the module docstring).

    Args:
        params: parameters or param groups (2-D or more; see ``nonmatrix_norm``).
        lr: step size ``>= 0`` (default 1e-3, torch's).
        weight_decay: decoupled, ``x <- (1 - lr wd) x`` (default 0.1, torch's).
        momentum: ``b in [0, 1)`` (default 0.95).
        nesterov: Nesterov form ``lerp(g, m, b)`` (default True).
        ns_coefficients, ns_steps, eps: the Newton-Schulz quintic's ``(a, b, c)``, its step
            count and the floor on ``||u||_F`` (torch's defaults).
        adjust_lr_fn: ``None``/``"original"`` or ``"match_rms_adamw"``.
        ns_dtype: ``"auto"``, ``"float32"``, ``"float64"`` or ``"bfloat16"`` (torch's choice).
        polar: ``"newton_schulz"`` (default) or ``"svd"`` (the exact polar factor ``U V^T``).
        nonmatrix_norm: norm for parameters with ``ndim < 2`` (e.g. ``Linf()``, sign descent with
            the same momentum); ``None`` refuses them.
        maximize, foreach, nonfinite: as every ``steepest`` optimizer.

    Param groups may set any :class:`~steepest.optim.layerwise.Modular` option too (``norm``,
    ``mode``, ``radius``, ``step``...): Muon is Modular with Muon's defaults.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: Sequence[float] = NS_COEFFICIENTS,
        eps: float = NS_EPS,
        ns_steps: int = NS_STEPS,
        adjust_lr_fn: str | None = None,
        *,
        ns_dtype: str = "auto",
        polar: str = "newton_schulz",
        nonmatrix_norm: Norm | dict[str, Any] | str | None = None,
        maximize: bool = False,
        foreach: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        check_choice("adjust_lr_fn", adjust_lr_fn, (None, "original", "match_rms_adamw"))
        norm = Spectral(
            polar, ns_coefficients=ns_coefficients, ns_steps=ns_steps, ns_eps=eps, ns_dtype=ns_dtype
        )
        super().__init__(
            params,
            lr=lr,
            norm=norm,
            mode="unscaled",
            momentum=momentum,
            nesterov=nesterov,
            scope="per_tensor",
            weight_decay=weight_decay,
            adjust_lr_fn="original" if adjust_lr_fn is None else adjust_lr_fn,
            nonmatrix_norm=nonmatrix_norm,
            maximize=maximize,
            foreach=foreach,
            nonfinite=nonfinite,
        )
