"""Runnable reproductions of the papers' experiments (``steepest reproduce``).

One module per experiment, each defining ``EXPERIMENT`` (found by :func:`registry`; the name
``steepest reproduce NAME`` takes is ``EXPERIMENT.name``, not the module's). The command itself
is :mod:`steepest.experiments.reproduce`. An experiment whose topic also has a library module
carries an ``_experiment`` suffix, so that a search finds the right one:
``adam_ablation_experiment`` (the optimizers: ``steepest.optim.adam_ablation``) and
``cabs_experiment`` (the batch-size controllers: ``steepest.stats.cabs``).
"""

from steepest.experiments.harness import (
    Claim,
    Context,
    Experiment,
    Result,
    registry,
    run_experiment,
)

__all__ = ["Claim", "Context", "Experiment", "Result", "registry", "run_experiment"]
