"""The fused backend (``fused=True``): each update's elementwise math, written once as a plain
per-tensor function in :mod:`steepest.optim.updates`, fused into one kernel by ``torch.compile``
(inductor: C++/OpenMP on CPU, Triton on GPU, from the same source).

:class:`FusedBackend` is registered as ``BACKENDS["fused"]``: :func:`steepest.backend.select` hands
it a param group with ``fused=True``, ``StepOptimizer.step`` gives it the stored tensors (no
working copies: :attr:`Backend.working_copies` is False, one chunk per group) and its
:meth:`FusedBackend.run` calls the optimizer's ``_fused_run(group, params, grads, states,
backend)``, which calls the drivers of :mod:`steepest.optim.updates`; they call back:

* :meth:`FusedBackend.kernel` ``(fn, *args, **static)`` (:func:`run`): ``fn(*args, **static)``
  as a fused kernel. ``args`` are
  tensors (the parameter, its gradient, its state; 0-d tensors for per-tensor and per-step
  scalars such as the lr: changing them never recompiles; ``None`` for an absent one); ``static``
  are the options that stay fixed (hyper-parameters, the norm, strings, bools), constants of the
  kernel (a Python number passed positionally is one too). Returns what ``fn`` returns.
* :meth:`FusedBackend.kernel_many` (:func:`run_many`): the same for many rows (one row per
  tensor: ``fn(*row, **static)``), as *list kernels*: one compiled call per ``BUCKET`` rows. The
  rows are given as columns, one per positional argument of ``fn``: a sequence (one value per
  row: the parameters, the gradients), a :class:`Same` (one value for all rows: the lr) or a
  :class:`Vec` (a 1-d tensor, one element per row: a norm's per-tensor scalars), so that a
  driver makes no Python object per row; in a call every scalar column is one vector of
  ``BUCKET`` elements (:func:`_columns`).
* :meth:`FusedBackend.kernel_map` (:func:`map_many`): the same for a function that returns a
  tensor per row, of one shape for all rows (a reduction pass); returns them stacked.
* :func:`available()`: whether kernels are compiled (False without dynamo).
* :func:`reset()`: forget compiled kernels and past failures (tests).

How kernels are shared: tensors are passed flattened (``view(-1)``; a non-contiguous tensor
runs the same function eagerly), shapes are dynamic, and one compiled kernel exists per
``(fn, static options, each argument's type, or dtype and device)`` -- each with a code object of
its own, so that dynamo's per-code recompile limit and guard list never grow with the number of
variants. A model's many shapes then share one kernel per dtype (tensors of one element, which
dynamo would specialize, run eagerly).

List kernels (issue 18): a compiled call has a fixed cost (~15-30 us on the project's CPU)
that, paid per tensor and pass, made ``fused=True`` slower than eager on models of many
tensors. :func:`run_many` compiles one function that calls ``fn`` on each of ``BUCKET`` (16)
rows, traced into one graph, and calls it once per 16 tensors of a group (the last call padded
with dummy rows); one such kernel per function, options and row signature (dtypes, devices),
whatever the model's shapes. The kernel is called with its guard check off, so it must not
assume any relation between the sizes of two rows: dynamo's duck shaping (one size symbol for
equal sizes) is off while tracing, and tests/optim/test_fused.py checks a kernel compiled on
rows of one size against rows of different sizes and the reverse. Rows are checked in Python
instead of by inductor's input asserts (contiguous, one size within a row): see
:func:`_row_args` and :func:`_columns`. An aot list kernel's compiled code is called directly,
with the rows' sizes passed by the caller, not through dynamo's Python prologue (18 wrapper
calls per call of 16 rows) and AOT autograd's and inductor's wrappers: :func:`_direct` says how
that caller is built and checked.

Warm start: in "aot" mode each compiled kernel is saved (``save_compiled_function``) under
``<inductor cache dir>/steepest-fused`` (or ``STEEPEST_FUSED_CACHE``; "0" turns it off), named by
a hash of the kernels' module source, the key, torch's version and the thread count; a second
process loads it (``torch.compiler.load_compiled_function``): no dynamo tracing, no inductor, no
C++ compile. In "jit" mode inductor's own FX-graph cache still saves the C++ compile (dynamo and
AOT autograd trace again).

Fallback: if compiling (or running a freshly compiled kernel) raises, one ``UserWarning`` is
issued for the process and that kernel (its function, options and dtypes) runs eagerly from then
on: the same function, so the step stays correct. A compile error happens before the kernel
touches any tensor.

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

import hashlib
import inspect
import operator
import os
import sys
import types
import warnings
from collections.abc import Callable
from itertools import repeat
from typing import Any

import torch
from torch import Tensor

from steepest.backend.core import BACKENDS, Backend, NonFinite
from steepest.backend.ops import _SUM_BLOCK, LoopOps, _stack, is_dtensor, symbolic_sums
from steepest.backend.policy import compiling

__all__ = ["FusedBackend", "NonFinite", "Same", "Vec", "available", "map_many", "reset", "rows_of", "run",
           "run_many"]

# The torch.compile backend of the kernels ("inductor"; tests use "aot_eager", which traces the
# same graphs and compiles no C++).
BACKEND = "inductor"
# How a compiled kernel is called. "aot": dynamo's ahead-of-time compile of the first call
# (``torch.compile(...).aot_compile``), called as a plain function, without dynamo's frame hooks
# and with its guard check off (our cache key is the guard: function, options, and per
# argument its type, or dtype, device and whether 0-d; shapes are dynamic; no kernel specializes
# a float, which tests/optim/test_fused.py checks in "jit" mode by counting recompiles). It cuts
# the per-call overhead several-fold (measured: ~180 us against ~1.4 ms per call under load 18 on
# 2 cores). "jit": the ``torch.compile`` callable itself (dynamo checks guards on every call).
# "aot" falls back to "jit" where aot_compile is missing or fails.
MODE = "aot"
# key -> compiled kernel, or None: compiling it failed, it runs eagerly (see _fail).
_KERNELS: dict[Any, Callable[..., Any] | None] = {}
# Kernels compiled and kernels loaded from the aot cache in this process (benchmarks, tests).
STATS = {"compiled": 0, "loaded": 0, "failed": 0}
_WARNED: list[BaseException] = []  # the first compile failure (one warning per process)


def available() -> bool:
    """Whether fused kernels can be compiled here at all (dynamo supports this Python)."""
    return bool(torch._dynamo.is_dynamo_supported())


def reset() -> None:
    """Forget every compiled kernel and past failures (tests; a changed inductor config)."""
    _KERNELS.clear()
    _WARNED.clear()
    _DUMMIES.clear()


# Python floats are constants of a kernel (its static options, and the attributes of a norm whose
# map is traced in, e.g. ``math.isinf(self.p)``, which a symbolic float cannot answer); what
# changes from step to step (lr, bias corrections) is passed as 0-d tensors. The key of a kernel
# holds every static option, so a specialized float never goes stale (aot mode checks no guards).
_DYNAMO: dict[str, Any] = {"specialize_float": True}


def _compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile`` of one kernel: whole graph, shape-dynamic (tests replace this to simulate
    a failure); its first call compiles (:data:`_DYNAMO` applies then and to recompiles)."""
    compiled = torch.compile(fn, backend=BACKEND, dynamic=True, fullgraph=True)

    def call(*args: Any) -> Any:
        with torch._dynamo.config.patch(**_DYNAMO):
            return compiled(*args)

    return call


def _source(module: str) -> str:
    try:
        return inspect.getsource(sys.modules[module])
    except (OSError, TypeError, KeyError):
        return ""


def _cache_file(fn: Callable[..., Any], key: Any, static: dict[str, Any]) -> str | None:
    """Where the aot-compiled kernel of ``key`` is saved (``STEEPEST_FUSED_CACHE``, default a
    ``steepest-fused`` folder in inductor's cache directory; ``"0"`` turns it off). The name
    hashes the kernel module's source, this module's, and that of the classes of its static
    options (a norm written elsewhere: its ``map`` is traced into the kernel), the key, torch's
    version, the backend and the thread count (inductor's CPU kernels are generated for it)."""
    root = os.environ.get("STEEPEST_FUSED_CACHE")
    if root == "0" or BACKEND != "inductor":
        return None
    if not root:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        root = os.path.join(cache_dir(), "steepest-fused")
    source = _source(fn.__module__)
    if not source:
        return None
    others = sorted({type(v).__module__ for v in static.values()} - {"builtins", fn.__module__})
    # (this module's source too: how arguments are flattened is part of the kernel's signature)
    text = repr((source, _source(__name__), [_source(m) for m in others], fn.__qualname__, key[1:],
                 torch.__version__, torch.get_num_threads()))
    return os.path.join(root, hashlib.sha256(text.encode()).hexdigest()[:32] + ".bin")


def _compile_aot(fn: Callable[..., Any], args: tuple[Any, ...], path: str | None = None,
                 f_globals: dict[str, Any] | None = None, lists: bool = False) -> Callable[..., Any]:
    """The ahead-of-time compiled kernel for these (flattened) example arguments (see MODE),
    loaded from ``path`` if an earlier process saved it there (a warm start: no dynamo, no
    inductor), else compiled and saved there. ``f_globals``: ``fn``'s globals (given again on
    loading); ``lists``: a list kernel (:func:`_compile_list`)."""
    glob = fn.__globals__ if f_globals is None else f_globals
    if path and os.path.exists(path):
        try:
            with open(path, "rb") as f:
                aot: Any = torch.compiler.load_compiled_function(f, f_globals=glob)
            aot.disable_guard_check()
            STATS["loaded"] += 1
            return aot
        except Exception:  # a stale or foreign file: compile anew
            pass
    from torch.fx.experimental import _config as shape_config

    shapes = shape_config.patch(use_duck_shape=False)  # type: ignore[attr-defined]
    asserts = torch._inductor.config.patch(size_asserts=not lists)
    with torch._dynamo.config.patch(**_DYNAMO), shapes, asserts:
        compiled: Any = torch.compile(fn, backend=BACKEND, dynamic=True, fullgraph=True)
        aot = compiled.aot_compile((args, {}))
    aot.disable_guard_check()
    STATS["compiled"] += 1
    if path:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            aot.save_compiled_function(path)
        except Exception:  # saving is an optimization only
            pass
    return aot


def _specialized(fn: Callable[..., Any], static: dict[str, Any]) -> Callable[..., Any]:
    """``fn`` with ``static`` bound, under a code object of its own (see the module docstring)."""
    clone = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                               fn.__closure__)
    clone.__kwdefaults__ = {**(fn.__kwdefaults__ or {}), **static}
    return clone


def _flat(x: Any) -> Any:
    # 0-d scalars become (1,): aot_compile cannot restart dynamo's analysis when it turns a 0-d
    # input into a scalar (TensorifyScalarRestartAnalysis). The drivers pass them in the compute
    # dtype, so a (1,)-shaped one promotes nothing.
    return x.view(-1) if isinstance(x, Tensor) and x.dim() != 1 else x


def _fail(key: Any, exc: BaseException) -> None:
    """This kernel runs eagerly from now on; the first failure of the process warns."""
    _KERNELS[key] = None
    STATS["failed"] += 1
    if not _WARNED:
        _WARNED.append(exc)
        warnings.warn(
            f"steepest: fused=True could not compile a kernel ({type(exc).__name__}: {exc}); "
            "such updates run the same functions eagerly from now on (correct, slower)",
            UserWarning,
            stacklevel=5,
        )


def run(fn: Callable[..., Any], *args: Any, **static: Any) -> Any:
    """``fn(*args, **static)`` as one fused kernel (module docstring)."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    lead = tensors[0]
    # Under SMALL elements the compiled call's fixed cost (~0.05-0.5 ms a call on a 2-core CPU,
    # benchmarks/fused_overhead.py) exceeds the eager ops' time: eager (the drivers call
    # run_many/map_many, whose list kernels share a call among 16 tensors). Inside a user's
    # torch.compile(opt.step) dynamo inlines the function into the surrounding graph.
    if (compiling() or lead.numel() < SMALL or not available()
            or not all(t.is_contiguous() for t in tensors)):
        return fn(*args, **static)
    # What the kernel was compiled for, beyond shapes (aot mode checks no guards: this is it).
    # A positional Python number is a constant of the kernel (_DYNAMO): its value is in the key.
    key = (fn, tuple(sorted(static.items())), MODE, BACKEND, tuple(
        (a.dtype, a.device, a.dim() == 0) if isinstance(a, Tensor) else
        (type(a), a) if isinstance(a, (int, float)) else type(a) for a in args))
    flat = [_flat(a) for a in args]
    if key in _KERNELS:
        kernel = _KERNELS[key]
        return fn(*args, **static) if kernel is None else kernel(*flat)
    # The first call compiles: its errors come before the kernel writes anything.
    spec = _specialized(fn, static)
    kernel = None
    if MODE == "aot":
        try:
            kernel = _compile_aot(spec, tuple(flat), _cache_file(fn, key, static))
        except Exception:  # no aot_compile in this torch (or it failed): jit below
            kernel = None
    try:
        if kernel is None:
            kernel = _compile(spec)
        out = kernel(*flat)
    except Exception as exc:  # any compile failure: this kernel eagerly, with one warning
        _fail(key, exc)
        return fn(*args, **static)
    _KERNELS[key] = kernel
    return out


# List kernels (issue 18): run_many calls a kernel over BUCKET rows (module docstring). The bucket,
# from measurements (1 thread, inductor, the aot call of msgd_step's list kernel on 2-element rows,
# load 2-5 on the 2-core CPU; per row): K=1 8 us, 2 6 us, 4 4 us, 8 3 us, 16 3 us, 32 3 us (input
# size asserts on; off, K=16 1.3-2.6 us against 2.9-6 us side by side), while the cold compile
# grows with K: 1.6 s (K=2), 2.2 s (4), 3.2 s (8), 4.9 s (16), 9.3 s (32). The cost of a row stops
# falling at K = 8-16 and the compile keeps growing, so one bucket of 16: one compile per
# function, options and row signature, whatever a model's shapes and tensor count, a group's last
# call padded with dummy rows (~2 us a row a call) rather than a second, smaller bucket (another
# compile of seconds, another file to load).
BUCKET = 16
# run: a single tensor under SMALL elements runs eagerly (the compiled call's fixed cost exceeds
# the eager ops' time there).
SMALL = 1 << 15


def _list_kernel(spec: Callable[..., Any], k: int, kinds: tuple[str, ...], results: bool
                 ) -> tuple[Callable[..., Any], dict[str, Any]]:
    """A function of ``k`` rows, taken column by column (:func:`run_many` slices columns, no
    Python per row), that calls ``spec`` on each row and returns their results stacked
    (``results``: one output buffer per call, not one per row, and no stack of 0-d tensors after
    it) or nothing, and its globals (the compiled kernel's, given again when a saved one is
    loaded). ``kinds``, per argument of a row, how a call passes it: ``"row"`` one argument per
    row; ``"one"`` one argument for all ``k`` rows (a Python number, a constant of the kernel, or
    None); ``"vec"`` one 1-d tensor of ``k`` elements, row i's value its slice ``[i:i+1]``, taken
    inside the compiled code (every scalar tensor column: :func:`_columns`). Written out, not a loop over ``*args``: a code object of its own per kernel
    (module docstring) that pickles no closure."""
    params: list[str] = []
    rows: list[list[str]] = [[] for _ in range(k)]
    for j, kind in enumerate(kinds):
        if kind == "row":
            names = [f"a{j}_{i}" for i in range(k)]
            params += names
            for i in range(k):
                rows[i].append(names[i])
        else:
            params.append(f"a{j}")
            for i in range(k):
                rows[i].append(f"a{j}" if kind == "one" else f"a{j}[{i}:{i + 1}]")
    calls = [f"_row({', '.join(r)})" for r in rows]
    body = (f"    return _stack(({', '.join(calls)},))" if results
            else "\n".join(f"    {c}" for c in calls))
    src = f"def _rows_{k}({', '.join(params)}):\n{body}\n"
    glob: dict[str, Any] = {"__builtins__": __builtins__, "_row": spec, "_stack": torch.stack}
    exec(compile(src, f"<steepest list kernel {spec.__name__} x{k}>", "exec"), glob)
    return glob[f"_rows_{k}"], glob


def _layout(k: int, kinds: tuple[str, ...]) -> list[int]:
    """Per argument of a list kernel's call (:func:`_list_kernel`): its row (0..k-1), -1 for a
    shared value, -2 for a vector column."""
    out: list[int] = []
    for kind in kinds:
        out += list(range(k)) if kind == "row" else [-1 if kind == "one" else -2]
    return out


def _compile_list(fn: Callable[..., Any], static: dict[str, Any], key: Any, flat: list[Any],
                  kinds: tuple[str, ...], results: bool) -> Callable[..., Any]:
    """The compiled list kernel of ``key`` for these example arguments (``BUCKET`` rows, as
    :func:`run_many` passes them; ``kinds`` per argument of a row): in "aot" mode loaded from or
    saved to the cache file as :func:`run`'s kernels (falling back to "jit" as they do).

    aot mode checks no guards, so the kernel must assume no relation between the sizes of two
    rows: duck shaping (one symbol for equal sizes, which would bake "these two rows have one
    size" into the kernel) is off while tracing, and the example arguments are fresh clones
    (dynamo would merge two arguments that are one tensor object into one graph input). Within
    a row the tensors have one size (their symbols are made equal when traced, by broadcasting;
    :func:`run_many` checks the rows). Inductor's input size asserts are off: they were half a
    row's cost per call (measured: 1.3-2.6 us a row without, 2.9-6 with), and the sizes they
    check are the ones :func:`run_many` checked."""
    spec = _specialized(fn, static)
    kernel, glob = _list_kernel(spec, BUCKET, kinds, results)
    example = tuple(a.clone() if isinstance(a, Tensor) else a for a in flat)
    if MODE == "aot":
        try:
            aot = _compile_aot(kernel, example, _cache_file(fn, key, static), glob, lists=True)
        except Exception:  # no aot_compile in this torch (or it failed): jit below
            pass
        else:
            return (_direct(aot, example, _layout(BUCKET, kinds)) if DIRECT else None) or aot
    return _compile(kernel)


# Call a list kernel's compiled graph directly (see _direct); False: through dynamo's prologue.
DIRECT = True


def _direct(aot: Any, example: tuple[Any, ...], layout: list[int] | None = None
            ) -> Callable[..., Any] | None:
    """A caller of an aot list kernel's compiled code that skips the Python layers around it, or
    None where the kernel is not as expected (then the kernel is called as it is).

    Why: a call of an aot kernel passes through dynamo's prologue (each row's symbolic size read
    through ``torch._dynamo.utils.call_size`` under a ``torch._disable_dynamo`` wrapper, 18
    wrapper calls per call of 16 rows), a ``disable`` frame wrapper, AOT autograd's runtime
    wrapper (it bumps the version counters of the tensors the kernel wrote) and inductor's
    ``CompiledFxGraph.__call__`` (profiler and autotune-cache hooks) before it reaches the
    generated ``call`` that launches the C++ kernel. At 1,000 tensors of 1,000 elements those
    layers were most of a fused step's time outside its kernels (docs/performance.md, "Fused
    reduction passes" and "The layers around a compiled kernel, and columns"). The inner code
    takes the rows' tensors and their sizes; the sizes are ``numel`` of tensors we pass, so the
    caller passes them itself, and it bumps the same version counters the runtime wrapper bumps.

    How, without relying on those layers' layout: the kernel's bytecode is run once on probe rows
    of distinct sizes (row i: ``BUCKET + 2 + i`` elements; ``layout``: each argument's row, as
    :func:`_layout` gives it, by default ``BUCKET`` rows of one column after another), in a copy
    of its globals where the graph (the one ``__compiled_fn_*`` global) is wrapped by a recorder
    of its arguments and results, and with ``CompiledFxGraph.__call__`` recorded too (its
    inputs, its results, the version counters it moved). Each argument of the recorded call
    must be one of the probe tensors (by identity) or the size of one probe row, each result of
    the kernel one of the call's results. A caller is built from the innermost record that
    qualifies (inductor's compiled graph, else dynamo's graph) and checked against the kernel on
    a second probe (other sizes, random data) for equal results, equal writes and equal version
    counter increments; any mismatch or error: None."""
    try:
        g = aot.fn.__globals__
        names = [k for k in g if k.startswith("__compiled_fn_")]
        if layout is None:
            if len(example) % BUCKET:
                return None
            layout = [j % BUCKET for j in range(len(example))]
        if len(names) != 1 or len(layout) != len(example):
            return None
        graph = g[names[0]]
        first = _probe(example, layout, 2, 0)
        rec: list[Any] = []

        def record(*args: Any) -> Any:
            res = graph(*args)
            rec.append((args, res))
            return res

        # the kernel's bytecode with the graph recorded, in a copy of its globals (the kernel
        # itself, shared, is not touched)
        fn = aot.fn
        spy = types.FunctionType(fn.__code__, {**g, names[0]: record}, fn.__name__, fn.__defaults__,
                                 fn.__closure__)
        spy.__kwdefaults__ = fn.__kwdefaults__
        inner: list[Any] = []
        before = _versions(first)
        with _recording_inductor(inner, first):
            want = spy(*first)
        bumped = [b - a for a, b in zip(before, _versions(first))]
        if len(rec) != 1:
            return None
        tries: list[tuple[Any, Any, Any, bool, list[int]]] = []
        if len(inner) == 1:  # inductor's code, called with a list; bump what the layers above did
            call_fn, iargs, ires, moved = inner[0]
            tries.append((call_fn, iargs, ires, True, [b - m for b, m in zip(bumped, moved)]))
        tries.append((graph, rec[0][0], rec[0][1], False, [0] * len(bumped)))
        for callee, args, res, boxed, bumps in tries:
            call = _caller(callee, args, res, want, first, boxed, bumps)
            if call is not None and _agrees(aot, call, example, layout):
                return call
        return None
    except Exception:
        return None


def _probe(example: tuple[Any, ...], layout: list[int], offset: int, seed: int) -> list[Any]:
    """Probe rows for :func:`_direct`: ``example``'s arguments with row i's tensors of
    ``BUCKET + offset + i`` elements (scalars of 1; a vector column's ``BUCKET``: a size no row
    has), random in [0.5, 1.5)."""
    gen = torch.Generator().manual_seed(seed)
    out: list[Any] = []
    for a, row in zip(example, layout):
        if isinstance(a, Tensor):
            m = 1 if a.numel() == 1 else BUCKET if row < 0 else BUCKET + offset + row
            a = torch.rand(m, generator=gen, dtype=torch.float64).to(a.dtype).to(a.device) + 0.5
        out.append(a)
    return out


def _versions(args: list[Any]) -> list[int]:
    return [a._version if isinstance(a, Tensor) else 0 for a in args]


class _recording_inductor:
    """While open, every ``CompiledFxGraph.__call__`` is recorded in ``out`` as (its compiled
    callable, its inputs, its result, the version counter increments of ``probe``'s tensors
    across it); nothing is recorded where inductor's class is not found."""

    def __init__(self, out: list[Any], probe: list[Any]) -> None:
        self.out, self.probe = out, probe
        self.cls: Any = None

    def __enter__(self) -> None:
        try:
            from torch._inductor.output_code import CompiledFxGraph
        except Exception:
            return
        self.cls, orig = CompiledFxGraph, CompiledFxGraph.__call__
        out, probe = self.out, self.probe

        def call(this: Any, inputs: Any) -> Any:
            args = list(inputs)
            before = _versions(probe)
            res = orig(this, inputs)
            out.append((this.current_callable, args, res,
                        [b - a for a, b in zip(before, _versions(probe))]))
            return res

        self.orig = orig
        CompiledFxGraph.__call__ = call  # type: ignore[method-assign, assignment]

    def __exit__(self, *exc: Any) -> None:
        if self.cls is not None:
            self.cls.__call__ = self.orig


def _caller(callee: Any, args: Any, res: Any, want: Any, first: list[Any], boxed: bool,
            bumps: list[int]) -> Callable[..., Any] | None:
    """The direct caller of ``callee`` from one recorded call (:func:`_direct`): its arguments
    as the probe's tensors and row sizes, its result as the kernel's; ``boxed``: ``callee``
    takes one list; ``bumps``: per argument of the kernel, how many times the caller must bump
    its version counter (0 or 1). None if the record does not qualify."""
    ids = {id(a): j for j, a in enumerate(first) if isinstance(a, Tensor)}
    sized: dict[int, int] = {}  # a size -> the position of a tensor of that size (one per row)
    for j, a in enumerate(first):
        if isinstance(a, Tensor) and a.numel() > 1:
            sized.setdefault(a.numel(), j)
    terms: list[str] = []
    for a in args:
        if isinstance(a, Tensor) and id(a) in ids:
            terms.append(f"a[{ids[id(a)]}]")
        elif type(a) is int and a in sized:
            terms.append(f"a[{sized[a]}].numel()")  # (1-d: its size; no torch.Size made)
        else:
            return None
    if want is None:
        ret = "None"
    elif isinstance(want, Tensor) and isinstance(res, (tuple, list)):
        at = [k for k, r in enumerate(res) if r is want]
        if len(at) != 1:
            return None
        ret = f"o[{at[0]}]"
    elif isinstance(want, tuple) and isinstance(res, (tuple, list)):
        pos = {id(r): k for k, r in enumerate(res)}
        if not all(id(w) in pos for w in want):
            return None
        ret = "(" + "".join(f"o[{pos[id(w)]}], " for w in want) + ")"
    else:
        return None
    if any(b not in (0, 1) for b in bumps):
        return None
    joined = ", ".join(terms)
    lines = [f"    o = _callee([{joined}])" if boxed else f"    o = _callee({joined})"]
    dirty = [j for j, b in enumerate(bumps) if b]
    if dirty:
        lines.append("    _bump((" + "".join(f"a[{j}], " for j in dirty) + "))")
    src = "def _direct(*a):\n" + "\n".join(lines) + f"\n    return {ret}\n"
    ns: dict[str, Any] = {"_callee": callee, "_bump": torch._C._increment_version}
    exec(compile(src, "<steepest direct list kernel>", "exec"), ns)
    call = ns["_direct"]
    call.level = "inductor" if boxed else "graph"  # which code it calls (tests, debugging)
    return call


def _agrees(aot: Any, call: Callable[..., Any], example: tuple[Any, ...], layout: list[int]) -> bool:
    """The check of a direct caller: the kernel and ``call`` on the same probe (other sizes than
    the recorded one, random data) give equal results, equal writes and equal version counter
    increments (the same compiled code on the same data: bitwise)."""
    x, y = _probe(example, layout, 5, 1), _probe(example, layout, 5, 1)
    vx, vy = _versions(x), _versions(y)
    rx, ry = aot(*x), call(*y)
    dx = [b - a for a, b in zip(vx, _versions(x))]
    dy = [b - a for a, b in zip(vy, _versions(y))]
    if dx != dy:
        return False
    if isinstance(rx, Tensor):
        rx, ry = (rx,), (ry,)
    if (rx is None) != (ry is None) or (rx is not None and len(rx) != len(ry)):
        return False
    pairs = list(zip(x, y)) + ([] if rx is None else list(zip(rx, ry)))
    return all(_same(u, v) for u, v in pairs if isinstance(u, Tensor))


def _same(u: Tensor, v: Tensor) -> bool:
    return u.shape == v.shape and bool(((u == v) | (u.isnan() & v.isnan())).all())


# Dummy values that pad a call to BUCKET rows, per signature entry of a "row" column: up to
# BUCKET - 1 tensors of 2 elements (a size 0 or 1 would be specialized; scalars of 1), written by
# the kernel, never read by anything else; a constant or None as it is.
_DUMMIES: dict[Any, list[Any]] = {}


def _dummies(entry: Any, count: int) -> list[Any]:
    """``count`` dummy values of a row column whose signature entry is ``entry``."""
    got = _DUMMIES.get(entry)
    if got is None:
        if type(entry) is tuple and isinstance(entry[0], torch.dtype):
            got = [torch.zeros(1 if len(entry) == 3 else 2, dtype=entry[0], device=entry[1])
                   for _ in range(BUCKET - 1)]
        else:
            got = [entry[1] if type(entry) is tuple else None] * (BUCKET - 1)
        _DUMMIES[entry] = got
    return got[:count]


class Same:
    """A column of :func:`run_many`/:func:`map_many` with one value for every row: a per-step
    scalar tensor (the lr; a list kernel takes it as a vector column, spread once a step, so
    that its layout is the same as for per-row scalars), a Python number (a constant of the
    kernel) or None (both passed once per call)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Same({self.value!r})"


class Vec:
    """A column of :func:`run_many`/:func:`map_many` given as one 1-d tensor whose element i is
    row i's scalar (a norm's per-tensor plan, as ``plan_partials`` returns it). A list kernel
    takes a slice of ``BUCKET`` elements per call and gives row i its element as a (1,)-shaped
    slice inside the compiled code, so no Python object is made per row (1,000 ``unbind`` views
    and their release were ~0.5 ms of a 1,000-tensor step: docs/performance.md, "The layers
    around a compiled kernel, and columns"). Eagerly, row i gets the same (1,)-shaped slice
    (0-d where the row's first tensor is 0-d: :func:`rows_of`)."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: Tensor) -> None:
        if not isinstance(tensor, Tensor) or tensor.dim() != 1:
            raise ValueError(f"Vec takes a 1-d tensor (one element per row), got {type(tensor).__name__}"
                             + (f" of shape {tuple(tensor.shape)}" if isinstance(tensor, Tensor) else ""))
        self.tensor = tensor

    def __repr__(self) -> str:
        return f"Vec({self.tensor!r})"


Column = Any  # a sequence of one value per row, a Same or a Vec


def _nrows(cols: list[Column]) -> int:
    """The number of rows of a set of columns; a ``ValueError`` where two columns disagree (a
    driver's bug, which ``zip`` would silently cut short)."""
    n = -1
    for c in cols:
        if type(c) is Same:
            continue
        m = int(c.tensor.shape[0]) if type(c) is Vec else len(c)
        if n < 0:
            n = m
        elif m != n:
            raise ValueError(f"run_many/map_many: columns of {n} and {m} rows")
    if n < 0:
        raise ValueError("run_many/map_many: no column gives the number of rows (all are Same)")
    return n


def rows_of(cols: list[Column], n: int | None = None) -> list[tuple[Any, ...]]:
    """The rows of ``cols``: ``fn(*row)`` per row is what a list kernel computes (the eager
    path, and rows that cannot run in a list kernel). A :class:`Vec`'s element is given as the
    kernels take it, a (1,)-shaped slice (so that it takes part in type promotion alike: a
    float64 plan scalar promotes a float32 row's math on both paths, as on the loop path), but
    0-d for a row whose first tensor is 0-d (a (1,) scalar would make its result (1,))."""
    n = _nrows(cols) if n is None else n
    lead = next((c for c in cols if type(c) is not Same and type(c) is not Vec
                 and all(map(isinstance, c, repeat(Tensor)))), None)
    seqs: list[Any] = []
    for c in cols:
        if type(c) is Same:
            seqs.append(repeat(c.value, n))
        elif type(c) is Vec:
            items = list(c.tensor.view(-1, 1).unbind(0))
            if lead is not None and 0 in map(Tensor.dim, lead):
                items = [x.view(()) if q.dim() == 0 else x for x, q in zip(items, lead)]
            seqs.append(items)
        else:
            seqs.append(c)
    return list(zip(*seqs))


def _select(cols: list[Column], ix: list[int]) -> list[Column]:
    """The columns of the rows ``ix`` only."""
    out: list[Column] = []
    for c in cols:
        if type(c) is Same:
            out.append(c)
        elif type(c) is Vec:
            out.append(Vec(c.tensor[torch.tensor(ix, dtype=torch.long, device=c.tensor.device)]))
        else:
            out.append([c[i] for i in ix])
    return out


def _row_args(row: tuple[Any, ...], views: dict[int, Tensor]
              ) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    """A row as a list kernel takes it, and its signature: what the kernel is compiled for
    beyond sizes (aot mode checks nothing else). Tensors are passed flattened (1-d: one kernel
    for every shape; a ``view`` costs ~1 us, against a compile of seconds per kernel were each
    number of dimensions its own), signed ``(dtype, device)``; a tensor of one element (a
    per-tensor or per-step scalar, whose size would be specialized) is passed with shape (1,)
    (see :func:`_flat`; one view per scalar object and call, kept in ``views`` by id) and
    signed ``(dtype, device, 1)``. A Python number is signed ``(type, value)`` (a constant of
    the kernel), None ``None``, another object by its type. None if the row runs eagerly: a
    tensor that is not contiguous, a lead tensor of one element, or a tensor whose number of
    elements differs from the lead's (so the kernel's symbols for a row's sizes, made equal when
    traced, are equal). Written for speed: it runs per tensor and step."""
    sig: list[Any] = []
    args: list[Any] = []
    n = -1
    for a in row:
        if isinstance(a, Tensor):
            m = a.numel()
            if m == 1:
                if a.dim() != 1:
                    v = views.get(id(a))
                    if v is None:
                        v = views[id(a)] = a.view(1)
                    a = v
                sig.append((a.dtype, a.device, 1))
                args.append(a)
                continue
            if n < 0:
                n = m
            if m != n or not a.is_contiguous():
                return None
            if a.dim() != 1:
                a = a.view(-1)
            sig.append((a.dtype, a.device))
            args.append(a)
        elif a is None:
            sig.append(None)
            args.append(a)
        elif isinstance(a, (int, float)):
            sig.append((type(a), a))
            args.append(a)
        else:
            sig.append(type(a))
            args.append(a)
    if n < 2:
        return None
    return tuple(args), tuple(sig)


# Row columns _columns has checked during the current FusedBackend.run (one optimizer group's
# step): id of the first tensor -> (the column, its signature entry, its flattened form, its
# sizes or None for a scalar column). A column met again in the same run -- the gradients in a
# two-pass update's second pass -- is recognized by the identity of every element (one C pass,
# ~10 us for 1,000 tensors against ~350 us of checks) and not checked again: between the passes
# of one step only the update's own code runs (a norm's plan on the reductions' values, its map
# eagerly for rows that cannot fuse), nothing that resizes or re-strides a parameter, gradient or
# state tensor. Cleared when the run ends; outside a run nothing is kept.
_CHECKED: dict[int, tuple[tuple[Any, ...], Any, tuple[Any, ...], list[int] | None]] = {}
_CHECKING = False


def _one(v: Any) -> tuple[Any, Any] | None:
    """A None or a Python number every row shares, as a call passes it (once), and its
    signature entry; None for anything else."""
    if v is None:
        return None, None
    if type(v) in (int, float):
        return v, (type(v), v)
    return None


def _whole(n: int) -> int:
    """``n`` rows padded to whole calls of ``BUCKET``."""
    return -(-n // BUCKET) * BUCKET


def _spread(v: Tensor, whole: int) -> Tensor:
    """A scalar every row shares, as a vector column of ``whole`` elements."""
    return v.reshape(1).expand(whole).contiguous()


def _gather_scalars(col: Any, whole: int) -> Tensor:
    """Per-row scalars (tensors of one element, one dtype and device) as a vector column,
    padded to ``whole`` elements with ones (read only by dummy rows)."""
    flat = torch.cat(col) if all(t.dim() == 1 for t in col) else torch.cat([t.reshape(1) for t in col])
    return flat if whole == len(col) else torch.cat((flat, flat.new_ones(whole - len(col))))


def _columns(cols: list[Column], n: int) -> tuple[list[Any], tuple[Any, ...], tuple[str, ...]] | None:
    """The columns as the list kernels take them where every row runs in one list kernel (the
    common case: a group of one dtype and device, contiguous tensors of at least 2 elements):
    per column its arguments and the signature (what the kernel is compiled for beyond sizes),
    and the kinds (:func:`_list_kernel`): a tensor column one argument per row ("row"); every
    scalar column -- a :class:`Vec`, a shared scalar (:class:`Same`, or one object in every
    row), per-row scalars -- one vector padded to whole calls ("vec"), so that a kernel's layout
    does not change when a step's scalars stop being shared (step counts that diverge: no new
    compile mid-run); a None or a Python number once ("one"). Else None (then row by row,
    :func:`_row_args`). Column-wise, so that the checks are C loops (``map`` of tensor methods)
    rather than Python per tensor: ~0.1 us a tensor against ~1 us."""
    sizes: list[int] | None = None
    sig: list[Any] = []
    kinds: list[str] = []
    out: list[Any] = []
    whole = _whole(n)
    for col in cols:
        if type(col) is Same:
            v = col.value
            if isinstance(v, Tensor):
                if v.numel() != 1:
                    return None
                out.append(_spread(v, whole))
                sig.append(("vec", v.dtype, v.device))
                kinds.append("vec")
                continue
            got = _one(v)
            if got is None:
                return None
            out.append(got[0])
            sig.append(got[1])
            kinds.append("one")
            continue
        if type(col) is Vec:
            t = col.tensor
            if not isinstance(t, Tensor) or t.dim() != 1 or t.shape[0] != n:
                return None
            # (contiguous: the kernel reads its slice at stride 1, as the example it was traced
            # on; the padded rows' values are 1, read only by the dummy rows)
            t = t.contiguous() if whole == n else torch.cat((t, t.new_ones(whole - n)))
            out.append(t)
            sig.append(("vec", t.dtype, t.device))
            kinds.append("vec")
            continue
        if len(col) != n:
            return None
        a = col[0]
        if isinstance(a, Tensor):
            if a.numel() == 1:  # a scalar column: one vector
                if all(map(operator.is_, col, repeat(a))):  # one object (an lr)
                    out.append(_spread(a, whole))
                else:
                    if not all(map(isinstance, col, repeat(Tensor))):
                        return None
                    if len(set(map(_DTYPE, col))) != 1 or len(set(map(Tensor.get_device, col))) != 1:
                        return None
                    if list(map(Tensor.numel, col)).count(1) != n:
                        return None
                    out.append(_gather_scalars(col, whole))
                sig.append(("vec", a.dtype, a.device))
                kinds.append("vec")
                continue
            kinds.append("row")
            seen = _CHECKED.get(id(a))
            if seen is not None and len(seen[0]) == n and all(map(operator.is_, col, seen[0])):
                # checked earlier in this run (a gradient column in both passes)
                _, entry, flat, sizes_seen = seen
                if sizes is None:
                    sizes = sizes_seen
                elif sizes_seen != sizes:
                    return None
                sig.append(entry)
                out.append(flat)
                continue
            orig = col
            if not all(map(isinstance, col, repeat(Tensor))):
                return None
            if len(set(map(_DTYPE, col))) != 1 or len(set(map(Tensor.get_device, col))) != 1:
                return None
            got_sizes = list(map(Tensor.numel, col))
            if sizes is None:
                sizes = got_sizes
                if min(sizes) < 2:
                    return None
            elif got_sizes != sizes:
                return None
            if not all(map(Tensor.is_contiguous, col)):
                return None
            if set(map(Tensor.dim, col)) != {1}:
                col = tuple(t if t.dim() == 1 else t.view(-1) for t in col)
            sig.append((a.dtype, a.device))
            if _CHECKING:
                _CHECKED[id(a)] = (orig, sig[-1], col, got_sizes)
            out.append(col)
            continue
        # a column of None or of one Python number: shared
        if a is None:
            if col.count(None) != n:
                return None
        elif type(a) in (int, float):
            if len(set(map(type, col))) != 1 or col.count(a) != n:
                return None
        else:
            return None
        got = _one(a)
        assert got is not None
        out.append(got[0])
        sig.append(got[1])
        kinds.append("one")
    if sizes is None:
        return None
    return out, tuple(sig), tuple(kinds)


_DTYPE = operator.attrgetter("dtype")


def run_many(fn: Callable[..., Any], cols: list[Column], **static: Any) -> None:
    """``fn(*row, **static)`` for every row of the columns ``cols`` (one per positional
    argument of ``fn``: a sequence of one value per row, a :class:`Same`, or a :class:`Vec`), for
    an update that returns nothing and whose positional tensors of a row all have one shape (the
    parameter, gradient and state), as list kernels (see BUCKET): rows of one signature
    (:func:`_columns`, :func:`_row_args`) run BUCKET at a time in one compiled call. Rows whose
    tensors are not contiguous or have fewer than 2 elements run ``fn`` eagerly (a size of 0 or 1
    would be specialized).

    Small tensors are not packed any more (concatenated into flat buffers, one call per buffer,
    copied back, as before list kernels): measured on 1,000 rows of msgd_step, 1 thread, list
    kernels against packs: 10 elements 3.9 against 11.9 ms, 1,000 elements 5.8 against 28.4 ms,
    10,000 elements 12.9 against 36.1 ms (the same function eagerly 28-43 ms): the packs' copies
    and Python per tensor cost more than a row's share of a list kernel call at every size."""
    if compiling() or not available():
        for row in rows_of(cols):
            fn(*row, **static)
        return
    _many(fn, cols, static, False)


def map_many(fn: Callable[..., Any], cols: list[Column], **static: Any) -> Tensor:
    """``torch.stack([fn(*row, **static) for row in rows_of(cols)])`` as list kernels
    (:func:`run_many`), for a function that returns a tensor per row, of one shape for all rows (a
    reduction pass); mixed dtypes are promoted as by :func:`steepest.backend.ops._stack`. Each
    list kernel returns its rows' results stacked, so a pass over 1,000 tensors allocates 63
    outputs, not 1,000 (docs/performance.md, "Per-tensor Python work")."""
    if compiling() or not available():
        return _stack([fn(*row, **static) for row in rows_of(cols)])
    n = _nrows(cols)
    if not n:
        return _stack([])
    # Rows longer than one summation block and shorter ones get kernels of their own: their sums
    # are traced blocked or plain (backend.ops.symbolic_sums; the size class is in the key).
    # (a row's first argument is its tensor in every pass: one numel() per row, ~0.1 us)
    first = cols[0]
    if type(first) is not Same and type(first) is not Vec and all(map(isinstance, first, repeat(Tensor))):
        long = [m > _SUM_BLOCK for m in map(Tensor.numel, first)]
    else:
        long = [_row_numel(r) > _SUM_BLOCK for r in rows_of(cols, n)]
    if all(long) or not any(long):
        res = _many(fn, cols, static, True, long[0])
        assert res is not None
        return res
    out: list[Tensor] = [None] * n  # type: ignore[list-item]
    for flag in (True, False):
        ix = [i for i, b in enumerate(long) if b is flag]
        sub = _many(fn, _select(cols, ix), static, True, flag)
        assert sub is not None
        for i, r in zip(ix, sub.unbind(0)):
            out[i] = r
    return _stack(out)


def _row_layout(sig: tuple[Any, ...], cols: list[Any], count: int
                ) -> tuple[tuple[Any, ...], list[Any], tuple[str, ...]]:
    """The rows of one :func:`_row_args` signature in the layout :func:`_columns` gives the same
    rows (so that both paths share one kernel): scalar columns as one vector, None and Python
    numbers once, tensors and other objects per row."""
    out_sig: list[Any] = []
    kinds: list[str] = []
    out: list[Any] = []
    for e, col in zip(sig, cols):
        if type(e) is tuple and isinstance(e[0], torch.dtype) and len(e) == 3:  # per-row scalars
            out.append(_gather_scalars(col, _whole(count)))
            out_sig.append(("vec", e[0], e[1]))
            kinds.append("vec")
        elif e is None or (type(e) is tuple and isinstance(e[0], type)):  # None, a number
            out.append(col[0])
            out_sig.append(e)
            kinds.append("one")
        else:
            out.append(col)
            out_sig.append(e)
            kinds.append("row")
    return tuple(out_sig), out, tuple(kinds)


def _split_small(cols: list[Column], n: int) -> tuple[list[int], list[int]] | None:
    """The rows whose first tensor has fewer than 2 elements (they run eagerly), and the others,
    where there are both and the first column is a sequence of tensors; else None."""
    first = cols[0]
    if type(first) is Same or type(first) is Vec or not all(map(isinstance, first, repeat(Tensor))):
        return None
    sizes = list(map(Tensor.numel, first))
    small = [i for i, m in enumerate(sizes) if m < 2]
    if not small or len(small) == n:
        return None
    return small, [i for i, m in enumerate(sizes) if m >= 2]


def _row_numel(row: tuple[Any, ...]) -> int:
    return max((a.numel() for a in row if isinstance(a, Tensor)), default=0)


def _many(fn: Callable[..., Any], cols: list[Column], static: dict[str, Any],
          results: bool, blocked: bool = True) -> Tensor | None:
    """``fn`` on every row of ``cols`` as list kernels; with ``results``, the rows' results
    stacked (else None). ``blocked``: how the kernel sums over a row (backend.ops.symbolic_sums;
    in its key)."""
    n = _nrows(cols)
    if not n:
        return _stack([]) if results else None
    views: dict[int, Tensor] = {}
    rows: list[tuple[Any, ...]] | None = None  # made where something runs row by row
    # signature -> (the rows' indices, None for all, the kernel's arguments per column, kinds)
    groups: dict[tuple[Any, ...], tuple[list[int] | None, list[Any], tuple[str, ...]]] = {}
    out: list[Tensor] = []  # per row, where not all rows are one group
    fast = _columns(cols, n)
    if fast is not None:
        groups[fast[1]] = (None, fast[0], fast[2])
    elif (split := _split_small(cols, n)) is not None:
        # A few tensors of 0 or 1 element (a scalar parameter) run eagerly; the others keep
        # the column path instead of all going row by row.
        small, big = split
        sub = _many(fn, _select(cols, big), static, results, blocked)
        eager = [fn(*row, **static) for row in rows_of(_select(cols, small), len(small))]
        if not results:
            return None
        assert sub is not None
        out = [None] * n  # type: ignore[list-item]
        for i, r in zip(big, sub.unbind(0)):
            out[i] = r
        for i, r in zip(small, eager):
            out[i] = r
        return _stack(out)
    else:
        rows = rows_of(cols, n)
        members: dict[tuple[Any, ...], tuple[list[int], list[tuple[Any, ...]]]] = {}
        if results:
            out = [None] * n  # type: ignore[list-item]
        for i, row in enumerate(rows):
            got = _row_args(row, views)
            if got is None:  # eagerly
                r = fn(*row, **static)
                if results:
                    out[i] = r
                continue
            args, sig = got
            where, rs = members.setdefault(sig, ([], []))
            where.append(i)
            rs.append(args)
        for sig, (where, rs) in members.items():
            got_sig, args_cols, kinds = _row_layout(sig, list(zip(*rs)), len(where))
            groups[got_sig] = (where, args_cols, kinds)
    items = tuple(sorted(static.items()))
    for sig, (ix, args_cols, kinds) in groups.items():
        key = (fn, items, MODE, BACKEND, ("list", BUCKET, results, sig, kinds, blocked))
        kernel: Any = _KERNELS.get(key, False)
        count = n if ix is None else len(ix)
        chunks: list[Tensor] = []  # this group's results, one stacked tensor per call
        for start in range(0, count, BUCKET):
            stop = start + BUCKET
            pad = stop - count if stop > count else 0  # the last call: padded
            flat: list[Any] = []
            for col, kind, entry in zip(args_cols, kinds, sig):
                if kind == "row":
                    flat += col[start:stop]
                    if pad:
                        flat += _dummies(entry, pad)
                elif kind == "one":
                    flat.append(col)
                else:  # "vec": padded to whole calls by _columns
                    flat.append(col[start:stop])
            if kernel is False:  # the first call compiles (before writing anything)
                try:
                    with symbolic_sums(blocked):  # traced on the first call
                        kernel = _compile_list(fn, static, key, flat, kinds, results)
                        res = kernel(*flat)
                except Exception as exc:  # this kernel eagerly, with one warning
                    _fail(key, exc)
                    kernel = None
                else:
                    _KERNELS[key] = kernel
                    if results:
                        chunks.append(res)
                    continue
            if kernel is None:
                if rows is None:
                    rows = rows_of(cols, n)
                todo = range(start, min(stop, count)) if ix is None else ix[start:stop]
                got_rows = [fn(*rows[i], **static) for i in todo]
                if results:
                    chunks.append(_stack(got_rows))
                continue
            res = kernel(*flat)
            if results:
                chunks.append(res)
        if not results:
            continue
        # (the last call's padded rows are cut off)
        stacked = (chunks[0] if len(chunks) == 1 else torch.cat(chunks))[:count]
        if ix is None:
            return stacked
        for i, r in zip(ix, stacked.unbind(0)):
            out[i] = r
    return _stack(out) if results else None


class FusedBackend(Backend):
    """``fused=True``: the optimizer's update as compiled elementwise kernels (module docstring).

    It takes the stored tensors (:attr:`working_copies` False: the kernels read half precision
    into float32 registers and fold ``maximize`` in as a sign) as one chunk per group, and hands
    them to the optimizer's ``_fused_run(group, params, grads, states, backend)``, whose
    drivers call :meth:`kernel` and :meth:`kernel_many`. Optimizers without fused kernels refuse
    ``fused=True`` at construction (``StepOptimizer._fused_unsupported``)."""

    working_copies = False

    def __init__(self, name: str = "fused", ops: type[LoopOps] = LoopOps) -> None:
        super().__init__(name, ops)

    def kernel(self, fn: Callable[..., Any], *args: Any, **static: Any) -> Any:
        """``fn(*args, **static)`` as one fused kernel (:func:`run`)."""
        return run(fn, *args, **static)

    def kernel_many(self, fn: Callable[..., Any], cols: list[Column], **static: Any) -> None:
        """``fn(*row, **static)`` for every row of the columns ``cols`` (one per positional
        argument: a sequence, a :class:`Same` or a :class:`Vec`), as list kernels
        (:func:`run_many`)."""
        run_many(fn, cols, **static)

    def kernel_map(self, fn: Callable[..., Any], cols: list[Column], **static: Any) -> Tensor:
        """``torch.stack([fn(*row, **static) for row in rows_of(cols)])`` as list kernels
        (:func:`map_many`)."""
        return map_many(fn, cols, **static)

    def accepts(self, group: dict[str, Any], params: list[Tensor]) -> bool:
        # DTensors (FSDP2) need their own reductions: the eager backends run them.
        return not any(t.__name__ == "DTensor" for t in set(map(type, params))) or not any(
            is_dtensor(p) for p in params)

    def chunks(self, params: list[Tensor]) -> list[slice]:
        # One chunk: the kernels make no parameter-sized temporaries to bound (and run_many
        # shares a compiled call among 16 tensors of the chunk).
        return [slice(0, len(params))] if params else []

    def defers_check(self, optimizer: Any, group: dict[str, Any]) -> bool:
        return bool(optimizer._fused_reduces_first(group))

    def run(self, optimizer: Any, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
            states: list[dict[str, Any]]) -> None:
        global _CHECKING
        _CHECKED.clear()
        _CHECKING = True
        try:
            optimizer._fused_run(group, params, grads, states, self)
        finally:
            _CHECKING = False
            _CHECKED.clear()


BACKENDS["fused"] = FusedBackend()
