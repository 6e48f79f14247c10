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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from steepest.backend import policy as _policy
from steepest.backend.ops import LoopOps, is_dtensor, l2_norm, ops_for

__all__ = [
    "L1",
    "L2",
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
    "combine_lq",
    "from_spec",
    "newton_schulz",
    "polar_svd",
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
    """Copies of the units that alias their input (so they can be scaled in place).

    ``units[i]`` belongs to ``sources[i]`` (list in, list out), so only that pair is compared:
    O(n), where a search of all sources was O(n^2) (5x slower steps with 1,000 tensors). Identity
    (``is``), not ``id()``: torch.compile resolves ``is`` while tracing, whereas ``id()`` of a
    gradient makes it guard on the object and recompile for every fresh gradient."""
    return [u.clone() if u is x else u for u, x in zip(units, sources)]


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


def per_tensor_list(pre: Tensor | list[Tensor] | None) -> list[Tensor] | None:
    """A plan's ``pre`` (or ``post``) as a list with one entry per tensor (``None`` stays)."""
    if pre is None or isinstance(pre, list):
        return pre
    return list(pre.unbind(0))


class Norm:
    """A norm on R^d (d = total number of entries of the tensors it is given).

    **What a norm's author writes.** Either the factorisation ``_factor`` (and ``_primal``) of
    the built-in norms, or, for the streaming fast path of every optimizer, two public methods:

    * :meth:`map` ``(x) -> Tensor``: the direction's elementwise map of one tensor (the unscaled
      direction; ``sign`` for l_inf), a pure function of plain tensors;
    * :meth:`duals` ``(xs, per_tensor) -> Tensor``: the dual norms, one entry per tensor
      (the scope's value broadcast when ``per_tensor`` is False);

    plus :meth:`primals` for :meth:`norm`, and :meth:`sharp_scale` where ``map`` is not the LMO
    (default ``sharp_scale(dual) = dual``, right when ``map(z)`` is a unit-norm vector with
    ``<z, map(z)> = ||z||_*``: then ``z# = ||z||_* map(z)``, Lemma 4). From these the defaults of
    :meth:`plan` and ``_factor`` follow, and an optimizer streams such a norm tensor by tensor
    with the same temporaries as a built-in one. The other public methods (:meth:`map_`,
    :meth:`map_all`, :meth:`coordinates`, :meth:`partial`, :attr:`identity_map`, ...) are
    optional refinements with correct defaults.
    """

    name: str = "norm"
    #: Whether :meth:`map` is the identity (``map(x) is x``): optimizers then fold the plan's
    #: ``pre`` and ``post`` into the update (``addcdiv_``) with no temporary at all.
    identity_map: bool = False
    #: Temporaries per tensor :meth:`map_all` needs (sizes the chunks of small tensors).
    map_temporaries: int = 2
    #: Whether the norm is defined on matrices only (vectors need an explicit other norm).
    matrix_only: bool = False
    #: Whether :meth:`partial` and :meth:`plan_partials` are defined.
    has_partial: bool = False

    # ---- the fast path: public, overridable --------------------------------------------------
    def map(self, x: Tensor) -> Tensor:
        """The elementwise map of the direction: ``direction_i = post_i * map(x_i / pre_i)`` with
        ``(pre, post)`` from :meth:`plan`. A pure function of one plain tensor (it never writes
        ``x``; it may return ``x`` itself for the identity), so that a compiled kernel can call
        it. Norms without one raise ``NotImplementedError`` (then no fast path)."""
        raise NotImplementedError(f"{type(self).__name__} has no elementwise map")

    def has_map(self) -> bool:
        """Whether :meth:`map` is defined (overridden)."""
        return type(self).map is not Norm.map

    def map_(self, x: Tensor) -> Tensor:
        """:meth:`map` of ``x``, a temporary of the caller's that may be overwritten (so that the
        map needs no second tensor where it can be computed in place, e.g. ``sign_``)."""
        return self.map(x)

    def map_all(
        self, xs: list[Tensor], pre: list[Any] | None = None, ops: type[LoopOps] = LoopOps, *,
        owned: bool = False,
    ) -> list[Tensor]:
        """Fresh tensors (never aliases of ``xs`` unless ``owned``) holding ``map(x_i / pre_i)``
        (``pre`` None: 1; entries 0-d tensors or floats), with the list ops ``ops``. ``owned``:
        ``xs`` are the caller's temporaries. Built-in norms override it to make the map in one
        temporary per tensor."""
        if pre is None:
            out = [self.map_(x) if owned else self.map(x) for x in xs]
            return out if owned else _fresh(out, xs)
        return [self.map_(x / d) for x, d in zip(xs, pre)]

    def elementwise(self, mode: str) -> bool:
        """Whether the direction of ``mode`` needs no reduction at all (:meth:`plan` is
        ``(None, None)``): then each tensor's direction depends on that tensor alone."""
        return mode == "unscaled" and self.has_map()

    def couples(self, mode: str) -> bool:
        """Whether the direction of ``mode`` over a scope differs from the per-tensor one (the
        scope matters): not for an elementwise map."""
        return not self.elementwise(mode)

    def primals(self, xs: list[Tensor], per_tensor: bool = False) -> Tensor:
        """Primal norms, one entry per tensor (the scope's value broadcast if not ``per_tensor``)."""
        if type(self)._primal is Norm._primal:
            raise NotImplementedError(f"{type(self).__name__} implements neither primals() nor _primal()")
        return self._primal(xs, LoopOps, per_tensor)

    def duals(self, xs: list[Tensor], per_tensor: bool = False) -> Tensor:
        """Dual norms, one entry per tensor (the scope's value broadcast if not ``per_tensor``)."""
        if type(self)._factor is Norm._factor:
            raise NotImplementedError(f"{type(self).__name__} implements neither duals() nor _factor()")
        return self._factor(xs, LoopOps, per_tensor).dual

    def sharp_scale(self, dual: Tensor) -> Tensor:
        """The sharp's scalar from the dual, ``z# = scale(||z||_*) map(z)`` (default: the dual)."""
        return dual

    def plan(
        self, xs: list[Tensor], mode: str, beta: float, per_tensor: bool
    ) -> tuple[Tensor | list[Tensor] | None, Tensor | None] | None:
        """The reductions of the direction of ``mode``: per-tensor ``(pre, post)`` with
        ``direction_i = map(x_i / pre_i) * post_i`` (``None`` meaning 1; ``pre`` and ``post`` are
        1-d tensors with an entry per tensor, or for ``pre`` a list of tensors broadcasting
        against each ``x_i``, e.g. per-row block norms). Optimizers then stream tensor by tensor,
        never holding every direction at once. ``None`` if the direction is not of that form.
        Default: from :meth:`map`, :meth:`duals` and :meth:`scale`."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not self.has_map():
            return None
        if self.elementwise(mode):
            return None, None
        dual = self.duals(xs, per_tensor)
        return None, Factored([], self.sharp_scale(dual), dual).coefficients(mode, beta)

    def partial(self, x: Tensor, owned: bool = False) -> Tensor | None:
        """A 0-d statistic of one tensor from which, over all tensors, :meth:`plan_partials`
        gives the plan (for l_p: ``||x||_q``); ``owned``: ``x`` may be overwritten. ``None`` if
        the plan needs every tensor at once (:attr:`has_partial` False). Lets an optimizer make a global plan in one pass
        over the tensors, holding one temporary at a time."""
        return None

    def plan_partials(
        self, partials: Tensor, xs: list[Tensor], mode: str, beta: float, per_tensor: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        """:meth:`plan` from the :meth:`partial` of every tensor (``xs`` give the shapes only)."""
        raise NotImplementedError

    def coordinates(
        self, xs: list[Tensor], mode: str, beta: float, per_tensor: bool
    ) -> list[tuple[int, int, Tensor]] | None:
        """For a direction that is zero but for a few coordinates (l1): ``(i, j, value)`` with
        ``direction_i.view(-1)[j] = value``, every other entry 0, so that an optimizer moves
        those coordinates alone. ``None`` (the default) if the direction is not of that form or
        the values cannot be read on the host here."""
        return None

    # ---- the factorisation (built-in norms; default from the public methods) ---------------
    def _primal(self, xs: list[Tensor], ops: type[LoopOps], per_tensor: bool) -> Tensor:
        """Per-tensor (or broadcast global) primal norms, 1-d."""
        return self.primals(xs, per_tensor)

    def _factor(self, xs: list[Tensor], ops: type[LoopOps], per_tensor: bool) -> Factored:
        """Factor the sharp operator; see :class:`Factored`."""
        if not self.has_map() or type(self).duals is Norm.duals:
            raise NotImplementedError(f"{type(self).__name__} implements neither map() and duals() nor _factor()")
        dual = self.duals(xs, per_tensor)
        return Factored(self.map_all(xs, None, ops), self.sharp_scale(dual), dual)

    def to_spec(self) -> dict[str, Any]:
        """A dict of plain values that :func:`from_spec` turns back into this norm."""
        return {"name": self.name}

    # ---- public API ------------------------------------------------------------------------
    def factor(self, xs: TensorOrList, *, per_tensor: bool = False, foreach: bool = False) -> Factored:
        """Factor ``sharp(xs) = scale * unit``; per-tensor scope if ``per_tensor``."""
        lst, _ = _as_list(xs)
        return self._factor(lst, ops_for(foreach), per_tensor)

    def norm(self, xs: TensorOrList, *, foreach: bool = False) -> Tensor:
        """The primal norm ``||xs||`` of the concatenated vector (0-d tensor)."""
        lst, _ = _as_list(xs)
        if not lst:
            return torch.zeros(())
        return self._primal(lst, ops_for(foreach), False)[0]

    __call__ = norm

    def dual(self, xs: TensorOrList, *, foreach: bool = False) -> Tensor:
        """The dual norm ``||xs||_*`` of the concatenated vector (0-d tensor)."""
        lst, _ = _as_list(xs)
        if not lst:
            return torch.zeros(())
        return self._factor(lst, ops_for(foreach), False).dual[0]

    def direction(
        self,
        xs: TensorOrList,
        mode: str = "scaled",
        *,
        beta: float = 1.0,
        per_tensor: bool = False,
        foreach: bool = False,
        owned: bool = False,
    ) -> TensorOrList:
        """The steepest-descent direction of ``mode`` (see :meth:`Factored.coefficients`).
        ``owned``: ``xs`` are the caller's temporaries, which the direction may be built in."""
        lst, single = _as_list(xs)
        if not lst:
            return []
        out = self._direction(lst, ops_for(foreach), mode, beta, per_tensor, owned=owned)
        return out[0] if single else out

    def _direction(
        self, xs: list[Tensor], ops: type[LoopOps], mode: str, beta: float, per_tensor: bool,
        owned: bool = False,
    ) -> list[Tensor]:
        """Fresh tensors (never aliases of ``xs`` unless ``owned``) holding the direction of ``mode``."""
        plan = self.plan(xs, mode, beta, per_tensor)
        if plan is not None:
            pre, post = plan
            out = self.map_all(xs, per_tensor_list(pre), ops, owned=owned and pre is None)
            return out if post is None else ops.mul_(out, list(post.unbind(0)))
        if mode == "normalized":
            return self._normalized(xs, ops, per_tensor)
        f = self._factor(xs, ops, per_tensor)
        return ops.mul_(_fresh(f.unit, xs), list(f.coefficients(mode, beta).unbind(0)))

    def _normalized(self, xs: list[Tensor], ops: type[LoopOps], per_tensor: bool) -> list[Tensor]:
        """``z# / ||z||_*``. Subclasses override this where ``scale / dual`` can overflow."""
        f = self._factor(xs, ops, per_tensor)
        return ops.mul_(_fresh(f.unit, xs), list(f.coefficients("normalized").unbind(0)))

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
        """``s(x)`` (seed 003, Alg. 1) or its eps-smoothed form; ``sign(x)`` for p = inf, ``x``
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
            return _policy.copysign_(mags, xs, ops)
        if out is not None:  # not made by any plan (eps > 0 has no pre); kept general
            return self.map_all(out, None, ops)
        return self._smoothed(ops.abs(xs), xs, ops)

    def _smoothed(self, den: list[Tensor], xs: list[Tensor], ops: type[LoopOps]) -> list[Tensor]:
        """The eps-smoothed map written into ``den`` (owned temporaries holding |x|)."""
        e = (self.p - 2.0) / (self.p - 1.0)
        if self.eps_mode == "paper":
            den = ops.add_(ops.pow_(den, e), self.eps)
        else:
            den = ops.pow_(ops.add_(den, self.eps), e)
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
            return x.abs_().sum()
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
        scatters sign(0) = 0. Costs an argmax per tensor instead of the winner's only."""
        win = None if per_tensor else torch.argmax(maxes)
        units = []
        for i, x in enumerate(xs):
            u = x.new_zeros(x.shape)  # contiguous: its flat index is x.reshape(-1)'s
            if x.numel():
                flat = x.reshape(-1)
                j = torch.argmax(flat.abs()).reshape(1)
                v = torch.sign(flat.gather(0, j))
                if win is not None:
                    v = v * (win == i).to(v.dtype)
                u.view(-1).scatter_(0, j, v)
            units.append(u)
        dual = maxes if per_tensor else maxes.max().expand(len(xs))
        return Factored(units, dual, dual)

    def coordinates(
        self, xs: list[Tensor], mode: str, beta: float, per_tensor: bool
    ) -> list[tuple[int, int, Tensor]] | None:
        """The one moving coordinate (per scope) with its value ``coefficient * sign(z_ij)``;
        ``None`` while compiling (the winner's indices would be guarded on: a recompile per new
        winner) or on DTensors (their argmax is global: :func:`_sharded_coordinate`)."""
        if _policy.compiling() or any(is_dtensor(x) for x in xs):
            return None
        dual, coords = self._coordinates(xs, _policy.reduction_ops(xs), per_tensor)
        if not coords:
            return []
        coefs = Factored([], dual, dual).coefficients(mode, beta)
        return [(i, j, coefs[i] * sign) for i, j, sign in coords if sign is not None]

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


# ------------------------------------------------------------------ operator norms (SPEC §7)
#: Newton-Schulz quintic coefficients and step count of ``torch.optim.Muon`` (Jordan's Muon).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
SHAPE_SCALES = ("none", "shape")
_NS_DTYPES = {"auto": None, "float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def _as_matrix(x: Tensor, transpose: bool = False) -> Tensor:
    """The matrix view of a parameter: ``out x rest`` (conv kernels flattened, as Jordan's Muon
    and Scion do); a vector is one column ``n x 1``, a scalar ``1 x 1``."""
    if x.dim() == 0:
        m = x.reshape(1, 1)
    elif x.dim() == 1:
        m = x.reshape(-1, 1)
    else:
        m = x.reshape(x.shape[0], math.prod(x.shape[1:]))
    return m.T if transpose else m


def newton_schulz(
    g: Tensor,
    coefficients: Sequence[float] = NS_COEFFICIENTS,
    steps: int = NS_STEPS,
    eps: float = NS_EPS,
    dtype: torch.dtype | None = None,
    *,
    overwrite: bool = False,
) -> Tensor:
    """Approximate polar factor ``U V^T`` of a matrix by the Newton-Schulz quintic iteration.

    ``X_0 = G / max(||G||_F, eps)``, then ``steps`` times ``A = X X^T``,
    ``X <- a X + (b A + c A^2) X`` (SPEC §7; torch/optim/_muon.py, Jordan's Muon), on the wide
    orientation (``X^T`` if rows > cols, which costs fewer flops). The same operations in the same
    order as ``torch.optim.Muon``, so with ``dtype=torch.bfloat16`` the result equals torch's.
    The default coefficients do not converge to ``U V^T`` but to ``U S' V^T`` with ``S'`` roughly
    in [0.7, 1.2] (by design: a steep slope at 0); a zero matrix maps to zero. Returns ``dtype``
    (default: ``g.dtype``).

    Memory (eager): X (``m x n``, ``m <= n``), ``A`` and ``B = b A + c A^2`` (``m x m`` each),
    reused across iterations. A product cannot write into its own input, but column ``j`` of
    ``a X + B X`` needs column ``j`` of ``X`` alone, so on CPU in float32/64 X is updated in place
    a column block at a time, through ``A``'s storage once ``B`` is made (a square X swaps with
    it): peak ``1 + 2m/n`` times X's bytes. In bfloat16 and on accelerators (where blocked GEMMs
    or their launches cost time) and for an X of at most one stream chunk, the new X goes into a
    second buffer instead (``2 + 2m/n``; a square X still swaps with A: 3). ``overwrite=True``: ``g`` is the caller's temporary
    and becomes X (no copy).
    """
    if g.dim() != 2:
        raise ValueError(f"newton_schulz needs a 2-D matrix, got shape {tuple(g.shape)}")
    if len(coefficients) != 3:
        raise ValueError(f"coefficients must be three numbers (a, b, c), got {coefficients!r}")
    a, b, c = (float(v) for v in coefficients)
    x = g.to(dtype) if dtype is not None else g
    owned = overwrite or x is not g  # a converted copy is ours too
    wide = g.size(0) > g.size(1)
    if wide:
        x = x.T
    norm = x.norm().clamp(min=eps)
    x = x.div_(norm) if owned else x / norm
    if _policy.compiling() or is_dtensor(x) or x.numel() == 0:
        # Compiled, inductor plans the buffers itself (and out= into swapped buffers would guard
        # on storages); a DTensor has no out= matmuls. The plain form, torch's.
        for _ in range(steps):
            gram = x @ x.T
            update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.addmm(x, update, x, beta=a)
        return x.T if wide else x
    m, n = x.shape
    gram, update = x.new_empty(m, m), x.new_empty(m, m)
    chunk = _policy.stream_chunk()
    if m == n:
        # The new X goes into A's storage (consumed once B is made); the old X's takes the next A.
        for _ in range(steps):
            torch.mm(x, x.T, out=gram)
            torch.addmm(gram, gram, gram, beta=b, alpha=c, out=update)
            torch.addmm(x, update, x, beta=a, out=gram)
            x, gram = gram, (x if x.is_contiguous() else x.new_empty(m, m))
        return x
    if not (m * n > chunk and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)):
        # bfloat16 kernels and accelerators (a launch per block), or an X of at most one chunk:
        # blocks would cost time, so the new X goes into a second buffer, and the two swap.
        spare = x.new_empty(m, n)
        for _ in range(steps):
            torch.mm(x, x.T, out=gram)
            torch.addmm(gram, gram, gram, beta=b, alpha=c, out=update)
            torch.addmm(x, update, x, beta=a, out=spare)
            # The old X is dropped here (no name keeps it) unless laid out for the next one.
            x, spare = spare, (x if x.is_contiguous() else None)
            if spare is None:
                spare = x.new_empty(m, n)
        return x.T if wide else x
    # On CPU in float32/64, where blocked GEMMs cost what one does (benchmarks/spectral.py):
    # in place, a block of columns at a time (of X^T's rows in the tall case, the input's own
    # layout, where column blocks of X were slower), through A's storage or one chunk of scratch.
    width = min(n, max(m, chunk // max(m, 1)))  # at least one chunk per block: little Python overhead
    flat = x.new_empty(m * width) if width > m else gram.view(-1)
    rows_of_xt = x.T.is_contiguous()
    for _ in range(steps):
        torch.mm(x, x.T, out=gram)
        torch.addmm(gram, gram, gram, beta=b, alpha=c, out=update)
        if rows_of_xt:
            xt, ut = x.T, update.T
            for j in range(0, n, width):
                rows = xt[j : j + width]
                tmp = flat[: m * rows.size(0)].view(rows.size(0), m)
                torch.addmm(rows, rows, ut, beta=a, out=tmp)
                rows.copy_(tmp)
        else:
            for j in range(0, n, width):
                block = x[:, j : j + width]
                tmp = flat[: m * block.size(1)].view(m, block.size(1))
                torch.addmm(block, update, block, beta=a, out=tmp)
                block.copy_(tmp)
    return x.T if wide else x


def polar_svd(g: Tensor) -> tuple[Tensor, Tensor]:
    """``(U V^T, ||G||_nuc)`` of a matrix by the SVD ``G = U S V^T`` (the reference polar).

    Directions of (numerically) zero singular values are dropped (threshold
    ``max(m, n) * eps(dtype) * sigma_max``, as ``torch.linalg.pinv``), so a zero or
    rank-deficient matrix gets the minimal factor (zero for a zero matrix).
    """
    if g.numel() == 0:
        return torch.zeros_like(g), g.new_zeros(())
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    tol = max(g.shape) * torch.finfo(s.dtype).eps * s.max()
    keep = (s > tol).to(s.dtype)
    if _policy.compiling() or is_dtensor(g):
        return (u * keep) @ vh, s.sum()
    # U V^T without a third matrix: the product has V^T's shape if rows <= cols (column block j
    # of U V^T needs column block j of V^T alone), else U's (row block i needs U's row block i),
    # so it is written over that factor a block at a time through one chunk of scratch.
    u.mul_(keep)
    rows, cols = g.shape
    chunk = _policy.stream_chunk()
    if rows <= cols:
        width = max(1, chunk // rows)
        scratch = vh.new_empty(rows * min(width, cols))
        for j in range(0, cols, width):
            block = vh[:, j : j + width]
            block.copy_(torch.mm(u, block, out=scratch[: rows * block.size(1)].view(rows, -1)))
        return vh, s.sum()
    height = max(1, chunk // cols)
    scratch = u.new_empty(min(height, rows) * cols)
    for i in range(0, rows, height):
        block = u[i : i + height]
        block.copy_(torch.mm(block, vh, out=scratch[: block.size(0) * cols].view(-1, cols)))
    return u, s.sum()


class OperatorNorm(Norm):
    """Base of the per-matrix (operator) norms: each tensor is a matrix (:func:`_as_matrix`),
    with a norm ``c * N(M)`` where ``N`` is the base operator norm and ``c > 0`` a shape factor.

    A subclass gives, for one matrix, the base LMO direction ``u`` (``N(u) = 1`` and
    ``<M, u> = N_*(M)``, 0 for a zero matrix) and the base dual ``N_*(M)``. Then, for each tensor
    (``scope="per_tensor"``): dual ``N_*(M) / c``, LMO ``u / c``, sharp ``N_*(M) u / c^2``.

    ``scope="global"`` (the modular norm of Bernstein & Newhouse / modula): the group's norm is
    the max over tensors of ``c_i N(M_i)``, its dual the sum ``D = sum_i N_*(M_i) / c_i``, and the
    sharp ``D u_i / c_i`` per tensor. For max-type norms (all here) this is the norm of the
    concatenated parameter vector under the product of the per-matrix geometries, and Lemma 4
    holds: ``<z, z#> = sum_i (D/c_i) N_*(M_i) = D^2``, ``||z#|| = max_i c_i (D/c_i) N(u_i) = D``.

    ``scale``: ``"none"`` (``c = 1``), ``"shape"`` (the factor each subclass documents, chosen
    by the anchors so that learning rates transfer across widths), or a number ``c > 0``.
    """

    name = "operator"
    #: The shape factor's reading, for the docs.
    shape_rule = ""

    def __init__(self, scale: str | float = "none", transpose: bool = False) -> None:
        if isinstance(scale, bool) or not (
            scale in SHAPE_SCALES or (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0)
        ):
            raise ValueError(f"scale must be one of {SHAPE_SCALES} or a finite number > 0, got {scale!r}")
        if not isinstance(transpose, bool):
            raise ValueError(f"transpose must be a bool, got {transpose!r}")
        self.scale = scale if isinstance(scale, str) else float(scale)
        self.transpose = transpose

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale, "transpose": self.transpose}

    # ---- what subclasses implement ---------------------------------------------------------
    def _shape_factor(self, rows: int, cols: int) -> float:
        return 1.0

    def _base_norm(self, m: Tensor) -> Tensor:
        raise NotImplementedError

    def _base_lmo(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        """``(u, N_*(M))`` for one non-empty matrix; the dual may be ``None`` if not needed."""
        raise NotImplementedError

    def _base_lmo_into(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        """As :meth:`_base_lmo`, but ``m`` is the caller's temporary and may be overwritten (the
        subclasses here build ``u`` in its storage: no second matrix-sized tensor)."""
        return self._base_lmo(m, need_dual)

    #: Whether :meth:`_base_dual` is a few reductions (no polar factor needed): then the
    #: optimizers stream tensor by tensor in every mode and scope.
    _cheap_dual = False

    def _base_dual(self, m: Tensor) -> Tensor:
        """``N_*(M)`` alone (used where :attr:`_cheap_dual`)."""
        d = self._base_lmo(m, True)[1]
        assert d is not None
        return d

    def _base_dual_into(self, m: Tensor) -> Tensor:
        """As :meth:`_base_dual`, but ``m`` is a temporary that may be overwritten."""
        return self._base_dual(m)

    # ---- machinery -------------------------------------------------------------------------
    def factor_of(self, x: Tensor) -> float:
        """The constant ``c`` of tensor ``x`` (1 for ``scale="none"``)."""
        if self.scale == "none":
            return 1.0
        if self.scale == "shape":
            rows, cols = _as_matrix(x, self.transpose).shape
            return self._shape_factor(max(rows, 1), max(cols, 1))
        return float(self.scale)

    def _consts(self, xs: list[Tensor]) -> Tensor:
        dtype = xs[0].dtype if xs and xs[0].is_floating_point() else torch.float64
        c = torch.tensor([self.factor_of(x) for x in xs], dtype=dtype, device=xs[0].device if xs else None)
        if xs and is_dtensor(xs[0]):
            # FSDP2: the duals are replicated DTensor scalars, which refuse plain tensors.
            from torch.distributed.tensor import DTensor, Replicate

            mesh = xs[0].device_mesh
            c = DTensor.from_local(c, mesh, [Replicate()] * mesh.ndim, run_check=False)
        return c

    def _units(
        self, xs: list[Tensor], need_dual: bool, owned: bool = False
    ) -> tuple[list[Tensor], Tensor | None]:
        """Base LMOs (and duals) per tensor; ``owned``: ``xs`` are the caller's temporaries, which
        the units may overwrite (peak memory: no second tensor of each)."""
        units, duals = [], []
        for x in xs:
            if x.numel() == 0:
                units.append(torch.zeros_like(x))
                duals.append(x.new_zeros(()))
                continue
            m = _as_matrix(x, self.transpose)
            # A DTensor's in-place ops cannot change its placement (a matmul's result is
            # replicated): sharded inputs take the out-of-place path.
            into = owned and not is_dtensor(m)
            u, d = self._base_lmo_into(m, need_dual) if into else self._base_lmo(m, need_dual)
            u = u.to(x.dtype)
            u = (u.T if self.transpose else u).reshape(x.shape)
            if is_dtensor(x) and is_dtensor(u) and u.placements != x.placements:
                # FSDP2: matmuls return the unit replicated; in x's placement (this rank's shard)
                # the optimizers' in-place updates of the sharded parameter accept it.
                u = u.redistribute(x.device_mesh, x.placements)
            units.append(u)
            if need_dual:
                duals.append(d.to(x.dtype))
        return units, (_stack_scalars(duals, xs) if need_dual else None)

    def _primal(self, xs: list[Tensor], ops: type[LoopOps], per_tensor: bool) -> Tensor:
        norms = _stack_scalars(
            [self._base_norm(_as_matrix(x, self.transpose)) if x.numel() else x.new_zeros(()) for x in xs], xs
        ) * self._consts(xs)
        return norms if per_tensor else norms.max().expand(len(xs))

    def _coefficients(self, duals: Tensor, c: Tensor, per_tensor: bool) -> tuple[Tensor, Tensor]:
        """(scale, dual) of :class:`Factored` from base duals and shape factors."""
        if per_tensor:
            return duals / c**2, duals / c
        total = (duals / c).sum()
        return total / c, total.expand(len(c))

    def _factor(self, xs: list[Tensor], ops: type[LoopOps], per_tensor: bool) -> Factored:
        units, duals = self._units(xs, True)
        assert duals is not None
        scale, dual = self._coefficients(duals, self._consts(xs), per_tensor)
        return Factored(units, scale, dual)

    def _direction(
        self,
        xs: list[Tensor],
        ops: type[LoopOps],
        mode: str,
        beta: float,
        per_tensor: bool,
        owned: bool = False,
    ) -> list[Tensor]:
        """As :meth:`Norm._direction`; ``owned``: ``xs`` are the caller's temporaries and the
        directions may be built in their storage (one matrix-sized tensor less per tensor)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        keep = (lambda us: us) if owned else (lambda us: _fresh(us, xs))
        if mode in ("unscaled", "normalized"):
            # No dual needed: unscaled is u (Muon's polar factor), normalized is u / c.
            units, _ = self._units(xs, False, owned)
            if mode == "unscaled" or self.scale == "none":
                return keep(units)
            return ops.mul_(keep(units), list((1.0 / self._consts(xs)).unbind(0)))
        # Spectral's dual <M, NS(M)> needs M after NS(M) is made: no overwriting then.
        units, duals = self._units(xs, True, owned and self._cheap_dual)
        assert duals is not None
        scale, dual = self._coefficients(duals, self._consts(xs), per_tensor)
        coefs = Factored(units, scale, dual).coefficients(mode, beta)
        return ops.mul_(keep(units), list(coefs.unbind(0)))

    def _post(
        self, xs: list[Tensor], mode: str, beta: float, per_tensor: bool, duals: Tensor | None = None
    ) -> Tensor | None:
        """Per-tensor coefficients of the units in ``mode`` computed without the units (``None``:
        1), or raise :class:`LookupError` if they need the units (Spectral's dual). ``duals``:
        the base duals of ``xs`` if known (then ``xs`` only give the shapes)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "unscaled" or (mode == "normalized" and self.scale == "none"):
            return None
        c = self._consts(xs)
        if mode == "normalized":
            return 1.0 / c
        if not self._cheap_dual:
            raise LookupError("the dual needs the units")
        duals = duals if duals is not None else _stack_scalars(
            [self._base_dual(_as_matrix(x, self.transpose)).to(x.dtype) if x.numel() else x.new_zeros(())
             for x in xs], xs
        )
        scale, dual = self._coefficients(duals, c, per_tensor)
        return Factored([], scale, dual).coefficients(mode, beta)

    def plan(
        self, xs: list[Tensor], mode: str, beta: float, per_tensor: bool
    ) -> tuple[Tensor | list[Tensor] | None, Tensor | None] | None:
        # direction_i = unit_i * post_i where post needs no unit: the loop path of the optimizers
        # then streams one tensor at a time (see Norm.plan), each unit freed before the next.
        try:
            return None, self._post(xs, mode, beta, per_tensor)
        except LookupError:
            return None

    def map(self, x: Tensor) -> Tensor:
        """The base LMO of one tensor as a matrix (the polar factor for Spectral): a per-tensor
        map, not an elementwise one (:meth:`elementwise` is False in every mode)."""
        return self._units([x], False)[0][0]

    def map_(self, x: Tensor) -> Tensor:
        return self._units([x], False, owned=True)[0][0]

    def map_all(
        self, xs: list[Tensor], pre: list[Any] | None = None, ops: type[LoopOps] = LoopOps, *,
        owned: bool = False,
    ) -> list[Tensor]:
        src = xs if pre is None else [x / d for x, d in zip(xs, pre)]
        return self._units(src, False, owned=owned or pre is not None)[0]

    def elementwise(self, mode: str) -> bool:
        return False

    def couples(self, mode: str) -> bool:
        return mode not in ("unscaled", "normalized")  # u and u / c are per tensor

    @property
    def has_partial(self) -> bool:  # type: ignore[override]
        return self._cheap_dual

    def partial(self, x: Tensor, owned: bool = False) -> Tensor | None:
        # The base dual N_*(M) where it is a few reductions (not Spectral's <M, NS(M)>).
        if not self._cheap_dual:
            return None
        if x.numel() == 0:
            return x.new_zeros(())
        m = _as_matrix(x, self.transpose)
        return (self._base_dual_into(m) if owned else self._base_dual(m)).to(x.dtype)

    def plan_partials(
        self, partials: Tensor, xs: list[Tensor], mode: str, beta: float, per_tensor: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        return None, self._post(xs, mode, beta, per_tensor, partials)


def _stack_scalars(vals: list[Tensor], xs: list[Tensor]) -> Tensor:
    return torch.stack(vals) if vals else torch.zeros(0)


def _inner(a: Tensor, b: Tensor) -> Tensor:
    """``<a, b> = sum_ij a_ij b_ij`` without the ``a * b`` temporary when both are laid out alike
    (a dot product of their flat storage; the transposed layouts of the tall case included)."""
    if not is_dtensor(a) and a.shape == b.shape and a.dtype == b.dtype:
        for x, y in ((a, b), (a.T, b.T)):
            if x.is_contiguous() and y.is_contiguous():
                return torch.dot(x.reshape(-1), y.reshape(-1))
    return (a * b).sum()


def _absmax_along(m: Tensor, dim: int) -> Tensor:
    """``max |m|`` along ``dim`` (keepdim) without an ``|m|`` temporary: ``max(amax, -amin)``
    (two plain reductions; ``vector_norm(m, inf, dim)`` was 5x slower on CPU, torch 2.13)."""
    if m.is_complex():
        return torch.linalg.vector_norm(m, math.inf, dim=dim, keepdim=True)
    if is_dtensor(m):  # a partial (per-shard) min cannot be negated in place
        return torch.maximum(m.amax(dim=dim, keepdim=True), -m.amin(dim=dim, keepdim=True))
    return torch.maximum(m.amax(dim=dim, keepdim=True), m.amin(dim=dim, keepdim=True).neg_())


def _l2_along(m: Tensor, dim: int) -> Tensor:
    """``||m||_2`` along ``dim`` (keepdim) of a matrix whose entries are at most 1 in modulus (no
    overflow). ``vector_norm`` over the strided dim 0 of a row-major matrix is ~10x slower than a
    sum over it on CPU (torch 2.13: 7 ms against 0.7 ms at 1024 x 1024), so there the squares are
    summed a block of rows at a time, through one stream chunk of scratch: for matrices of at
    least 8 chunks (2 MB in float32), so that the scratch adds at most 1/8 of the matrix."""
    chunk = _policy.stream_chunk()
    if not (dim == 0 and m.dim() == 2 and m.is_contiguous() and m.numel() >= 8 * chunk and m.size(0) > 1
            and m.device.type == "cpu" and m.is_floating_point() and not is_dtensor(m)
            and not _policy.compiling()):
        return torch.linalg.vector_norm(m, dim=dim, keepdim=True)
    rows, cols = m.shape
    height = max(1, chunk // max(cols, 1))
    scratch = m.new_empty(min(height, rows) * cols)
    acc = None
    for i in range(0, rows, height):
        block = m[i : i + height]
        sq = torch.mul(block, block, out=scratch[: block.numel()].view(block.shape))
        part = sq.sum(dim=0, keepdim=True)
        acc = part if acc is None else acc.add_(part)
    assert acc is not None
    return acc.sqrt_()


class Spectral(OperatorNorm):
    """The spectral norm ``sigma_max(M)`` of each matrix (Bernstein & Newhouse 2024; modula;
    SPEC §7): dual = nuclear norm ``sum_i sigma_i``, sharp = ``||M||_nuc U V^T``, LMO (unit
    direction) = ``U V^T`` for ``M = U S V^T``. Steepest descent under it with Nesterov momentum
    and the polar factor alone (``mode="unscaled"``) is Muon (:class:`steepest.Muon`).

    Args:
        polar: ``"svd"`` (exact, the reference) or ``"newton_schulz"`` (:func:`newton_schulz`;
            approximate: its singular values are not all 1, so Lemma 4 holds only roughly, and the
            dual is estimated as ``<M, NS(M)>``, which is the nuclear norm when ``NS(M) = U V^T``).
        ns_coefficients, ns_steps, ns_eps: the iteration's ``(a, b, c)``, step count and the
            floor on ``||M||_F``; defaults are those of ``torch.optim.Muon``.
        ns_dtype: ``"auto"`` (bfloat16 on CUDA, as torch's Muon; the tensor's own dtype on CPU,
            for accuracy), ``"float32"``, ``"float64"`` or ``"bfloat16"`` (always, as
            ``torch.optim.Muon`` does; on CPUs with AMX-BF16 it is 4-6x faster than float32 for
            256 x 1024 and larger matrices, see benchmarks/spectral.py).
        scale: ``"shape"`` makes the norm the RMS->RMS operator norm
            ``sqrt(fan_in/fan_out) sigma_max`` (modula's ``Linear``, Scion's ``Spectral``), whose
            LMO is ``sqrt(fan_out/fan_in) U V^T``.
        transpose: take the norm of ``M^T`` (for weights stored ``in x out``, e.g. embeddings).

    Conv kernels are flattened to ``out x (in * kh * kw)``; a vector is a column (its spectral
    norm is its l2 norm, its polar factor ``v/||v||_2``).
    """

    name = "spectral"
    matrix_only = True
    shape_rule = "sqrt(fan_in / fan_out) (RMS -> RMS)"

    def __init__(
        self,
        polar: str = "svd",
        ns_coefficients: Sequence[float] = NS_COEFFICIENTS,
        ns_steps: int = NS_STEPS,
        ns_eps: float = NS_EPS,
        ns_dtype: str = "auto",
        scale: str | float = "none",
        transpose: bool = False,
    ) -> None:
        super().__init__(scale, transpose)
        if polar not in ("svd", "newton_schulz"):
            raise ValueError(f"polar must be 'svd' or 'newton_schulz', got {polar!r}")
        coeffs = tuple(ns_coefficients) if isinstance(ns_coefficients, (tuple, list)) else ()
        if len(coeffs) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in coeffs
        ):
            raise ValueError(f"ns_coefficients must be three finite numbers (a, b, c), got {ns_coefficients!r}")
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or not 1 <= ns_steps < 100:
            raise ValueError(f"ns_steps must be an integer in [1, 100), got {ns_steps!r}")
        if not isinstance(ns_eps, (int, float)) or not math.isfinite(ns_eps) or ns_eps <= 0:
            raise ValueError(f"ns_eps must be a finite number > 0, got {ns_eps!r}")
        if ns_dtype not in _NS_DTYPES:
            raise ValueError(f"ns_dtype must be one of {tuple(_NS_DTYPES)}, got {ns_dtype!r}")
        self.polar = polar
        self.ns_coefficients = tuple(float(v) for v in coeffs)
        self.ns_steps = ns_steps
        self.ns_eps = float(ns_eps)
        self.ns_dtype = ns_dtype

    def to_spec(self) -> dict[str, Any]:
        return {
            **super().to_spec(),
            "polar": self.polar,
            "ns_coefficients": self.ns_coefficients,
            "ns_steps": self.ns_steps,
            "ns_eps": self.ns_eps,
            "ns_dtype": self.ns_dtype,
        }

    def _shape_factor(self, rows: int, cols: int) -> float:
        return math.sqrt(cols / rows)

    def _base_norm(self, m: Tensor) -> Tensor:
        return torch.linalg.matrix_norm(m, ord=2)

    def _compute_dtype(self, m: Tensor) -> torch.dtype:
        if self.ns_dtype == "auto":
            return torch.bfloat16 if m.device.type == "cuda" else m.dtype
        return _NS_DTYPES[self.ns_dtype]  # type: ignore[return-value]

    def polar_factor(self, m: Tensor, overwrite: bool = False) -> Tensor:
        """The (approximate, for Newton-Schulz) polar factor of one matrix, in ``m.dtype``
        (``overwrite``: ``m`` is a temporary that Newton-Schulz may use as its iterate)."""
        if self.polar == "svd":
            return polar_svd(m)[0]
        out = newton_schulz(
            m, self.ns_coefficients, self.ns_steps, self.ns_eps, self._compute_dtype(m), overwrite=overwrite
        )
        if overwrite and out.dtype != m.dtype and not _policy.compiling() and not is_dtensor(m):
            return m.copy_(out)  # back into the caller's temporary: no new tensor of m's dtype
        return out.to(m.dtype)

    def _base_lmo(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        if self.polar == "svd":
            return polar_svd(m)
        u = self.polar_factor(m)
        return u, (_inner(m, u) if need_dual else None)

    def _base_lmo_into(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        if self.polar == "svd" or need_dual:  # the SVD copies its input anyway; <M, NS(M)> needs M
            return self._base_lmo(m, need_dual)
        return self.polar_factor(m, overwrite=True), None


class ColNorm(OperatorNorm):
    """``max_j ||M_:j||_2``, the l1 -> l2 operator norm (Pethick et al. 2025, Scion; SPEC §7).

    Dual ``sum_j ||M_:j||_2``; sharp: each column normalized, times the dual sum; LMO: each
    nonzero column ``M_:j / ||M_:j||_2``. ``scale="shape"`` gives the l1 -> RMS norm
    ``max_j ||M_:j||_2 / sqrt(fan_out)``, whose LMO has columns of l2 norm ``sqrt(fan_out)``
    (Scion's ``ColNorm``; on a vector, a single column, it is ``g / rms(g)``: Scion's
    ``BiasRMS``). ``transpose=True`` takes columns of ``M^T``: for an embedding table stored
    ``vocab x dim``, each token's vector (Scion's ``ColNorm(transpose=True)``).
    """

    name = "colnorm"
    shape_rule = "1 / sqrt(fan_out) (l1 -> RMS)"
    _dim = 0

    def _shape_factor(self, rows: int, cols: int) -> float:
        return 1.0 / math.sqrt(rows)

    def _norms(self, m: Tensor) -> Tensor:
        """l2 norm of each column (row), scaled by its max |entry| first: squares of tiny entries
        underflow to subnormals and lose digits (hypothesis found a column of 3e-161)."""
        a = _absmax_along(m, self._dim)
        return a * _l2_along(m / torch.where(a > 0, a, 1.0), self._dim)

    def _base_norm(self, m: Tensor) -> Tensor:
        return self._norms(m).max()

    _cheap_dual = True

    def _base_dual(self, m: Tensor) -> Tensor:
        if m.size(self._dim) == 1:  # columns (rows) of one entry: the l1 norm, no temporary
            return torch.linalg.vector_norm(m, 1)
        return self._norms(m).sum()

    def _base_dual_into(self, m: Tensor) -> Tensor:
        return self._lmo(m, m)[1]  # the scaled copy of _norms made in m's storage

    def _base_lmo(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        return self._lmo(m, None)

    def _base_lmo_into(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        return self._lmo(m, m)

    def _lmo(self, m: Tensor, out: Tensor | None) -> tuple[Tensor, Tensor]:
        """Each column (row) over its l2 norm, and the dual (their sum), into ``out`` (which may be
        ``m``) or a fresh tensor: no other matrix-sized temporary. As :meth:`_norms`, the column
        is scaled by its max |entry| first (its squares could underflow), then by the l2 norm of
        the scaled column: ``(M_:j / a_j) / ||M_:j / a_j||_2``, 0 for a zero column."""
        if m.size(self._dim) == 1:
            # One entry per column (row: RowNorm of a vector): M_ij / |M_ij| = sign(M_ij).
            dual = torch.linalg.vector_norm(m, 1)
            return (torch.sign(m) if out is None else torch.sign(m, out=out)), dual
        a = _absmax_along(m, self._dim)
        safe = torch.where(a > 0, a, 1.0)
        scaled = m / safe if out is None else torch.div(m, safe, out=out)
        s = _l2_along(scaled, self._dim)
        # Divide by the norm (inf where 0) rather than multiply by 1/norm, which overflows.
        return scaled.div_(torch.where(s > 0, s, math.inf)), (a * s).sum()


class RowNorm(ColNorm):
    """``max_i ||M_i:||_2``, the l2 -> l_inf operator norm (Scion; SPEC §7). Dual
    ``sum_i ||M_i:||_2``; LMO: each nonzero row ``M_i: / ||M_i:||_2``. ``scale="shape"`` gives
    the RMS -> l_inf norm ``sqrt(fan_in) max_i ||M_i:||_2`` (LMO rows of l2 norm
    ``1/sqrt(fan_in)``: Scion's ``RowNorm(normalized=True)``). A vector is a column, so its rows
    are its entries: RowNorm of a vector is its max norm (sign descent)."""

    name = "rownorm"
    shape_rule = "sqrt(fan_in) (RMS -> l_inf)"
    _dim = 1

    def _shape_factor(self, rows: int, cols: int) -> float:
        return math.sqrt(cols)


class L1ToLinf(OperatorNorm):
    """``max_ij |M_ij|``, the l1 -> l_inf operator norm: per tensor it is :class:`Linf` (dual
    ``||M||_1``, LMO ``sign(M)``: sign descent per entry, as for embeddings and output heads).
    ``scale="shape"`` multiplies the norm by ``fan_in``, so the LMO is ``sign(M) / fan_in``
    (Scion's ``Sign(normalized=True)``, which bounds the l_inf -> l_inf norm of the step by 1).
    Global scope is the modular combination (identical to ``Linf`` for ``scale="none"``)."""

    name = "l1_linf"
    shape_rule = "fan_in (Scion's Sign)"

    def _shape_factor(self, rows: int, cols: int) -> float:
        return float(cols)

    def _base_norm(self, m: Tensor) -> Tensor:
        return m.abs().max()

    _cheap_dual = True

    def _base_dual(self, m: Tensor) -> Tensor:
        return torch.linalg.vector_norm(m, 1)  # no |M| temporary

    def _base_lmo(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        return torch.sign(m), (self._base_dual(m) if need_dual else None)

    def _base_lmo_into(self, m: Tensor, need_dual: bool) -> tuple[Tensor, Tensor | None]:
        dual = self._base_dual(m) if need_dual else None  # before M is overwritten
        return torch.sign(m, out=m), dual


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


for _cls in (Spectral, ColNorm, RowNorm, L1ToLinf):
    register_norm(_cls)
