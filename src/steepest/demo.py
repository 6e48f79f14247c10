"""``steepest demo``: train a tiny model with sign-based, l_p and standard optimizers and compare.

Each optimizer gets a small learning-rate grid (the best of it is reported, as a fair
comparison needs), the same initialisation, the same batches and the same step budget.

The numbers are meant to be the same on every machine: the demo trains in float64 on one
torch thread with a seeded data order (float32 and multi-threaded reductions round differently
on different CPUs and thread counts, and sign methods turn last-bit differences of near-zero
gradient entries into different steps). It runs ``--seeds`` seeds and prints the median and the
spread over them; only the ``s/run`` column depends on the machine.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import steepest
from steepest._cli_types import int_at_least
from steepest.problems import get_problem, list_problems

# name -> (factory(params, lr), lr grid)
OPTIMIZERS: dict[str, tuple[Callable[[Any, float], torch.optim.Optimizer], list[float]]] = {
    "SGD (torch)": (lambda p, lr: torch.optim.SGD(p, lr=lr), [0.03, 0.1, 0.3, 1.0, 3.0]),
    "Adam (torch)": (lambda p, lr: torch.optim.Adam(p, lr=lr), [1e-3, 3e-3, 1e-2, 3e-2]),
    "SignSGD": (lambda p, lr: steepest.SignSGD(p, lr=lr), [1e-3, 3e-3, 1e-2, 3e-2]),
    "Signum (b=0.9)": (lambda p, lr: steepest.SignSGD(p, lr=lr, momentum=0.9), [1e-3, 3e-3, 1e-2, 3e-2]),
    "ScaledSignSGD": (lambda p, lr: steepest.ScaledSignSGD(p, lr=lr), [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]),
    "LpDescent (p=3)": (lambda p, lr: steepest.LpDescent(p, lr=lr, p=3.0), [1e-2, 3e-2, 0.1, 0.3, 1.0]),
}


def train(problem: str, make: Callable[[Any, float], torch.optim.Optimizer], lr: float, steps: int,
          seed: int, dtype: torch.dtype = torch.float64) -> dict[str, float]:
    inst = get_problem(problem).build(seed, dtype=dtype)
    opt = make(inst.model.parameters(), lr)
    batches = inst.batches(seed=seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = next(batches)
        opt.zero_grad()
        loss = inst.loss_fn(inst.model(x), y)
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - t0
    train_eval, test_eval = inst.evaluate("train"), inst.evaluate("test")
    return {
        "lr": lr,
        "train_loss": train_eval["loss"],
        "test_loss": test_eval["loss"],
        "test_acc": test_eval.get("accuracy", math.nan),
        "seconds": elapsed,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--problem", default="digits-mlp", choices=list_problems(), metavar="NAME",
                        help="the problem to train (default digits-mlp; `steepest geometry --list` "
                             "describes them): " + ", ".join(list_problems()))
    parser.add_argument("--steps", type=int_at_least(1), default=300,
                        help="optimizer steps per run (default 300)")
    parser.add_argument("--seed", type=int_at_least(0), default=0,
                        help="first seed: initialisation and data order (default 0)")
    parser.add_argument("--seeds", type=int_at_least(1), default=3,
                        help="seeds seed .. seed+N-1; the table gives the median and the "
                             "min-max spread over them (default 3)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder with the standard data files of the problems that need "
                             "them (fashion-mnist-2c2d: the IDX files; cifar10-3c3d: "
                             "cifar-10-batches-py); default $STEEPEST_DATA_DIR")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                        help="training precision (default float64: the same numbers on every "
                             "machine; float32 is faster but CPU-dependent in the last digits)")


def _fmt(values: list[float], spec: str) -> str:
    """Median, and the min-max spread when the seeds differ."""
    med = statistics.median(values)
    if len(values) < 2 or max(values) == min(values):
        return format(med, spec)
    return f"{format(med, spec)} [{format(min(values), spec)}, {format(max(values), spec)}]"


def run(args: argparse.Namespace) -> int:
    if args.data_dir is not None:
        if not os.path.isdir(args.data_dir):
            print(f"steepest demo: --data-dir {args.data_dir!r} is not a folder", file=sys.stderr)
            return 2
        os.environ["STEEPEST_DATA_DIR"] = args.data_dir  # where the problems look for files
    prob = get_problem(args.problem)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    seeds = list(range(args.seed, args.seed + args.seeds))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: reductions in one order on every machine
    try:
        try:
            train(args.problem, OPTIMIZERS["SGD (torch)"][0], 0.1, 1, args.seed, dtype)  # warm-up
        except (FileNotFoundError, ValueError, OSError) as exc:
            need = " (pass --data-dir DIR)" if "data-dir" in prob.tags else ""
            print(f"steepest demo: cannot load the data of {prob.name}{need}: {exc}",
                  file=sys.stderr)
            return 2
        print(f"problem: {prob.name} ({prob.description}); {args.steps} steps, batch "
              f"{prob.batch_size}, {args.dtype}, seeds {seeds[0]}..{seeds[-1]}")
        print("each optimizer: the learning rate of its grid with the lowest worst-seed final "
              "training loss;\nmedian over the seeds [min, max]; s/run depends on the machine\n")
        header = (f"{'optimizer':16s} {'best lr':>8s}  {'train loss':24s} {'test loss':24s} "
                  f"{'test acc':19s} {'s/run':>6s}")
        print(header)
        print("-" * len(header))
        for name, (make, grid) in OPTIMIZERS.items():
            runs = {lr: [train(args.problem, make, lr, args.steps, s, dtype) for s in seeds]
                    for lr in grid}
            # the worst seed decides: an lr that diverges on one seed in three is not "best"
            worst = {lr: max(r["train_loss"] for r in rs) for lr, rs in runs.items()}
            finite = [lr for lr in grid if math.isfinite(worst[lr])]
            best = min(finite, key=lambda lr: worst[lr]) if finite else grid[0]
            rs = runs[best]
            edge = " (grid edge)" if best in (grid[0], grid[-1]) else ""
            print(f"{name:16s} {best:8.1e}  {_fmt([r['train_loss'] for r in rs], '.4f'):24s} "
                  f"{_fmt([r['test_loss'] for r in rs], '.4f'):24s} "
                  f"{_fmt([r['test_acc'] for r in rs], '.3f'):19s} "
                  f"{statistics.median(r['seconds'] for r in rs):6.2f}{edge}")
    finally:
        torch.set_num_threads(threads)
    return 0
