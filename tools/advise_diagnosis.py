"""Development data behind docs/advise.md's diagnosis of the race (not a validation).

On the first advise validation's 24 quadratics (seeds 0 and 1, the development cases), trains
every default candidate of ``steepest.advise`` at its default lr x 3^k (k = -4..4, plus the
tuning's extensions) for 100 steps, keeps the whole loss curve, and prints

* the rank, among all configurations, of the best configuration that is a hit at step 100,
  by the loss after 3, 6, 12, 25 and 50 steps (the race's short rungs rank by these);
* hits of successive halving simulated on the curves (first rung at 6-50 steps, final rung at
  100, scored by the loss at the rung) and of the full-horizon search on ``sgd`` + ``muon``.

``PYTHONPATH=src python tools/advise_diagnosis.py`` (a few minutes on one core; 9 min at load ~12).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steepest.advise import default_candidates
from steepest.experiments.advise_validation import _Case, _cases, _is_hit
from steepest.experiments.harness import Context, log_grid_search

T = 100


def curve(case: _Case, make: Any, lr: float) -> list[float]:
    """Loss after 0..T steps of ``make(model, lr)`` from the case's initialisation."""
    model = case.model
    model.load_state_dict(case.state0)
    opt = make(model, lr)
    x, y = case.data
    out: list[float] = []
    for _ in range(T):
        opt.zero_grad()
        loss = case.loss_fn(model(x), y)
        v = float(loss.detach())
        out.append(v if math.isfinite(v) else math.inf)
        if not math.isfinite(v):
            break
        loss.backward()
        opt.step()
    else:
        with torch.no_grad():
            v = float(case.loss_fn(model(x), y))
        out.append(v if math.isfinite(v) else math.inf)
    model.load_state_dict(case.state0)
    return out + [math.inf] * (T + 1 - len(out))


def curves(case: _Case) -> tuple[dict[tuple[str, int], list[float]], float]:
    """Every (candidate, k) curve and L* (the validation's tuning on the x3 grid)."""
    cands = default_candidates(example_input=case.data[0][:1])
    centre = {n: c.default_lr(case.model) for n, c in cands.items()}
    tab: dict[tuple[str, int], list[float]] = {}

    def at(name: str, k: int) -> list[float]:
        if (name, k) not in tab:
            tab[(name, k)] = curve(case, cands[name], centre[name] * 3.0**k)
        return tab[(name, k)]

    def final(name: str, lr: float) -> float:
        return at(name, round(math.log(lr / centre[name]) / math.log(3)))[T]

    best = math.inf
    for name in cands:
        _, tried = log_grid_search(functools.partial(final, name), centre[name], n_grid=5,
                                   factor=3.0, max_extend=8)
        best = min(best, min(v for _, v in tried))
        for k in range(-4, 5):
            at(name, k)
    return tab, best


def halving(tab: dict[tuple[str, int], list[float]], lens: tuple[int, ...],
            keep: tuple[int, ...]) -> tuple[str, int]:
    """Successive halving on the curves, k in {-1, 0, 1}: ``keep[i]`` survive to ``lens[i+1]``."""
    live = [key for key in tab if -1 <= key[1] <= 1]
    for i, t in enumerate(lens):
        live.sort(key=lambda key: (tab[key][t], key))
        if i < len(keep):
            live = live[:keep[i]]
    return live[0]


def search(tab: dict[tuple[str, int], list[float]], short: tuple[str, ...], cap: int) -> float:
    """advise(method="search") on the curves: k in -2..2, extensions in turn, ``cap`` runs."""
    tried = {n: {k: tab[(n, k)][T] for k in range(-2, 3)} for n in short}
    runs, done = 5 * len(short), set[str]()
    while runs < cap and len(done) < len(short):
        for n in short:
            if n in done or runs >= cap:
                continue
            t = tried[n]
            b = min(t, key=lambda k: (t[k], abs(k)))
            if t[b] == 0 or min(t) < b < max(t) or (n, b + (1 if b == max(t) else -1)) not in tab:
                done.add(n)
                continue
            k = b + 1 if b == max(t) else b - 1
            t[k] = tab[(n, k)][T]
            runs += 1
    return min(v for n in short for v in tried[n].values())


def loss_after(tab: dict[tuple[str, int], list[float]], t: int, key: tuple[str, int]) -> float:
    return tab[key][t]


def main() -> None:
    torch.set_num_threads(1)
    ctx = Context(quick=False, seeds=2, out_dir=Path("."), progress=False)
    cases = _cases(ctx, 20, [10.0, 100.0, 1000.0], [0.0, 0.1, 0.3, 1.0], [], 128)
    ranks: dict[int, list[int]] = {t: [] for t in (3, 6, 12, 25, 50)}
    sh = {(6, 12, 25, 50, 100): (16, 8, 4, 2), (12, 25, 50, 100): (8, 3, 1),
          (25, 50, 100): (6, 2), (50, 100): (3,)}
    sh_hits = dict.fromkeys(sh, 0)
    search_hits = 0
    for case in cases:
        tab, best = curves(case)
        winners = [key for key, v in tab.items() if _is_hit(v[T], best)]
        for t in ranks:
            order = sorted(tab, key=functools.partial(loss_after, tab, t))
            ranks[t].append(min(order.index(w) for w in winners) + 1)
        for lens, keep in sh.items():
            sh_hits[lens] += _is_hit(tab[halving(tab, lens, keep)][T], best)
        search_hits += _is_hit(search(tab, ("sgd", "muon"), 20), best)
        print(case.name, "done", flush=True)
    n = len(cases)
    for t, r in ranks.items():
        print(f"after {t:3d} steps: the hit's rank among {len(tab)} configurations: median "
              f"{np.median(r):g}, range {min(r)}-{max(r)}, top 2 in {sum(x <= 2 for x in r)}/{n}")
    for lens, h in sh_hits.items():
        print(f"successive halving, rungs at {lens}: {h}/{n} hits")
    print(f"search on sgd + muon, budget 20 runs: {search_hits}/{n} hits")


if __name__ == "__main__":
    main()
