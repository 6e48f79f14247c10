"""The ``steepest`` command line.

Subcommands live beside the code they drive and register themselves here:

* ``steepest demo``: train a tiny model with several optimizers (the README's main job);
* ``steepest reproduce NAME``: rerun a paper's experiment (``steepest.experiments``);
* ``steepest geometry PROBLEM``: the sign-friendliness report (``steepest.geometry``);
* ``steepest advise PROBLEM``: which recipe and lr, by a budgeted lr search (``steepest.advise``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (subcommand, module, help). Each module defines ``add_arguments(parser)`` and ``run(args)``.
_SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("demo", "steepest.demo", "train a tiny model with several optimizers and compare"),
    ("reproduce", "steepest.experiments.reproduce", "rerun a paper's experiment, claims beside measurements"),
    ("geometry", "steepest.geometry.command", "report whether sign/l_p methods suit a problem"),
    ("advise", "steepest.advise", "which recipe and learning rate: a budgeted lr search + geometry"),
]


# Plain text for --help (the module docstring is reStructuredText for the API docs).
_DESCRIPTION = "steepest: steepest descent under norms for PyTorch (sign, l_p, block, STACEY)."
_EPILOG = """examples:
  steepest demo                              compare optimizers on a tiny model
  steepest reproduce --list                  the papers' experiments
  steepest reproduce quadratic-2d --quick    rerun one, claims beside measurements
  steepest geometry digits-mlp               should I use sign descent on this problem?
  steepest advise digits-mlp                 which recipe and lr? (budgeted search, cost printed)

'steepest COMMAND --help' explains each command's options."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("steepest")
    except Exception:  # not installed (source checkout on sys.path)
        import steepest

        return getattr(steepest, "__version__", "unknown")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steepest", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=24),
    )
    parser.add_argument("--version", action="version", version=f"steepest {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands")
    for name, module, help_text in _SUBCOMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # an optional dependency is missing
            p.set_defaults(_missing=f"`steepest {name}` needs: {exc}. Try `pip install steepest[experiments]`.")
            continue
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", None):
        print(args._missing, file=sys.stderr)
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
