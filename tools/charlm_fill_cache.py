"""Fill the charlm-bench full-preset run cache in the order ``steepest reproduce charlm-bench
--set preset=full`` will read it, most decisive comparison first (issue 20).

The command's protocol (``experiments/charlm_bench.run``): on seed 0 each recipe's lr is tuned on
a x2 grid until bracketed (``log_grid_search``, 3 points, extended); seeds 1-5 are then run with
AdamW at its tuned lr and every other recipe at its default lr. This driver runs exactly those
calls (same ``setup``, ``train_cached`` and grid search), so its results are the command's own;
the order puts AdamW's sweep first, then AdamW and Muon seed by seed (the issue's main comparison),
then each other recipe's sweep and seeds (Muon's sweep among them).

    python tools/charlm_fill_cache.py [--cache docs/results/charlm-bench/full-cache] [--recipes adamw,muon,...]
        [--first muon:-1,adamw:-2]

``--first RECIPE:K,...`` runs those seed-0 grid points first (lr = the recipe's default x
factor^K, computed as the grid search computes it, so the cached run is the command's own).
"""
from __future__ import annotations

import argparse
import time

import torch

from steepest.experiments.charlm_bench import PRESETS, setup, train_cached
from steepest.experiments.harness import log_grid_search
from steepest.recipes import RECIPES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default="docs/results/charlm-bench/full-cache")
    ap.add_argument("--recipes", default="adamw,muon,steepest,scion,lion,signum")
    ap.add_argument("--first", default="", help="seed-0 grid points to run first, RECIPE:K,...")
    a = ap.parse_args()
    torch.set_num_threads(1)
    p = PRESETS["full"]
    cfg, train, val = setup("full")
    recipes = a.recipes.split(",")

    def run(r: str, lr: float | None, seed: int) -> float:
        t = time.time()
        res = train_cached(r, lr, seed, cfg, train, val, a.cache)
        print(f"{r} lr={res['lr']:.4g} seed={seed}: final {res['final']:.4f} ({time.time() - t:.0f} s)", flush=True)
        return float(res["final"])

    for item in filter(None, a.first.split(",")):
        r, k = item.split(":")
        run(r, RECIPES[r].lr * p["factor"] ** int(k), 0)
    best, _ = log_grid_search(lambda lr: run("adamw", lr, 0), RECIPES["adamw"].lr, n_grid=3,
                              factor=p["factor"], max_extend=p["max_extend"])
    print(f"adamw tuned lr {best:.4g}", flush=True)
    for s in range(1, p["seeds"] + 1):
        run("adamw", best, s)
        if "muon" in recipes:
            run("muon", None, s)
    for r in recipes:
        if r == "adamw":
            continue
        log_grid_search(lambda lr, r=r: run(r, lr, 0), RECIPES[r].lr, n_grid=3,
                        factor=p["factor"], max_extend=p["max_extend"])
        for s in range(1, p["seeds"] + 1):
            run(r, None, s)  # cached for muon


if __name__ == "__main__":
    main()
