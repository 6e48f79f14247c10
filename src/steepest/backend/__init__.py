"""The execution layer: which kernels run an update, decided in one place.

An optimizer's ``_update(group, params, grads, states, backend)`` is written once against the
list ops of ``backend.ops`` (:mod:`steepest.backend.ops`). :func:`select`, called once per param
group by ``StepOptimizer.step``, picks the :class:`Backend` from everything that matters (the
user's ``foreach=``/``fused=``, the device, DTensor parameters, ``torch.compile``); within an
update, the per-chunk choices (many small CPU tensors take fused kernels a chunk at a time) are
the backend's too (:meth:`Backend.small_chunks`), and every size heuristic and chunk constant
lives in :mod:`steepest.backend.policy`. No module outside this package calls
``torch._foreach_*`` or asks whether it is being compiled (tests/test_layering.py checks it).

Adding a backend is one module: subclass :class:`Backend` (a name, its list ops, its chunk policy,
and :meth:`Backend.accepts` / :meth:`Backend.run` to take over whole updates) and put an
instance in :data:`BACKENDS`. ``fused=True`` in a param group asks :func:`select` for
``BACKENDS["fused"]``; while none is registered (or it declines the tensors), the step runs the
eager backends with one warning.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor

from steepest.backend import policy
from steepest.backend.ops import BatchedOps, ForeachOps, LoopOps, is_dtensor, l2_norm, ops_for
from steepest.backend.policy import compiling

__all__ = [
    "BACKENDS",
    "FOREACH",
    "LOOP",
    "Backend",
    "BatchedOps",
    "ForeachOps",
    "LoopOps",
    "compiling",
    "is_dtensor",
    "l2_norm",
    "ops_for",
    "policy",
    "select",
]


class Backend:
    """One way to execute an update: a ``name``, its list ops (:attr:`ops`) and its chunk policy.

    ``StepOptimizer.step`` calls :meth:`run` once per chunk of a streamed group (and once for a
    group whose update couples its tensors); the default hands the chunk to the optimizer's
    ``_update`` with this backend. A backend that runs some updates its own way (a fused one)
    overrides :meth:`run` and falls back to ``super().run`` for the others.
    """

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

    def run(self, optimizer: Any, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
            states: list[dict[str, Any]]) -> None:
        optimizer._update(group, params, grads, states, self)

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


LOOP = Backend("loop", LoopOps)
FOREACH = Backend("foreach", ForeachOps)

#: The registered backends by name. ``select`` uses "loop" and "foreach", and "fused" when a
#: param group asks for it: a module providing a fused backend adds it here,
#: ``BACKENDS["fused"] = MyFusedBackend("fused", ForeachOps)``.
BACKENDS: dict[str, Backend] = {"loop": LOOP, "foreach": FOREACH}

_warned: set[str] = set()


def select(group: dict[str, Any], params: list[Tensor]) -> Backend:
    """The backend of one param group's step: ``fused=True`` gets the registered fused backend
    where it accepts the tensors; else ``foreach=True/False`` as asked, and ``foreach=None`` the
    loop on CPU, foreach on CUDA (:func:`policy.default_foreach`)."""
    if group.get("fused"):
        fused = BACKENDS.get("fused")
        if fused is not None and fused.accepts(group, params):
            return fused
        why = "no fused backend is available" if fused is None else "the fused backend declined these tensors"
        if why not in _warned:
            _warned.add(why)
            warnings.warn(f"fused=True: {why}; running the eager backend", RuntimeWarning, stacklevel=3)
    foreach = group.get("foreach")
    if foreach is None:
        foreach = policy.default_foreach(params)
    return BACKENDS["foreach" if foreach else "loop"]


def backend_for(foreach: bool) -> Backend:
    """The eager backend of a ``foreach`` flag (the public norm API's ``foreach=`` argument)."""
    return FOREACH if foreach else LOOP
