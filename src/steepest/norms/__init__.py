"""Norms, their duals, sharp operators and LMOs: the one abstraction every optimizer is built on.

Steepest descent w.r.t. a norm ``||.||`` with dual ``||.||_*`` ([BPL20, Sec. 3.1, Table 1],
App. A.1) moves along the *sharp* of the gradient,

    z# = argmax_x <z, x> - 1/2 ||x||^2                                    [BPL20, Eq. 32]

which satisfies Lemma 4: ``<z, z#> = ||z#||^2 = ||z||_*^2``. The unit-norm direction (the linear
minimization oracle up to sign, used by normalized steepest descent, Eq. 49) is ``z# / ||z||_*``.

Every norm here factors its sharp operator as ``z# = scale(z) * unit(z)``: an elementwise (or
per-block) map ``unit`` times a scalar built from reductions. That factorisation is what the
optimizers use (:class:`Factored`), so a norm gives scaled, normalized, soft and unscaled steepest
descent with no optimizer code of its own:

==========  ===================  ==========================  ===========================
norm        dual                 unit(z)                     scale(z)
==========  ===================  ==========================  ===========================
L2          l2                   z                           1
Linf        l1                   sign(z)                     ||z||_1
L1          l_inf                e_i* sign(z_i*)             ||z||_inf   (Eq. 33)
Lp(p)       l_q, q = p/(p-1)     sign(z)|z|^(1/(p-1))        ||z||_q^((p-2)/(p-1))  [STACEY]
BlockNorm   sum_B ||z_B||_2      z_B / ||z_B||_2             sum_B ||z_B||_2  (Eq. 37-38)
==========  ===================  ==========================  ===========================

Arguments ``xs`` are a tensor or a list of tensors taken as one concatenated vector (list in,
list out). ``sign(0) = 0`` throughout, and every quantity of a zero vector is zero (no 0/0).

The package: :mod:`~steepest.norms.protocol` (the :class:`Norm` contract, :class:`Factored`, the
registry), :mod:`~steepest.norms.elementwise` (l_p, l2, l_inf, l1, block),
:mod:`~steepest.norms.operator` (spectral, column, row, l1 -> l_inf) and
:mod:`~steepest.norms.polar` (Newton-Schulz and SVD polar factors). Every name is importable
from ``steepest.norms``.
"""

from steepest.norms.elementwise import L1, L2, BlockNorm, Linf, Lp
from steepest.norms.operator import ColNorm, L1ToLinf, OperatorNorm, RowNorm, Spectral
from steepest.norms.polar import (
    NS_COEFFICIENTS,
    NS_EPS,
    NS_STEPS,
    SHAPE_SCALES,
    _as_matrix,
    newton_schulz,
    polar_svd,
)
from steepest.norms.protocol import (
    _REGISTRY,
    MODES,
    Factored,
    Norm,
    TensorOrList,
    _combine_pow,
    _fresh,
    _safe_div,
    combine_lq,
    from_spec,
    per_tensor_list,
    register_norm,
    tensor_norms,
)

__all__ = [
    "L1",
    "L2",
    "MODES",
    "NS_COEFFICIENTS",
    "NS_EPS",
    "NS_STEPS",
    "SHAPE_SCALES",
    "_REGISTRY",
    "BlockNorm",
    "ColNorm",
    "Factored",
    "L1ToLinf",
    "Linf",
    "Lp",
    "Norm",
    "OperatorNorm",
    "RowNorm",
    "Spectral",
    "TensorOrList",
    "_as_matrix",
    "_combine_pow",
    "_fresh",
    "_safe_div",
    "combine_lq",
    "from_spec",
    "newton_schulz",
    "per_tensor_list",
    "polar_svd",
    "register_norm",
    "tensor_norms",
]
