"""The :class:`Backend` interface and the registry of backends (:data:`BACKENDS`).

Kept apart from the package's ``__init__`` so that a backend module (:mod:`steepest.backend.fused`)
can subclass :class:`Backend` and register itself without importing the package that imports it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from steepest.backend import policy
from steepest.backend.ops import BatchedOps, ForeachOps, LoopOps
from steepest.backend.policy import compiling

__all__ = ["BACKENDS", "FOREACH", "LOOP", "Backend", "NonFinite"]


class NonFinite(Exception):
    """Raised by a backend's update before its first write when gradient ``index`` (its position
    in the list the update was given) is NaN/inf: ``StepOptimizer.step`` then applies the group's
    non-finite policy as if its own scan had found it (see :meth:`Backend.defers_check`)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class Backend:
    """One way to execute an update: a ``name``, its list ops (:attr:`ops`) and its chunk policy.

    ``StepOptimizer.step`` calls :meth:`run` once per chunk of a streamed group (and once for a
    group whose update couples its tensors); the default hands the chunk to the optimizer's
    ``_update`` with this backend. A backend that runs some updates its own way (a fused one)
    overrides :meth:`run` and falls back to ``super().run`` for the others.
    """

    #: Whether ``StepOptimizer.step`` hands this backend working tensors: float32 copies of
    #: half-precision ones and negated gradients under ``maximize`` (written back after the
    #: update). ``False``: the stored tensors themselves (real views of complex ones), for a
    #: backend whose kernels read the stored dtype and fold ``maximize`` in (the fused one).
    working_copies: bool = True

    def __init__(self, name: str, ops: type[LoopOps]) -> None:
        self.name = name
        self.ops = ops

    @property
    def foreach(self) -> bool:
        """Whether the list ops are multi-tensor (``torch._foreach_*``) kernels."""
        return bool(self.ops.foreach)

    @property
    def compiling(self) -> bool:
        return compiling()

    def accepts(self, group: dict[str, Any], params: list[Tensor]) -> bool:
        """Whether this backend can run an update of ``params`` (a fused backend declines e.g.
        DTensors, or runs where compile failed)."""
        return True

    def chunks(self, params: list[Tensor]) -> list[slice]:
        """The chunks a streamed (elementwise) update is run on, one :meth:`run` each."""
        return policy._chunks(params, policy._chunk_limit(params, self.foreach))

    def small_chunks(self, xs: list[Tensor], temps: int) -> list[tuple[slice, type[LoopOps] | None]]:
        """How an update that has made its reductions writes its elementwise part: per chunk,
        the list ops to run it with, or ``None`` for the per-tensor loop (one temporary alive).
        Many small CPU tensors (per-tensor Python would dominate) take fused kernels a chunk at a
        time; ``temps`` is the number of temporaries per tensor the chunk's map needs."""
        whole = slice(0, len(xs))
        if self.foreach and not policy._per_tensor_ok(xs):
            return [(whole, self.ops)]  # accelerators: all tensors at once (fused kernels)
        if not policy._small_many(xs):
            return [(whole, None)]
        return [(sl, BatchedOps if sl.stop - sl.start > 1 else None)
                for sl in policy._small_chunks(xs, self.foreach, temps)]

    def per_tensor(self, xs: list[Tensor]) -> bool:
        """Whether this backend's update may run tensor by tensor at no cost (the loop; and the
        foreach path on CPU, where ``_foreach_*`` ops are a per-tensor loop themselves)."""
        return not self.foreach or policy._per_tensor_ok(xs)

    def defers_check(self, optimizer: Any, group: dict[str, Any]) -> bool:
        """Whether this backend's update of ``group`` checks every gradient for NaN/inf itself
        before its first write (raising :class:`NonFinite`), so that ``StepOptimizer.step``
        leaves the group out of its scan and steps it first (one such group per step)."""
        return False

    def run(self, optimizer: Any, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
            states: list[dict[str, Any]]) -> None:
        optimizer._update(group, params, grads, states, self)

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


LOOP = Backend("loop", LoopOps)
FOREACH = Backend("foreach", ForeachOps)

#: The registered backends by name. ``select`` uses "loop" and "foreach", and "fused" when a
#: param group asks for it: a module providing a fused backend adds it here,
#: ``BACKENDS["fused"] = MyFusedBackend("fused", ForeachOps)`` (:mod:`steepest.backend.fused`
#: registers itself so when :mod:`steepest.backend` is imported).
BACKENDS: dict[str, Backend] = {"loop": LOOP, "foreach": FOREACH}

