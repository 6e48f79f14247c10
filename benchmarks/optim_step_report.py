"""Markdown table of ``benchmarks/optim_step.py`` JSON results, before and after.

    python benchmarks/optim_step_report.py AFTER.json [AFTER2.json ...] [--before BEFORE.json ...]

With several files per side, each cell is the median over the runs (one run's interleaved
medians still move by up to ~50% on a shared machine when the allocator's state differs).

One row per optimizer, one column per layout and path. A cell reads ``b -> d / i``: ``b`` the
ratio in BEFORE (its default non-finite setting), ``d`` and ``i`` the ratios in AFTER with the
default check (``nonfinite=None``: NaN/inf check on CPU) and with ``nonfinite="ignore"`` (no
check, as torch.optim). Ratios are time per byte moved over that of eager
``torch.optim.SGD(momentum=0.9)`` on the same path in the same run (compiled: over eager loop
SGD-momentum). A ``*`` marks a ratio within the issue-12 target (1.3 on 10M/100, 1.5 on 1M/1,000).
"""

from __future__ import annotations

import argparse
import json
import statistics


def _load(paths: list[str]) -> list[dict]:
    """Rows of one or more runs; with several, one row per configuration holding the median."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f)["rows"])
    if len(runs) == 1:
        return runs[0]
    groups: dict[tuple, list[dict]] = {}
    for rows in runs:
        for r in rows:
            key = (r["optimizer"], r["layout"], r["path"], r.get("nonfinite", "default"))
            groups.setdefault(key, []).append(r)
    return [{**rs[0], "x_sgd_per_byte": statistics.median(r["x_sgd_per_byte"] for r in rs), "runs": len(rs)}
            for rs in groups.values()]


def _fmt(x: float | None, target: float) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}{'*' if x <= target else ''}"


def table(after: list[dict], before: list[dict] | None = None) -> str:
    cols = []
    for layout in ("big", "small"):
        for path in ("loop", "foreach", "compiled"):
            if any(r["layout"] == layout and r["path"] == path for r in after):
                cols.append((layout, path))
    names = list(dict.fromkeys(r["optimizer"] for r in after))

    def get(rows: list[dict] | None, name: str, layout: str, path: str, guard: str | None) -> float | None:
        for r in rows or []:
            if (r["optimizer"], r["layout"], r["path"]) == (name, layout, path) and (
                guard is None or r.get("nonfinite", "default") in (guard, "n/a")
            ):
                return r["x_sgd_per_byte"]
        return None

    head = {"big": "10M/100", "small": "1M/1,000"}
    out = ["| optimizer | " + " | ".join(f"{head[la]}, {pa}" for la, pa in cols) + " |",
           "| --- |" + " --- |" * len(cols)]
    for name in names:
        cells = []
        for layout, path in cols:
            target = 1.3 if layout == "big" else 1.5
            d = get(after, name, layout, path, "default")
            i = get(after, name, layout, path, "ignore")
            b = get(before, name, layout, path, None) if before is not None else None
            cell = _fmt(i, target) if path == "compiled" or name.endswith("(torch)") else (
                f"{_fmt(d, target)} / {_fmt(i, target)}")
            if before is not None and path != "compiled":
                cell = f"{_fmt(b, target)} -> {cell}"
            cells.append(cell)
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("after", nargs="+")
    ap.add_argument("--before", nargs="*", default=[])
    args = ap.parse_args()
    print(table(_load(args.after), _load(args.before) if args.before else None))


if __name__ == "__main__":
    main()
