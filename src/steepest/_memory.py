"""Peak intermediate memory of an optimizer step, measured by allocation on any device.

:class:`LiveBytes` is a ``TorchDispatchMode`` that sees every tensor an op returns and keeps the
bytes of the storages that did not exist before (parameters, gradients and state are excluded)
alive until the last tensor viewing them is garbage-collected. CPython frees tensors by
reference counting, at once, so "live" is exact; the peak of that sum is the step's intermediate
memory. Works on CPU, where torch keeps no allocator statistics. Used by
``tests/optim/test_memory.py`` and ``benchmarks/optim_memory.py``.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveBytes", "existing_storages", "step_peak_bytes"]


class LiveBytes(TorchDispatchMode):
    """Track the bytes of storages created inside the mode, and their peak."""

    def __init__(self, existing: set[int]) -> None:
        super().__init__()
        self.existing = existing
        self.refs: dict[int, int] = {}  # storage pointer -> live tensors viewing it
        self.sizes: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def _release(self, ptr: int) -> None:
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            self.live -= self.sizes.pop(ptr)
            del self.refs[ptr]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr in self.existing or st.nbytes() == 0:
                continue
            if ptr not in self.refs:
                self.refs[ptr] = 0
                self.sizes[ptr] = st.nbytes()
                self.live += st.nbytes()
                self.peak = max(self.peak, self.live)
            self.refs[ptr] += 1
            weakref.finalize(t, self._release, ptr)
        return out


def existing_storages(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> set[int]:
    """Storage pointers of the parameters, their gradients and the optimizer's state."""
    ptrs = set()
    for p in params:
        ptrs.add(p.untyped_storage().data_ptr())
        if p.grad is not None:
            ptrs.add(p.grad.untyped_storage().data_ptr())
    for st in opt.state.values():
        for v in st.values() if isinstance(st, dict) else ():
            if isinstance(v, torch.Tensor):
                ptrs.add(v.untyped_storage().data_ptr())
    return ptrs


def step_peak_bytes(opt: torch.optim.Optimizer, params: list[torch.Tensor], *args: Any) -> int:
    """Peak intermediate bytes of one ``opt.step(*args)`` (call it after a first step that created
    the state: the state itself is not intermediate memory)."""
    mode = LiveBytes(existing_storages(opt, params))
    with mode:
        opt.step(*args)
    return mode.peak
