"""The before/after tables of docs/performance.md ("Before and after issue 18, one machine") from
the JSON files here: ``python before_after.py`` (run in this folder)."""

from __future__ import annotations

import json
from typing import Any


def load(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return json.load(f)["rows"]


def values(runs: list[list[dict[str, Any]]], layout: str, optimizer: str, path: str, check: str,
           key: str = "x_sgd_per_byte") -> list[float]:
    return [r[key] for run in runs for r in run if r["layout"] == layout and r["optimizer"] == optimizer
            and r["path"] == path and r["nonfinite"] == check and r.get(key) is not None]


def span(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{min(xs):.2f}" if max(xs) - min(xs) < 0.005 else f"{min(xs):.2f}-{max(xs):.2f}"


def names_of(runs: list[list[dict[str, Any]]], layout: str) -> list[str]:
    """Our optimizers of ``layout``, in the order of the first run."""
    names: list[str] = []
    for r in runs[0]:
        if r["layout"] == layout and "torch" not in r["optimizer"] and r["optimizer"] not in names:
            names.append(r["optimizer"])
    return names


def row(name: str, layout: str, columns: list[tuple[list[list[dict[str, Any]]], str]],
        adamw: list[list[dict[str, Any]]]) -> str:
    """A table row: per (runs, path) column "default / ignore" spans, then the fused path's
    x foreach AdamW per byte from ``adamw``'s runs."""
    cells = []
    for runs, path in columns:
        d = values(runs, layout, name, path, "default")
        i = values(runs, layout, name, path, "ignore")
        cells.append("-" if not d and not i else f"{span(d)} / {span(i)}")
    cells.append(span(values(adamw, layout, name, "fused", "default", "x_adamw_foreach_per_byte")))
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    pre = [load(f"fpre18-{i}.json") for i in (0, 1)]
    now = [load(f"fnow-{i}.json") for i in (0, 1)]
    for layout, title in (("big", "10M parameters in 100 tensors"), ("small", "1M parameters in 1,000 tensors")):
        print(f'\n**{title}** (default check / `"ignore"`; before = `324d8c2`, after = `7349e45`):\n')
        print("| optimizer | loop before | loop after | foreach before | foreach after | fused after "
              "| fused x foreach AdamW |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        columns = [(pre, "loop"), (now, "loop"), (pre, "foreach"), (now, "foreach"), (now, "fused")]
        for name in names_of(now, layout):
            print(row(name, layout, columns, now))


if __name__ == "__main__":
    main()
