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
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "FRESH_SEED_START",
    "READINGS_RULE",
    "Claim",
    "Context",
    "Experiment",
    "Result",
    "Statement",
    "claims_markdown",
    "combine",
    "format_claims",
    "kind_counts",
    "log_grid_search",
    "paper_key",
    "read_rows",
    "registry",
    "rejudge_experiment",
    "run_experiment",
    "t_interval",
    "torch_threads",
    "verdict_direction",
    "verdict_within",
    "write_rows",
]


VERDICTS = ("holds", "fails", "inconclusive")


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
    # the pre-registered statement this record reads (paper claims), its reading ("primary":
    # voted; anything else: reported beside it, never voted), the three-valued verdict and the
    # commit at which the statement's criterion was fixed (filled in from the declaration)
    statement: str = ""
    reading: str = ""
    verdict: str = ""
    criterion_fixed_at: str = ""
    revised: str = ""

    KINDS = ("paper", "sanity", "diagnostic")
    VERDICTS = VERDICTS

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"Claim {self.id!r}: kind must be one of {self.KINDS}, got {self.kind!r}")
        if self.verdict:
            if self.verdict not in VERDICTS:
                raise ValueError(f"Claim {self.id!r}: verdict must be one of {VERDICTS}, "
                                 f"got {self.verdict!r}")
            self.holds = self.verdict == "holds"
        else:
            self.holds = bool(self.holds)
            self.verdict = "holds" if self.holds else "fails"
        if self.kind == "paper" and self.reading and self.reading != "primary" \
                and not self.reading.startswith("other"):
            raise ValueError(f"Claim {self.id!r}: reading must be 'primary' or start with "
                             f"'other', got {self.reading!r}")


# Citation keys of the seed papers (the references page defines them); a statement whose source
# starts with none of these comes from a paper outside the seeds and is counted apart.
PAPERS = {
    "[BPL20": "Balles, Pedregosa, Le Roux 2020, The Geometry of Sign Gradient Descent (seed 000)",
    "[Bal21": "Balles 2021, Noise-Aware Stochastic Optimization, PhD thesis (seed 001)",
    "[BPL20-TLDR": "a one-page summary of [BPL20] (seed 002): no experiment of its own",
    "[STACEY": "Stochastic Steepest Descent with Acceleration for l_p-Smooth Non-Convex "
               "Optimization (seed 003)",
    "[ScaledSign": "Faster convergence of scaled sign gradient descent (seed 004)",
}
SEED_PAPERS = ("[BPL20]", "[Bal21]", "[BPL20-TLDR]", "[STACEY]", "[ScaledSign]")

# The one rule for several readings of a statement, in every experiment.
READINGS_RULE = (
    "one rule for every experiment: a statement's verdict is the verdict of its primary reading "
    "(data set, variant, metric), declared in code before the run; every other reading is "
    "reported beside it as a reading and never voted (no 'any', 'all' or 'better of')"
)

# The seed test of rule 2, one for every experiment: a paired comparison over seeds with a 90%
# Student-t interval of the mean difference.
SEED_TEST_LEVEL = 0.90
FRESH_SEED_START = 1000  # `--fresh-seeds`: disjoint from every committed seed range (< 1000)


def paper_key(source: str) -> str:
    """The citation key a statement's source starts with (``"[BPL20, Fig. 3]"`` -> ``"[BPL20]"``),
    or ``""`` for a paper outside the seeds."""
    m = re.match(r"\[([A-Za-z0-9-]+)[,\]]", source.strip())
    key = f"[{m.group(1)}]" if m else ""
    return key if key in SEED_PAPERS else ""


@dataclass(frozen=True)
class Statement:
    """One statement of a paper, pre-registered in code before the run that judges it.

    ``source`` cites it (``"[BPL20, Fig. 3]"``), ``quote`` gives its exact words (anything we
    insert in square brackets), ``primary`` names the reading that decides the verdict (data set,
    variant, metric); ``others`` how the other readings are treated (default: :data:`READINGS_RULE`);
    ``criterion`` the test and ``criterion_source`` where it comes from (``"paper"``: the paper's
    words or ordering, quoted; ``"ours"``: a threshold of ours); ``fixed_at`` the commit at which
    the criterion was fixed (committed before the run that judged it); ``revised`` is non-empty
    when the criterion was changed after a run: it then gives that run's first verdict, and the
    statement may only be judged on seeds that run never used (``seeds``)."""

    id: str
    source: str
    quote: str
    primary: str
    criterion: str
    criterion_source: str
    fixed_at: str
    seeds: str = ""
    revised: str = ""
    others: str = READINGS_RULE

    def __post_init__(self) -> None:
        if self.criterion_source not in ("paper", "ours"):
            raise ValueError(f"Statement {self.id!r}: criterion_source must be 'paper' or 'ours'")
        if not re.fullmatch(r"[0-9a-f]{7,40}", self.fixed_at):
            raise ValueError(f"Statement {self.id!r}: fixed_at must be a commit hash, "
                             f"got {self.fixed_at!r}")
        if not self.source.startswith("["):
            raise ValueError(f"Statement {self.id!r}: source must cite a key, e.g. '[BPL20, Fig. 3]'")


def t_interval(diffs: Iterable[float], level: float = SEED_TEST_LEVEL) -> tuple[float, float, float]:
    """Mean and two-sided ``level`` Student-t interval of paired differences over seeds;
    ``(mean, -inf, inf)`` with fewer than two seeds (no spread to judge by)."""
    d = [float(x) for x in diffs]
    if not d:
        raise ValueError("t_interval needs at least one difference")
    mean = sum(d) / len(d)
    if len(d) < 2:
        return mean, -math.inf, math.inf
    from scipy.stats import t as student_t

    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    half = float(student_t.ppf(0.5 + level / 2, len(d) - 1)) * sd / math.sqrt(len(d))
    return mean, mean - half, mean + half


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def verdict_direction(diffs: Iterable[float], what: str = "difference",
                      level: float = SEED_TEST_LEVEL) -> tuple[str, str]:
    """Rule 2 for an ordering ("A better than B"): ``diffs`` are per-seed paired differences,
    positive in the statement's direction. ``holds`` if the ``level`` t-interval lies above 0,
    ``fails`` if below, ``inconclusive`` if it contains 0. Returns the verdict and its test."""
    d = list(diffs)
    mean, lo, hi = t_interval(d, level)
    verdict = "holds" if lo > 0 else "fails" if hi < 0 else "inconclusive"
    return verdict, (f"{what}: mean {_fmt(mean)} over {len(d)} seed(s), paired "
                     f"{100 * level:g}% t-interval [{_fmt(lo)}, {_fmt(hi)}] -> {verdict}")


def verdict_within(diffs: Iterable[float], tol: float, what: str = "difference",
                   level: float = SEED_TEST_LEVEL) -> tuple[str, str]:
    """Rule 2 for "A like B" (a tolerance ``tol``): ``holds`` if the ``level`` t-interval of the
    per-seed differences lies inside ``[-tol, tol]``, ``fails`` if it lies outside it, else
    ``inconclusive``."""
    d = list(diffs)
    mean, lo, hi = t_interval(d, level)
    verdict = ("holds" if -tol <= lo and hi <= tol else
               "fails" if lo > tol or hi < -tol else "inconclusive")
    return verdict, (f"{what}: mean {_fmt(mean)} over {len(d)} seed(s), paired "
                     f"{100 * level:g}% t-interval [{_fmt(lo)}, {_fmt(hi)}] vs tolerance "
                     f"+-{tol:.3g} -> {verdict}")


def combine(*verdicts: str) -> str:
    """Several parts of one criterion that must all hold: ``fails`` if any fails, else
    ``inconclusive`` if any is, else ``holds``."""
    if "fails" in verdicts:
        return "fails"
    return "inconclusive" if "inconclusive" in verdicts else "holds"


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
    seed_start: int = 0  # seeds are seed_start .. seed_start + seeds - 1

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
        """The seeds of this run; the first one is where an experiment tunes."""
        return list(range(self.seed_start, self.seed_start + self.seeds))

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
    # the seeds the run used, where they are not the context's seed_start.. range (e.g. a
    # tuning seed and other reporting seeds); recorded as the summary's seed_list
    seed_list: list[int] | None = None


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
    # the paper statements it tests, pre-registered (every paper claim names one of them)
    statements: tuple[Statement, ...] = ()
    # the committed runs use seeds seed_start .. seed_start + default_seeds - 1
    seed_start: int = 0
    # claims from a finished run's rows and settings (``steepest reproduce NAME --rejudge DIR``
    # applies a new declaration to a committed results.csv without rerunning); None: no rejudging
    judge: Callable[[list[dict[str, Any]], dict[str, Any], Context], list[Claim]] | None = None

    def statement(self, sid: str) -> Statement:
        for st in self.statements:
            if st.id == sid:
                return st
        raise KeyError(f"{self.name}: no statement {sid!r}")


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
        if info.name in {"harness", "reproduce", "problems", "data"} or info.name.startswith("_"):
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


def _verdict(c: Claim | dict[str, Any]) -> str:
    v = _get(c, "verdict", "")
    return v if v in VERDICTS else ("holds" if _get(c, "holds") else "fails")


def kind_counts(claims: Iterable[Claim | dict[str, Any]]) -> dict[str, int]:
    """Counts of one run. The headline counts **statements**: ``holds`` / ``fails`` /
    ``inconclusive`` / ``total`` over the primary readings of paper claims (one per statement);
    ``readings_total`` the other readings (reported, never voted); ``sanity_holds`` /
    ``sanity_total`` and ``diagnostic_holds`` / ``diagnostic_total`` the rest."""
    claims = list(claims)
    paper = [c for c in claims if _get(c, "kind", "paper") == "paper"]
    primary = [c for c in paper if _get(c, "reading", "primary") == "primary"]
    out = {v: sum(_verdict(c) == v for c in primary) for v in VERDICTS}
    out["total"] = len(primary)
    out["readings_total"] = len(paper) - len(primary)
    for kind in ("sanity", "diagnostic"):
        sel = [c for c in claims if _get(c, "kind", "paper") == kind]
        out[f"{kind}_holds"] = sum(_verdict(c) == "holds" for c in sel)
        out[f"{kind}_total"] = len(sel)
    return out


def _get(c: Claim | dict[str, Any], key: str, default: Any = None) -> Any:
    return c.get(key, default) if isinstance(c, dict) else getattr(c, key, default)


_KIND_TITLES = {
    "paper": "paper statements (primary readings: these verdicts are the counts)",
    "reading": "other readings of the same statements (reported, never voted)",
    "sanity": "sanity checks (true by construction or unit checks of our code; not evidence)",
    "diagnostic": "diagnostics (measurements of ours the paper does not state)",
}


def _sections(claims: list[Any]) -> list[tuple[str, list[Any]]]:
    paper = [c for c in claims if _get(c, "kind", "paper") == "paper"]
    return [("paper", [c for c in paper if _get(c, "reading", "primary") == "primary"]),
            ("reading", [c for c in paper if _get(c, "reading", "primary") != "primary"]),
            *((k, [c for c in claims if _get(c, "kind") == k]) for k in ("sanity", "diagnostic"))]


def _verdict_text(c: Any, kind: str) -> str:
    v = _verdict(c)
    if kind == "diagnostic":
        return {"holds": "yes", "fails": "no"}.get(v, v)
    rev = _get(c, "revised", "")
    return v + (f" (revised after a run; first verdict: {rev})" if rev else "")


def headline(n: dict[str, int]) -> str:
    """``"3 statements: 1 hold, 1 fail, 1 inconclusive"`` (+ readings, sanity, diagnostics)."""
    head = (f"{n['total']} statement(s): {n['holds']} hold, {n['fails']} fail, "
            f"{n['inconclusive']} inconclusive")
    extra = [f"{n['readings_total']} other reading(s)" if n.get("readings_total") else "",
             f"{n['sanity_holds']}/{n['sanity_total']} sanity checks pass"
             if n.get("sanity_total") else "",
             f"{n['diagnostic_total']} diagnostic(s)" if n.get("diagnostic_total") else ""]
    extra = [e for e in extra if e]
    return head + (f" ({'; '.join(extra)} apart)" if extra else "")


def format_claims(name: str, claims: list[Claim], quick: bool = False,
                  statements: list[dict[str, Any]] | None = None) -> str:
    """A plain-text table per section: the primary reading of each statement (its verdict is
    the count), the other readings, sanity checks, diagnostics. A ``quick`` run says so in the
    headline: its budgets are smoke-test sized, its verdicts not evidence."""
    run = " [quick run: smoke-test budget, verdicts are not evidence]" if quick else ""
    lines = [f"== {name}{run}: {headline(kind_counts(claims))} =="]
    for kind, sel in _sections(claims):
        if not sel:
            continue
        lines.append(f"-- {_KIND_TITLES[kind]}")
        for c in sel:
            stmt = f" [{c.statement}, {c.reading}]" if c.kind == "paper" else ""
            rev = f" (revised after a run; first verdict: {c.revised})" if c.revised else ""
            lines.append(f"[{_verdict(c).upper()}]{rev} {c.id}{stmt}: {c.claim}")
            lines.append(f"    paper:     {c.paper}")
            if c.criterion:
                fixed = f" (fixed at {c.criterion_fixed_at})" if c.criterion_fixed_at else ""
                lines.append(f"    criterion: {c.criterion}{fixed}")
            lines.append(f"    measured:  {c.measured}")
    missing = [s["id"] for s in statements or [] if s.get("verdict") == "not run"]
    if missing:
        lines.append(f"-- declared statements without a primary reading in this run: "
                     f"{', '.join(missing)}")
    return "\n".join(lines)


def seed_ranges(seeds: Iterable[int]) -> str:
    """``[0, 4, 5, 6]`` -> ``"0, 4-6"``: runs of consecutive seeds as ranges."""
    runs: list[list[int]] = []
    for s in sorted(set(seeds)):
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def claims_markdown(summary: dict[str, Any], link: str | None = None) -> str:
    """Markdown tables of one ``summary.json``: one row per statement (its primary reading),
    then the other readings, sanity checks and diagnostics apart. ``link`` prefixes the figure
    links (e.g. ``results/quadratic-2d``)."""
    esc = lambda t: str(t).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    mode = "quick" if summary.get("quick") else "full"
    claims = summary["claims"]
    seeds = summary.get("seed_list") or list(range(int(summary.get("seeds") or 0)))
    seed_text = (f"seeds {seed_ranges(seeds)}" if len(seeds) > 1 else
                 f"seed {seeds[0]}" if seeds else "no seeds")
    head = (f"**{summary['experiment']}** ({summary.get('source', '')}; {mode} run, "
            f"{seed_text}, {summary.get('seconds')} s): {headline(kind_counts(claims))}")
    lines = [head]
    for kind, sel in _sections(claims):
        if not sel:
            continue
        lines += ["", f"*{_KIND_TITLES[kind]}*", ""]
        if kind in ("paper", "reading"):
            lines += ["| statement / claim | reading | paper | criterion (fixed at) | measured | "
                      "verdict |", "| --- | --- | --- | --- | --- | --- |"]
        else:
            lines += ["| claim | paper | criterion | measured | verdict |",
                      "| --- | --- | --- | --- | --- |"]
        for c in sel:
            v = _verdict_text(c, kind)
            v = v if v in ("holds", "yes") else f"**{v}**"
            if kind in ("paper", "reading"):
                lines.append(
                    f"| {esc(c.get('statement', ''))} / `{esc(c['id'])}`: {esc(c['claim'])} | "
                    f"{esc(c.get('reading', ''))} | {esc(c['paper'])} | "
                    f"{esc(c.get('criterion', ''))} ({esc(c.get('criterion_fixed_at', ''))}) | "
                    f"{esc(c['measured'])} | {v} |")
            else:
                lines.append(f"| `{esc(c['id'])}`: {esc(c['claim'])} | {esc(c['paper'])} | "
                             f"{esc(c.get('criterion', ''))} | {esc(c['measured'])} | {v} |")
    if link is not None and summary.get("figures"):
        lines += ["", " ".join(f"![{f}]({link}/{f})" for f in summary["figures"])]
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def code_commit() -> str:
    """``git describe``-like id of the code that ran: the HEAD commit, ``+dirty`` when the
    experiment package has uncommitted changes; ``""`` outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, text=True,
                              capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, text=True,
                               capture_output=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty else "")


def preregistered(exp: Experiment, claims: list[Claim]) -> list[dict[str, Any]]:
    """Check every paper claim against ``exp.statements`` and fill in what the declaration
    fixes (``criterion_fixed_at``, ``revised``); returns one record per declared statement with
    its verdict (its primary reading's; ``"not run"`` when this run had no primary reading).

    Refused: a paper claim without a declared statement or reading, two primary readings of
    one statement, a verdict outside :data:`VERDICTS`."""
    declared = {st.id: st for st in exp.statements}
    primaries: dict[str, Claim] = {}
    problems: list[str] = []
    if not declared and any(c.kind == "paper" for c in claims):
        # an experiment that declares nothing yet (another session's): each paper claim is its
        # own statement, not pre-registered, so its record carries no criterion_fixed_at
        print(f"warning: {exp.name} declares no statements (Experiment(statements=...)): its "
              "paper claims are not pre-registered", file=sys.stderr)
        for c in claims:
            if c.kind == "paper":
                c.statement = c.statement or c.id
                c.reading = c.reading or "primary"
        return [{"id": c.statement, "source": c.paper, "paper_key": paper_key(c.paper),
                 "primary_claim": c.id, "verdict": c.verdict, "fixed_at": "",
                 "declared": False} for c in claims if c.kind == "paper"
                and c.reading == "primary"]
    for c in claims:
        if c.kind != "paper":
            continue
        st = declared.get(c.statement)
        if st is None:
            problems.append(f"{c.id!r} names no declared statement ({c.statement!r})")
            continue
        if not c.reading:
            problems.append(f"{c.id!r} has no reading ('primary' or 'other: ...')")
        c.criterion_fixed_at = st.fixed_at
        c.revised = st.revised
        if c.reading == "primary":
            if c.statement in primaries:
                problems.append(f"statement {st.id!r} has two primary readings "
                                f"({primaries[c.statement].id!r}, {c.id!r})")
            primaries[c.statement] = c
    if problems:
        raise ValueError(f"experiment {exp.name!r}: " + "; ".join(problems))
    out = []
    for st in exp.statements:
        prim = primaries.get(st.id)
        rec = asdict(st)
        rec.update(paper_key=paper_key(st.source), primary_claim=prim.id if prim else "",
                   verdict=prim.verdict if prim else "not run",
                   readings=[x.id for x in claims if x.kind == "paper" and x.statement == st.id
                             and x.reading != "primary"])
        out.append(rec)
    return out


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``results.csv`` written by :func:`write_rows`, numbers converted back
    (int, float, ``inf``/``nan``, ``True``/``False``); empty cells dropped."""
    out = []
    with Path(path).open(newline="") as fh:
        for row in csv.DictReader(fh):
            rec: dict[str, Any] = {}
            for k, v in row.items():
                if v == "" or v is None:
                    continue
                if v in ("True", "False"):
                    rec[k] = v == "True"
                    continue
                try:
                    rec[k] = int(v)
                except ValueError:
                    try:
                        rec[k] = float(v)
                    except ValueError:
                        rec[k] = v
            out.append(rec)
    return out


def rejudge_experiment(name: str, folder: str | Path, echo: bool = True) -> dict[str, Any]:
    """Apply the experiment's current declaration (statements, criteria, readings) to the rows
    of a finished run in ``folder`` (``results.csv`` + ``summary.json``), without rerunning;
    rewrites ``summary.json`` and records ``rejudged`` (the code commit that judged, and the one
    that ran). For a criterion revised after that run the verdict is not fresh evidence: its
    claims carry ``revised``, and only a rerun on fresh seeds judges it."""
    exps = registry()
    if name not in exps:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(exps)}")
    exp = exps[name]
    if exp.judge is None:
        raise ValueError(f"{name} cannot be rejudged from its rows (no judge); rerun it")
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    rows = read_rows(folder / "results.csv")
    seeds = summary.get("seed_list") or list(range(int(summary.get("seeds") or 1)))
    ctx = Context(quick=bool(summary.get("quick")), seeds=len(seeds), out_dir=folder,
                  progress=False, seed_start=int(seeds[0]))
    claims = exp.judge(rows, summary.get("settings", {}), ctx)
    for c in claims:
        # a criterion revised after this run may weaken a verdict on its seeds, never make it
        # 'holds': that needs seeds the run never used
        if c.kind == "paper" and c.verdict == "holds" and exp.statement(c.statement).revised:
            c.verdict, c.holds = "inconclusive", False
            c.measured += ("; rejudged on the seeds of the run that prompted the revision: "
                           "'holds' needs fresh seeds, so inconclusive until a fresh-seed run")
    bare = [c.id for c in claims if not str(c.criterion).strip()]
    if bare:
        raise ValueError(f"experiment {name!r}: claim(s) {bare} have no criterion")
    statements = preregistered(exp, claims)
    ran = summary.get("rejudged", {}).get("ran_at") or summary.get("code_commit") or \
        "the run that wrote results.csv (before commits were recorded)"
    summary.update({
        "source": exp.source, "seed_list": seeds, "readings_rule": READINGS_RULE,
        "statements": statements, "claims": [asdict(c) for c in claims],
        **kind_counts(claims),
        "rejudged": {"judged_at": code_commit(), "ran_at": ran},
    })
    summary.pop("holds_any", None)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable))
    if echo:
        print(format_claims(exp.name, claims, quick=bool(summary.get("quick")),
                            statements=statements))
        print(f"rejudged {folder}/summary.json from its results.csv")
    return summary


def run_experiment(
    name: str,
    *,
    quick: bool = False,
    seeds: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    options: dict[str, Any] | None = None,
    echo: bool = True,
    seed_start: int | None = None,
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
        seed_start: the first seed (default: the experiment's ``seed_start``; ``--fresh-seeds``
            passes :data:`FRESH_SEED_START`).
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
    start = exp.seed_start if seed_start is None else seed_start
    if not isinstance(start, int) or start < 0:
        raise ValueError(f"seed_start must be an integer >= 0, got {start!r}")
    ctx = Context(quick=quick, seeds=n_seeds, out_dir=out, progress=progress,
                  options=_TrackedOptions(opts, used), used_options=used, seed_start=start)
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
    statements = preregistered(exp, result.claims)
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
        "seeds": len(result.seed_list) if result.seed_list is not None else n_seeds,
        "seed_list": result.seed_list if result.seed_list is not None else ctx.seed_list(),
        "seconds": round(elapsed, 2),
        "code_commit": code_commit(),
        "settings": result.settings,
        "options": {k: v for k, v in ctx.resolved.items() if k != "data_dir"},
        "readings_rule": READINGS_RULE,
        "statements": statements,
        "claims": [asdict(c) for c in result.claims],
        **kind_counts(result.claims),  # holds/total: paper claims only
        "figures": result.figures,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable))
    if echo:
        print(format_claims(exp.name, result.claims, quick=quick, statements=statements))
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
