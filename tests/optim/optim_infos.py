"""The records the conformance suite runs every optimizer through (cf. torch's OptimizerInfo).

Each area of the package registers its optimizers in a file ``tests/optim/infos_<area>.py``
defining ``INFOS: list[OptimInfo]``; :func:`all_infos` collects them all.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class OptimInfo:
    """One optimizer configuration.

    Attributes:
        name: test id.
        cls: the optimizer class.
        kwargs: constructor options besides ``params`` and ``lr``.
        lr: a step size that makes the small problem's loss go down in ``steps`` steps.
        steps: steps for the loss-decrease test.
        invalid: ``(kwargs, regex)``: constructing with these options must raise ``ValueError``
            whose message matches ``regex`` (it should name the argument and the range).
        zero_grad_noop: a zero gradient leaves parameters unchanged (no weight decay).
        prepare: called as ``prepare(params)`` after every backward, before ``step`` (e.g. to
            attach per-example statistics an optimizer needs).
        stochastic: the update draws random numbers (foreach/loop comparisons reseed first).
        decrease: the loss must fall below ``decrease * initial`` in the decrease test.
        lr_zero_freezes: a param group with ``lr = 0`` does not move (False for methods with a
            second, unscheduled step size, e.g. STACEY with an explicit mirror step ``alpha``).
    """

    name: str
    cls: type[torch.optim.Optimizer]
    kwargs: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-2
    steps: int = 60
    invalid: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    zero_grad_noop: bool = True
    prepare: Callable[[list[torch.Tensor]], None] | None = None
    stochastic: bool = False
    decrease: float = 0.8
    lr_zero_freezes: bool = True

    def make(self, params: Any, **overrides: Any) -> torch.optim.Optimizer:
        kw = {"lr": self.lr, **self.kwargs, **overrides}
        return self.cls(params, **kw)

    def __str__(self) -> str:
        return self.name


def all_infos() -> list[OptimInfo]:
    import tests.optim as pkg

    infos: list[OptimInfo] = []
    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name.startswith("infos_"):
            infos.extend(importlib.import_module(f"tests.optim.{mod.name}").INFOS)
    names = [i.name for i in infos]
    dup = {n for n in names if names.count(n) > 1}
    assert not dup, f"duplicate OptimInfo names: {dup}"
    return infos
