"""Norms, their duals, sharp operators and LMOs: the one abstraction every optimizer is built on.

Steepest descent w.r.t. a norm ``||.||`` with dual ``||.||_*`` (seed 000, Sec. 3.1, Table 1,
App. A.1) moves along the *sharp* of the gradient,

    z# = argmax_x <z, x> - 1/2 ||x||^2                                    (seed 000, Eq. 32)

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
Lp(p)       l_q, q = p/(p-1)     sign(z)|z|^(1/(p-1))        ||z||_q^((p-2)/(p-1))  (seed 003)
BlockNorm   sum_B ||z_B||_2      z_B / ||z_B||_2             sum_B ||z_B||_2  (Eq. 37-38)
==========  ===================  ==========================  ===========================

Arguments ``xs`` are a tensor or a list of tensors taken as one concatenated vector (list in,
list out). ``sign(0) = 0`` throughout, and every quantity of a zero vector is zero (no 0/0).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from steepest._backend import _Ops, _ops

__all__ = [
    "L1",
    "L2",
    "BlockNorm",
    "Factored",
    "Linf",
    "Lp",
    "Norm",
    "combine_lq",
    "from_spec",
    "register_norm",
]

TensorOrList = Tensor | Sequence[Tensor]


def _as_list(xs: TensorOrList) -> tuple[list[Tensor], bool]:
    if isinstance(xs, Tensor):
        return [xs], True
    xs = list(xs)
    if not all(isinstance(x, Tensor) for x in xs):
        raise TypeError("xs must be a tensor or a sequence of tensors")
    return xs, False


def _fresh(units: list[Tensor], sources: list[Tensor]) -> list[Tensor]:
    """Copies of the units that alias an input (so they can be scaled in place)."""
    ids = {id(x) for x in sources}
    return [u.clone() if id(u) in ids else u for u in units]


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den with 0 where den == 0: the direction of a zero vector is zero."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


@dataclass
class Factored:
    """``sharp(z) = scale * unit`` with per-tensor scalars.

    ``unit`` is a list of tensors (one per input tensor); ``scale`` and ``dual`` are 1-d tensors
    with one entry per input tensor. With a global scope all entries are equal (the scalar of the
    concatenated vector); with a per-tensor scope entry ``i`` belongs to tensor ``i`` alone.
    """

    unit: list[Tensor]
    scale: Tensor
    dual: Tensor

    def coefficients(self, mode: str, beta: float = 1.0) -> Tensor:
        """The scalar multiplying ``unit`` in each steepest-descent mode.

        * ``scaled``:     z#                       (seed 000, Eq. 10)
        * ``normalized``: z# / ||z||_*             (Eq. 49)
        * ``soft``:       z# / (||z||_* + beta)    (Eq. 52, the general-norm form of Eq. 57)
        * ``unscaled``:   unit(z)                  (seed 003 Alg. 1; sign(z) for Linf)
        """
        if mode == "scaled":
            return self.scale
        if mode == "normalized":
            return _safe_div(self.scale, self.dual)
        if mode == "soft":
            return self.scale / (self.dual + beta)
        if mode == "unscaled":
            return torch.ones_like(self.scale)
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


MODES = ("scaled", "normalized", "soft", "unscaled")


class Norm(ABC):
    """A norm on R^d (d = total number of entries of the tensors it is given)."""

    name: str = "norm"

    # ---- what subclasses implement ---------------------------------------------------------
    @abstractmethod
    def _primal(self, xs: list[Tensor], ops: type[_Ops], per_tensor: bool) -> Tensor:
        """Per-tensor (or broadcast global) primal norms, 1-d."""

    @abstractmethod
    def _factor(self, xs: list[Tensor], ops: type[_Ops], per_tensor: bool) -> Factored:
        """Factor the sharp operator; see :class:`Factored`."""

    def to_spec(self) -> dict[str, Any]:
        """A dict of plain values that :func:`from_spec` turns back into this norm."""
        return {"name": self.name}

    # ---- public API ------------------------------------------------------------------------
    def factor(self, xs: TensorOrList, *, per_tensor: bool = False, foreach: bool = False) -> Factored:
        """Factor ``sharp(xs) = scale * unit``; per-tensor scope if ``per_tensor``."""
        lst, _ = _as_list(xs)
        return self._factor(lst, _ops(foreach), per_tensor)

    def norm(self, xs: TensorOrList, *, foreach: bool = False) -> Tensor:
        """The primal norm ``||xs||`` of the concatenated vector (0-d tensor)."""
        lst, _ = _as_list(xs)
        if not lst:
            return torch.zeros(())
        return self._primal(lst, _ops(foreach), False)[0]

    __call__ = norm

    def dual(self, xs: TensorOrList, *, foreach: bool = False) -> Tensor:
        """The dual norm ``||xs||_*`` of the concatenated vector (0-d tensor)."""
        lst, _ = _as_list(xs)
        if not lst:
            return torch.zeros(())
        return self._factor(lst, _ops(foreach), False).dual[0]

    def direction(
        self,
        xs: TensorOrList,
        mode: str = "scaled",
        *,
        beta: float = 1.0,
        per_tensor: bool = False,
        foreach: bool = False,
    ) -> TensorOrList:
        """The steepest-descent direction of ``mode`` (see :meth:`Factored.coefficients`)."""
        lst, single = _as_list(xs)
        if not lst:
            return []
        out = self._direction(lst, _ops(foreach), mode, beta, per_tensor)
        return out[0] if single else out

    def _direction(
        self, xs: list[Tensor], ops: type[_Ops], mode: str, beta: float, per_tensor: bool
    ) -> list[Tensor]:
        """Fresh tensors (never aliases of ``xs``) holding the direction of ``mode``."""
        plan = self._plan(xs, ops, mode, beta, per_tensor)
        if plan is not None:
            pre, post = plan
            src = xs if pre is None else ops.div(xs, list(pre.unbind(0)))
            out = _fresh(self._map(src, ops), xs)
            return out if post is None else ops.mul_(out, list(post.unbind(0)))
        if mode == "normalized":
            return self._normalized(xs, ops, per_tensor)
        f = self._factor(xs, ops, per_tensor)
        return ops.mul_(_fresh(f.unit, xs), list(f.coefficients(mode, beta).unbind(0)))

    def _normalized(self, xs: list[Tensor], ops: type[_Ops], per_tensor: bool) -> list[Tensor]:
        """``z# / ||z||_*``. Subclasses override this where ``scale / dual`` can overflow."""
        f = self._factor(xs, ops, per_tensor)
        return ops.mul_(_fresh(f.unit, xs), list(f.coefficients("normalized").unbind(0)))

    def _plan(
        self, xs: list[Tensor], ops: type[_Ops], mode: str, beta: float, per_tensor: bool
    ) -> tuple[Tensor | None, Tensor | None] | None:
        """For norms whose direction is an elementwise map once a few reductions are known:
        per-tensor scalars ``(pre, post)`` with ``direction_i = _map(x_i / pre_i) * post_i``
        (``None`` meaning 1). Optimizers then stream tensor by tensor, never holding every
        direction at once. ``None`` (the default) if the direction is not of that form."""
        return None

    def _map(self, xs: list[Tensor], ops: type[_Ops]) -> list[Tensor]:
        """The elementwise map of :meth:`_plan` (required when ``_plan`` returns a plan)."""
        raise NotImplementedError

    def _is_elementwise(self, mode: str) -> bool:
        """Whether the direction of ``mode`` needs no reduction at all (``_plan`` is
        ``(None, None)``): then each tensor's direction depends on that tensor alone."""
        return False

    def sharp(self, xs: TensorOrList, *, foreach: bool = False) -> TensorOrList:
        """``z# = argmax_x <z,x> - 1/2||x||^2`` (seed 000, Eq. 32)."""
        return self.direction(xs, "scaled", foreach=foreach)

    def lmo(self, xs: TensorOrList, *, foreach: bool = False) -> TensorOrList:
        """``z# / ||z||_*``: a unit-norm vector with ``<z, lmo(z)> = ||z||_*`` (0 for z = 0)."""
        return self.direction(xs, "normalized", foreach=foreach)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_spec().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Norm) and self.to_spec() == other.to_spec()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_spec().items())))


def _combine_pow(partials: Tensor, q: float, per_tensor: bool) -> Tensor:
    """Combine per-tensor l_q norms into the l_q norm of the concatenation (or keep them)."""
    if per_tensor or partials.numel() == 0:
        return partials
    if q == 1:
        total = partials.sum()
    elif q == 2:
        total = torch.linalg.vector_norm(partials)
    else:
        # Scale by the max before powering so that large q cannot overflow.
        m = partials.max()
        total = m * torch.linalg.vector_norm(partials / torch.where(m > 0, m, 1.0), q)
    return total.expand(partials.shape[0])


class Lp(Norm):
    """The l_p norm for real ``p >= 2`` or ``p = math.inf``; its dual is l_q, q = p/(p-1).

    Sharp (seed 003, Sec. 3, scaled form): ``z#_i = sign(z_i)|z_i|^(1/(p-1)) ||z||_q^((p-2)/(p-1))``.
    The unscaled map ``s(z)_i = sign(z_i)|z_i|^(1/(p-1))`` is the step of stochastic l_p descent
    (seed 003, Alg. 1). ``eps > 0`` replaces it by a smoothed map (Lemma 4 then holds only
    approximately):

    * ``eps_mode="paper"``: ``s_eps_i(z) = z_i / (|z_i|^((p-2)/(p-1)) + eps)`` (seed 003, Alg. 1-3);
    * ``eps_mode="code"``:  ``s_eps_i(z) = z_i (|z_i| + eps)^(-(p-2)/(p-1))`` (the authors' code).

    ``p = 2`` is the Euclidean norm and ``p = inf`` the max norm (sign descent).
    """

    name = "lp"

    def __init__(self, p: float, eps: float = 0.0, eps_mode: str = "paper") -> None:
        p = float(p)
        if math.isnan(p) or p < 2:
            raise ValueError(f"p must be a real number >= 2 or math.inf, got {p}")
        if not (eps >= 0) or math.isinf(eps):
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
        if eps_mode not in ("paper", "code"):
            raise ValueError(f"eps_mode must be 'paper' or 'code', got {eps_mode!r}")
        self.p = p
        self.q = 1.0 if math.isinf(p) else p / (p - 1.0)
        self.eps = float(eps)
        self.eps_mode = eps_mode

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name, "p": self.p, "eps": self.eps, "eps_mode": self.eps_mode}

    def _primal(self, xs: list[Tensor], ops: type[_Ops], per_tensor: bool) -> Tensor:
        return _combine_pow(ops.norms(xs, self.p), self.p, per_tensor)

    def unit(self, xs: list[Tensor], ops: type[_Ops]) -> list[Tensor]:
        """``s(z)`` or its eps-smoothed form, elementwise."""
        p = self.p
        if math.isinf(p):
            return ops.sign(xs)
        if p == 2.0:
            return [x.clone() for x in xs] if not ops.foreach else list(torch._foreach_mul(xs, 1.0))
        if self.eps == 0.0:
            # sign(z)|z|^(1/(p-1)); sign(0) = 0 keeps zeros at zero.
            mags = ops.pow_(ops.abs(xs), 1.0 / (p - 1.0))
            return ops.mul_(mags, ops.sign(xs))
        e = (p - 2.0) / (p - 1.0)
        if self.eps_mode == "paper":
            den = ops.add_(ops.pow_(ops.abs(xs), e), self.eps)
            out = [x.clone() for x in xs]
            return ops.div_(out, den)
        den = ops.pow_(ops.add_(ops.abs(xs), self.eps), e)
        out = [x.clone() for x in xs]
        return ops.div_(out, den)

    def _map(self, xs: list[Tensor], ops: type[_Ops]) -> list[Tensor]:
        return self.unit(xs, ops)

    def _is_elementwise(self, mode: str) -> bool:
        return mode == "unscaled" or (mode == "normalized" and math.isinf(self.p))

    def _plan(
        self, xs: list[Tensor], ops: type[_Ops], mode: str, beta: float, per_tensor: bool
    ) -> tuple[Tensor | None, Tensor | None] | None:
        if self._is_elementwise(mode):
            return None, None  # s(z), or ||z||_1 sign(z) / ||z||_1: no reductions at all
        dual = _combine_pow(ops.norms(xs, self.q), self.q, per_tensor)
        if mode == "normalized" and self.eps == 0.0:
            # unit is homogeneous of degree 1/(p-1), so z#/||z||_q = unit(z/||z||_q): divide
            # first, since ||z||_q^(-1/(p-1)) overflows for tiny (e.g. subnormal) z. A norm that
            # underflows to 0 makes the vector the zero vector: divide by inf there.
            return torch.where(dual > 0, dual, math.inf), None
        return None, Factored([], self._scale(dual), dual).coefficients(mode, beta)

    def _scale(self, dual: Tensor) -> Tensor:
        if math.isinf(self.p):
            return dual
        if self.p == 2.0:
            return torch.ones_like(dual)
        return dual ** ((self.p - 2.0) / (self.p - 1.0))

    def _factor(self, xs: list[Tensor], ops: type[_Ops], per_tensor: bool) -> Factored:
        dual = _combine_pow(ops.norms(xs, self.q), self.q, per_tensor)
        return Factored(self.unit(xs, ops), self._scale(dual), dual)


class L2(Lp):
    """The Euclidean norm: self-dual, ``z# = z`` (gradient descent)."""

    name = "l2"

    def __init__(self) -> None:
        super().__init__(2.0)

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name}


class Linf(Lp):
    """The max norm: dual l1, ``z# = ||z||_1 sign(z)`` (sign descent, seed 000 Eq. 11)."""

    name = "linf"

    def __init__(self) -> None:
        super().__init__(math.inf)

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name}


class L1(Norm):
    """The l1 norm: dual l_inf, ``z# = |z_i*| sign(z_i*) e_i*`` with ``i* = argmax |z_i|``
    (coordinate descent, seed 000 Eq. 33). Ties go to the first maximal coordinate in
    concatenation order, so exactly one coordinate (per scope) moves.
    """

    name = "l1"

    def _primal(self, xs: list[Tensor], ops: type[_Ops], per_tensor: bool) -> Tensor:
        return _combine_pow(ops.norms(xs, 1.0), 1.0, per_tensor)

    def _factor(self, xs: list[Tensor], ops: type[_Ops], per_tensor: bool) -> Factored:
        maxes = ops.norms(xs, math.inf)
        units = [torch.zeros_like(x) for x in xs]
        if maxes.numel() == 0:
            return Factored(units, maxes, maxes)
        winners = range(len(xs)) if per_tensor else [int(torch.argmax(maxes))]
        for i in winners:
            x = xs[i]
            if x.numel() == 0 or maxes[i] == 0:
                continue
            j = int(torch.argmax(x.abs().reshape(-1)))
            units[i].view(-1)[j] = torch.sign(x.reshape(-1)[j])
        dual = maxes if per_tensor else maxes.max().expand(len(xs))
        return Factored(units, dual, dual)


class BlockNorm(Norm):
    """``max_B ||x_B||_2``: l2 inside each block, l_inf across blocks (seed 000, App. A.2.2).

    Dual: ``sum_B ||z_B||_2``; sharp ``z#_B = (sum_B' ||z_B'||_2) z_B / ||z_B||_2`` (Eq. 37-38).
    Normalized steepest descent under it is block-normalized gradient descent.
    ``blocks="tensor"`` makes each tensor a block; ``blocks="row"`` each row ``x[i]`` of a tensor
    with at least two dimensions (vectors and scalars stay one block).
    """

    name = "block"

    def __init__(self, blocks: str = "tensor") -> None:
        if blocks not in ("tensor", "row"):
            raise ValueError(f"blocks must be 'tensor' or 'row', got {blocks!r}")
        self.blocks = blocks

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name, "blocks": self.blocks}

    def _rows(self, x: Tensor) -> bool:
        return self.blocks == "row" and x.dim() >= 2

    def _block_norms(self, x: Tensor) -> Tensor:
        """l2 norm of every block of x, shaped to broadcast against x."""
        if self._rows(x):
            return torch.linalg.vector_norm(x.reshape(x.shape[0], math.prod(x.shape[1:])), dim=1).reshape(
                (x.shape[0],) + (1,) * (x.dim() - 1)
            )
        return torch.linalg.vector_norm(x) if x.numel() else x.new_zeros(())

    def _map(self, xs: list[Tensor], ops: type[_Ops]) -> list[Tensor]:
        return xs  # already z_B / ||z_B|| (the division of the plan)

    def _plan(
        self, xs: list[Tensor], ops: type[_Ops], mode: str, beta: float, per_tensor: bool
    ) -> tuple[Tensor | None, Tensor | None] | None:
        if self.blocks != "tensor":
            return None
        bn = ops.norms(xs, 2.0)
        dual = _combine_pow(bn, 1.0, per_tensor)
        # Divide by ||z_B|| (inf where it is 0) rather than multiply by 1/||z_B||, which overflows.
        return torch.where(bn > 0, bn, math.inf), Factored([], dual, dual).coefficients(mode, beta)

    def _primal(self, xs: list[Tensor], ops: type[_Ops], per_tensor: bool) -> Tensor:
        maxes = torch.stack([self._block_norms(x).max() if x.numel() else x.new_zeros(()) for x in xs])
        return maxes if per_tensor else maxes.max().expand(len(xs))

    def _factor(self, xs: list[Tensor], ops: type[_Ops], per_tensor: bool) -> Factored:
        # Divide rather than multiply by 1/||z_B||, which overflows for tiny blocks.
        if self.blocks == "tensor":
            bn = ops.norms(xs, 2.0)
            unit = ops.div(xs, list(torch.where(bn > 0, bn, math.inf).unbind(0)))
            sums = bn
        else:
            norms = [self._block_norms(x) for x in xs]
            unit = [x / torch.where(n > 0, n, math.inf) for x, n in zip(xs, norms)]
            sums = torch.stack([n.sum() for n in norms]) if xs else torch.zeros(0)
        dual = _combine_pow(sums, 1.0, per_tensor)
        return Factored(unit, dual, dual)


#: Public name for extension authors: combine per-tensor l_q norms into the group's l_q norm.
combine_lq = _combine_pow

_REGISTRY: dict[str, type[Norm]] = {"l2": L2, "linf": Linf, "l1": L1, "lp": Lp, "block": BlockNorm}


def from_spec(spec: dict[str, Any] | Norm | str) -> Norm:
    """Build a norm from :meth:`Norm.to_spec` output (or a name such as ``"linf"``)."""
    if isinstance(spec, Norm):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in _REGISTRY:
        raise ValueError(f"unknown norm {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**spec)


def register_norm(cls: type[Norm]) -> type[Norm]:
    """Make a user-defined norm known to :func:`from_spec` (so optimizer checkpoints load)."""
    _REGISTRY[cls.name] = cls
    return cls
