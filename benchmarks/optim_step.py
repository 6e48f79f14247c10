"""Step time of every steepest optimizer per byte moved, against SGD-momentum and the copy floor.

    python benchmarks/optim_step.py [--layouts big,small] [--repeats 5] [--json out.json]
    python benchmarks/optim_step.py --fused [--paths loop,fused]   # the fused backend too

Layouts: ``big`` = 10M float32 parameters in 100 tensors, ``small`` = 1M in 1,000 tensors.
For each optimizer, loop and foreach paths, ``opt.step()`` alone is timed (gradients fixed),
interleaved with every other configuration (so machine load hits all alike), median of
``--repeats``. Reported per configuration:

* ``bytes``: the bytes a step must move from its state layout: read the gradient, read and
  write the parameter and each parameter-sized state tensor (``(3 + 2 k) * 4 N`` for ``k``
  state tensors); scalars are ignored;
* ``floor_ms``: ``bytes`` at the copy bandwidth measured in the same run (``dst.copy_(src)`` of
  a 10M-float tensor, 8 bytes moved per element);
* ``x_floor``: time / floor;
* ``x_sgd_per_byte``: (time / bytes) / (time / bytes of torch's SGD(momentum=0.9), same path).

Targets (issue 12): ``x_sgd_per_byte <= 1.3`` on ``big`` and ``<= 1.5`` on ``small``. A
configuration over target gets a ``why`` from :data:`WHY` (where the extra time goes).
Absolute times mean little on a shared machine; the ratios are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch

import steepest
from steepest.norms import Norm, combine_lq


class UserLinf(Norm):
    """l_inf as a user writes it outside the package, with the public API only (map, duals,
    primals; the reductions with ``tensor_norms``): its step time beside the built-in Linf's
    (SignSGD, ScaledSignSGD) shows whether a user's norm gets the streaming path (issue 18:
    within 1.2x)."""

    name = "user_linf"

    def map(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)

    # (tensor_norms imported here: the code before issue 18 has none, and its runs time the
    # other rows with this file)
    def duals(self, xs: list[torch.Tensor], per_tensor: bool = False) -> torch.Tensor:
        from steepest.norms import tensor_norms

        return combine_lq(tensor_norms(xs, 1.0), 1.0, per_tensor)

    def primals(self, xs: list[torch.Tensor], per_tensor: bool = False) -> torch.Tensor:
        from steepest.norms import tensor_norms

        m = tensor_norms(xs, float("inf"))
        return m if per_tensor else m.max().expand(len(xs))


class UserLinfPythonDuals(UserLinf):
    """The same norm with its dual summed tensor by tensor in Python (two ops and a temporary
    per tensor): what that costs on 1,000 small tensors."""

    name = "user_linf_python_duals"

    def duals(self, xs: list[torch.Tensor], per_tensor: bool = False) -> torch.Tensor:
        return combine_lq(torch.stack([x.abs().sum() for x in xs]), 1.0, per_tensor)


# name -> (factory(params, foreach), number of parameter-sized state tensors)
CONFIGS: dict[str, tuple[Callable[..., torch.optim.Optimizer], int]] = {
    "SGD-momentum (torch)": (lambda ps, fe, nf=None: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=fe), 1),
    # p -= lr g, nothing else: the least a step can do. Compiled, its time is what any compiled
    # step pays on the layout (dynamo's guards on every parameter and gradient, the graph's
    # call), the floor behind "compiled never slower than eager" for the cheapest updates.
    "SGD (torch)": (lambda ps, fe, nf=None: torch.optim.SGD(ps, lr=1e-3, foreach=fe), 0),
    "AdamW (torch)": (lambda ps, fe, nf=None: torch.optim.AdamW(ps, lr=1e-3, foreach=fe), 2),
    "SignSGD": (lambda ps, fe, nf=None: steepest.SignSGD(ps, lr=1e-3, foreach=fe, nonfinite=nf), 0),
    "Signum": (lambda ps, fe, nf=None: steepest.SignSGD(ps, lr=1e-3, momentum=0.9, foreach=fe, nonfinite=nf), 1),
    "ScaledSignSGD": (lambda ps, fe, nf=None: steepest.ScaledSignSGD(ps, lr=1e-9, foreach=fe, nonfinite=nf), 0),
    "SignSGD(user l_inf)": (lambda ps, fe, nf=None: steepest.SteepestDescent(
        ps, lr=1e-3, norm=UserLinf(), mode="unscaled", foreach=fe, nonfinite=nf), 0),
    "ScaledSignSGD(user l_inf)": (lambda ps, fe, nf=None: steepest.SteepestDescent(
        ps, lr=1e-9, norm=UserLinf(), mode="scaled", foreach=fe, nonfinite=nf), 0),
    "ScaledSignSGD(user l_inf, Python duals)": (lambda ps, fe, nf=None: steepest.SteepestDescent(
        ps, lr=1e-9, norm=UserLinfPythonDuals(), mode="scaled", foreach=fe, nonfinite=nf), 0),
    "LpDescent(p=3)": (lambda ps, fe, nf=None: steepest.LpDescent(ps, lr=1e-3, p=3.0, foreach=fe, nonfinite=nf), 0),
    "CoordinateDescent": (lambda ps, fe, nf=None: steepest.CoordinateDescent(ps, lr=1e-3, foreach=fe, nonfinite=nf), 0),
    "BlockNormalizedSGD": (lambda ps, fe, nf=None: steepest.BlockNormalizedSGD(ps, lr=1e-3, foreach=fe, nonfinite=nf), 0),
    "EFSignSGD": (lambda ps, fe, nf=None: steepest.EFSignSGD(ps, lr=1e-3, foreach=fe, nonfinite=nf), 1),
    "Lion": (lambda ps, fe, nf=None: steepest.Lion(ps, lr=1e-4, foreach=fe, nonfinite=nf), 1),
    "MSGD": (lambda ps, fe, nf=None: steepest.MSGD(ps, lr=1e-3, foreach=fe, nonfinite=nf), 1),
    "SVAG": (lambda ps, fe, nf=None: steepest.SVAG(ps, lr=1e-3, foreach=fe, nonfinite=nf), 2),
    "MSVAG": (lambda ps, fe, nf=None: steepest.MSVAG(ps, lr=1e-3, foreach=fe, nonfinite=nf), 2),
    "AdamStar": (lambda ps, fe, nf=None: steepest.AdamStar(ps, lr=1e-3, foreach=fe, nonfinite=nf), 2),
    "Stacey(p2, p=3)": (lambda ps, fe, nf=None: steepest.Stacey(ps, lr=1e-3, foreach=fe, nonfinite=nf), 2),
    "Stacey(pp, p=3)": (lambda ps, fe, nf=None: steepest.Stacey(ps, lr=1e-3, variant="pp", foreach=fe,
                                                                  nonfinite=nf), 2),
    "SteepestDescent(l2)": (lambda ps, fe, nf=None: steepest.SteepestDescent(ps, lr=1e-3, foreach=fe,
                                                                          nonfinite=nf), 0),
    # SGD-momentum itself as a preset: the EMA (lerp_, one pass over m) and torch SGD's heavy ball
    # (dampening=0: mul_ then add_, two passes over m, as torch's)
    "SteepestDescent(l2, EMA 0.9)": (lambda ps, fe, nf=None: steepest.SteepestDescent(
        ps, lr=1e-3, momentum=0.9, foreach=fe, nonfinite=nf), 1),
    "SteepestDescent(l2, heavy ball 0.9)": (lambda ps, fe, nf=None: steepest.SteepestDescent(
        ps, lr=1e-3, momentum=0.9, dampening=0.0, foreach=fe, nonfinite=nf), 1),
    "AdamShuffled": (lambda ps, fe, nf=None: steepest.optim.AdamShuffled(ps, lr=1e-3, foreach=fe, nonfinite=nf), 2),
    "AdamAveraged": (lambda ps, fe, nf=None: steepest.optim.AdamAveraged(ps, lr=1e-3, foreach=fe, nonfinite=nf), 2),
}
# Not here: Muon and Modular (matrix parameters; their time is the polar factor's matmuls, not
# bytes moved): benchmarks/spectral.py times them against torch.optim.Muon.

# Where the time over target goes, for configurations that miss it (issue 12: "the benchmark
# says why"). On the 1,000-tensor layout the rest is per-op dispatch (~3-5 us per op and chunk).
# A miss only with the default check (the unchecked run meets the target).
GUARD_WHY = ("the NaN/inf check (nonfinite=None on CPU) reads every gradient once more before the "
             "step; with nonfinite='ignore' (torch.optim's behaviour) the target is met")
WHY = {
    "AdamW (torch)": "torch's own AdamW, for reference: sqrt and division temporaries",
    "SignSGD": "sign(g) is a temporary (written, then read by add_): 2 passes beyond SGD's bytes",
    "Signum": "sign(m) is a temporary: 2 passes beyond SGD-momentum's bytes",
    "Lion": ("c = b1 m + (1-b1) g is a temporary (sign in place), m is read twice (c, then its "
             "own update): ~11 passes for 5 counted, SGD-momentum's 8 (~1.4x per byte)"),
    "MSGD": "the bias-corrected step is one more scalar pass on the foreach path",
    "ScaledSignSGD": ("the global l1 norm must be known before any sign is applied: |g| and its sum, "
                      "then sign(g) and the update: ~8 passes for 3 counted (SGD-momentum: 8 for 5)"),
    "LpDescent(p=3)": ("s(g) = sign(g)|g|^(1/2) is three ops on a temporary (|g|, pow, copysign) "
                       "before the update: ~9-10 passes for 3 counted (SGD-momentum: 8 for 5)"),
    "CoordinateDescent": "max|g| per tensor (one aminmax pass each), then the winner's argmax",
    "BlockNormalizedSGD": "each block's l2 norm (one read of g) before the update divides by it",
    "EFSignSGD": ("e += lr g, ||e||_1 (|e| and its sum), then sign(e) and two updates (x and e): "
                  "~13 passes for 5 counted (SGD-momentum: 8 for 5)"),
    "SVAG": ("24 passes over N floats for 7 counted (SGD-momentum: 8 for 5): moments 8, variance "
             "factor 10 (two divisions, shift, clamp, 0/0 map), update 4; eager torch has no fused "
             "kernel for the factor (torch.compile fuses it: --compiled)"),
    "MSVAG": ("24 passes over N floats for 7 counted (SGD-momentum: 8 for 5): moments 8, variance "
              "factor 10, update 4; eager torch has no fused kernel for the factor (--compiled)"),
    "AdamStar": "22 passes for 7 counted: moments 8, (v~ - a m~^2)+ + m~^2/K and rsqrt 10, update 4",
    "AdamAveraged": ("25 passes for 7 counted: torch's Adam magnitudes 11 (sqrt, /bc2, +eps, "
                     "quotient, abs), their sum 1, sign 2, update 3, moments 8"),
    "AdamShuffled": ("a fresh torch.randperm of every tensor each step (sequential, ~8 ns per "
                     "entry: ~4 SGD steps by itself) plus two random gathers that keep the peak "
                     "memory at one tensor"),
    "Stacey(p2, p=3)": ("8 elementwise ops (c, m, z; s_eps's abs, +eps, pow; addcdiv; the coupling "
                        "lerp): 22 transfers for 7 counted bytes"),
    "Stacey(pp, p=3)": "the overflow-safe l_p mirror map adds ~18 elementwise ops (4 powers)",
    "SteepestDescent(l2)": "the global l2 norm (one read of g) before the update divides by it",
}

# The fused path (list kernels: one compiled call per 16 tensors and pass): where it stays above
# SGD-momentum per byte.
FUSED_WHY = {
    "ScaledSignSGD": "two passes (||g||_1 before the first write): floor 4/3 of the counted bytes",
    "BlockNormalizedSGD": "two passes (each tensor's ||g|| before the first write): floor 4/3",
    "EFSignSGD": "two passes (||lr g + e||_1 before the first write): floor 7/5",
    "AdamAveraged": ("the per-tensor mean of gamma before the first write: two loops in one call "
                     "(sum, then update): 10 transfers for 7 counted (floor 10/7 from memory)"),
    "Stacey(p2, p=3)": ("one pass (7 transfers, the 7 counted); on 1M/1,000 the per-tensor "
                        "Python of the drivers and the per-call cost"),
    "Stacey(pp, p=3)": ("one pass (7 transfers, the 7 counted; the mirror step's four powers "
                        "compute-bound near 1x); on 1M/1,000 the drivers' per-tensor Python"),
}
FUSED_GUARD_WHY = ("the NaN/inf scan before a one-pass update reads g once more (floor "
                   "(counted + 1)/counted; steepest.backend.fused says why it cannot be folded)")

LAYOUTS = {"big": (10_000_000, 100), "small": (1_000_000, 1_000)}


DEVICE = torch.device("cpu")  # --device


def _sync() -> None:
    """Wait for queued kernels (accelerators run asynchronously; timing needs them done)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def make_params(n: int, k: int) -> list[torch.Tensor]:
    size = n // k
    ps = [torch.randn(size, device=DEVICE, requires_grad=True) for _ in range(k)]
    for p in ps:
        p.grad = torch.randn_like(p)
    return ps


def copy_bandwidth(repeats: int) -> float:
    """Bytes per second of ``dst.copy_(src)`` (read + write), 10M floats, median."""
    src = torch.randn(10_000_000, device=DEVICE)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ts = []
    for _ in range(max(repeats, 5)):
        _sync()
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync()
        ts.append(time.perf_counter() - t0)
    return 8 * src.numel() / statistics.median(ts)


def _fused(opt: torch.optim.Optimizer) -> bool:
    """Switch ``opt`` to ``fused=True`` if it has fused kernels for all its groups."""
    why = getattr(opt, "_fused_unsupported", None)
    if why is None or any(why({**g, "fused": True}) for g in opt.param_groups):
        return False
    for g in opt.param_groups:
        g["fused"] = True
    return True


# The fused path's references: torch's SGD-momentum on the loop path (the target's reference,
# as in the other paths' rows) and torch's foreach AdamW (issue 18: fused <= 1.0x of it).
FUSED_REFS = {
    "SGD-momentum (torch)": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=False),
    "AdamW (torch)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
    "AdamW fused (torch)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
}
CONFIGS["AdamW fused (torch)"] = (FUSED_REFS["AdamW fused (torch)"], 2)


def run(layout: str, repeats: int, steps: int, names: list[str], scale: float = 1.0,
        guards: tuple[str, ...] = ("default", "ignore"),
        paths: tuple[str, ...] = ("loop", "foreach")) -> list[dict]:
    """Every optimizer in ``names`` on both paths; ours once per non-finite setting in ``guards``
    (``default``: the CPU default, the NaN/inf check before the step; ``ignore``: no check, as
    torch.optim's optimizers), interleaved with torch's SGD-momentum, the per-byte reference."""
    n, k = LAYOUTS[layout]
    n = int(n * scale)
    bw = copy_bandwidth(repeats)
    rows = []
    for path in paths:
        fe = path == "foreach"
        ps = make_params(n, k)
        opts: dict[tuple[str, str], Callable[[], object]] = {}
        for name in names:
            torch_ref = name.endswith("(torch)")
            if path == "fused" and torch_ref:
                if name in FUSED_REFS:
                    opt = FUSED_REFS[name](ps)
                    opt.step()
                    opts[name, "ignore"] = opt.step
                continue
            if path != "fused" and name == "AdamW fused (torch)":
                continue
            for guard in ("ignore",) if torch_ref else guards:
                opt = CONFIGS[name][0](ps, fe, None if guard == "default" else guard)
                if path == "fused" and not _fused(opt):
                    break
                t0 = time.perf_counter()
                opt.step()  # lazy state (and the fused kernels' compile)
                if path == "fused":
                    opt.step()  # step-dependent kernel variants (e.g. M-SVAG's t > 0)
                    if guard == guards[0]:
                        print(f"  first two fused steps of {name} (compile): "
                              f"{time.perf_counter() - t0:.1f} s", flush=True)
                opts[name, guard] = opt.step
        times: dict[tuple[str, str], list[float]] = {key: [] for key in opts}
        for _ in range(repeats):
            for key, step in opts.items():  # interleaved
                _sync()
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                _sync()
                times[key].append((time.perf_counter() - t0) / steps)
        del opts
        ref = ("SGD-momentum (torch)", "ignore")
        ref_t = statistics.median(times[ref])
        ref_b = (3 + 2 * CONFIGS[ref[0]][1]) * 4 * n
        adamw = times.get(("AdamW (torch)", "ignore"))
        adamw_tb = statistics.median(adamw) / ((3 + 2 * 2) * 4 * n) if adamw else float("nan")
        for (name, guard), ts in times.items():
            t = statistics.median(ts)
            b = (3 + 2 * CONFIGS[name][1]) * 4 * n
            ratio = (t / b) / (ref_t / ref_b)
            target = 1.3 if layout == "big" else 1.5
            torch_ref = name.endswith("(torch)")
            rows.append({
                "layout": layout, "params": n, "tensors": k,
                "path": path,
                "optimizer": name, "nonfinite": "n/a" if torch_ref else guard,
                "ms": 1e3 * t, "bytes": b, "floor_ms": 1e3 * b / bw,
                "x_floor": t / (b / bw), "x_sgd_per_byte": ratio, "target": target,
                "x_adamw_foreach_per_byte": (t / b) / adamw_tb,
                "meets_target": ratio <= target,
                "why": "" if ratio <= target else (
                    (FUSED_GUARD_WHY if guard == "default" and name not in FUSED_WHY else
                     FUSED_WHY.get(name, "unexplained")) if path == "fused" else
                    GUARD_WHY if guard == "default" and _meets(
                        times, name, t, b, ref_t, ref_b, target) else WHY.get(name, "unexplained")),
                "copy_GBps": bw / 1e9,
            })
            _print(rows[-1])
    return rows


def run_compiled(layout: str, repeats: int, names: list[str], scale: float = 1.0) -> list[dict]:
    """``torch.compile(opt.step)`` (inductor, loop path traced: inductor fuses each tensor's
    update into one kernel), one optimizer at a time on a fresh dynamo (as in a training script:
    every optimizer's step is the same code object, and several compiled in one process recompile
    it with dynamic shapes). Each is timed interleaved with eager SGD-momentum on the same
    parameters, the target's reference, and with the same optimizer's eager step on both paths
    (``nonfinite="ignore"``: compiled, the default policy is ``ignore``), so that compiled vs
    eager is a ratio measured side by side. Compiling (2-170 s) is not timed (``compile_s``)."""
    n, k = LAYOUTS[layout]
    n = int(n * scale)
    bw = copy_bandwidth(repeats)
    rows = []
    ref_name = "SGD-momentum (torch)"
    ref_b = (3 + 2 * CONFIGS[ref_name][1]) * 4 * n
    for name in names:
        torch._dynamo.reset()
        ps = make_params(n, k)
        ref = CONFIGS[ref_name][0](ps, False)
        opt = CONFIGS[name][0](ps, False, None)
        # The same optimizer eager, on both paths, without the NaN check (compiled, the default
        # checks nothing): "compiled <= eager" (issue 18) is read from x_eager_loop/x_eager_foreach.
        nf = None if name.endswith("(torch)") else "ignore"
        eager = {path: CONFIGS[name][0](ps, path == "foreach", nf) for path in ("loop", "foreach")}
        for o in (opt, ref, *eager.values()):
            o.step()  # lazy state
        step = torch.compile(opt.step)
        t0 = time.perf_counter()
        step(), step()
        _sync()
        compile_s = time.perf_counter() - t0
        print(f"  compiled {name} in {compile_s:.0f} s", flush=True)
        ts, rs = [], []
        es: dict[str, list[float]] = {path: [] for path in eager}
        for _ in range(repeats):
            for fn, out in ((step, ts), (ref.step, rs), *((o.step, es[path]) for path, o in eager.items())):
                _sync()
                t0 = time.perf_counter()
                fn()
                _sync()
                out.append(time.perf_counter() - t0)
        t, ref_t = statistics.median(ts), statistics.median(rs)
        b = (3 + 2 * CONFIGS[name][1]) * 4 * n
        ratio = (t / b) / (ref_t / ref_b)
        target = 1.3 if layout == "big" else 1.5
        rows.append({
            "layout": layout, "params": n, "tensors": k, "path": "compiled", "optimizer": name,
            "nonfinite": "n/a" if name.endswith("(torch)") else "ignore", "ms": 1e3 * t, "bytes": b,
            "floor_ms": 1e3 * b / bw, "x_floor": t / (b / bw), "x_sgd_per_byte": ratio,
            "target": target, "meets_target": ratio <= target,
            "why": "" if ratio <= target else "compiled: " + WHY.get(name, "unexplained"),
            "copy_GBps": bw / 1e9, "compile_s": compile_s,
            # the same optimizer's eager step (nonfinite="ignore"), interleaved with the compiled one
            **{f"eager_{path}_ms": 1e3 * statistics.median(v) for path, v in es.items()},
            **{f"x_eager_{path}": t / statistics.median(v) for path, v in es.items()},
            **{f"eager_{path}_x_sgd_per_byte": (statistics.median(v) / b) / (ref_t / ref_b)
               for path, v in es.items()},
        })
        _print(rows[-1])
        print(f"  {name}: compiled / eager loop {rows[-1]['x_eager_loop']:.2f}, "
              f"/ eager foreach {rows[-1]['x_eager_foreach']:.2f}", flush=True)
    torch._dynamo.reset()
    return rows


def _meets(times: dict, name: str, t: float, b: int, ref_t: float, ref_b: int, target: float) -> bool:
    """Whether the unchecked (``nonfinite="ignore"``) run of ``name`` meets the target."""
    ts = times.get((name, "ignore"))
    return bool(ts) and (statistics.median(ts) / b) / (ref_t / ref_b) <= target


def _print(r: dict) -> None:
    print(f"{r['layout']:6s} {r['path']:8s} {r['optimizer']:22s} {r['nonfinite']:8s} {r['ms']:8.1f} "
          f"{r['x_floor']:8.2f} {r['x_sgd_per_byte']:8.2f} {r.get('x_adamw_foreach_per_byte', float('nan')):8.2f}"
          f"  {r['why']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layouts", default="big,small")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply the parameter counts (e.g. 0.2 on a loaded machine)")
    ap.add_argument("--threads", type=int, default=0,
                    help="intra-op threads (0: torch's default); 1 is steadier on a loaded machine, "
                         "where spinning OpenMP threads make transcendental ops 10-100x slower")
    ap.add_argument("--only", default="", help="optimizer names or parts of names, separated by , or ; (default: all); "
                    "=Name: that name only")
    ap.add_argument("--guards", default="default,ignore",
                    help="non-finite settings of ours to time: default (the CPU default: check for "
                         "NaN/inf first), ignore (no check, as torch.optim), or both")
    ap.add_argument("--device", default="cpu",
                    help="cpu (default) or cuda: on a GPU the floor is its copy bandwidth, and the "
                         "paths are the same (foreach is the default there)")
    ap.add_argument("--fused", action="store_true",
                    help="also time fused=True (the fused backend; its first step compiles, timed apart)")
    ap.add_argument("--paths", default="",
                    help="paths to time, of loop,foreach,fused (default: loop,foreach[,fused])")
    ap.add_argument("--compiled", action="store_true",
                    help="also time torch.compile(opt.step) (inductor; compiling takes 5-90 s per optimizer)")
    ap.add_argument("--compiled-only", action="store_true",
                    help="only the --compiled rows (each times the same optimizer's eager loop and "
                         "foreach steps beside the compiled one)")
    ap.add_argument("--no-size-asserts", action="store_true",
                    help="compile with torch._inductor.config.size_asserts = False: inductor then "
                         "skips its per-tensor size/stride check of every graph input and buffer on "
                         "each call (~3-4 per tensor; most of a compiled step's overhead at 1,000 "
                         "tensors)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if args.no_size_asserts:
        import torch._inductor.config as inductor_config

        inductor_config.size_asserts = False
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Names hold commas ("Stacey(p2, p=3)"): --only splits on ";" when it has one, and matches
    # substrings ("--only Stacey" selects every STACEY row).
    tokens = [t.strip() for t in args.only.split(";" if ";" in args.only else ",") if t.strip()]
    # ("=Name" matches that name only: "=ScaledSignSGD" leaves out "ScaledSignSGD(user l_inf)".)
    names = [n for n in CONFIGS if not tokens or n.startswith("SGD")
             or any(n == t[1:] if t.startswith("=") else t in n for t in tokens)
             or ((args.fused or "fused" in args.paths) and n.startswith("AdamW"))]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__} on {DEVICE}, {torch.get_num_threads()} threads, load average {load:.1f} "
          f"at start, median of {args.repeats}", flush=True)
    print(f"{'layout':6s} {'path':8s} {'optimizer':22s} {'nonfin.':8s} {'ms':>8s} {'x floor':>8s} "
          f"{'x SGD/B':>8s} {'xAdamW/B':>8s}  why")
    rows = []
    for layout in args.layouts.split(","):
        paths = tuple(args.paths.split(",")) if args.paths else (
            ("loop", "foreach", "fused") if args.fused else ("loop", "foreach"))
        if not args.compiled_only:
            rows += run(layout, args.repeats, args.steps, names, args.scale, tuple(args.guards.split(",")),
                        paths)
        if args.compiled or args.compiled_only:
            rows += run_compiled(layout, args.repeats, names, args.scale)
    if args.json:
        meta = {"scale": args.scale, "torch": torch.__version__, "threads": torch.get_num_threads(), "load_avg_1min": load,
                "repeats": args.repeats, "steps": args.steps, "guards": args.guards, "paths": args.paths,
                "compiled": args.compiled or args.compiled_only, "device": str(DEVICE),
                "size_asserts": not args.no_size_asserts,
                "device_name": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu"}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
