"""The reproduction harness: an experiment is a problem, optimizer configurations, seeds and a
budget; running it writes tidy results and puts each paper claim beside what was measured.

Every experiment module in this package defines ``EXPERIMENT = Experiment(...)``; the registry
finds them by scanning the package, so adding an experiment is adding one file.

Outputs of ``run_experiment`` in ``out_dir``:

* ``results.csv``: tidy rows, one per run and logged step (columns chosen by the experiment);
* ``summary.json``: ``{"experiment", "settings", "claims": [{"id", "claim", "paper", "measured",
  "holds"}], "figures"}``;
* one PNG per figure, and a printed claim table.
"""

from __future__ import annotations

import csv
import importlib
import json
import pkgutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Claim:
    """One claim of a paper beside the figure measured for it. ``holds`` is the verdict."""

    id: str
    claim: str
    paper: str
    measured: str
    holds: bool

    def __post_init__(self) -> None:
        self.holds = bool(self.holds)


@dataclass
class Context:
    """What an experiment's ``run`` receives."""

    quick: bool
    seeds: int
    out_dir: Path
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    def track(self, iterable: Iterable[T], desc: str = "", total: int | None = None) -> Iterator[T]:
        """Iterate with a progress bar (tqdm) when progress is on and tqdm is installed."""
        if self.progress:
            try:
                from tqdm.auto import tqdm

                yield from tqdm(iterable, desc=desc, total=total, leave=False)
                return
            except ImportError:
                pass
        yield from iterable

    def figure_path(self, name: str) -> Path:
        return self.out_dir / f"{name}.png"


@dataclass
class Result:
    """What an experiment's ``run`` returns."""

    rows: list[dict[str, Any]]
    claims: list[Claim]
    settings: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)


@dataclass
class Experiment:
    name: str
    description: str
    source: str
    run: Callable[[Context], Result]
    default_seeds: int = 1
    quick_seeds: int = 1


def registry() -> dict[str, Experiment]:
    """All experiments in ``steepest.experiments``, by name."""
    import steepest.experiments as pkg

    found: dict[str, Experiment] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name in {"harness", "cli", "problems", "data"} or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"steepest.experiments.{info.name}")
        exp = getattr(mod, "EXPERIMENT", None)
        if isinstance(exp, Experiment):
            found[exp.name] = exp
    return dict(sorted(found.items()))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write tidy rows as CSV; the header is the union of keys in first-seen order."""
    keys: list[str] = []
    for row in rows:
        for k in row:
            if k not in keys:
                keys.append(k)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def format_claims(name: str, claims: list[Claim]) -> str:
    """A plain-text table: claim, paper, measured, verdict."""
    lines = [f"== {name}: {sum(c.holds for c in claims)}/{len(claims)} claims hold =="]
    for c in claims:
        verdict = "HOLDS" if c.holds else "DOES NOT HOLD"
        lines.append(f"[{verdict}] {c.id}: {c.claim}")
        lines.append(f"    paper:    {c.paper}")
        lines.append(f"    measured: {c.measured}")
    return "\n".join(lines)


def run_experiment(
    name: str,
    *,
    quick: bool = False,
    seeds: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    options: dict[str, Any] | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    """Run one experiment and write its outputs; returns the summary dict."""
    exps = registry()
    if name not in exps:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(exps)}")
    exp = exps[name]
    if seeds is not None and seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    n_seeds = seeds if seeds is not None else (exp.quick_seeds if quick else exp.default_seeds)
    out = Path(out_dir) if out_dir is not None else Path("results") / name
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=quick, seeds=n_seeds, out_dir=out, progress=progress, options=options or {})
    t0 = time.perf_counter()
    result = exp.run(ctx)
    elapsed = time.perf_counter() - t0
    write_rows(out / "results.csv", result.rows)
    summary = {
        "experiment": exp.name,
        "source": exp.source,
        "quick": quick,
        "seeds": n_seeds,
        "seconds": round(elapsed, 2),
        "settings": result.settings,
        "claims": [asdict(c) for c in result.claims],
        "figures": result.figures,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if echo:
        print(format_claims(exp.name, result.claims))
        if result.settings:
            print("settings: " + json.dumps(result.settings, default=str))
        print(f"wrote {out}/results.csv, summary.json and {len(result.figures)} figure(s) in {elapsed:.1f}s")
    return summary
