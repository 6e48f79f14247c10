"""The norm contract: :class:`Norm`, its factorisation :class:`Factored`, and the registry.

What a norm gives an optimizer (sharp operator, dual, LMO; [BPL20, Sec. 3.1, Eq. 32, Table 1])
and how every norm factors its sharp operator as ``scale(z) * unit(z)`` are described once, in the
package docstring of :mod:`steepest.norms`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import torch
from torch import Tensor

from steepest.backend import policy as _policy
from steepest.backend.ops import LoopOps, ops_for

__all__ = ["MODES", "Factored", "Norm", "combine_lq", "from_spec", "per_tensor_list", "register_norm",
           "tensor_norms"]

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

        * ``scaled``:     z#                       [BPL20, Eq. 10]
        * ``normalized``: z# / ||z||_*             (Eq. 49)
        * ``soft``:       z# / (||z||_* + beta)    (Eq. 52, the general-norm form of Eq. 57)
        * ``unscaled``:   unit(z)                  ([STACEY, Alg. 1]; sign(z) for Linf)
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
    #: Whether :meth:`map` acts entry by entry (``map(x)_i`` depends on ``x_i`` alone), as its
    #: contract says; operator norms, whose map is a per-matrix one, set it False. The fused
    #: backend, which flattens and packs tensors, fuses a norm's map only where it is.
    pointwise_map: bool = True

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
    ) -> list[tuple[int, int | Tensor, Tensor]] | None:
        """For a direction that is zero but for a few coordinates (l1): ``(i, j, value)`` with
        ``direction_i.view(-1)[j] = value``, every other entry 0, so that an optimizer moves
        those coordinates alone (``j`` an int, or while compiling a 1-element index tensor and
        ``value`` of shape (1,)). ``None`` (the default) if the direction is not of that form or
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

    @overload
    def direction(
        self, xs: Tensor, mode: str = ..., *, beta: float = ..., per_tensor: bool = ...,
        foreach: bool = ..., owned: bool = ...,
    ) -> Tensor: ...

    @overload
    def direction(
        self, xs: Sequence[Tensor], mode: str = ..., *, beta: float = ..., per_tensor: bool = ...,
        foreach: bool = ..., owned: bool = ...,
    ) -> list[Tensor]: ...

    def direction(
        self,
        xs: TensorOrList,
        mode: str = "scaled",
        *,
        beta: float = 1.0,
        per_tensor: bool = False,
        foreach: bool = False,
        owned: bool = False,
    ) -> Tensor | list[Tensor]:
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
        """``z# = argmax_x <z,x> - 1/2||x||^2`` [BPL20, Eq. 32]."""
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



#: Public name for extension authors: combine per-tensor l_q norms into the group's l_q norm.
combine_lq = _combine_pow


def tensor_norms(xs: Sequence[Tensor], q: float) -> Tensor:
    """The l_q norm of each tensor of ``xs`` (``q >= 1`` or ``math.inf``), stacked into a 1-d
    tensor (0 for an empty tensor), with the kernels the built-in norms use (the execution
    layer's choice: one multi-tensor kernel for many small CPU tensors or on accelerators, the
    per-tensor loop for large CPU tensors; DTensors reduced across their shards).

    The building block of a user's :meth:`Norm.duals` and :meth:`Norm.primals`, e.g. l_inf's
    ``combine_lq(tensor_norms(xs, 1.0), 1.0, per_tensor)``. A Python loop over the tensors
    (``torch.stack([x.abs().sum() for x in xs])``) gives the same numbers at two ops and a
    temporary per tensor: with 1,000 small tensors ~3-5 us per op and tensor, ~1.3x the
    built-in's step time (docs/performance.md, issue 18)."""
    q = float(q)
    if not q >= 1.0:
        raise ValueError(f"q must be a number >= 1 or math.inf, got {q}")
    lst = list(xs)
    if not lst:
        return torch.zeros(0)
    if math.isinf(q):
        return _policy.absmax(lst, _policy.reduction_ops(lst))
    return _policy.norms(lst, q, _policy.reduction_ops(lst))

#: Norm classes by :attr:`Norm.name`, for :func:`from_spec` (checkpoints store norms as specs).
_REGISTRY: dict[str, type[Norm]] = {}


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
    """Make a norm class known to :func:`from_spec` by its ``name`` (so optimizer checkpoints
    load); every built-in norm is registered by this decorator too."""
    _REGISTRY[cls.name] = cls
    return cls
