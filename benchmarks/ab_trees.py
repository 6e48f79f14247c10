"""Interleaved before/after timing of optimizer steps across two source trees, in one run.

    python benchmarks/ab_trees.py --trees /tmp/before/src,src \\
        --opt "steepest.BlockNormalizedSGD(ps, lr=1e-3, fused=True)" \\
        --opt "torch.optim.AdamW(ps, lr=1e-3, foreach=True)" [--params 1000000 --tensors 1000]

Why: on a shared machine two runs of ``optim_step.py`` minutes apart differ by 20-40% in their
ratios (load and cache neighbours change between runs), more than the 5-15% a change to the
per-tensor Python work makes. Here one worker process per tree (``PYTHONPATH=<tree>``) builds
every optimizer on the same layout (float32 parameters and fixed gradients, seeded: the same
values in every worker; ``--params // --tensors`` elements a tensor; all ``--opt`` optimizers
step the same parameters; 3 warm-up steps), and
the driver asks them in turn to time a burst of steps (order alternating between rounds), so
that a slow moment hits both trees alike; ``--workers`` processes per tree (default 2), since
one process can run a few percent slower than another of the same code for its whole life. Reported: each optimizer's median ms per step per
tree and their ratio; an optimizer whose code the change did not touch (torch's AdamW) is the
control and should read ~1.00. Per-byte ratios are derived from the ms as in ``optim_step.py``.
``ps`` is the parameter list inside each ``--opt`` expression; ``steepest`` and ``torch`` are
imported there. ``git worktree add /tmp/before <commit>`` makes a tree of an earlier commit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

WORKER = r"""
import sys, time, torch
import steepest
torch.set_num_threads(int(sys.argv[4]))
torch.manual_seed(0)  # the same values in every worker
n, k = int(sys.argv[2]), int(sys.argv[3])
ps = [torch.nn.Parameter(torch.randn(n // k)) for _ in range(k)]
for p in ps:
    p.grad = torch.randn(n // k)
opts = [eval(e, {"steepest": steepest, "torch": torch, "ps": ps}) for e in sys.argv[1].split("\n")]
for o in opts:
    for _ in range(3):
        o.step()
print("ready", flush=True)
for line in sys.stdin:
    i, reps = map(int, line.split())
    t = time.perf_counter()
    for _ in range(reps):
        opts[i].step()
    print((time.perf_counter() - t) / reps, flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", required=True, help="two source folders (each holds steepest/), comma-separated")
    ap.add_argument("--opt", action="append", required=True, help="an optimizer expression over ps (repeatable)")
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--tensors", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--burst", type=int, default=5, help="steps timed per turn")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2, help="worker processes per tree")
    args = ap.parse_args()
    trees = args.trees.split(",")
    if len(trees) != 2:
        ap.error(f"--trees must name two folders, got {len(trees)}")
    # (tree index, worker): --workers per tree, so that a bias of one process (where its heap
    # and pages landed) is averaged out rather than read as the tree's
    procs: list[tuple[int, subprocess.Popen[str]]] = []
    for _w in range(args.workers):
        for j, tree in enumerate(trees):
            env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
            procs.append((j, subprocess.Popen(
                [sys.executable, "-c", WORKER, "\n".join(args.opt), str(args.params),
                 str(args.tensors), str(args.threads)],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)))
    for j, p in procs:
        assert p.stdin is not None and p.stdout is not None
        line = p.stdout.readline().split()
        if not line or line[0] != "ready":
            sys.exit(f"a worker for {trees[j]} failed to start")
    for j, tree in enumerate(trees):
        print(f"tree ({j + 1}) {tree}")
    times: list[list[list[float]]] = [[[] for _ in args.opt] for _ in trees]
    for r in range(args.rounds):
        order = procs if r % 2 == 0 else procs[::-1]
        for i in range(len(args.opt)):
            for j, p in order:
                stdin, stdout = p.stdin, p.stdout
                assert stdin is not None and stdout is not None
                stdin.write(f"{i} {args.burst}\n")
                stdin.flush()
                times[j][i].append(float(stdout.readline()))
    for _j, p in procs:
        assert p.stdin is not None
        p.stdin.close()
        p.wait()
    print(f"{args.params} parameters in {args.tensors} tensors, {args.threads} thread(s), median of "
          f"{args.rounds} x {args.workers} interleaved bursts of {args.burst} steps per tree")
    print(f"{'optimizer':72s} {'ms (1)':>9s} {'ms (2)':>9s} {'(2)/(1)':>8s}")
    for i, expr in enumerate(args.opt):
        a, b = (1e3 * statistics.median(times[j][i]) for j in (0, 1))
        print(f"{expr[:72]:72s} {a:9.2f} {b:9.2f} {b / a:8.3f}")


if __name__ == "__main__":
    main()
