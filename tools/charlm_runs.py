"""Run chosen charlm-bench full-preset runs into the shared cache, in order (issue 20): each
``RECIPE@LR:SEED`` (``LR`` a number, or ``default`` for the recipe's default, as the command's
report runs use it), with the same ``setup`` and ``train_cached`` as the command, so that a
later ``steepest reproduce charlm-bench --set preset=full --set cache=...`` reads them.

    python tools/charlm_runs.py muon@default:1 steepest@0.0316228:0 [--cache DIR]
"""
from __future__ import annotations

import argparse
import time

import torch

from steepest.experiments.charlm_bench import setup, train_cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="RECIPE@LR:SEED (LR a number or 'default')")
    ap.add_argument("--cache", default="docs/results/charlm-bench/full-cache")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg, train, val = setup("full")
    for item in a.runs:
        r, rest = item.split("@")
        lr_s, seed = rest.split(":")
        lr = None if lr_s == "default" else float(lr_s)
        t = time.time()
        res = train_cached(r, lr, int(seed), cfg, train, val, a.cache)
        print(f"{r} lr={res['lr']:.4g} seed={seed}: final {res['final']:.4f} ({time.time() - t:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
