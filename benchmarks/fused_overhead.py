"""Per-call overhead of a fused kernel, and the tensor size from which ``fused=True`` beats eager.

    python benchmarks/fused_overhead.py [--repeats 7] [--json out.json]

1. The fixed cost of one compiled call: ``steepest.backend.fused.run`` of :func:`msgd_step` on
   2-element tensors (the smallest a kernel runs on; one element runs eagerly), against calling
   the same function eagerly (8 small ATen ops) and against one eager ``add_``.
2. One parameter tensor of ``n`` float32 entries, ``nonfinite="ignore"``: the step time of
   SignSGD, Lion and MSGD on the loop path and with ``fused=True``, interleaved, median of
   ``--repeats`` (of 20 steps each); the crossover is the first ``n`` where fused is faster.
   A model's tensors share calls: ``run_many`` runs list kernels, one call per 16 tensors, so a
   model of many tensors pays the overhead once per 16 tensors, not per tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import steepest
from steepest.backend import fused as F
from steepest.optim import updates as U

SIZES = [2, 1_000, 10_000, 30_000, 100_000, 300_000, 1_000_000, 10_000_000]
OPTS = {
    "SignSGD": lambda ps, **k: steepest.SignSGD(ps, lr=1e-3, nonfinite="ignore", **k),
    "Lion": lambda ps, **k: steepest.Lion(ps, lr=1e-4, nonfinite="ignore", **k),
    "MSGD": lambda ps, **k: steepest.MSGD(ps, lr=1e-3, nonfinite="ignore", **k),
}


def _time(fn, reps: int, inner: int) -> float:  # type: ignore[no-untyped-def]
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        ts.append((time.perf_counter() - t0) / inner)
    return statistics.median(ts)


def call_overhead(reps: int) -> dict[str, float]:
    p, g, m = (torch.randn(2) for _ in range(3))
    lr = torch.tensor(1e-3, dtype=torch.float64)
    F.run(U.msgd_step, p, g, m, lr, lr, wd=0.0, w=0.1)  # compile
    return {
        "fused_call_us": 1e6 * _time(lambda: F.run(U.msgd_step, p, g, m, lr, lr, wd=0.0, w=0.1), reps, 200),
        "eager_same_function_us": 1e6 * _time(lambda: U.msgd_step(p, g, m, lr, lr, wd=0.0, w=0.1), reps, 200),
        "eager_one_add_us": 1e6 * _time(lambda: p.add_(g, alpha=-1e-3), reps, 200),
    }


def sweep(reps: int) -> list[dict]:
    rows = []
    for n in SIZES:
        steps = {}
        for name, make in OPTS.items():
            for path in ("loop", "fused"):
                p = torch.randn(n)
                p.grad = torch.randn(n)
                opt = make([p], fused=True) if path == "fused" else make([p], foreach=False)
                opt.step()
                opt.step()
                steps[name, path] = opt.step
        inner = max(1, min(200, 20_000_000 // (n * 20)))
        times: dict[tuple[str, str], list[float]] = {k: [] for k in steps}
        for _ in range(reps):
            for key, step in steps.items():
                times[key].append(_time(step, 1, inner))
        for name in OPTS:
            lo, fu = statistics.median(times[name, "loop"]), statistics.median(times[name, "fused"])
            rows.append({"n": n, "optimizer": name, "loop_us": 1e6 * lo, "fused_us": 1e6 * fu,
                         "fused_over_loop": fu / lo})
            print(f"{n:>10d} {name:8s} loop {1e6 * lo:10.1f} us  fused {1e6 * fu:10.1f} us  "
                  f"fused/loop {fu / lo:6.2f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f} at start")
    over = call_overhead(args.repeats)
    print(", ".join(f"{k} {v:.1f}" for k, v in over.items()), flush=True)
    rows = sweep(args.repeats)
    cross = {name: next((r["n"] for r in rows if r["optimizer"] == name and r["fused_over_loop"] < 1.0), None)
             for name in OPTS}
    print(f"first size where fused is faster: {cross}; load average {os.getloadavg()[0]:.1f} at end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_avg_1min_start": load, "load_avg_1min_end": os.getloadavg()[0],
                       "overhead": over, "sweep": rows, "crossover": cross}, f, indent=1)


if __name__ == "__main__":
    main()
