"""``steepest demo``: train a tiny model with sign-based, l_p and standard optimizers and compare.

Each optimizer gets a small learning-rate grid (the best of it is reported, as a fair
comparison needs), the same initialisation, the same batches and the same step budget.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import torch

import steepest
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


def train(problem: str, make: Callable[[Any, float], torch.optim.Optimizer], lr: float, steps: int, seed: int) -> dict[str, float]:
    inst = get_problem(problem).build(seed)
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
    parser.add_argument("--problem", default="digits-mlp", choices=list_problems())
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise SystemExit("--steps must be >= 1")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    prob = get_problem(args.problem)
    print(f"problem: {prob.name} ({prob.description}); {args.steps} steps, batch {prob.batch_size}, seed {args.seed}")
    print("each optimizer: best learning rate of its grid by final training loss\n")
    header = f"{'optimizer':18s} {'best lr':>9s} {'train loss':>11s} {'test loss':>10s} {'test acc':>9s} {'s/run':>7s}"
    print(header)
    print("-" * len(header))
    train(args.problem, OPTIMIZERS["SGD (torch)"][0], 0.1, 5, args.seed)  # warm-up, untimed
    rows = []
    for name, (make, grid) in OPTIMIZERS.items():
        runs = [train(args.problem, make, lr, args.steps, args.seed) for lr in grid]
        finite = [r for r in runs if math.isfinite(r["train_loss"])]
        best = min(finite, key=lambda r: r["train_loss"]) if finite else runs[0]
        edge = " (grid edge)" if best["lr"] in (grid[0], grid[-1]) else ""
        rows.append((name, best))
        print(
            f"{name:18s} {best['lr']:9.1e} {best['train_loss']:11.4f} {best['test_loss']:10.4f} "
            f"{best['test_acc']:9.3f} {best['seconds']:7.2f}{edge}"
        )
    return 0
