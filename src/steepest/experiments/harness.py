"""The reproduction harness: an experiment is a problem, optimizer configurations, seeds and a
budget; running it writes tidy results and puts each paper claim beside what was measured.

Every experiment module in this package defines ``EXPERIMENT = Experiment(...)``; the registry
finds them by scanning the package, so adding an experiment is adding one file.

Outputs of ``run_experiment`` in ``out_dir``:

* ``results.csv``: tidy rows, one per run and logged step (columns chosen by the experiment);
* ``summary.json``: ``{"experiment", "source", "quick", "seeds", "seconds", "settings",
  "claims": [{"id", "claim", "paper", "measured", "holds", "kind", "criterion"}], "holds",
  "total", "sanity_holds", "sanity_total", "diagnostic_holds", "diagnostic_total",
  "figures"}``; ``holds``/``total`` count ``paper`` claims only;
* one PNG per figure, and a printed claim table.

Options: an experiment reads its own knobs with :meth:`Context.opt` (``steepest reproduce NAME
--set steps=50``); an option that was given but never read is reported, so a typo cannot pass
silently. Seeds are ``0 .. seeds-1``; an experiment derives every random draw from them, so a
rerun with the same arguments writes the same numbers.

Helpers for experiments: :func:`log_grid_search` (step-size tuning that brackets the optimum),
:func:`torch_threads` (single-threaded loops on tiny tensors) and :func:`claims_markdown`
(``steepest reproduce --summarize DIR``).
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import pkgutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "Claim",
    "Context",
    "Experiment",
    "Result",
    "claims_markdown",
    "format_claims",
    "kind_counts",
    "log_grid_search",
    "registry",
    "run_experiment",
    "torch_threads",
    "write_rows",
]


@dataclass
class Claim:
    """One claim beside the figure measured for it. ``holds`` is the verdict.

    ``kind`` is ``"paper"`` (the paper's own statement; ``paper`` quotes it with section or
    figure), ``"sanity"`` (true by construction: an identity, a closed form, a case where methods
    coincide) or ``"diagnostic"`` (a measurement of ours the paper does not state).
    ``criterion`` says the test applied and where its threshold comes from: the paper (quoted)
    or ours (chosen before the run, and why). Headline counts count ``paper`` claims only.
    """

    id: str
    claim: str
    paper: str
    measured: str
    holds: bool
    kind: str = "paper"
    criterion: str = ""

    KINDS = ("paper", "sanity", "diagnostic")

    def __post_init__(self) -> None:
        self.holds = bool(self.holds)
        if self.kind not in self.KINDS:
            raise ValueError(f"Claim {self.id!r}: kind must be one of {self.KINDS}, got {self.kind!r}")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(name: str, value: Any, default: Any) -> Any:
    """Cast an option given as text (from the command line) to the type of its default."""
    if not isinstance(value, str) or default is None or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            low = value.strip().lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, (list, tuple)):
            items = [s for s in value.split(",") if s.strip()]
            if default:
                return type(default)(_convert(name, s, default[0]) for s in items)
            return type(default)(items)
    except ValueError:
        raise ValueError(
            f"option {name}={value!r}: expected a value of type {type(default).__name__}"
        ) from None
    return value


class _TrackedOptions(dict):
    """A dict that records which keys were looked up (``get``, ``[]``, ``in``), so options an
    experiment never read can be reported whether it uses :meth:`Context.opt` or the dict."""

    def __init__(self, data: dict[str, Any], seen: set[str]) -> None:
        super().__init__(data)
        self._seen = seen

    def get(self, key: Any, default: Any = None) -> Any:
        self._seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self._seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self._seen.add(key)  # type: ignore[arg-type]
        return super().__contains__(key)


@dataclass
class Context:
    """What an experiment's ``run`` receives."""

    quick: bool
    seeds: int
    out_dir: Path
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    used_options: set[str] = field(default_factory=set)
    resolved: dict[str, Any] = field(default_factory=dict)  # option -> value used (printed)

    def opt(self, name: str, default: T) -> T:
        """Option ``name`` (``--set name=value``), cast to the type of ``default``."""
        self.used_options.add(name)
        value = self.options.get(name)
        out = default if value is None else _convert(name, value, default)
        self.resolved[name] = out
        return out

    @property
    def data_dir(self) -> Path | None:
        """The ``--data-dir`` folder (standard data files), or ``None``."""
        d = self.opt("data_dir", "")
        return Path(d).expanduser() if d else None

    def seed_list(self) -> list[int]:
        return list(range(self.seeds))

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

    @staticmethod
    def pyplot() -> Any:
        """matplotlib's pyplot on the Agg backend (no display needed)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt

    def save_figure(self, fig: Any, name: str, dpi: int = 120) -> str:
        """Save ``fig`` as ``out_dir/name.png``, close it, return the file name."""
        path = self.figure_path(name)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        self.pyplot().close(fig)
        return path.name


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
    # the --set keys it accepts; None: found in its module's source (ctx.opt("key", ...) calls)
    options: tuple[str, ...] | None = None


def accepted_options(exp: Experiment) -> list[str] | None:
    """The ``--set`` keys ``exp`` accepts: its declared ``options``, else every literal
    ``ctx.opt("key", ...)`` / ``ctx.options.get("key")`` in the module that defines its ``run``;
    ``None`` when that module also reads options under computed names (then only the check
    after the run applies)."""
    if exp.options is not None:
        return sorted(exp.options)
    import inspect
    import re

    try:
        src = inspect.getsource(inspect.getmodule(exp.run))  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None
    # ctx.opt("key", ...) and dict-style ctx.options.get("key") / ctx.options["key"]
    read = r"(?:\.opt\(|\.options\.get\(|\.options\[)\s*"
    calls = re.findall(read + r"([^,)\]]*)", src)
    keys = re.findall(read + r"[\"']([A-Za-z_]\w*)[\"']", src)
    if len(keys) != len(calls):
        return None
    return sorted(set(keys))


def log_grid_search(
    score: Callable[[float], float],
    centre: float,
    n_grid: int = 5,
    factor: float = 4.0,
    max_extend: int = 6,
) -> tuple[float, list[tuple[float, float]]]:
    """Step-size tuning on a logarithmic grid (lower score is better; ``inf`` for a diverged run).

    Scores ``n_grid`` values ``centre * factor^k`` around ``centre``; while the best lies on an
    edge the grid grows by one value past that edge (at most ``max_extend`` times), so the optimum
    is bracketed. Returns the best value and every ``(value, score)`` tried, sorted by value.
    """
    if n_grid < 1 or factor <= 1 or centre <= 0:
        raise ValueError(f"need n_grid >= 1, factor > 1, centre > 0; got {n_grid}, {factor}, {centre}")
    half = n_grid // 2
    ks = range(-half, n_grid - half)
    tried = {k: score(centre * factor**k) for k in ks}
    for _ in range(max_extend):
        best = min(tried, key=lambda k: (tried[k], abs(k)))
        if best == min(tried) and len(tried) > 1:
            k = best - 1
        elif best == max(tried) and len(tried) > 1:
            k = best + 1
        else:
            break
        tried[k] = score(centre * factor**k)
    best = min(tried, key=lambda k: (tried[k], abs(k)))
    return centre * factor**best, [(centre * factor**k, tried[k]) for k in sorted(tried)]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads, then restore the setting. Experiments on tiny
    tensors are several times faster single-threaded (no thread hand-off per small op), more so
    on a shared machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


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


def _cell(v: Any) -> Any:
    """CSV cell: floats in full precision but without numpy/torch wrappers."""
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    return v


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write tidy rows as CSV; the header is the union of keys in first-seen order."""
    keys: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for k in row:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})


def kind_counts(claims: Iterable[Claim | dict[str, Any]]) -> dict[str, int]:
    """Per-kind counts: ``holds``/``total`` count ``paper`` claims only (the headline);
    ``sanity_holds``/``sanity_total`` and ``diagnostic_holds``/``diagnostic_total`` the rest."""
    out: dict[str, int] = {}
    for kind in Claim.KINDS:
        sel = [c for c in claims if _get(c, "kind", "paper") == kind]
        prefix = "" if kind == "paper" else f"{kind}_"
        out[f"{prefix}holds"] = sum(bool(_get(c, "holds")) for c in sel)
        out[f"{prefix}total"] = len(sel)
    return out


def _get(c: Claim | dict[str, Any], key: str, default: Any = None) -> Any:
    return c.get(key, default) if isinstance(c, dict) else getattr(c, key, default)


_KIND_TITLES = {
    "paper": "paper claims",
    "sanity": "sanity checks (true by construction or unit checks of our code; not evidence)",
    "diagnostic": "diagnostics (measurements of ours the paper does not state)",
}


def format_claims(name: str, claims: list[Claim], quick: bool = False) -> str:
    """A plain-text table per kind: claim, paper, criterion, measured, verdict. The headline
    counts ``paper`` claims only; sanity checks and diagnostics are listed apart. A ``quick``
    run says so in the headline: its budgets are smoke-test sized, its verdicts not evidence."""
    n = kind_counts(claims)
    run = " [quick run: smoke-test budget, verdicts are not evidence]" if quick else ""
    head = f"== {name}{run}: {n['holds']}/{n['total']} paper claims hold"
    extra = [f"{n[k + '_holds']}/{n[k + '_total']} {k}" for k in ("sanity", "diagnostic")
             if n[k + "_total"]]
    lines = [head + (f" ({', '.join(extra)} apart)" if extra else "") + " =="]
    for kind in Claim.KINDS:
        sel = [c for c in claims if c.kind == kind]
        if not sel:
            continue
        if kind != "paper" or len(sel) < len(claims):
            lines.append(f"-- {_KIND_TITLES[kind]}")
        for c in sel:
            verdict = "HOLDS" if c.holds else "DOES NOT HOLD"
            lines.append(f"[{verdict}] {c.id}: {c.claim}")
            lines.append(f"    paper:     {c.paper}")
            if c.criterion:
                lines.append(f"    criterion: {c.criterion}")
            lines.append(f"    measured:  {c.measured}")
    return "\n".join(lines)


def claims_markdown(summary: dict[str, Any], link: str | None = None) -> str:
    """Markdown tables of one ``summary.json``: the paper claims (claim, paper, criterion,
    measured, verdict), then sanity checks and diagnostics apart. ``link`` prefixes the figure
    links (e.g. ``results/quadratic-2d``). Summaries written before claims had a kind count
    every claim as a paper claim."""
    esc = lambda t: str(t).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    mode = "quick" if summary.get("quick") else "full"
    claims = summary["claims"]
    n = kind_counts(claims)
    extra = [f"{n[k + '_holds']}/{n[k + '_total']} {k} checks" if k == "sanity" else
             f"{n[k + '_total']} diagnostic(s)"
             for k in ("sanity", "diagnostic") if n[k + "_total"]]
    head = (f"**{summary['experiment']}** ({summary.get('source', '')}; {mode} run, "
            f"{summary.get('seeds')} seed(s), {summary.get('seconds')} s): "
            f"{n['holds']}/{n['total']} paper claims hold"
            + (f" ({', '.join(extra)} listed apart)" if extra else ""))
    lines = [head]
    for kind in Claim.KINDS:
        sel = [c for c in claims if c.get("kind", "paper") == kind]
        if not sel:
            continue
        lines += ["", f"*{_KIND_TITLES[kind]}*", "",
                  "| claim | paper | criterion | measured | verdict |",
                  "| --- | --- | --- | --- | --- |"]
        for c in sel:
            if kind == "diagnostic":
                verdict = "yes" if c["holds"] else "no"
            else:
                verdict = "holds" if c["holds"] else "**does not hold**"
            lines.append(f"| `{esc(c['id'])}`: {esc(c['claim'])} | {esc(c['paper'])} | "
                         f"{esc(c.get('criterion', ''))} | {esc(c['measured'])} | {verdict} |")
    if link is not None and summary.get("figures"):
        lines += ["", " ".join(f"![{f}]({link}/{f})" for f in summary["figures"])]
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


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
    """Run one experiment and write its outputs; returns the summary dict.

    Args:
        name: a name from :func:`registry`.
        quick: the small budget (under a minute per experiment on two CPU cores).
        seeds: number of seeds ``>= 1`` (default: the experiment's, quick or full).
        out_dir: output folder (default ``results/NAME``); created if missing.
        progress: show progress bars.
        options: experiment options (see :meth:`Context.opt`), e.g. ``{"steps": 50}``.
        echo: print the claim table.
    """
    exps = registry()
    if name not in exps:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(exps)}")
    exp = exps[name]
    if seeds is not None and (not isinstance(seeds, int) or seeds < 1):
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    n_seeds = seeds if seeds is not None else (exp.quick_seeds if quick else exp.default_seeds)
    out = Path(out_dir) if out_dir is not None else Path("results") / name
    out.mkdir(parents=True, exist_ok=True)
    opts = {k: v for k, v in (options or {}).items() if v is not None}
    accepted = accepted_options(exp)
    unknown = sorted(set(opts) - {"data_dir"} - set(accepted or opts))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {name}; it accepts --set "
                         + (", ".join(accepted) if accepted else "no options"))
    used: set[str] = set()
    ctx = Context(quick=quick, seeds=n_seeds, out_dir=out, progress=progress,
                  options=_TrackedOptions(opts, used), used_options=used)
    t0 = time.perf_counter()
    result = exp.run(ctx)
    elapsed = time.perf_counter() - t0
    # a verdict is only as good as its test: every claim must say what it was judged on
    bare = [c.id for c in result.claims if not str(c.criterion).strip()]
    if bare:
        raise ValueError(
            f"experiment {name!r}: claim(s) {', '.join(repr(b) for b in bare)} have no criterion; "
            "give Claim(..., criterion=...) the test applied and where its threshold comes from "
            "(the paper, quoted, or ours, fixed before the run)"
        )
    unused = sorted(set(opts) - used - {"data_dir"})
    if unused and accepted is None:  # not checkable before the run: refuse the outputs
        raise ValueError(f"{name} did not use option(s) {unused}; it read "
                         + (", ".join(sorted(used - {'data_dir'})) or "no options"))
    if unused:  # accepted keys this configuration did not read (e.g. full-run-only knobs)
        print(f"warning: {name} did not use option(s) {unused} in this configuration",
              file=sys.stderr)
    write_rows(out / "results.csv", result.rows)
    summary = {
        "experiment": exp.name,
        "source": exp.source,
        "quick": quick,
        "seeds": n_seeds,
        "seconds": round(elapsed, 2),
        "settings": result.settings,
        "options": {k: v for k, v in ctx.resolved.items() if k != "data_dir"},
        "claims": [asdict(c) for c in result.claims],
        **kind_counts(result.claims),  # holds/total: paper claims only
        "figures": result.figures,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable))
    if echo:
        print(format_claims(exp.name, result.claims, quick=quick))
        shown = {k: v for k, v in ctx.resolved.items() if k != "data_dir"}
        if shown:
            print("options (change with --set KEY=VALUE): "
                  + json.dumps(shown, default=_jsonable))
        rest = {k: v for k, v in result.settings.items() if k not in shown}
        if rest:
            print("settings: " + json.dumps(rest, default=_jsonable))
        print(
            f"wrote {out}/results.csv, summary.json and {len(result.figures)} figure(s) "
            f"in {elapsed:.1f}s"
        )
    return summary
