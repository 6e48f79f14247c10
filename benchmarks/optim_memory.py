"""Peak intermediate memory of ``step()`` at a practitioner's scale, every optimizer, both paths.

    python benchmarks/optim_memory.py [--width 1024] [--layers 4] [--json out.json]

The parameters of a 4-layer transformer trunk of width 1,024 (per layer four 1,024 x 1,024
attention matrices, a 1,024 x 4,096 and a 4,096 x 1,024 MLP matrix, two LayerNorms and the
biases; 50.4M float32 parameters, 200 MB). For each optimizer, loop and foreach paths, one
step creates the state, and the second is measured with :class:`steepest._memory.LiveBytes`
(the allocation-exact meter of ``tests/optim/test_memory.py``). Reported: the peak in MB and as
a multiple of the largest parameter (16.8 MB here; issue 12's target: at most one
parameter-sized tensor beyond the state, 1.0) and of all parameters (the foreach paths of
``torch.optim`` keep a temporary list the size of all of them). Allocation sizes do not depend
on the CPU or its load, so one run is enough; memory is not time.
"""

from __future__ import annotations

import argparse
import json

import torch

import steepest
from steepest._memory import step_peak_bytes

CONFIGS = {
    "SGD-momentum (torch)": lambda ps, fe: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=fe),
    "AdamW (torch)": lambda ps, fe: torch.optim.AdamW(ps, lr=1e-3, foreach=fe),
    "SignSGD": lambda ps, fe: steepest.SignSGD(ps, lr=1e-3, foreach=fe),
    "Signum": lambda ps, fe: steepest.SignSGD(ps, lr=1e-3, momentum=0.9, foreach=fe),
    "ScaledSignSGD": lambda ps, fe: steepest.ScaledSignSGD(ps, lr=1e-9, foreach=fe),
    "LpDescent(p=3)": lambda ps, fe: steepest.LpDescent(ps, lr=1e-3, p=3.0, foreach=fe),
    "LpDescent(p=4, eps)": lambda ps, fe: steepest.LpDescent(ps, lr=1e-3, p=4.0, eps=1e-3, foreach=fe),
    "CoordinateDescent": lambda ps, fe: steepest.CoordinateDescent(ps, lr=1e-3, foreach=fe),
    "BlockNormalizedSGD": lambda ps, fe: steepest.BlockNormalizedSGD(ps, lr=1e-3, foreach=fe),
    "EFSignSGD": lambda ps, fe: steepest.EFSignSGD(ps, lr=1e-3, foreach=fe),
    "Lion": lambda ps, fe: steepest.Lion(ps, lr=1e-4, foreach=fe),
    "SteepestDescent(l2)": lambda ps, fe: steepest.SteepestDescent(ps, lr=1e-3, foreach=fe),
    "MSGD": lambda ps, fe: steepest.MSGD(ps, lr=1e-3, foreach=fe),
    "SVAG": lambda ps, fe: steepest.SVAG(ps, lr=1e-3, foreach=fe),
    "MSVAG": lambda ps, fe: steepest.MSVAG(ps, lr=1e-3, foreach=fe),
    "AdamStar": lambda ps, fe: steepest.AdamStar(ps, lr=1e-3, foreach=fe),
    "AdamShuffled": lambda ps, fe: steepest.optim.AdamShuffled(ps, lr=1e-3, foreach=fe),
    "AdamAveraged": lambda ps, fe: steepest.optim.AdamAveraged(ps, lr=1e-3, foreach=fe),
    "Stacey(p2, p=3)": lambda ps, fe: steepest.Stacey(ps, lr=1e-3, foreach=fe),
    "Stacey(pp, p=3)": lambda ps, fe: steepest.Stacey(ps, lr=1e-3, variant="pp", foreach=fe),
    "Stacey(2p, p=3)": lambda ps, fe: steepest.Stacey(ps, lr=1e-3, variant="2p", foreach=fe),
    "Muon (matrices; AdamW-free)": lambda ps, fe: steepest.Muon([p for p in ps if p.ndim == 2], lr=1e-3,
                                                                foreach=fe),
}


def trunk(width: int, layers: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes: list[tuple[int, ...]] = []
    for _ in range(layers):
        shapes += [(width, width)] * 4 + [(width,)] * 4  # q, k, v, o and their biases
        shapes += [(4 * width, width), (4 * width,), (width, 4 * width), (width,)]  # MLP
        shapes += [(width,)] * 4  # two LayerNorms (weight, bias)
    ps = [(torch.randn(s, generator=g) * 0.02).requires_grad_() for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g)
    return ps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--only", default="", help="optimizer names or parts of names, separated by , or ; (default: all)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    # Names hold commas ("Stacey(p2, p=3)"): --only splits on ";" when it has one, and matches
    # substrings ("--only Stacey" selects every STACEY row).
    tokens = [t.strip() for t in args.only.split(";" if ";" in args.only else ",") if t.strip()]
    names = [n for n in CONFIGS if not tokens or any(t in n for t in tokens)]
    rows = []
    mb = 1e6
    print(f"{'optimizer':28s} {'path':8s} {'peak MB':>8s} {'x largest':>9s} {'x all':>6s}")
    for name in names:
        for fe in (False, True):
            ps = trunk(args.width, args.layers)
            opt = CONFIGS[name](ps, fe)
            used = [p for p in ps if any(p is q for g in opt.param_groups for q in g["params"])]
            opt.step()  # creates the state
            peak = step_peak_bytes(opt, used)
            largest = max(p.numel() * p.element_size() for p in used)
            total = sum(p.numel() * p.element_size() for p in used)
            row = {"optimizer": name, "path": "foreach" if fe else "loop", "peak_bytes": peak,
                   "params": sum(p.numel() for p in used), "largest_bytes": largest,
                   "x_largest": peak / largest, "x_all": peak / total, "meets_target": peak <= largest}
            rows.append(row)
            print(f"{name:28s} {row['path']:8s} {peak / mb:8.1f} {row['x_largest']:9.2f} {row['x_all']:6.2f}",
                  flush=True)
            del opt, ps, used
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": {"width": args.width, "layers": args.layers, "torch": torch.__version__},
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
