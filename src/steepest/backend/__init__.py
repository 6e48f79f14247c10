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
from steepest.backend.core import BACKENDS, FOREACH, LOOP, Backend, NonFinite
from steepest.backend.fused import FusedBackend
from steepest.backend.ops import (
    BatchedOps,
    ForeachOps,
    LoopOps,
    is_dtensor,
    l2_norm,
    ops_for,
    sum_all,
)
from steepest.backend.policy import compiling, nonfinite_policy

__all__ = [
    "BACKENDS",
    "FOREACH",
    "LOOP",
    "Backend",
    "BatchedOps",
    "ForeachOps",
    "FusedBackend",
    "LoopOps",
    "NonFinite",
    "compiling",
    "is_dtensor",
    "l2_norm",
    "nonfinite_policy",
    "ops_for",
    "policy",
    "select",
    "sum_all",
]


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
