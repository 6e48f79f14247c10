"""The spectral view of a model's gradient: which layers suit which norm (operator norms:
[BN24], [Pethick25]; see docs/operator_norms.md).

For each parameter, viewed as a matrix ``G`` (``out x rest``, as :mod:`steepest.norms` does)
with singular values ``s_1 >= ... >= s_r`` and entries ``g_i``:

* ``stable_rank = ||G||_F^2 / ||G||_2^2``, in ``[1, rank]``;
* ``nuclear / spectral = sum_i s_i / s_1``, in ``[1, rank]``;
* ``phi_spectral = ||G||_nuc^2 / (min(m, n) ||G||_F^2)``, in ``(0, 1]``: the density of
  [BPL20, Eq. 30], ``phi(z) = ||z||_1^2 / (d ||z||_2^2)``, applied to the singular values instead of the
  entries. Eq. 30-31 read: a norm whose dual is large relative to the Euclidean norm (a *dense*
  gradient in that norm's sense) gains from steepest descent under it, since the step
  ``||g||_*^2`` it buys exceeds GD's ``||g||_2^2`` by exactly that ratio (times the size);
* ``phi_sign = ||G||_1^2 / (mn ||G||_F^2)``: the entrywise density (Eq. 30) that favours sign
  descent (l_inf).

``suggest`` is a heuristic of ours (not from a paper): ``spectral`` where the singular-value
density beats the entrywise one and the gradient is not close to rank one (``stable_rank >= 2``),
``sign`` for matrices whose entry density is higher, and ``elementwise`` (sign or Adam) for
vectors, as the anchors do. Eq. 31 also needs the curvature in each norm, which this view does
not estimate; it is a cheap first look (one gradient and one SVD per layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from steepest.geometry.models import HessianOperator, LossFn
from steepest.norms import _as_matrix

__all__ = ["LayerSpectrum", "format_spectral_view", "layer_spectrum", "spectral_view"]


@dataclass
class LayerSpectrum:
    name: str
    shape: tuple[int, ...]
    frobenius: float
    spectral: float
    nuclear: float
    stable_rank: float
    nuclear_over_spectral: float
    phi_spectral: float
    phi_sign: float
    suggest: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_spectrum(name: str, g: Tensor) -> LayerSpectrum:
    """The spectral quantities of one gradient tensor (see the module docstring)."""
    shape = tuple(g.shape)
    m = _as_matrix(g.detach().double())
    fro = float(torch.linalg.norm(m))
    l1 = float(m.abs().sum())
    if m.numel() == 0 or fro == 0.0:
        return LayerSpectrum(name, shape, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, "none (zero gradient)")
    s = torch.linalg.svdvals(m)
    spec, nuc = float(s[0]), float(s.sum())
    phi_spec = nuc**2 / (min(m.shape) * fro**2)
    phi_sign = l1**2 / (m.numel() * fro**2)
    stable = fro**2 / spec**2
    if g.dim() < 2:
        suggest = "elementwise (sign or Adam)"
    elif phi_spec > phi_sign and stable >= 2.0:
        suggest = "spectral (Muon)"
    else:
        suggest = "sign (l_inf)"
    return LayerSpectrum(name, shape, fro, spec, nuc, stable, nuc / spec, phi_spec, phi_sign, suggest)


def spectral_view(
    model: nn.Module, loss_fn: LossFn, data: Any, params: Sequence[Tensor] | None = None
) -> list[LayerSpectrum]:
    """Per-parameter spectral quantities of the full gradient of the average loss over ``data``
    (a batch ``(inputs, targets)`` or an iterable of batches)."""
    names = {id(p): n for n, p in model.named_parameters()}
    op = HessianOperator(model, loss_fn, data, params)
    _, g = op.gradient()
    return [layer_spectrum(names.get(id(p), f"param{i}"), gi) for i, (p, gi) in enumerate(zip(op.params, op._unflatten(g)))]


def format_spectral_view(layers: Sequence[LayerSpectrum]) -> str:
    """A table of :func:`spectral_view`'s rows."""
    head = f"{'parameter':<28} {'shape':<14} {'stable rank':>11} {'nuc/spec':>9} {'phi_spec':>9} {'phi_sign':>9}  suggest"
    lines = ["spectral view of the gradient (per layer; phi = density, [BPL20, Eq. 30])", head, "-" * len(head)]
    for r in layers:
        lines.append(
            f"{r.name[:28]:<28} {str(r.shape)[:14]:<14} {r.stable_rank:>11.2f} {r.nuclear_over_spectral:>9.2f} "
            f"{r.phi_spectral:>9.3f} {r.phi_sign:>9.3f}  {r.suggest}"
        )
    return "\n".join(lines)
