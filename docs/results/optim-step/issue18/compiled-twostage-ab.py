"""Side by side: torch.compile(opt.step) against the same optimizer's eager loop and foreach steps.

    python compiled-twostage-ab.py CD|BN|SSS TENSORS SIZE REPEATS
"""
import statistics
import sys
import time

import torch

import steepest

torch.set_num_threads(1)
name, k, size, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
ps = [torch.randn(size, requires_grad=True) for _ in range(k)]
for p in ps:
    p.grad = torch.randn_like(p)
mk = {"CD": lambda fe: steepest.CoordinateDescent(ps, lr=1e-3, nonfinite="ignore", foreach=fe),
      "BN": lambda fe: steepest.BlockNormalizedSGD(ps, lr=1e-3, nonfinite="ignore", foreach=fe),
      "SSS": lambda fe: steepest.ScaledSignSGD(ps, lr=1e-3, nonfinite="ignore", foreach=fe)}[name]
opt, loop, fe = mk(False), mk(False), mk(True)
for o in (opt, loop, fe):
    o.step()
step = torch.compile(opt.step)
t0 = time.perf_counter()
step()
step()
cs = time.perf_counter() - t0
T: dict[str, list[float]] = {"compiled": [], "loop": [], "foreach": []}
for _ in range(reps):
    for n_, f in (("compiled", step), ("loop", loop.step), ("foreach", fe.step)):
        t0 = time.perf_counter()
        f()
        T[n_].append(time.perf_counter() - t0)
med = {n_: statistics.median(v) for n_, v in T.items()}
mn = {n_: min(v) for n_, v in T.items()}
print(f"{name} {k}x{size} compile {cs:.0f}s | median ms " + " ".join(f"{n_} {v*1e3:.2f}" for n_, v in med.items())
      + f" | median ratio /loop {med['compiled']/med['loop']:.2f} /foreach {med['compiled']/med['foreach']:.2f}"
      + f" | min ratio /loop {mn['compiled']/mn['loop']:.2f} /foreach {mn['compiled']/mn['foreach']:.2f}", flush=True)
