"""The fused backend (``fused=True``): each update's elementwise math, written once as a plain
per-tensor function in :mod:`steepest.optim.updates`, fused into one kernel by ``torch.compile``
(inductor: C++/OpenMP on CPU, Triton on GPU, from the same source).

API (what an optimizer's ``_update`` calls):

* :func:`run(fn, *args, **static)`: run ``fn(*args, **static)`` as a fused kernel. ``args`` are
  tensors (the parameter, its gradient, its state; 0-d tensors for per-tensor scalars; ``None``
  for an absent one) and Python floats (symbolic: changing them never recompiles); ``static`` are
  the options that change the program (strings, bools). Returns what ``fn`` returns.
* :func:`available()`: whether kernels are compiled (False after a failure: eager fallback).
* :func:`reset()`: forget compiled kernels and a past failure (tests).

How kernels are shared: tensors are passed flattened (``view(-1)``; a non-contiguous tensor
runs the same function eagerly), shapes are dynamic, and one compiled kernel exists per
``(fn, static options, each argument's type, or dtype and device)`` -- each with a code object of
its own, so that dynamo's per-code recompile limit and guard list never grow with the number of
variants. A model's many shapes then share one kernel per dtype (tensors of one element, which
dynamo would specialize, run eagerly). Inductor's on-disk caches (FX graph and AOT
autograd caches, on by default; directory ``TORCHINDUCTOR_CACHE_DIR``) make a second process
start warm: it still traces each kernel with dynamo (about 0.5-1 s each) but compiles no C++.

Fallback: if compiling (or running a freshly compiled kernel) raises, one ``UserWarning`` is
issued for the process and every kernel runs eagerly from then on: the same functions, so the
step stays correct. A compile error happens before the kernel touches any tensor.

Inside a user's ``torch.compile(opt.step)`` the functions are called directly (dynamo inlines
them into the surrounding graph).

The non-finite policy on the fused path (``nonfinite="raise"``/``"skip"``, the CPU default) --
why the check is where it is:

* ``"raise"`` must leave every parameter and state tensor bit-identical. An in-place update that
  finds a non-finite gradient in tensor k has already written tensors 0..k-1, and their old
  values are gone (no update here is exactly invertible in floating point). So a refusable step
  must know that *every* gradient is finite before its *first* write; there is no one-pass,
  in-place design that does (the alternatives are out-of-place double buffers, which cost a
  parameter-sized buffer per tensor and cannot swap a user's parameter storage).
* Updates that need a reduction before their first write anyway (ScaledSignSGD's ||g||_1, the
  normalized/soft/scaled modes, block norms, EF's ||lr g + e||_1) get the check for free: their
  reduction pass reads every gradient before anything is written, and a NaN/inf gradient makes
  the reduction non-finite. Only then is each gradient checked exactly (a huge finite gradient
  can overflow the reduction: such a step proceeds). ``StepOptimizer.step`` leaves such a group
  out of its scan and runs it first (:func:`defer_check` decides), so nothing has been written
  when it refuses.
* One-pass updates keep the scan before the step: one read of the gradients more, so their floor
  with the default check is (counted + 1)/counted transfers (4/3 for SignSGD, 6/5 for Lion,
  8/7 for M-SVAG), still under torch SGD-momentum's eager 8/5; ``nonfinite="ignore"`` removes it.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["NonFinite", "available", "reset", "run"]

# The torch.compile backend of the kernels ("inductor"; tests use "aot_eager", which traces the
# same graphs and compiles no C++).
BACKEND = "inductor"
# How a compiled kernel is called. "aot": dynamo's ahead-of-time compile of the first call
# (``torch.compile(...).aot_compile``), called as a plain function, without dynamo's frame hooks
# and with its guard check off (our cache key is the guard: function, options, and per
# argument its type, or dtype, device and whether 0-d; shapes are dynamic; no kernel specializes a float, which
# tests/optim/test_fused.py checks in "jit" mode by counting recompiles). It cuts the per-call
# overhead several-fold (measured: ~180 us against ~1.4 ms per call under load 18 on 2 cores).
# "jit": the ``torch.compile`` callable itself (dynamo checks guards on every call). "aot" falls
# back to "jit" where aot_compile is missing or fails.
MODE = "aot"
_KERNELS: dict[Any, Callable[..., Any]] = {}
_FAILED: list[BaseException] = []  # the first compile failure, if any (then: eager for good)


class NonFinite(Exception):
    """Raised by a fused update before its first write when a gradient is NaN/inf; ``index`` is
    the position of that gradient in the list the update was given."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


def available() -> bool:
    """Whether fused kernels are compiled (False after a compile failure, or without dynamo)."""
    return not _FAILED and torch._dynamo.is_dynamo_supported()


def reset() -> None:
    """Forget every compiled kernel and a past failure (tests; a changed inductor config)."""
    _KERNELS.clear()
    _FAILED.clear()


def _compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile`` of one kernel: whole graph, shape-dynamic (tests replace this to simulate
    a failure)."""
    return torch.compile(fn, backend=BACKEND, dynamic=True, fullgraph=True)


def _compile_aot(fn: Callable[..., Any], args: tuple[Any, ...]) -> Callable[..., Any]:
    """The ahead-of-time compiled kernel for these (flattened) example arguments (see MODE)."""
    aot = torch.compile(fn, backend=BACKEND, dynamic=True, fullgraph=True).aot_compile((args, {}))
    aot.disable_guard_check()
    return aot


def _specialized(fn: Callable[..., Any], static: dict[str, Any]) -> Callable[..., Any]:
    """``fn`` with ``static`` bound, under a code object of its own (see the module docstring)."""
    clone = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                               fn.__closure__)
    clone.__kwdefaults__ = {**(fn.__kwdefaults__ or {}), **static}
    return clone


def _flat(x: Any) -> Any:
    return x.view(-1) if isinstance(x, Tensor) and x.dim() != 1 else x


def _fail(exc: BaseException) -> None:
    if not _FAILED:
        _FAILED.append(exc)
        warnings.warn(
            f"steepest: fused=True could not compile its kernels ({type(exc).__name__}: {exc}); "
            "the fused optimizers run the same update eagerly from now on (correct, slower)",
            UserWarning,
            stacklevel=4,
        )


def run(fn: Callable[..., Any], *args: Any, **static: Any) -> Any:
    """``fn(*args, **static)`` as one fused kernel (module docstring)."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    lead = tensors[0]
    # Tensors of one element are specialized by dynamo (and cost nothing eagerly).
    if (not available() or torch.compiler.is_compiling() or lead.numel() < 2
            or not all(t.is_contiguous() for t in tensors)):
        return fn(*args, **static)
    # What the kernel was compiled for, beyond shapes (aot mode checks no guards: this is it).
    key = (fn, tuple(sorted(static.items())), MODE, tuple(
        (a.dtype, a.device, a.dim() == 0) if isinstance(a, Tensor) else type(a) for a in args))
    flat = [_flat(a) for a in args]
    kernel = _KERNELS.get(key)
    if kernel is not None:
        return kernel(*flat)
    # The first call compiles: its errors come before the kernel writes anything.
    spec = _specialized(fn, static)
    if MODE == "aot":
        try:
            kernel = _compile_aot(spec, tuple(flat))
        except Exception:  # no aot_compile in this torch (or it failed): jit below
            kernel = None
    try:
        if kernel is None:
            kernel = _compile(spec)
        out = kernel(*flat)
    except Exception as exc:  # any compile failure: eager, with one warning
        _fail(exc)
        return fn(*args, **static)
    _KERNELS[key] = kernel
    return out
