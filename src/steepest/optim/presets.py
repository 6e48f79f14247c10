"""The named steepest-descent methods: presets of :class:`steepest.optim.engine.SteepestDescent`
(a norm, a mode, a momentum scheme), each a few lines, as optax's aliases.

=====================  =====================================  ========================================
optimizer              norm, mode                             source
=====================  =====================================  ========================================
SignSGD                Linf, unscaled (sign); momentum=Signum [BPL20, Eq. 2], [Bal21, Alg. 3]
ScaledSignSGD          Linf, scaled (||g||_1 sign g)          [BPL20, Eq. 11], [ScaledSign, Alg. 1-2]
LpDescent              Lp(p, eps), unscaled or scaled         [STACEY, Alg. 1]
CoordinateDescent      L1, scaled                             [BPL20, Eq. 33]
BlockNormalizedSGD     BlockNorm, normalized (or any mode)    [BPL20, App. A.2.2]
Lion                   Linf, unscaled, betas=(0.9, 0.99)      [Chen23]
=====================  =====================================  ========================================

``Modular`` (per-layer norms, Nesterov, Scion's constrained step, shape-adjusted lr) and
``Muon`` are presets of the same engine, in :mod:`steepest.optim.layerwise` and
:mod:`steepest.optim.muon`.
"""

from __future__ import annotations

from torch.optim.optimizer import ParamsT

from steepest.norms import L1, BlockNorm, Linf, Lp
from steepest.optim.base import StepOptimizer, check_betas
from steepest.optim.engine import SteepestDescent

__all__ = ["BlockNormalizedSGD", "CoordinateDescent", "Lion", "LpDescent", "ScaledSignSGD", "SignSGD"]


class SignSGD(SteepestDescent):
    """signSGD, x -= lr sign(g) ([BPL20, Eq. 2]; [ScaledSign, Eq. 3]); with ``momentum=b > 0`` it is
    Signum / M-SIGN-SGD [Bal21, Alg. 3]: m = b m + (1-b) g, x -= lr sign(m).

    Default ``lr=3e-3`` (best 3e-3..1e-2 on the four small problems of docs/defaults.md; with
    ``momentum=0.9`` start at 1e-2). If you use AdamW at lr ``a``, start at about ``0.2 a``
    (0.1-0.3 a there).

    ``foreach``, ``fused`` (``True``: the fused backend, one compiled elementwise kernel per
    tensor and dtype), ``maximize``, ``nonfinite``: see :class:`SteepestDescent`.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 3e-3,
        *,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        super().__init__(
            params, lr, norm=Linf(), mode="unscaled", beta=1.0, momentum=momentum, scope="global",
            weight_decay=weight_decay,
            maximize=maximize, foreach=foreach, fused=fused, nonfinite=nonfinite,
        )


class ScaledSignSGD(SteepestDescent):
    """Norm-scaled sign descent, x -= lr ||g||_1 sign(g): steepest descent w.r.t. l_inf
    ([BPL20, Eq. 11]; [ScaledSign, Alg. 1-2]). ``scope`` picks the l1 norm over each param group
    (``"group"``), over all groups (``"all_groups"``: splitting parameters into groups, e.g. no
    weight decay on biases, leaves the update unchanged) or per tensor; see
    :class:`SteepestDescent`.

    Default ``lr=3e-5``. The step scales with ||g||_1, so with the number d of parameters in the
    scope, and the best lr moves with the model: 3e-5..1e-2 in docs/defaults.md, with lr * d
    between 0.2 and 7. Start near ``1/d``; relative to AdamW at ``a`` the best was 0.001-0.1 a.
    (The sweep's rule gave 1e-4, which diverged on the MNIST-1D CNN at 400 steps for 2 of 3 seeds.)

    Extreme gradients: ``||g||_1`` is the step's scale and overflows float32 when the gradients
    sum past ~3.4e38 (|g| near 1e38). That is an overflow of the scaled step itself, not of an
    intermediate one could avoid at no cost, so it is refused: the default ``nonfinite`` policy
    raises a ``FloatingPointError`` before any parameter is written (see :class:`SteepestDescent`).

    ``foreach``, ``fused`` (``True``: the fused backend, one compiled elementwise kernel per
    tensor and dtype), ``maximize``, ``nonfinite``: see :class:`SteepestDescent`.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 3e-5,
        *,
        scope: str = "global",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        super().__init__(
            params, lr, norm=Linf(), mode="scaled", beta=1.0, momentum=momentum, scope=scope,
            weight_decay=weight_decay,
            maximize=maximize, foreach=foreach, fused=fused, nonfinite=nonfinite,
        )


class LpDescent(SteepestDescent):
    """Stochastic l_p descent [STACEY, Alg. 1]: x -= lr s(g), s_i(g) = sign(g_i)|g_i|^(1/(p-1)).

    ``eps > 0`` smooths the map: s_eps_i(g) = g_i / (|g_i|^((p-2)/(p-1)) + eps) (the paper's
    form; ``eps_mode="code"`` gives the authors' code's g_i (|g_i| + eps)^(-(p-2)/(p-1))).
    ``scaled=True`` uses the steepest-descent direction g# = s(g) ||g||_q^((p-2)/(p-1))
    (q = p/(p-1)) over ``scope``. ``p = 2`` is SGD and ``p = math.inf`` signSGD.

    Default ``lr=0.1`` (p = 3, unscaled; best 0.1-1 in docs/defaults.md); if you use AdamW at lr
    ``a``, start at about ``10 a`` (3-30 a there).

    ``foreach``, ``fused`` (``True``: the fused backend, one compiled elementwise kernel per
    tensor and dtype), ``maximize``, ``nonfinite``: see :class:`SteepestDescent`.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.1,
        *,
        p: float = 3.0,
        eps: float = 0.0,
        scaled: bool = False,
        scope: str = "global",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        eps_mode: str = "paper",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        if not isinstance(scaled, bool):
            raise ValueError(f"scaled must be a bool, got {scaled!r}")
        super().__init__(
            params, lr, norm=Lp(p, eps, eps_mode), mode="scaled" if scaled else "unscaled", beta=1.0,
            momentum=momentum, scope=scope, weight_decay=weight_decay, maximize=maximize, foreach=foreach, fused=fused, nonfinite=nonfinite,
        )


class CoordinateDescent(SteepestDescent):
    """Greedy coordinate descent, steepest descent w.r.t. l1 [BPL20, Eq. 33]: only the
    coordinate with the largest |g_i| (over the group, or per tensor) moves, by lr g_i.

    Default ``lr=0.3``, about the largest stable step (docs/defaults.md); one coordinate moves
    per step, so it trains networks poorly at any lr.

    ``fused=True`` is refused (``ValueError``): l1's direction moves one coordinate and has no
    pointwise map to fuse; ``foreach``, ``fused``, ``maximize``, ``nonfinite``: see :class:`SteepestDescent`.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.3,
        *,
        scope: str = "global",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        super().__init__(
            params, lr, norm=L1(), mode="scaled", beta=1.0, momentum=0.0, scope=scope, weight_decay=0.0,
            maximize=maximize, foreach=foreach, fused=fused, nonfinite=nonfinite,
        )


class BlockNormalizedSGD(SteepestDescent):
    """Steepest descent w.r.t. the block norm max_B ||x_B||_2 [BPL20, App. A.2.2].

    ``mode="normalized"`` (default) moves every block by lr along g_B/||g_B||_2 (block-normalized
    gradient descent); ``"scaled"`` multiplies that by sum_B ||g_B||_2 (Eq. 37-38). Blocks are
    tensors (``blocks="tensor"``) or rows of matrices (``blocks="row"``).

    Default ``lr=0.3`` (in normalized mode each block moves by lr; best 0.3-1 in
    docs/defaults.md); if you use AdamW at lr ``a``, start at about ``13 a`` (10-30 a there).

    ``foreach``, ``fused`` (``True``: the fused backend, one compiled elementwise kernel per
    tensor and dtype), ``maximize``, ``nonfinite``: see :class:`SteepestDescent`.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.3,
        *,
        mode: str = "normalized",
        blocks: str = "tensor",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        beta: float = 1.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        super().__init__(
            params, lr, norm=BlockNorm(blocks), mode=mode, beta=beta, momentum=momentum, scope="global",
            weight_decay=weight_decay,
            maximize=maximize, foreach=foreach, fused=fused, nonfinite=nonfinite,
        )


class Lion(SteepestDescent):
    """Lion (Chen et al., 2023), the baseline of [STACEY]: c = b1 m + (1-b1) g;
    x -= lr (sign(c) + wd x); m = b2 m + (1-b2) g. It is l_inf steepest descent (unscaled) on
    Lion's interpolated momentum.

    Default ``lr=1e-2`` (best 1e-3..1e-2 on the small problems of docs/defaults.md, where
    AdamW's best is 1e-2..1e-1); if you use AdamW at lr ``a``, start at about ``0.2 a`` (0.1-0.3
    a there), in line with Chen et al.'s advice of a 3-10x smaller lr.

    ``foreach``, ``fused`` (``True``: the fused backend, one compiled elementwise kernel per
    tensor and dtype), ``maximize``, ``nonfinite``: see :class:`SteepestDescent`.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        *,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        check_betas(betas)
        StepOptimizer.__init__(
            self,
            params,
            dict(
                lr=lr, betas=tuple(betas), weight_decay=weight_decay, norm=Linf(),
                mode="unscaled", beta=1.0, scope="global", maximize=maximize, foreach=foreach, fused=fused,
                nonfinite=nonfinite,
            ),
        )
