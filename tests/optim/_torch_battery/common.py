"""The records and helpers of torch's optimizer battery, for pytest (see the package docstring).

``OptimizerInfo`` / ``OptimizerInput`` mirror ``torch.testing._internal.common_optimizers``
(only the fields the CPU tests read); ``impl_variants`` is torch's
``_get_optim_inputs_including_global_cliquey_kwargs``; ``TensorTracker`` and ``assert_equal``
stand in for torch's ``TensorTracker`` and ``TestCase.assertEqual``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau, StepLR

from steepest._memory import existing_storages


@dataclass
class OptimizerInput:
    """Constructor options (besides ``params``) of one configuration, and its test id."""

    kwargs: dict[str, Any]
    desc: str


def _default_schedulers() -> tuple[list[Callable[[Any], Any]], ...]:
    # torch's OptimizerInfo default: one list of two schedulers stepped together.
    return ([lambda opt: StepLR(opt, gamma=0.9, step_size=10), lambda opt: ReduceLROnPlateau(opt)],)


@dataclass
class OptimizerInfo:
    """One optimizer class under test (torch's ``OptimizerInfo``, CPU-relevant fields).

    Attributes:
        name: test id (the class name, or a suffixed name for a second record of a class).
        optim_cls: the optimizer class.
        optim_inputs_func: returns fresh configurations (fresh tensors for a tensor ``lr``);
            like torch's, none of them sets ``foreach``.
        scheduler_inputs: lists of LR scheduler constructors run together.
        supported_impls: the implementation flags the class takes (ours: ``foreach``).
        not_og_supported_flags: group options that old checkpoints may lack.
        supports_complex: complex parameters are stepped as their real views.
        error_inputs_func: returns ``(params, kwargs, on, error_type, regex)`` with ``on`` in
            ``("construction", "step")``.
        xfail / skip: ``{test name: {input desc or "*": reason}}``: a documented, deliberate
            difference from torch (xfail runs the case and requires it to fail).
        control: one of torch's own optimizers, run to show the port passes on torch's classes.
        required_kwargs: options the tests that construct the optimizer without a configuration
            still pass (Muon: a ``nonmatrix_norm`` for the biases).
    """

    name: str
    optim_cls: type[torch.optim.Optimizer]
    optim_inputs_func: Callable[[], list[OptimizerInput]]
    scheduler_inputs: tuple[list[Callable[[Any], Any]], ...] = field(default_factory=_default_schedulers)
    supported_impls: tuple[str, ...] = ("foreach",)
    not_og_supported_flags: tuple[str, ...] = ("foreach", "maximize", "nonfinite")
    supports_complex: bool = True
    error_inputs_func: Callable[[], list[tuple[Any, dict[str, Any], str, type, str]]] | None = None
    xfail: dict[str, dict[str, str]] = field(default_factory=dict)
    skip: dict[str, dict[str, str]] = field(default_factory=dict)
    control: bool = False
    required_kwargs: dict[str, Any] = field(default_factory=dict)

    def input(self, desc: str) -> OptimizerInput:
        for inp in self.optim_inputs_func():
            if inp.desc == desc:
                return inp
        raise KeyError(f"{self.name} has no input {desc!r}")

    def marks(self, test: str, desc: str) -> list[Any]:
        marks = []
        for table, mark in ((self.skip, "skip"), (self.xfail, "xfail")):
            reasons = table.get(test, {})
            reason = reasons.get(desc, reasons.get("*"))
            if reason is None:
                continue
            if mark == "skip":
                marks.append(pytest.mark.skip(reason=reason))
            else:
                marks.append(pytest.mark.xfail(reason=reason, strict=True))
        return marks

    def __str__(self) -> str:
        return self.name


def cases(db: Sequence[OptimizerInfo], test: str, where: Callable[[OptimizerInfo], bool] = lambda i: True) -> list[Any]:
    """``pytest.param(info, desc)`` for every configuration of every record in ``db`` that
    ``where`` keeps, carrying the record's skip/xfail marks for ``test``. A record's first
    configuration runs in the quick suite; the others are marked ``slow`` (the whole battery
    takes several minutes on two cores)."""
    out = []
    for info in db:
        if not where(info):
            continue
        for k, inp in enumerate(info.optim_inputs_func()):
            marks = info.marks(test, inp.desc) + ([pytest.mark.slow] if k > 0 else [])
            out.append(pytest.param(info, inp.desc, marks=marks, id=f"{info.name}-{inp.desc}"))
    return out


def info_cases(db: Sequence[OptimizerInfo], test: str, where: Callable[[OptimizerInfo], bool] = lambda i: True) -> list[Any]:
    """``pytest.param(info)`` per record (tests that loop over the configurations themselves)."""
    return [pytest.param(info, marks=info.marks(test, "*"), id=info.name) for info in db if where(info)]


def impl_variants(info: OptimizerInfo, inp: OptimizerInput) -> list[OptimizerInput]:
    """The configuration with every implementation flag off, then with each flag on alone
    (torch's ``_get_optim_inputs_including_global_cliquey_kwargs``)."""
    if not info.supported_impls:
        return [OptimizerInput(deepcopy(inp.kwargs), inp.desc)]
    base = deepcopy(inp.kwargs)
    for flag in info.supported_impls:
        base[flag] = False
    out = [OptimizerInput(base, inp.desc)]
    for flag in info.supported_impls:
        kw = deepcopy(base)
        kw[flag] = True
        out.append(OptimizerInput(kw, f"{inp.desc} & {flag}"))
    return out


# ------------------------------------------------------------------------------- comparison
def assert_equal(actual: Any, expected: Any, path: str = "", **tol: Any) -> None:
    """``TestCase.assertEqual`` for the values a state dict holds: tensors through
    ``torch.testing.assert_close`` (dtype and device must match, default tolerances by dtype, as
    in torch's TestCase), numbers with the same tolerance rule, containers recursively."""
    where = path or "value"
    if isinstance(actual, torch.Tensor) or isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor), (
            f"{where}: {type(actual).__name__} vs {type(expected).__name__}"
        )
        torch.testing.assert_close(actual, expected, equal_nan=True, msg=lambda m: f"{where}: {m}", **tol)
    elif isinstance(actual, Mapping) and isinstance(expected, Mapping):
        assert set(actual) == set(expected), f"{where}: keys {sorted(map(str, actual))} vs {sorted(map(str, expected))}"
        for k in actual:
            assert_equal(actual[k], expected[k], f"{path}[{k!r}]", **tol)
    elif isinstance(actual, (list, tuple)) and isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{where}: length {len(actual)} vs {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_equal(a, e, f"{path}[{i}]", **tol)
    elif isinstance(actual, float) and isinstance(expected, float):
        assert (math.isnan(actual) and math.isnan(expected)) or math.isclose(
            actual, expected, rel_tol=tol.get("rtol", 1.3e-6), abs_tol=tol.get("atol", 1e-5)
        ), f"{where}: {actual} vs {expected}"
    else:
        assert actual == expected, f"{where}: {actual!r} vs {expected!r}"


class TensorTracker:
    """Clones of tensors from one run, popped in order to check (and then overwrite) the
    matching tensors of a second run, so that deviations cannot compound over steps."""

    def __init__(self, **tol: Any) -> None:
        self.tol = tol
        self.tensors: list[torch.Tensor] = []

    def add(self, t: torch.Tensor) -> None:
        self.tensors.append(t.detach().clone())

    def pop_check_set(self, t: torch.Tensor, what: str = "") -> None:
        assert self.tensors, "no tensors to pop"
        ref = self.tensors.pop(0)
        assert_equal(t, ref, what, **self.tol)
        with torch.no_grad():
            t.copy_(ref)

    def all_popped(self) -> bool:
        return not self.tensors


def rosenbrock(t: torch.Tensor) -> torch.Tensor:
    assert t.shape == (2,), f"rosenbrock takes 2 numbers, got shape {tuple(t.shape)}"
    x, y = t
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


# ------------------------------------------------------------------------------- CPU memory
# LiveBytes (the package's allocation meter, steepest._memory) stands in for
# torch.cuda.max_memory_allocated: torch keeps no allocator statistics on CPU.
def storages(opt: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> set[int]:
    """Storage pointers of the parameters, their gradients and the optimizer state."""
    return existing_storages(opt, list(params))
