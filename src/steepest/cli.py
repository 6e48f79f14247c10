"""The ``steepest`` command line.

Subcommands live beside the code they drive and register themselves here:

* ``steepest demo``: train a tiny model with several optimizers (the README's main job);
* ``steepest reproduce NAME``: rerun a paper's experiment (``steepest.experiments``);
* ``steepest geometry PROBLEM``: the sign-friendliness report (``steepest.geometry``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (subcommand, module, help). Each module defines ``add_arguments(parser)`` and ``run(args)``.
_SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("demo", "steepest.demo", "train a tiny model with several optimizers and compare"),
    ("reproduce", "steepest.experiments.cli", "rerun a paper's experiment, claims beside measurements"),
    ("geometry", "steepest.geometry.cli", "report whether sign/l_p methods suit a problem"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steepest", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
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
