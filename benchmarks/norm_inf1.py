"""Exact ||H||_{inf,1}: how large a d each method finishes within a time budget (default 60 s).

Methods, measured side by side in one run on the same matrices:

* ``plain``: all 2^d sign vectors, ``|S H^T|`` summed per row in chunks (what [BPL20] did,
  App. D.2): ``O(2^d d^2)``;
* ``enumerate``: ``steepest``'s exhaustive search (s -> -s symmetry, meet-in-the-middle
  partial sums): ``O(2^(d-1) d)``;
* ``bnb``: ``steepest.geometry.norm_inf1`` (branch-and-bound with Russian-doll bounds).

The exhaustive methods take the same time for every matrix of a size, so they run on one
family; their time doubles per dimension, so a size predicted (2.1x the previous one) to exceed
the budget is not started. Branch-and-bound depends on the matrix: it runs on four families
(the paper's rotated quadratics, Wishart, symmetric Gaussian, random +-1) until a size does not
finish within the budget (``time_limit``). Every exact value is checked against the others.

    python benchmarks/norm_inf1.py            # budget 60 s (several minutes in all)
    python benchmarks/norm_inf1.py --quick    # budget 5 s
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from steepest.geometry import norm_inf1_bruteforce, rotated_quadratic, solve_norm_inf1


def family(name: str, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000 * d)
    if name == "rotated":  # [BPL20, Fig. 3] / App. D.2
        return rotated_quadratic(d, 100.0, 0.5, seed=seed + d)
    if name == "wishart":
        B = rng.standard_normal((d, d))
        return B @ B.T
    if name == "gaussian":
        B = rng.standard_normal((d, d))
        return B + B.T
    if name == "pm1":
        return rng.choice([-1.0, 1.0], size=(d, d))
    raise ValueError(name)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def exhaustive(budget: float, start: int) -> tuple[dict[str, dict[int, tuple[float, float]]], dict[str, int]]:
    """Times (and values) of the exhaustive methods on the symmetric Gaussian family."""
    res: dict[str, dict[int, tuple[float, float]]] = {"plain": {}, "enumerate": {}}
    reached: dict[str, int] = {}
    for meth in ("plain", "enumerate"):
        d, last = start, None
        while True:
            if last is not None and 2.1 * last > budget:
                print(f"  {meth:9s} d={d}: predicted {2.1 * last:.0f} s > budget, not started")
                break
            H = family("gaussian", d)
            if meth == "plain":
                val, t = timed(norm_inf1_bruteforce, H)
            else:
                r, t = timed(solve_norm_inf1, H, method="enumerate")
                val = r.value
            print(f"  {meth:9s} d={d}: {t:7.2f} s  value {val:.10g}", flush=True)
            if t > budget:
                break
            res[meth][d] = (t, val)
            reached[meth] = d
            last, d = t, d + 1
    return res, reached


def bnb(budget: float, start: int, families: list[str]) -> tuple[dict[str, dict[int, tuple[float, float, int]]], dict[str, int]]:
    res: dict[str, dict[int, tuple[float, float, int]]] = {f: {} for f in families}
    reached: dict[str, int] = {}
    for fam in families:
        d = start
        while d <= 62:
            H = family(fam, d)
            r = solve_norm_inf1(H, method="bnb", time_limit=budget)
            status = "exact" if r.exact else f"NOT finished, bracket [{r.lower:.6g}, {r.upper:.6g}]"
            print(f"  bnb {fam:9s} d={d}: {r.seconds:7.2f} s  nodes {r.nodes:>11,d}  {status}", flush=True)
            if not r.exact:
                break
            res[fam][d] = (r.seconds, r.value, r.nodes)
            reached[fam] = d
            d += 2
    return res, reached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per matrix (default 60)")
    ap.add_argument("--quick", action="store_true", help="budget 5 s")
    ap.add_argument("--families", default="rotated,wishart,gaussian,pm1")
    args = ap.parse_args()
    budget = 5.0 if args.quick else args.budget
    families = args.families.split(",")
    print(f"budget {budget:.0f} s per matrix; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at start")
    print("exhaustive methods (symmetric Gaussian matrices):")
    ex, ex_reached = exhaustive(budget, 14)
    print("branch-and-bound:")
    bb, bb_reached = bnb(budget, 14, families)

    # cross-check every exact value where two methods ran on the same matrix
    for d, (_, v) in ex["plain"].items():
        for other in (ex["enumerate"].get(d), bb.get("gaussian", {}).get(d)):
            if other is not None:
                assert abs(other[1] - v) <= 1e-9 * v, (d, other[1], v)

    print("\nside by side (seconds; symmetric Gaussian matrices for the three columns):")
    print("    d     plain  enumerate        bnb   plain/bnb")
    ds = sorted(set(ex["plain"]) | set(ex["enumerate"]) | set(bb.get("gaussian", {})))
    for d in ds:
        p = ex["plain"].get(d, (np.nan,))[0]
        e = ex["enumerate"].get(d, (np.nan,))[0]
        b = bb.get("gaussian", {}).get(d, (np.nan,))[0]
        ratio = p / b if np.isfinite(p) and np.isfinite(b) and b > 0 else np.nan
        print(f"  {d:3d}  {p:8.3f}  {e:9.3f}  {b:9.3f}  {ratio:10.1f}")
    print(f"\nlargest d finished within {budget:.0f} s:")
    print(f"  plain enumeration (the paper's method)   d = {ex_reached.get('plain', '-')}")
    print(f"  exhaustive, symmetric + meet-in-middle   d = {ex_reached.get('enumerate', '-')}")
    for fam in families:
        print(f"  branch-and-bound, {fam:22s} d = {bb_reached.get(fam, '-')} (step 2)")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
