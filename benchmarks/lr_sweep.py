"""Learning-rate sweep behind the default learning rates (docs/defaults.md; issue 14).

    nice -n 10 python benchmarks/lr_sweep.py                     # full run, ~10-15 min on 1 busy core
    python benchmarks/lr_sweep.py --quick                        # 2 problems, 1 seed, ~1 min
    python benchmarks/lr_sweep.py --defaults-check               # loss of the old vs new defaults

Every optimizer of ``steepest`` (all other options at their defaults) and torch's AdamW train the
same model from the same initialisation on the same batches, on a fixed set of problems from
``steepest.problems``: logistic regression, an MLP, a CNN and a tiny character-level
transformer. The learning rate runs over a log grid of half decades, 1e-7 ... 10.

Search (fixed before the first run): on seed 0, start at the optimizer's current default and walk
the grid in both directions until the final training loss leaves the *good band* (less than 90%
of the best loss reduction, ``L(lr) > L* + 0.1 (L_0 - L*)``, L_0 the loss at initialisation) or the
run diverges. Seeds 1 and 2 are then run at the seed-0 best and its two neighbours; the reported
best lr is the one of those three with the lowest mean loss over the seeds. Spread: the good band
of seed 0 and the best lr of each seed (within that window).

Default (fixed before the first run): the grid lr with the smallest worst-case normalized regret
``(L(lr) - L*)/(L_0 - L*)`` over the problems (seed 0; an lr beyond the searched range gets the
regret of the last point searched in that direction, a lower bound if the curve is unimodal; a
diverged run gets 10). The AdamW rule is the geometric mean over problems of
``best lr(X) / best lr(AdamW)``, with its range.

Outputs ``docs/results/lr-sweep/``: ``results.csv`` (one row per run), ``summary.json``,
``tables.md`` (the tables of docs/defaults.md) and ``lr_curves.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import steepest
from steepest.problems import get_problem

GRID = [10.0 ** (k / 2) for k in range(-14, 3)]  # 1e-7 ... 10, half decades
BAND = 0.1  # good band: within 10% of the best loss reduction
DIVERGED_REGRET = 10.0

Factory = Callable[[Any, float], torch.optim.Optimizer]

# name -> factory(params, lr). Every other option is the optimizer's default.
OPTIMIZERS: dict[str, Factory] = {
    "AdamW (torch)": lambda p, lr: torch.optim.AdamW(p, lr=lr),
    "SteepestDescent (l2 = GD)": lambda p, lr: steepest.SteepestDescent(p, lr=lr),
    "SignSGD": lambda p, lr: steepest.SignSGD(p, lr=lr),
    "SignSGD (momentum=0.9)": lambda p, lr: steepest.SignSGD(p, lr=lr, momentum=0.9),
    "ScaledSignSGD": lambda p, lr: steepest.ScaledSignSGD(p, lr=lr),
    "LpDescent": lambda p, lr: steepest.LpDescent(p, lr=lr),
    "CoordinateDescent": lambda p, lr: steepest.CoordinateDescent(p, lr=lr),
    "BlockNormalizedSGD": lambda p, lr: steepest.BlockNormalizedSGD(p, lr=lr),
    "EFSignSGD": lambda p, lr: steepest.EFSignSGD(p, lr=lr),
    "Lion": lambda p, lr: steepest.Lion(p, lr=lr),
    "Stacey": lambda p, lr: steepest.Stacey(p, lr=lr),
    "MSGD": lambda p, lr: steepest.MSGD(p, lr=lr),
    "SVAG": lambda p, lr: steepest.SVAG(p, lr=lr),
    "MSVAG": lambda p, lr: steepest.MSVAG(p, lr=lr),
    "AdamStar": lambda p, lr: steepest.AdamStar(p, lr=lr),
    "AdamShuffled": lambda p, lr: steepest.optim.AdamShuffled(p, lr=lr, generator=torch.Generator().manual_seed(0)),
    "AdamAveraged": lambda p, lr: steepest.optim.AdamAveraged(p, lr=lr),
}

# Default learning rates before issue 14 (the starting points of the search, and the "before" of
# --defaults-check). Torch's AdamW default is 1e-3.
OLD_DEFAULTS: dict[str, float] = {
    "AdamW (torch)": 1e-3, "SteepestDescent (l2 = GD)": 1e-3, "SignSGD": 1e-3,
    "SignSGD (momentum=0.9)": 1e-3, "ScaledSignSGD": 1e-3, "LpDescent": 1e-3,
    "CoordinateDescent": 1e-3, "BlockNormalizedSGD": 1e-3, "EFSignSGD": 1e-3, "Lion": 1e-4,
    "Stacey": 1e-2, "MSGD": 1e-2, "SVAG": 1e-2, "MSVAG": 1e-2, "AdamStar": 1e-3,
    "AdamShuffled": 1e-3, "AdamAveraged": 1e-3,
}

# problem -> training steps in the sweep (short budgets: the sweep must fit ~10-15 CPU minutes)
PROBLEMS: dict[str, int] = {
    "digits-logreg": 300,
    "digits-mlp": 300,
    "mnist1d-cnn": 200,
    "pysrc-char-transformer": 150,
}


class Runner:
    """One problem: data and initial weights built once per seed, then reused by every run."""

    def __init__(self, problem: str, steps: int) -> None:
        self.problem, self.steps = problem, steps
        self._inst: dict[int, Any] = {}
        self._init: dict[int, dict[str, torch.Tensor]] = {}
        self._l0: dict[int, float] = {}

    def instance(self, seed: int) -> Any:
        if seed not in self._inst:
            inst = get_problem(self.problem).build(seed)
            self._inst[seed] = inst
            self._init[seed] = {k: v.clone() for k, v in inst.model.state_dict().items()}
            self._l0[seed] = inst.evaluate("train")["loss"]
        return self._inst[seed]

    def initial_loss(self, seed: int) -> float:
        self.instance(seed)
        return self._l0[seed]

    def run(self, make: Factory, lr: float, seed: int) -> dict[str, float]:
        inst = self.instance(seed)
        inst.model.load_state_dict(self._init[seed])
        torch.manual_seed(seed)
        opt = make(inst.model.parameters(), lr)
        batches = inst.batches(seed=seed)
        limit = 3.0 * self._l0[seed] + 1.0  # a batch loss above this counts as diverged
        t0 = time.perf_counter()
        diverged = False
        for _ in range(self.steps):
            x, y = next(batches)
            opt.zero_grad()
            loss = inst.loss_fn(inst.model(x), y)
            value = loss.item()
            if not math.isfinite(value) or value > limit:
                diverged = True
                break
            loss.backward()
            try:
                opt.step()
            except FloatingPointError:  # a non-finite gradient: the run has diverged
                diverged = True
                break
        seconds = time.perf_counter() - t0
        tr = inst.evaluate("train") if not diverged else {"loss": math.inf}
        te = inst.evaluate("test") if not diverged else {"loss": math.inf, "accuracy": math.nan}
        if not math.isfinite(tr["loss"]):
            diverged = True
        return {
            "train_loss": tr["loss"] if not diverged else math.inf,
            "test_loss": te["loss"] if not diverged else math.inf,
            "test_acc": te.get("accuracy", math.nan) if not diverged else math.nan,
            "diverged": diverged,
            "seconds": seconds,
        }


def nearest_index(lr: float) -> int:
    return min(range(len(GRID)), key=lambda i: abs(math.log10(GRID[i]) - math.log10(lr)))


def search(runner: Runner, name: str, make: Factory, seeds: list[int], rows: list[dict[str, Any]],
           progress: Any) -> dict[str, Any]:
    """The search of the module docstring for one optimizer on one problem."""
    seed0 = seeds[0]
    curve: dict[int, float] = {}

    def evaluate(i: int, seed: int) -> float:
        res = runner.run(make, GRID[i], seed)
        rows.append({"problem": runner.problem, "optimizer": name, "lr": GRID[i], "seed": seed,
                     "steps": runner.steps, **res})
        progress.update(1)
        return res["train_loss"]

    l0 = runner.initial_loss(seed0)

    def outside(i: int) -> bool:
        best = min(curve.values())
        return not math.isfinite(curve[i]) or curve[i] > best + BAND * max(l0 - best, 0.0)

    start = nearest_index(OLD_DEFAULTS.get(name, 1e-3))
    curve[start] = evaluate(start, seed0)
    for direction in (+1, -1):
        i = start
        while 0 <= i + direction < len(GRID):
            i += direction
            if i not in curve:
                curve[i] = evaluate(i, seed0)
            if outside(i) and curve[i] > min(curve.values()):
                # keep going while it still improves on everything else seen
                break
    # the best may have moved: make sure both of its neighbours are known
    b = min(curve, key=lambda i: curve[i])
    for direction in (+1, -1):
        i = b
        while 0 <= i + direction < len(GRID):
            i += direction
            if i not in curve:
                curve[i] = evaluate(i, seed0)
            if outside(i):
                break
    b = min(curve, key=lambda i: curve[i])
    window = [i for i in (b - 1, b, b + 1) if 0 <= i < len(GRID)]
    per_seed: dict[int, dict[int, float]] = {seed0: {i: curve[i] for i in window}}
    for s in seeds[1:]:
        per_seed[s] = {i: evaluate(i, s) for i in window}

    def mean_loss(i: int) -> float:
        vals = [per_seed[s][i] for s in seeds]
        return statistics.fmean(vals) if all(math.isfinite(v) for v in vals) else math.inf

    best = min(window, key=mean_loss)
    best0 = min(curve.values())
    good = sorted(i for i in curve if not outside(i))
    return {
        "curve_seed0": {GRID[i]: curve[i] for i in sorted(curve)},
        "initial_loss": l0,
        "best_lr": GRID[best],
        "best_loss_mean": mean_loss(best),
        "best_loss_per_seed": [per_seed[s][best] for s in seeds],
        "best_lr_per_seed": [GRID[min(per_seed[s], key=lambda i: per_seed[s][i])] for s in seeds],
        "good_band": [GRID[good[0]], GRID[good[-1]]],
        "edge": best in (0, len(GRID) - 1),
        "best_loss_seed0": best0,
    }


def regret_curve(res: dict[str, Any]) -> list[float]:
    """Normalized regret of seed 0 at every grid point (lower bounds beyond the searched range)."""
    curve = {nearest_index(float(k)): v for k, v in res["curve_seed0"].items()}
    best, l0 = res["best_loss_seed0"], res["initial_loss"]
    scale = max(l0 - best, 1e-12)
    reg = {i: (v - best) / scale if math.isfinite(v) else DIVERGED_REGRET for i, v in curve.items()}
    lo, hi = min(reg), max(reg)
    return [reg[i] if i in reg else (reg[lo] if i < lo else reg[hi]) for i in range(len(GRID))]


def choose_default(per_problem: dict[str, dict[str, Any]]) -> tuple[float, float]:
    """The grid lr with the smallest worst-case regret over the problems, and that regret."""
    curves = [regret_curve(r) for r in per_problem.values()]
    worst = [max(c[i] for c in curves) for i in range(len(GRID))]
    i = min(range(len(GRID)), key=lambda k: worst[k])
    return GRID[i], worst[i]


def fmt(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e")


def tables(summary: dict[str, Any]) -> str:
    probs = list(summary["problems"])
    lines = ["### Best learning rate per problem (mean final training loss over seeds)", "",
             "Cell: best lr (good band of seed 0; best lr of each seed) -> mean loss. The good band is "
             "every lr reaching 90% of the best loss reduction.", "",
             "| optimizer | " + " | ".join(probs) + " |", "|---" * (len(probs) + 1) + "|"]
    for name, res in summary["optimizers"].items():
        cells = []
        for p in probs:
            r = res["problems"][p]
            band = f"{fmt(r['good_band'][0])}..{fmt(r['good_band'][1])}"
            seeds = "/".join(fmt(x) for x in r["best_lr_per_seed"])
            edge = " (grid edge)" if r["edge"] else ""
            cells.append(f"**{fmt(r['best_lr'])}**{edge} ({band}; {seeds}) -> {r['best_loss_mean']:.3g}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "### Chosen defaults", "",
              "| optimizer | old default | new default | worst regret of the new default | "
              "best lr / AdamW's best lr (geo. mean; range over problems) |", "|---|---|---|---|---|"]
    for name, res in summary["optimizers"].items():
        ratio = res["adamw_ratio"]
        lines.append(
            f"| {name} | {fmt(OLD_DEFAULTS.get(name, math.nan))} | {fmt(res['default'])} | "
            f"{res['default_regret']:.2f} | {ratio['geomean']:.3g} ({ratio['min']:.3g}..{ratio['max']:.3g}) |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = list(summary["problems"])
    fig, axes = plt.subplots(1, len(probs), figsize=(5 * len(probs), 4.5), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for ax, p in zip(axes[0], probs):
        for k, (name, res) in enumerate(summary["optimizers"].items()):
            r = res["problems"][p]
            xs = [float(k) for k in r["curve_seed0"]]
            ys = [v if math.isfinite(v) else float("nan") for v in r["curve_seed0"].values()]
            ax.plot(xs, ys, marker=".", label=name, lw=2.5 if name.startswith("AdamW") else 1,
                    color="black" if name.startswith("AdamW") else colors[k % 20],
                    ls=("-", "--", ":")[k % 3])
        ax.set_xscale("log")
        ax.set_title(f"{p} ({summary['problems'][p]} steps, seed 0)")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final training loss")
        ax.set_ylim(0, 1.2 * max(summary["initial_loss"][p].values()))
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def sweep(problems: dict[str, int], names: list[str], seeds: list[int], out: Path) -> dict[str, Any]:
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"grid": GRID, "seeds": seeds, "problems": problems,
                               "initial_loss": {}, "optimizers": {n: {"problems": {}} for n in names},
                               "torch": torch.__version__, "python": sys.version.split()[0],
                               "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    # ~12 runs per (optimizer, problem); the bar counts runs
    bar = tqdm(total=12 * len(names) * len(problems), desc="lr sweep", unit="run",
               disable=not sys.stderr.isatty())
    for prob, steps in problems.items():
        runner = Runner(prob, steps)
        summary["initial_loss"][prob] = {s: runner.initial_loss(s) for s in seeds}
        for name in names:
            res = search(runner, name, OPTIMIZERS[name], seeds, rows, bar)
            summary["optimizers"][name]["problems"][prob] = res
            print(f"{prob:24s} {name:26s} best {fmt(res['best_lr']):>6s} loss {res['best_loss_mean']:.4f} "
                  f"band {fmt(res['good_band'][0])}..{fmt(res['good_band'][1])}", flush=True)
    bar.close()
    for name in names:
        res = summary["optimizers"][name]
        res["default"], res["default_regret"] = choose_default(res["problems"])
        ratios = [res["problems"][p]["best_lr"] / summary["optimizers"]["AdamW (torch)"]["problems"][p]["best_lr"]
                  for p in problems] if "AdamW (torch)" in names else [math.nan]
        res["adamw_ratio"] = {"geomean": math.exp(statistics.fmean(math.log(r) for r in ratios))
                              if all(r > 0 for r in ratios) else math.nan,
                              "min": min(ratios), "max": max(ratios)}
    summary["seconds"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "tables.md").write_text(tables(summary))
    plot(summary, out / "lr_curves.png")
    return summary


def defaults_check(problem: str, steps: int, seeds: list[int], new: dict[str, float],
                   names: list[str] | None = None) -> str:
    """Final training loss of every optimizer at its old and new default lr (mean over seeds)."""
    runner = Runner(problem, steps)
    lines = [f"{problem}, {steps} steps, seeds {seeds}: final training loss at the default lr "
             f"(initial {statistics.fmean(runner.initial_loss(s) for s in seeds):.3f})", "",
             "| optimizer | old lr | loss | new lr | loss |", "|---|---|---|---|---|"]
    for name, make in OPTIMIZERS.items():
        if names and name not in names:
            continue
        old, cur = OLD_DEFAULTS[name], new.get(name, OLD_DEFAULTS[name])
        lo = statistics.fmean(runner.run(make, old, s)["train_loss"] for s in seeds)
        ln = statistics.fmean(runner.run(make, cur, s)["train_loss"] for s in seeds)
        lines.append(f"| {name} | {fmt(old)} | {lo:.3f} | {fmt(cur)} | {ln:.3f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def current_defaults() -> dict[str, float]:
    """The lr each constructor uses now (read from the signatures)."""
    import inspect

    out = {}
    cls = {"SteepestDescent (l2 = GD)": steepest.SteepestDescent, "SignSGD (momentum=0.9)": steepest.SignSGD}
    for name in OPTIMIZERS:
        if name.startswith("AdamW"):
            out[name] = 1e-3
            continue
        c = cls.get(name) or getattr(steepest, name)
        out[name] = inspect.signature(c.__init__).parameters["lr"].default
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 small problems, seed 0 only (smoke test)")
    ap.add_argument("--optimizers", nargs="*", default=None, help="subset of optimizer names")
    ap.add_argument("--out", default="docs/results/lr-sweep", help="output folder")
    ap.add_argument("--defaults-check", action="store_true",
                    help="train each optimizer at its old and its current default lr on the CNN")
    ap.add_argument("--check-problem", default="mnist1d-cnn")
    ap.add_argument("--check-steps", type=int, default=400)
    ap.add_argument("--replot", action="store_true", help="redraw the plot and tables from summary.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # one core: the figures are comparable run to run
    if args.defaults_check:
        text = defaults_check(args.check_problem, args.check_steps, [0, 1, 2], current_defaults(),
                              args.optimizers)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        part = "" if not args.optimizers else "_" + "_".join(n.split()[0] for n in args.optimizers)
        (out / f"defaults_check_{args.check_problem}{part}.md").write_text(text)
        return 0
    if args.replot:
        out = Path(args.out)
        summary = json.loads((out / "summary.json").read_text())
        (out / "tables.md").write_text(tables(summary))
        plot(summary, out / "lr_curves.png")
        return 0
    names = args.optimizers or list(OPTIMIZERS)
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        ap.error(f"unknown optimizer(s) {unknown}; known: {list(OPTIMIZERS)}")
    if "AdamW (torch)" not in names:
        names = ["AdamW (torch)", *names]
    problems = {"digits-logreg": 150, "digits-mlp": 150} if args.quick else PROBLEMS
    seeds = [0] if args.quick else [0, 1, 2]
    summary = sweep(problems, names, seeds, Path(args.out) if not args.quick else Path(args.out) / "quick")
    print(f"\n{summary['seconds']:.0f} s\n")
    print(tables(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
