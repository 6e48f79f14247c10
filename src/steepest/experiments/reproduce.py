"""``steepest reproduce NAME [--quick] [--seeds K] [--out DIR] [--set KEY=VALUE ...]`` and
``steepest reproduce --list``.

Examples::

    steepest reproduce --list
    steepest reproduce quadratic-2d --quick
    steepest reproduce quadratic-grid --seeds 3 --out docs/results/quadratic-grid
    steepest reproduce adam-ablation --data-dir ~/data --set datasets=fashion-mnist
    steepest reproduce all --quick --out /tmp/repro
    steepest reproduce --summarize docs/results     # markdown claim tables of finished runs
    steepest reproduce quadratic-grid --fresh-seeds # rerun on fresh seeds, compare verdicts
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from steepest.experiments.harness import (
    FRESH_SEED_START,
    PAPERS,
    READINGS_RULE,
    SEED_PAPERS,
    claims_markdown,
    headline,
    kind_counts,
    paper_key,
    registry,
    rejudge_experiment,
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
    parser.add_argument(
        "--counts", action="store_true",
        help="with --summarize: print only the per-paper statement counts (the README table)",
    )
    parser.add_argument(
        "--fresh-seeds", action="store_true",
        help=f"rerun on seeds from {FRESH_SEED_START} (disjoint from every committed range) and "
             "print, per statement, whether the verdict agrees with the committed run",
    )
    parser.add_argument(
        "--rejudge", metavar="DIR", default=None,
        help="apply NAME's current declaration to the finished run in DIR (its results.csv) "
             "and rewrite DIR/summary.json, without rerunning",
    )
    parser.add_argument(
        "--against", metavar="DIR", default=None,
        help="with --fresh-seeds: the committed run to compare with (default docs/results/NAME)",
    )


def _load(folder: str) -> tuple[list[tuple[Path, dict]], list[str]]:
    """Full runs under ``folder``, each experiment once (the first summary found), and the
    ones left out with why (quick runs, other runs of an experiment, foreign summaries)."""
    root = Path(folder)
    paths = sorted(root.glob("*/summary.json")) + sorted(root.glob("summary.json"))
    kept: list[tuple[Path, dict]] = []
    left_out: list[str] = []
    counted: set[str] = set()
    for path in paths:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict) or "claims" not in summary:
            print(f"skipped {path}: not a `steepest reproduce` summary", file=sys.stderr)
            continue
        name = summary.get("experiment", str(path.parent))
        if summary.get("quick") or name in counted:
            why = "quick run" if summary.get("quick") else f"another run of {name}"
            left_out.append(f"{path.parent} ({why})")
            continue
        counted.add(name)
        kept.append((path, summary))
    return kept, left_out


def statement_counts(summaries: list[dict]) -> dict[str, dict[str, int]]:
    """Per paper (citation key; ``"outside the seeds"`` for the others): statements held /
    failed / inconclusive (primary readings), revised after a run, other readings, sanity
    checks and diagnostics (attributed to the experiment's paper)."""
    keys = [*SEED_PAPERS, "outside the seeds"]
    out = {k: dict.fromkeys(("total", "holds", "fails", "inconclusive", "revised", "readings",
                             "sanity", "diagnostic"), 0) for k in keys}
    for summary in summaries:
        exp_key = paper_key(str(summary.get("source", ""))) or "outside the seeds"
        for c in summary["claims"]:
            kind = c.get("kind", "paper")
            if kind != "paper":
                out[exp_key][kind] += 1
                continue
            cited = str(c.get("paper", "")).strip()
            # a claim citing a key outside the seeds is counted apart, whatever the experiment
            key = paper_key(cited) or ("outside the seeds" if cited.startswith("[") else exp_key)
            if c.get("reading", "primary") != "primary":
                out[key]["readings"] += 1
                continue
            v = c.get("verdict") or ("holds" if c.get("holds") else "fails")
            out[key]["total"] += 1
            out[key][v] += 1
            out[key]["revised"] += bool(c.get("revised"))
    return out


def counts_markdown(summaries: list[dict]) -> str:
    """The per-paper table of the README block (statements, not readings)."""
    counts = statement_counts(summaries)
    lines = ["| paper | statements | hold | fail | inconclusive | of which revised after a run "
             "| other readings (not voted) | sanity checks | diagnostics |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    tot = dict.fromkeys(next(iter(counts.values())), 0)
    for key, n in counts.items():
        label = key if key == "outside the seeds" else f"{key} {PAPERS[key[:-1]].split(' (')[0]}"
        if key == "[BPL20-TLDR]":
            label = f"{key} summary of [BPL20]: no experiment of its own"
        if key == "outside the seeds":
            label = "outside the seeds (counted apart)"
        lines.append(f"| {label} | {n['total']} | {n['holds']} | {n['fails']} | "
                     f"{n['inconclusive']} | {n['revised']} | {n['readings']} | {n['sanity']} | "
                     f"{n['diagnostic']} |")
        if key != "outside the seeds":
            for k in tot:
                tot[k] += n[k]
    lines.append(f"| **seed papers** | **{tot['total']}** | **{tot['holds']}** | "
                 f"**{tot['fails']}** | **{tot['inconclusive']}** | {tot['revised']} | "
                 f"{tot['readings']} | {tot['sanity']} | {tot['diagnostic']} |")
    lines += ["", f"Rule for several readings: {READINGS_RULE}. Rule 2: `inconclusive` where the "
              "difference a statement is about lies inside the seed spread (a paired comparison "
              "over seeds whose 90% Student-t interval contains 0, or straddles the tolerance of "
              "a 'like' statement) or where the set-up cannot exercise the mechanism (the claim "
              "says which)."]
    return "\n".join(lines)


def summarize(folder: str, counts_only: bool = False) -> int:
    """Markdown claim tables of the summaries under ``folder`` (one sub-folder per experiment),
    then the per-paper statement counts (the headline) and a per-experiment line each."""
    kept, left_out = _load(folder)
    if not kept:
        print(f"no summary.json under {folder}", file=sys.stderr)
        return 2
    if not counts_only:
        for path, summary in kept:
            print(claims_markdown(summary, link=str(path.parent)))
            print()
    print(counts_markdown([s for _, s in kept]))
    print()
    for _, summary in kept:
        print(f"* `{summary['experiment']}` ({summary.get('source', '')}): "
              f"{headline(kind_counts(summary['claims']))}")
    if left_out:
        print(f"\nnot in the totals: {', '.join(left_out)}")
    return 0


def fresh_seed_report(name: str, fresh: dict, committed: dict | None) -> tuple[str, list[dict]]:
    """Per statement: the committed verdict, the fresh-seed verdict, agreement."""
    old = {s["id"]: s for s in (committed or {}).get("statements", [])}
    rows = []
    for st in fresh.get("statements", []):
        before = old.get(st["id"], {}).get("verdict", "no committed run")
        rows.append({"experiment": name, "statement": st["id"], "source": st["source"],
                     "committed": before, "committed_seeds": (committed or {}).get("seed_list"),
                     "fresh": st["verdict"], "fresh_seeds": fresh.get("seed_list"),
                     "agrees": before == st["verdict"]})
    lines = [f"{name}: fresh seeds {fresh.get('seed_list')} against committed "
             f"{(committed or {}).get('seed_list')}"]
    for r in rows:
        lines.append(f"  {r['statement']:40s} committed {r['committed']:14s} fresh "
                     f"{r['fresh']:14s} {'agrees' if r['agrees'] else 'DIFFERS'}")
    if not rows:
        lines.append("  (no paper statements)")
    return "\n".join(lines), rows


def run(args: argparse.Namespace) -> int:
    if args.summarize:
        return summarize(args.summarize, counts_only=args.counts)
    exps = registry()
    if args.list or not args.name:
        wn = max((len(e.name) for e in exps.values()), default=0)
        ws = max((len(e.source) for e in exps.values()), default=0)
        for exp in exps.values():
            print(f"{exp.name:{wn}s}  {exp.source:{ws}s}  {exp.description}")
        return 0
    names = list(exps) if args.name == ["all"] else args.name
    if args.rejudge:
        if len(names) != 1:
            print("--rejudge takes one experiment name", file=sys.stderr)
            return 2
        try:
            rejudge_experiment(names[0], args.rejudge)
        except (ValueError, FileNotFoundError) as exc:
            print(f"{names[0]}: {exc}", file=sys.stderr)
            return 2
        return 0
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
    reports: list[dict] = []
    for name in names:
        out = args.out if (args.out is None or len(names) == 1) else f"{args.out}/{name}"
        if out is None and args.fresh_seeds:
            out = f"results/{name}/fresh-seeds"
        try:
            summary = run_experiment(
                name,
                quick=args.quick,
                seeds=args.seeds,
                out_dir=out,
                progress=not args.no_progress and sys.stderr.isatty(),  # no bars in pipes
                options=options,
                seed_start=FRESH_SEED_START if args.fresh_seeds else None,
            )
        except (ValueError, FileNotFoundError) as exc:  # bad options, --data-dir without the data
            print(f"{name}: {exc}", file=sys.stderr)
            return 2
        if args.fresh_seeds:
            ref = Path(args.against or f"docs/results/{name}") / "summary.json"
            committed = json.loads(ref.read_text()) if ref.exists() else None
            text, rows = fresh_seed_report(name, summary, committed)
            print(text)
            reports += rows
            Path(out or f"results/{name}/fresh-seeds", "fresh_seeds.json").write_text(
                json.dumps(rows, indent=2))
        # headline: statements only; a failed sanity check is a bug of ours, reported apart
        failed += summary["total"] - summary["holds"]
        failed_sanity += summary.get("sanity_total", 0) - summary.get("sanity_holds", 0)
    if len(names) > 1:
        print(f"{len(names)} experiments run; {failed} statement(s) did not hold; "
              f"{failed_sanity} sanity check(s) failed")
    return 0
