"""Step time of the steepest-descent optimizers against torch.optim, side by side in one run.

    python benchmarks/optimizer_step.py [--params 10_000_000] [--repeats 7]

Measures ``opt.step()`` alone (gradients fixed) on a model of ~N parameters split over several
tensors, for the loop and foreach paths, and prints each time as a ratio to torch's SGD with
momentum (loop path), median of interleaved repeats. Absolute times mean little on shared
machines; the ratios are the result.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import steepest


def make_params(n: int) -> list[torch.Tensor]:
    # A few large matrices and some small vectors, like a network.
    side = int((n / 4) ** 0.5)
    shapes = [(side, side)] * 4 + [(side,)] * 8
    ps = [torch.randn(s, requires_grad=True) for s in shapes]
    for p in ps:
        p.grad = torch.randn_like(p)
    return ps


CONFIGS = {
    "torch SGD(momentum=0.9)": lambda ps, fe: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=fe),
    "torch Adam": lambda ps, fe: torch.optim.Adam(ps, lr=1e-3, foreach=fe),
    "SignSGD": lambda ps, fe: steepest.SignSGD(ps, lr=1e-3, foreach=fe),
    "Signum (momentum=0.9)": lambda ps, fe: steepest.SignSGD(ps, lr=1e-3, momentum=0.9, foreach=fe),
    "ScaledSignSGD": lambda ps, fe: steepest.ScaledSignSGD(ps, lr=1e-9, foreach=fe),
    "LpDescent(p=3)": lambda ps, fe: steepest.LpDescent(ps, lr=1e-3, p=3.0, foreach=fe),
    "LpDescent(p=3, scaled)": lambda ps, fe: steepest.LpDescent(ps, lr=1e-9, p=3.0, scaled=True, foreach=fe),
    "BlockNormalizedSGD": lambda ps, fe: steepest.BlockNormalizedSGD(ps, lr=1e-3, foreach=fe),
    "EFSignSGD": lambda ps, fe: steepest.EFSignSGD(ps, lr=1e-3, foreach=fe),
    "Lion": lambda ps, fe: steepest.Lion(ps, lr=1e-3, foreach=fe),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    ps = make_params(args.params)
    n = sum(p.numel() for p in ps)
    opts = {(name, fe): make(ps, fe) for name, make in CONFIGS.items() for fe in (False, True)}
    for opt in opts.values():  # warm up (lazy state)
        opt.step()
    times: dict[tuple[str, bool], list[float]] = {k: [] for k in opts}
    for _ in range(args.repeats):
        for key, opt in opts.items():  # interleaved, so drift hits every method alike
            t0 = time.perf_counter()
            for _ in range(args.steps):
                opt.step()
            times[key].append((time.perf_counter() - t0) / args.steps)
    ref = statistics.median(times[("torch SGD(momentum=0.9)", False)])
    print(f"{n / 1e6:.1f}M parameters, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'optimizer':26s} {'loop ms':>8s} {'x SGD':>6s} {'foreach ms':>11s} {'x SGD':>6s}")
    for name in CONFIGS:
        lo, fe = statistics.median(times[(name, False)]), statistics.median(times[(name, True)])
        print(f"{name:26s} {lo * 1e3:8.1f} {lo / ref:6.2f} {fe * 1e3:11.1f} {fe / ref:6.2f}")


if __name__ == "__main__":
    main()
