"""``steepest reproduce NAME [--quick] [--seeds K] [--out DIR]`` and ``steepest reproduce --list``."""

from __future__ import annotations

import argparse
import sys

from steepest.experiments.harness import registry, run_experiment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="*", help="experiment name(s); 'all' runs every one")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--quick", action="store_true", help="small budget (under a minute each)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: per experiment)")
    parser.add_argument("--out", default=None, help="output folder (default: results/NAME)")
    parser.add_argument("--data-dir", default=None, help="folder with standard data files, where used")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    exps = registry()
    if args.list or not args.name:
        for exp in exps.values():
            print(f"{exp.name:24s} {exp.source:28s} {exp.description}")
        return 0
    names = list(exps) if args.name == ["all"] else args.name
    unknown = [n for n in names if n not in exps]
    if unknown:
        print(f"unknown experiment(s) {unknown}; `steepest reproduce --list` shows them", file=sys.stderr)
        return 2
    for name in names:
        out = args.out if (args.out is None or len(names) == 1) else f"{args.out}/{name}"
        run_experiment(
            name,
            quick=args.quick,
            seeds=args.seeds,
            out_dir=out,
            progress=not args.no_progress,
            options={"data_dir": args.data_dir},
        )
    return 0
