"""The top-level namespace: what ``steepest.__all__`` advertises, and the names that moved to
submodules (issue 21: ablations and GLM-only optimizers live in ``steepest.optim`` and
``steepest.fisher``) but stay importable from ``steepest`` for existing code."""

from __future__ import annotations

import warnings

import pytest
import torch

import steepest
import steepest.fisher
import steepest.optim

MOVED = {
    "AdamShuffled": steepest.optim,
    "AdamAveraged": steepest.optim,
    "NaturalGradientDescent": steepest.fisher,
    "EmpiricalFisherDescent": steepest.fisher,
}


def test_all_lists_each_name_once_and_each_resolves() -> None:
    assert len(steepest.__all__) == len(set(steepest.__all__))
    for name in steepest.__all__:
        assert getattr(steepest, name) is not None, name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from steepest import *", namespace)
    assert {k for k in namespace if k != "__builtins__"} == set(steepest.__all__)


@pytest.mark.parametrize("name", sorted(MOVED))
def test_moved_names_are_not_advertised_but_still_import_silently(name: str) -> None:
    assert name not in steepest.__all__
    assert name in MOVED[name].__all__  # advertised by its submodule instead
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # compatibility access must not warn
        obj = getattr(steepest, name)
        namespace: dict[str, object] = {}
        exec(f"from steepest import {name}", namespace)
    assert obj is getattr(MOVED[name], name)
    assert namespace[name] is obj


def test_every_optimizer_class_of_steepest_optim_is_reachable_from_the_top() -> None:
    # Nothing was dropped: each optimizer is either advertised at the top or a moved name.
    for name in steepest.optim.__all__:
        assert name in steepest.__all__ or name in MOVED, name
        assert getattr(steepest, name) is getattr(steepest.optim, name)


def test_every_advertised_optimizer_is_an_optimizer() -> None:
    classes = [getattr(steepest, n) for n in steepest.__all__]
    optimizers = [c for c in classes if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)]
    # The groups of __init__: 7 steepest-descent family, Muon/Modular, Lion/Stacey, 4
    # noise-aware, the StepOptimizer base.
    assert {c.__name__ for c in optimizers} == {
        "SteepestDescent", "SignSGD", "ScaledSignSGD", "EFSignSGD", "LpDescent",
        "CoordinateDescent", "BlockNormalizedSGD", "Muon", "Modular", "Lion", "Stacey", "MSGD",
        "SVAG", "MSVAG", "AdamStar", "StepOptimizer",
    }


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NotAnOptimizer'"):
        steepest.NotAnOptimizer  # noqa: B018
    assert not hasattr(steepest, "NotAnOptimizer")
