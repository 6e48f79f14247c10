"""Compile cost of ``fused=True``: cold (empty inductor cache) and warm (a second process).

    python benchmarks/fused_compile.py [--only Signum,ScaledSignSGD] [--threads 1]

Runs itself twice in fresh processes sharing one new, empty ``TORCHINDUCTOR_CACHE_DIR``: the
first compiles everything (cold: dynamo traces, inductor generates C++ and gcc compiles it),
the second finds inductor's FX-graph and AOT-autograd caches filled (warm: dynamo still traces
each kernel, nothing is compiled). Per optimizer, the time of its first two ``fused=True`` steps
on a 100-tensor model (50 matrices of varied shapes and their 50 biases; the second step
compiles step-dependent variants such as M-SVAG's t > 0 kernel) minus two eager steps of the
same optimizer. Issue 18's targets: <= 20 s cold, <= 3 s warm, on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

NAMES = ["SignSGD", "Signum", "Lion", "ScaledSignSGD", "LpDescent(p=3)", "BlockNormalizedSGD",
         "EFSignSGD", "MSGD", "SVAG", "MSVAG", "AdamStar"]


def _factory(name: str):  # type: ignore[no-untyped-def]
    import steepest

    return {
        "SignSGD": lambda ps, **k: steepest.SignSGD(ps, lr=1e-3, **k),
        "Signum": lambda ps, **k: steepest.SignSGD(ps, lr=1e-3, momentum=0.9, **k),
        "Lion": lambda ps, **k: steepest.Lion(ps, lr=1e-4, **k),
        "ScaledSignSGD": lambda ps, **k: steepest.ScaledSignSGD(ps, lr=1e-9, **k),
        "LpDescent(p=3)": lambda ps, **k: steepest.LpDescent(ps, lr=1e-3, **k),
        "BlockNormalizedSGD": lambda ps, **k: steepest.BlockNormalizedSGD(ps, lr=1e-3, **k),
        "EFSignSGD": lambda ps, **k: steepest.EFSignSGD(ps, lr=1e-3, **k),
        "MSGD": lambda ps, **k: steepest.MSGD(ps, lr=1e-3, **k),
        "SVAG": lambda ps, **k: steepest.SVAG(ps, lr=1e-3, **k),
        "MSVAG": lambda ps, **k: steepest.MSVAG(ps, lr=1e-3, **k),
        "AdamStar": lambda ps, **k: steepest.AdamStar(ps, lr=1e-3, **k),
    }[name]


def _model_params():  # type: ignore[no-untyped-def]
    import torch

    g = torch.Generator().manual_seed(0)
    ps = []
    for i in range(50):  # 50 layers of varied widths: 100 tensors, ~100 distinct shapes
        out, inp = 64 + 8 * i, 96 + 4 * (i % 7)
        for shape in ((out, inp), (out,)):
            p = torch.randn(shape, generator=g)
            p.grad = torch.randn(shape, generator=g)
            ps.append(p)
    return ps


def child(names: list[str], threads: int) -> dict[str, float]:
    import torch
    import torch._dynamo  # (imported apart: the first optimizer would pay it)
    import torch._inductor.compile_fx

    from steepest.backend import fused as F

    if threads:
        torch.set_num_threads(threads)
    out: dict[str, float] = {}
    for name in names:
        make = _factory(name)
        ps = _model_params()
        eager = make(ps)
        t0 = time.perf_counter()
        eager.step()
        eager.step()
        t_eager = time.perf_counter() - t0
        ps = _model_params()
        fused = make(ps, fused=True)
        t0 = time.perf_counter()
        fused.step()
        fused.step()
        out[name] = time.perf_counter() - t0 - t_eager
        print(f"  {name:20s} {out[name]:6.1f} s  (kernels so far: {F.STATS})", flush=True)
    out["kernels_compiled"] = F.STATS["compiled"]
    out["kernels_loaded"] = F.STATS["loaded"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="optimizer names, comma-separated (default: all)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default="")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or NAMES
    if args.child:
        print(json.dumps(child(names, args.threads)))
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.1f} at start, {os.cpu_count()} cpus", flush=True)
    res = {}
    with tempfile.TemporaryDirectory(prefix="steepest-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        for run in ("cold", "warm"):
            print(f"{run} (TORCHINDUCTOR_CACHE_DIR={cache}):", flush=True)
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, "--child", "--only", ",".join(names),
                   "--threads", str(args.threads)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            sys.stdout.write("\n".join(proc.stdout.strip().splitlines()[:-1]) + "\n")
            res[run] = json.loads(proc.stdout.strip().splitlines()[-1])
            res[run + "_process_s"] = time.perf_counter() - t0
            print(f"  (whole process {res[run + '_process_s']:.1f} s, imports included)", flush=True)
    print(f"{'optimizer':20s} {'cold s':>8s} {'warm s':>8s}")
    for n in names:
        print(f"{n:20s} {res['cold'][n]:8.1f} {res['warm'][n]:8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_avg_1min": load, **res}, f, indent=1)


if __name__ == "__main__":
    main()
