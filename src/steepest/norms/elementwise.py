"""The elementwise (coordinate and block) norms: l_p (l2, l_inf), l1 and the block norm.

See :mod:`steepest.norms` for the table of their duals, units and scales [BPL20, Table 1].
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from steepest.backend import policy as _policy
from steepest.backend.ops import LoopOps, is_dtensor, l2_norm, sum_all
from steepest.norms.protocol import (
    Factored,
    Norm,
    _combine_pow,
    register_norm,
)

__all__ = ["L1", "L2", "BlockNorm", "Linf", "Lp"]


@register_norm
class Lp(Norm):
    """The l_p norm for real ``p >= 2`` or ``p = math.inf``; its dual is l_q, q = p/(p-1).

    Sharp ([STACEY, Sec. 3], scaled form): ``z#_i = sign(z_i)|z_i|^(1/(p-1)) ||z||_q^((p-2)/(p-1))``.
    The unscaled map ``s(z)_i = sign(z_i)|z_i|^(1/(p-1))`` is the step of stochastic l_p descent
    [STACEY, Alg. 1]. ``eps > 0`` replaces it by a smoothed map (Lemma 4 then holds only
    approximately):

    * ``eps_mode="paper"``: ``s_eps_i(z) = z_i / (|z_i|^((p-2)/(p-1)) + eps)`` [STACEY, Alg. 1-3];
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

    def _primal(self, xs: list[Tensor], ops: type[LoopOps], per_tensor: bool) -> Tensor:
        return _combine_pow(ops.norms(xs, self.p), self.p, per_tensor)

    def unit(self, xs: list[Tensor], ops: type[LoopOps]) -> list[Tensor]:
        """``s(z)`` or its eps-smoothed form, elementwise (fresh tensors)."""
        return self.map_all(xs, None, ops)

    @property
    def identity_map(self) -> bool:  # type: ignore[override]
        return self.p == 2.0

    @property
    def map_temporaries(self) -> int:  # type: ignore[override]
        return 1 if math.isinf(self.p) or self.p == 2.0 else 2  # sign, identity; |x|^a and sign(x)

    def map(self, x: Tensor) -> Tensor:
        """``s(x)`` [STACEY, Alg. 1] or its eps-smoothed form; ``sign(x)`` for p = inf, ``x``
        for p = 2. The single-tensor form of :meth:`map_all` (the same ops, the same numbers)."""
        p = self.p
        if math.isinf(p):
            return torch.sign(x)
        if p == 2.0:
            return x
        if self.eps == 0.0:
            return torch.abs(x).pow_(1.0 / (p - 1.0)).copysign_(x)
        return self._smoothed([torch.abs(x)], [x], LoopOps)[0]

    def map_(self, x: Tensor) -> Tensor:
        return x.sign_() if math.isinf(self.p) else self.map(x)

    def map_all(
        self, xs: list[Tensor], pre: list[Any] | None = None, ops: type[LoopOps] = LoopOps, *,
        owned: bool = False,
    ) -> list[Tensor]:
        """``map(x_i / pre_i)`` (``pre`` None: 1) in one fresh temporary per tensor: the
        division, |.|, pow and the sign are all written into it in place (peak memory, and no
        pass over a second temporary); ``owned``: a sign or identity map reuses ``xs``."""
        p = self.p
        out = None if pre is None else ops.div(xs, pre)  # owned: every later op is in place
        if math.isinf(p):
            if out is None:
                return ops.sign_(xs) if owned else ops.sign(xs)
            return ops.sign_(out)
        if p == 2.0:
            if out is not None:
                return out
            return xs if owned else ops.clone(xs)
        if self.eps == 0.0:
            # sign(z)|z|^(1/(p-1)); sign(0) = 0 keeps zeros at zero. x / pre (pre > 0) has the
            # sign of x, so the sign is copied from x after |.| overwrote it.
            mags = ops.pow_(ops.abs(xs) if out is None else ops.abs_(out), 1.0 / (p - 1.0))
            return _policy.copysign_(mags, xs, ops, owned=owned and out is None)
        if out is not None:  # not made by any plan (eps > 0 has no pre); kept general
            return self.map_all(out, None, ops)
        return self._smoothed(ops.abs(xs), xs, ops)

    def denominators(self, xs: list[Tensor], ops: type[LoopOps] = LoopOps) -> list[Tensor]:
        """For ``eps > 0``: fresh tensors ``den_i`` with ``map(x_i) = x_i / den_i``, i.e.
        ``|x|^((p-2)/(p-1)) + eps`` (``"paper"``) or ``(|x| + eps)^((p-2)/(p-1))`` (``"code"``), so
        that an update can divide inside its own pass (``addcdiv_``; STACEY's descent step)."""
        return self._denominators_(ops.abs(xs), ops)

    def _denominators_(self, den: list[Tensor], ops: type[LoopOps]) -> list[Tensor]:
        e = (self.p - 2.0) / (self.p - 1.0)
        if self.eps_mode == "paper":
            return ops.add_(ops.pow_(den, e), self.eps)
        return ops.pow_(ops.add_(den, self.eps), e)

    def _smoothed(self, den: list[Tensor], xs: list[Tensor], ops: type[LoopOps]) -> list[Tensor]:
        """The eps-smoothed map written into ``den`` (owned temporaries holding |x|)."""
        den = self._denominators_(den, ops)
        # x / den written into den: one temporary instead of a copy of x and den.
        return _policy.div_into_(xs, den, ops)

    def elementwise(self, mode: str) -> bool:
        # s(z); ||z||_1 sign(z) / ||z||_1; and l2's z# = z (scale 1: its norm is never needed).
        return (mode == "unscaled" or (mode == "normalized" and math.isinf(self.p))
                or (mode == "scaled" and self.p == 2.0))

    def duals(self, xs: list[Tensor], per_tensor: bool = False) -> Tensor:
        return _combine_pow(_policy.norms(xs, self.q, _policy.reduction_ops(xs)), self.q, per_tensor)

    def plan(
        self, xs: list[Tensor], mode: str, beta: float, per_tensor: bool
    ) -> tuple[Tensor | list[Tensor] | None, Tensor | None] | None:
        if self.elementwise(mode):
            return None, None  # no reductions at all
        return self._plan_of(self.duals(xs, per_tensor), mode, beta)

    has_partial = True

    def partial(self, x: Tensor, owned: bool = False) -> Tensor | None:
        # ||x||_q; |x| in place where x is the caller's temporary (no second one for q = 1).
        if owned and self.q == 1:
            return sum_all(x.abs_())  # compiled on CPU (fused pass 1): blocked sums
        return LoopOps.norms([x], self.q)[0]

    def plan_partials(
        self, partials: Tensor, xs: list[Tensor], mode: str, beta: float, per_tensor: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        if self.elementwise(mode):
            return None, None
        return self._plan_of(_combine_pow(partials, self.q, per_tensor), mode, beta)

    def _plan_of(self, dual: Tensor, mode: str, beta: float) -> tuple[Tensor | None, Tensor | None]:
        if mode == "normalized" and self.eps == 0.0:
            # unit is homogeneous of degree 1/(p-1), so z#/||z||_q = unit(z/||z||_q): divide
            # first, since ||z||_q^(-1/(p-1)) overflows for tiny (e.g. subnormal) z. A norm that
            # underflows to 0 makes the vector the zero vector: divide by inf there.
            return torch.where(dual > 0, dual, math.inf), None
        return None, Factored([], self.sharp_scale(dual), dual).coefficients(mode, beta)

    def sharp_scale(self, dual: Tensor) -> Tensor:
        if math.isinf(self.p):
            return dual
        if self.p == 2.0:
            return torch.ones_like(dual)
        return dual ** ((self.p - 2.0) / (self.p - 1.0))

    def _factor(self, xs: list[Tensor], ops: type[LoopOps], per_tensor: bool) -> Factored:
        dual = _combine_pow(ops.norms(xs, self.q), self.q, per_tensor)
        return Factored(self.unit(xs, ops), self.sharp_scale(dual), dual)


@register_norm
class L2(Lp):
    """The Euclidean norm: self-dual, ``z# = z`` (gradient descent)."""

    name = "l2"

    def __init__(self) -> None:
        super().__init__(2.0)

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name}


@register_norm
class Linf(Lp):
    """The max norm: dual l1, ``z# = ||z||_1 sign(z)`` (sign descent, [BPL20, Eq. 11])."""

    name = "linf"

    def __init__(self) -> None:
        super().__init__(math.inf)

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name}


@register_norm
class L1(Norm):
    """The l1 norm: dual l_inf, ``z# = |z_i*| sign(z_i*) e_i*`` with ``i* = argmax |z_i|``
    (coordinate descent, [BPL20, Eq. 33]). Ties go to the first maximal coordinate in
    concatenation order, so exactly one coordinate (per scope) moves.
    """

    name = "l1"

    def _primal(self, xs: list[Tensor], ops: type[LoopOps], per_tensor: bool) -> Tensor:
        return _combine_pow(ops.norms(xs, 1.0), 1.0, per_tensor)

    def _factor(self, xs: list[Tensor], ops: type[LoopOps], per_tensor: bool) -> Factored:
        # The same choice as _coordinates, written inline: compiled, indices handed back from a
        # function after a graph break would be guarded on (a recompile per new winner).
        maxes = _policy.absmax(xs, ops)
        units = [x.new_zeros(x.shape) for x in xs]  # contiguous: view(-1) indexes as reshape(-1)
        if maxes.numel() == 0:
            return Factored(units, maxes, maxes)
        if maxes.device.type == "meta":  # no values to pick a coordinate from (shape tracing)
            dual = maxes if per_tensor else maxes.max().expand(len(xs))
            return Factored(units, dual, dual)
        if (_policy.compiling() or maxes.device.type != "cpu") and not any(
            is_dtensor(x) for x in xs
        ):
            return self._factor_on_device(xs, maxes, per_tensor)
        winners = range(len(xs)) if per_tensor else [int(torch.argmax(maxes))]
        for i in winners:
            x = xs[i]
            if x.numel() == 0 or maxes[i] == 0:
                continue
            if is_dtensor(x):
                units[i] = _sharded_coordinate(x)
                continue
            j = int(torch.argmax(x.abs().reshape(-1)))
            units[i].view(-1)[j] = torch.sign(x.reshape(-1)[j])
        dual = maxes if per_tensor else maxes.max().expand(len(xs))
        return Factored(units, dual, dual)

    @staticmethod
    def _factor_on_device(xs: list[Tensor], maxes: Tensor, per_tensor: bool) -> Factored:
        """The same one-hot units with no host sync (accelerators) and no graph break
        (torch.compile): every tensor scatters ``sign(x_j*)`` at its own argmax ``j*``, multiplied
        by whether it is the winning tensor (first maximal, as ``argmax``); a zero tensor
        scatters sign(0) = 0. Costs an argmax per tensor instead of the winner's only
        (:func:`steepest.backend.policy.absargmax`)."""
        win = None if per_tensor else torch.argmax(maxes)
        _, args = _policy.absargmax(xs)
        units = []
        for i, (x, j) in enumerate(zip(xs, args)):
            u = x.new_zeros(x.shape)  # contiguous: its flat index is x.reshape(-1)'s
            if j is not None:
                flat = x.reshape(-1)
                v = torch.sign(flat.gather(0, j))
                if win is not None:
                    v = v * (win == i).to(v.dtype)
                u.view(-1).scatter_(0, j, v)
            units.append(u)
        dual = maxes if per_tensor else maxes.max().expand(len(xs))
        return Factored(units, dual, dual)

    def coordinates(
        self, xs: list[Tensor], mode: str, beta: float, per_tensor: bool
    ) -> list[tuple[int, int | Tensor, Tensor]] | None:
        """The one moving coordinate (per scope) with its value ``coefficient * sign(z_ij)``;
        ``None`` on DTensors (their argmax is global: :func:`_sharded_coordinate`). While
        compiling, :meth:`_coordinates_on_device`: an index tensor per tensor, never read back."""
        if any(is_dtensor(x) for x in xs):
            return None
        if _policy.compiling():
            return self._coordinates_on_device(xs, mode, beta, per_tensor)
        dual, coords = self._coordinates(xs, _policy.reduction_ops(xs), per_tensor)
        if not coords:
            return []
        coefs = Factored([], dual, dual).coefficients(mode, beta)
        return [(i, j, coefs[i] * sign) for i, j, sign in coords if sign is not None]

    @staticmethod
    def _coordinates_on_device(
        xs: list[Tensor], mode: str, beta: float, per_tensor: bool
    ) -> list[tuple[int, int | Tensor, Tensor]]:
        """:meth:`coordinates` with no host read (torch.compile: the winner's indices as Python
        ints would be guarded on, a recompile per new winner): every nonempty tensor's own first
        argmax ``j`` as a 1-element index tensor, its value ``coefficient * sign(z_ij)`` times
        whether the tensor is the winner (first maximal, as ``argmax``; the others move by 0).
        The maxima and indices come from one vectorized read of each tensor
        (:func:`steepest.backend.policy.absargmax`), and the update writes one element per
        tensor, where the one-hot unit tensors of :meth:`_factor_on_device` cost a zero fill and
        a full update pass per parameter (compiled: ~5x the eager step, issue 18)."""
        maxes, args = _policy.absargmax(xs)
        dual = maxes if per_tensor else maxes.max().expand(len(xs))
        coefs = Factored([], dual, dual).coefficients(mode, beta)
        win = None if per_tensor else torch.argmax(maxes)
        coords: list[tuple[int, int | Tensor, Tensor]] = []
        for i, (x, j) in enumerate(zip(xs, args)):
            if j is not None:
                flat = x.reshape(-1)
                v = torch.sign(flat.gather(0, j)) * coefs[i]
                coords.append((i, j, v if win is None else v * (win == i).to(v.dtype)))
        return coords

    def _coordinates(
        self, xs: list[Tensor], ops: type[LoopOps], per_tensor: bool
    ) -> tuple[Tensor, list[tuple[int, int, Tensor | None]]]:
        """The dual ``||z||_inf`` (per scope, broadcast) and the moving coordinates ``(i, j,
        sign(z_ij))``: tensor ``i``, flat index ``j`` (``j = -1``: a sharded DTensor, whose global
        argmax :func:`_sharded_coordinate` finds). Lets an optimizer move one coordinate without
        building the all-zero unit tensors."""
        maxes = _policy.absmax(xs, ops)
        if maxes.numel() == 0:
            return maxes, []
        if maxes.device.type == "meta":  # no values to pick a coordinate from (shape tracing)
            return (maxes if per_tensor else maxes.max().expand(len(xs))), []
        winners = range(len(xs)) if per_tensor else [int(torch.argmax(maxes))]
        coords: list[tuple[int, int, Tensor | None]] = []
        for i in winners:
            x = xs[i]
            if x.numel() == 0 or maxes[i] == 0:
                continue
            if is_dtensor(x):
                coords.append((i, -1, None))
                continue
            j = int(torch.argmax(x.abs().reshape(-1)))
            coords.append((i, j, torch.sign(x.reshape(-1)[j])))
        dual = maxes if per_tensor else maxes.max().expand(len(xs))
        return dual, coords


def _sharded_coordinate(x: Any) -> Any:
    """``sign(x_j*) e_j*`` of a sharded DTensor with ``j*`` the first global argmax of |x|: each
    shard's own argmax would move one coordinate per shard (FSDP2 gave 4.8e-3 off after 3 steps).
    Gathers the tensor once (CoordinateDescent moves one coordinate: its cost is the gather)."""
    from torch.distributed.tensor import distribute_tensor

    full = x.full_tensor()
    unit = torch.zeros_like(full)
    j = int(torch.argmax(full.abs().reshape(-1)))
    unit.view(-1)[j] = torch.sign(full.reshape(-1)[j])
    return distribute_tensor(unit, x.device_mesh, x.placements)


@register_norm
class BlockNorm(Norm):
    """``max_B ||x_B||_2``: l2 inside each block, l_inf across blocks [BPL20, App. A.2.2].

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
            return l2_norm(x.reshape(x.shape[0], math.prod(x.shape[1:])), dim=1).reshape(
                (x.shape[0],) + (1,) * (x.dim() - 1)
            )
        return l2_norm(x) if x.numel() else x.new_zeros(())

    identity_map = True  # z_B / ||z_B||: the division of the plan, then the identity
    map_temporaries = 1

    def map(self, x: Tensor) -> Tensor:
        return x

    def elementwise(self, mode: str) -> bool:
        return False  # every mode divides by the block norms

    @property
    def has_partial(self) -> bool:  # type: ignore[override]
        return self.blocks == "tensor"  # a row block's norm is not one number per tensor

    def partial(self, x: Tensor, owned: bool = False) -> Tensor | None:
        # ||x||_2 of the tensor, the block's norm (blocks="tensor")
        if self.blocks != "tensor":
            return None
        # LoopOps.norms: eagerly l2_norm's value; compiled on CPU (fused pass 1), blocked sums
        return LoopOps.norms([x], 2.0)[0]

    def plan_partials(
        self, partials: Tensor, xs: list[Tensor], mode: str, beta: float, per_tensor: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        # :meth:`plan` of blocks="tensor" from the block norms
        dual = _combine_pow(partials, 1.0, per_tensor)
        return torch.where(partials > 0, partials, math.inf), Factored([], dual, dual).coefficients(mode, beta)

    def couples(self, mode: str) -> bool:
        return mode != "normalized"  # each block moves along z_B / ||z_B||, whatever the scope

    def plan(
        self, xs: list[Tensor], mode: str, beta: float, per_tensor: bool
    ) -> tuple[Tensor | list[Tensor] | None, Tensor | None] | None:
        # Divide by ||z_B|| (inf where it is 0) rather than multiply by 1/||z_B||, which overflows.
        if self.blocks == "tensor" or not any(self._rows(x) for x in xs):
            bn = _policy.norms(xs, 2.0, _policy.reduction_ops(xs))
            dual = _combine_pow(bn, 1.0, per_tensor)
            return torch.where(bn > 0, bn, math.inf), Factored([], dual, dual).coefficients(mode, beta)
        norms = [self._block_norms(x) for x in xs]
        dual = _combine_pow(torch.stack([n.sum() for n in norms]), 1.0, per_tensor)
        pre = [torch.where(n > 0, n, math.inf) for n in norms]  # per row block, shaped to broadcast
        return pre, Factored([], dual, dual).coefficients(mode, beta)

    def _primal(self, xs: list[Tensor], ops: type[LoopOps], per_tensor: bool) -> Tensor:
        maxes = torch.stack([self._block_norms(x).max() if x.numel() else x.new_zeros(()) for x in xs])
        return maxes if per_tensor else maxes.max().expand(len(xs))

    def _factor(self, xs: list[Tensor], ops: type[LoopOps], per_tensor: bool) -> Factored:
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
