"""Runnable reproductions of the papers' experiments (``steepest reproduce``)."""

from steepest.experiments.harness import (
    Claim,
    Context,
    Experiment,
    Result,
    registry,
    run_experiment,
)

__all__ = ["Claim", "Context", "Experiment", "Result", "registry", "run_experiment"]
