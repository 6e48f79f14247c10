"""The spectral step: steepest.Muon against torch.optim.Muon, and SVD against Newton-Schulz.

    python benchmarks/spectral.py [--sizes 64,128,256,512] [--repeats 7] [--threads 1]

Part 1 (target: within 1.1x of torch): ``opt.step()`` alone (gradients fixed) for
``torch.optim.Muon`` and ``steepest.Muon`` on the same shapes (a transformer block's matrices
of width d: d x 3d, d x d, 4d x d, d x 4d), both with bfloat16 Newton-Schulz (torch's choice, the
identical computation) and steepest's CPU default (float32). Median of interleaved repeats,
reported as ratios measured side by side in one run.

Part 2: the polar factor of a random n x n and n x 4n Gaussian matrix by SVD (exact) and by
Newton-Schulz (5 quintic steps, float32 and bfloat16): time and orthogonality error
``||P^T P - I||_2`` over the row space (the largest deviation of a singular value of P from 1;
NS's quintic is built not to converge, so ~0.3 is expected) and the relative distance to the
exact ``U V^T`` in Frobenius norm.

Times are the CPU time of the calling thread (``time.thread_time``, with one torch thread), not
wall time: on a shared, overloaded machine wall time mostly measures waiting for a core. Compare
ratios within one run; ``--wall`` switches to wall-clock time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import steepest
from steepest.norms import newton_schulz, polar_svd


def block_shapes(d: int) -> list[tuple[int, int]]:
    return [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)]


def _params(shapes: list[tuple[int, int]], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g)
    return ps


CLOCK = time.thread_time


def _median_times(fns: dict[str, callable], repeats: int) -> dict[str, float]:
    for f in fns.values():  # warm up (lazy state, allocator)
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():  # interleaved, so drift hits every method alike
            t0 = CLOCK()
            f()
            times[k].append(CLOCK() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def muon_step(sizes: list[int], repeats: int) -> None:
    print("Part 1: Muon step (median s/step; ratio to torch.optim.Muon)")
    print(f"{'width':>6} {'torch Muon':>11} {'steepest bf16':>14} {'ratio':>6} {'steepest f32':>13} {'ratio':>6}")
    for d in sizes:
        shapes = block_shapes(d)
        a, b, c = _params(shapes), _params(shapes), _params(shapes)
        opts = {
            "torch": torch.optim.Muon(a, lr=1e-9),
            "bf16": steepest.Muon(b, lr=1e-9, ns_dtype="bfloat16"),
            "f32": steepest.Muon(c, lr=1e-9),
        }
        t = _median_times({k: o.step for k, o in opts.items()}, repeats)
        print(f"{d:>6} {t['torch']:>11.2e} {t['bf16']:>14.2e} {t['bf16'] / t['torch']:>6.2f} "
              f"{t['f32']:>13.2e} {t['f32'] / t['torch']:>6.2f}")


def polar_cost(sizes: list[int], repeats: int) -> None:
    print("\nPart 2: polar factor, SVD vs Newton-Schulz (5 steps)")
    print(f"{'shape':>12} {'method':>8} {'s':>9} {'x SVD':>6} {'max|s_i-1|':>11} {'||P-UV^T||/||UV^T||':>20}")
    for n in sizes:
        for shape in ((n, n), (n, 4 * n)):
            g = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
            exact = polar_svd(g.double())[0]
            fns = {
                "svd": lambda g=g: polar_svd(g)[0],
                "ns-f32": lambda g=g: newton_schulz(g),
                "ns-bf16": lambda g=g: newton_schulz(g, dtype=torch.bfloat16),
            }
            t = _median_times(fns, repeats)
            for k, f in fns.items():
                p = f().double()
                sv = torch.linalg.svdvals(p)
                dev = float((sv - 1).abs().max())
                rel = float(torch.linalg.norm(p - exact) / torch.linalg.norm(exact))
                print(f"{shape!s:>12} {k:>8} {t[k]:>9.2e} {t[k] / t['svd']:>6.2f} {dev:>11.3f} {rel:>20.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,128,256,512")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wall", action="store_true", help="wall-clock time instead of thread CPU time")
    args = ap.parse_args()
    global CLOCK
    if args.wall:
        CLOCK = time.perf_counter
    elif args.threads != 1:
        ap.error("thread CPU time needs --threads 1 (torch's other threads are not counted); use --wall")
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    clock = "wall-clock" if args.wall else "thread CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.repeats} repeats, {clock} time")
    muon_step(sizes, args.repeats)
    polar_cost(sizes, args.repeats)


if __name__ == "__main__":
    main()
