"""``steepest reproduce NAME [--quick] [--seeds K] [--out DIR] [--set KEY=VALUE ...]`` and
``steepest reproduce --list``.

Examples::

    steepest reproduce --list
    steepest reproduce quadratic-2d --quick
    steepest reproduce quadratic-grid --seeds 3 --out docs/results/quadratic-grid
    steepest reproduce adam-ablation --data-dir ~/data --set datasets=fashion-mnist
    steepest reproduce all --quick --out /tmp/repro
    steepest reproduce --summarize docs/results     # markdown claim tables of finished runs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from steepest.experiments.harness import (
    claims_markdown,
    kind_counts,
    registry,
    run_experiment,
)


def _parse_set(items: list[str]) -> dict[str, str]:
    """``["steps=50", "lr=0.1"]`` -> ``{"steps": "50", "lr": "0.1"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="*", help="experiment name(s); 'all' runs every one")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--quick", action="store_true", help="small budget (under a minute each)")
    parser.add_argument(
        "--seeds", type=int, default=None, help="number of seeds (default: per experiment)"
    )
    parser.add_argument("--out", default=None, help="output folder (default: results/NAME)")
    parser.add_argument(
        "--data-dir", default=None, help="folder with standard data files, where used"
    )
    parser.add_argument(
        "--set", dest="set_", action="append", default=[], metavar="KEY=VALUE",
        help="an experiment option (repeatable), e.g. --set steps=200; see each module's doc",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--summarize", metavar="DIR", default=None,
        help="print the claim tables (markdown) of every DIR/*/summary.json and exit",
    )


def summarize(folder: str) -> int:
    """Markdown claim tables of the summaries under ``folder`` (one sub-folder per experiment),
    then one line of totals: paper claims held (the headline), sanity checks apart."""
    root = Path(folder)
    paths = sorted(root.glob("*/summary.json")) + sorted(root.glob("summary.json"))
    if not paths:
        print(f"no summary.json under {root}", file=sys.stderr)
        return 2
    totals = dict.fromkeys(("holds", "total", "sanity_holds", "sanity_total",
                            "diagnostic_total"), 0)
    counted: set[str] = set()
    left_out: list[str] = []
    for path in paths:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict) or "claims" not in summary:
            # another tool's summary.json (e.g. a benchmark's) sharing the folder
            print(f"skipped {path}: not a `steepest reproduce` summary", file=sys.stderr)
            continue
        print(claims_markdown(summary, link=str(path.parent)))
        print()
        # The headline counts full runs only, each experiment once: quick runs are smoke checks,
        # and several copies of one experiment would count its claims several times.
        name = summary.get("experiment", str(path.parent))
        if summary.get("quick") or name in counted:
            why = "quick run" if summary.get("quick") else f"another run of {name}"
            left_out.append(f"{path.parent} ({why})")
            continue
        counted.add(name)
        for k, v in kind_counts(summary["claims"]).items():
            if k in totals:
                totals[k] += v
    print(f"**{len(counted)} experiment(s), full runs: {totals['holds']}/{totals['total']} paper "
          f"claims hold** (sanity checks apart: {totals['sanity_holds']}/{totals['sanity_total']} "
          f"pass; {totals['diagnostic_total']} diagnostic(s))")
    if left_out:
        print(f"not in the totals: {', '.join(left_out)}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.summarize:
        return summarize(args.summarize)
    exps = registry()
    if args.list or not args.name:
        wn = max((len(e.name) for e in exps.values()), default=0)
        ws = max((len(e.source) for e in exps.values()), default=0)
        for exp in exps.values():
            print(f"{exp.name:{wn}s}  {exp.source:{ws}s}  {exp.description}")
        return 0
    names = list(exps) if args.name == ["all"] else args.name
    unknown = [n for n in names if n not in exps]
    if unknown:
        print(
            f"unknown experiment(s) {unknown}; `steepest reproduce --list` shows them",
            file=sys.stderr,
        )
        return 2
    try:
        options: dict[str, str | None] = {"data_dir": args.data_dir, **_parse_set(args.set_)}
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    failed = failed_sanity = 0
    for name in names:
        out = args.out if (args.out is None or len(names) == 1) else f"{args.out}/{name}"
        try:
            summary = run_experiment(
                name,
                quick=args.quick,
                seeds=args.seeds,
                out_dir=out,
                progress=not args.no_progress and sys.stderr.isatty(),  # no bars in pipes
                options=options,
            )
        except (ValueError, FileNotFoundError) as exc:  # bad options, --data-dir without the data
            print(f"{name}: {exc}", file=sys.stderr)
            return 2
        # headline: paper claims only; a failed sanity check is a bug of ours, reported apart
        failed += summary["total"] - summary["holds"]
        failed_sanity += summary.get("sanity_total", 0) - summary.get("sanity_holds", 0)
    if len(names) > 1:
        print(f"{len(names)} experiments run; {failed} paper claim(s) did not hold; "
              f"{failed_sanity} sanity check(s) failed")
    return 0
