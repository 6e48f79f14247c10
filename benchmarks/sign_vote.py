"""Majority-vote sign compression vs DDP's fp32 all-reduce: bytes on the wire and step time.

    python benchmarks/sign_vote.py                 # M = 2 and 3, 4.2M-parameter MLP, 5 rounds
    python benchmarks/sign_vote.py --world 3 --rounds 9 --steps 10 --json out.json

For each world size M, M gloo processes on localhost train the same MLP (4 x Linear(1024,
1024), ReLU, batch 32) with plain DDP and with ``sign_vote_hook`` for each transport, the
configurations interleaved round by round so that load from other processes hits them alike.
Reported per configuration:

* step time (forward + backward + SGD step, rank 0, median over rounds of each round's median)
  and its ratio to plain DDP (target: <= 1.3x), and the CPU time the process used per step
  (all its threads, kernel included: less sensitive to other load than the wall time);
* bytes one rank sends per step: counted by ``SignVoteState.bytes_sent`` and measured as the
  bytes the process really wrote (``/proc/self/io`` wchar, i.e. its sockets), and the
  compression against the measured fp32 all-reduce (target: >= 20x at M = 3).

Each process uses one thread (``torch.set_num_threads(1)``). On a shared machine the timings
are noisy: run a few times and compare medians.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIGS = ("ddp-fp32", "allgather", "twophase", "int8", "allgather-scaled")


def _wchar() -> int | None:
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _worker(rank: int, world: int, store: str, args: dict[str, Any], out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    from steepest.distributed import SignVoteState, sign_vote_hook

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    width, depth = args["width"], args["depth"]
    setups = {}
    for name in args["configs"]:
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(width, width))
            if i < depth - 1:
                layers.append(nn.ReLU())
        model = nn.Sequential(*layers)
        ddp = DDP(model)
        state = None
        if name != "ddp-fp32":
            transport = name.split("-")[0]
            state = SignVoteState(transport=transport, scaled=name.endswith("scaled"))
            ddp.register_comm_hook(state, sign_vote_hook)
        # Keep the model sane for the whole run (the scaled direction is ~||g||_1 per
        # coordinate): a diverged ReLU net has dead layers whose exactly-zero gradients abstain,
        # which is a different code path than the one being timed.
        opt = torch.optim.SGD(ddp.parameters(), lr=1e-10 if name.endswith("scaled") else 1e-4)
        setups[name] = (ddp, state, opt)
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(args["batch"], width, generator=gen)
    y = torch.randn(args["batch"], width, generator=gen)

    def step(ddp: Any, opt: Any) -> None:
        opt.zero_grad(set_to_none=False)
        ((ddp(x) - y) ** 2).mean().backward()
        opt.step()

    for ddp, _, opt in setups.values():  # warm-up: DDP rebuilds its buckets after step 1
        for _ in range(3):
            step(ddp, opt)
    record: dict[str, dict[str, list[float]]] = {
        n: {"ms": [], "cpu_ms": [], "bytes_measured": [], "bytes_counted": [], "fp32_counted": []}
        for n in setups
    }
    n_params = sum(p.numel() for p in next(iter(setups.values()))[0].parameters())
    for _ in range(args["rounds"]):
        for name, (ddp, state, opt) in setups.items():
            if state is not None:
                state.reset_counters()
            times = []
            dist.barrier()
            w0 = _wchar()
            c0 = time.process_time()
            for _ in range(args["steps"]):
                t = time.perf_counter()
                step(ddp, opt)
                times.append(time.perf_counter() - t)
            cpu = (time.process_time() - c0) / args["steps"]
            w1 = _wchar()
            dist.barrier()
            rec = record[name]
            rec["ms"].append(1e3 * statistics.median(times))
            rec["cpu_ms"].append(1e3 * cpu)
            if w0 is not None:
                rec["bytes_measured"].append((w1 - w0) / args["steps"])
            if state is not None:
                rec["bytes_counted"].append(state.bytes_sent / args["steps"])
                rec["fp32_counted"].append(state.fp32_allreduce_bytes / args["steps"])
    if rank == 0:
        Path(out).write_text(json.dumps({"params": n_params, "record": record}))
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # skip process-group teardown (gloo can abort there when ranks exit together)


def run_world(world: int, args: dict[str, Any]) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sign_vote_bench_"))
    out = tmp / "rank0.json"
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(r, world, str(tmp / "store"), args, str(out)))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(args["timeout"])
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(5)
    if not out.exists():
        raise RuntimeError(f"benchmark workers for M={world} produced no result")
    return json.loads(out.read_text())


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(world: int, res: dict[str, Any]) -> list[dict[str, Any]]:
    rec = res["record"]
    base_ms = med(rec["ddp-fp32"]["ms"])
    fp32_bytes = med(rec["ddp-fp32"]["bytes_measured"])
    rows = []
    print(
        f"\nM = {world}: {res['params'] / 1e6:.2f}M parameters, rank 0, per step "
        f"(median of {len(rec['ddp-fp32']['ms'])} rounds)"
    )
    print(
        f"{'config':18s} {'ms':>8s} {'x DDP':>6s} {'cpu ms':>7s} {'bytes counted':>14s} "
        f"{'bytes measured':>15s} {'fp32/measured':>14s}"
    )
    for name, r in rec.items():
        ms = med(r["ms"])
        measured = med(r["bytes_measured"])
        counted = med(r["bytes_counted"]) if r["bytes_counted"] else float("nan")
        row = {
            "world": world,
            "config": name,
            "ms": ms,
            "ratio_time": ms / base_ms,
            "cpu_ms": med(r["cpu_ms"]),
            "bytes_counted": counted,
            "bytes_measured": measured,
            "compression_measured": fp32_bytes / measured if measured else float("nan"),
            "ms_rounds": r["ms"],
        }
        rows.append(row)
        print(
            f"{name:18s} {ms:8.1f} {row['ratio_time']:6.2f} {row['cpu_ms']:7.1f} "
            f"{counted:14.0f} {measured:15.0f} "
            f"{row['compression_measured']:14.1f}"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--world", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", type=Path, default=None, help="write all figures here")
    ns = ap.parse_args(argv)
    if "ddp-fp32" not in ns.configs:
        ns.configs.insert(0, "ddp-fp32")
    args = {
        k: getattr(ns, k)
        for k in ("width", "depth", "batch", "steps", "rounds", "configs", "timeout")
    }
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    for world in ns.world:
        rows += report(world, run_world(world, args))
    print(
        f"\n(total {time.time() - t0:.0f} s; targets: step time <= 1.3x DDP, "
        ">= 20x fewer bytes at M = 3)"
    )
    if ns.json:
        ns.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
