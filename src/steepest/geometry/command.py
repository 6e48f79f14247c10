"""``steepest geometry PROBLEM``: print the sign-friendliness report of a problem.

``PROBLEM`` is a built-in problem name (``steepest geometry --list``) or a Python entry point
``module:function`` / ``path/to/file.py:function`` for your own model (modules are imported
from the current directory first, as ``python -m`` does). The entry-point contract:

    def function(seed: int = 0) -> tuple[nn.Module, loss_fn, data]

``loss_fn(outputs, targets)`` returns the *mean* loss of a batch; ``data`` is one batch
``(inputs, targets)`` or a re-iterable of such batches (a list, a non-shuffling DataLoader) over
which the loss is averaged; ``model(inputs)`` gives the outputs. The ``seed`` parameter is
optional (passed only if the function accepts it). With ``--train-steps`` the model is first
trained on those same batches (cycled) and the gradient density is logged along the way.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import torch

from steepest._cli_types import finite_float, int_at_least, int_in_range

__all__ = ["add_arguments", "load_entry_point", "run"]

_OPTIMIZERS = {
    "sgd": (lambda p, lr: torch.optim.SGD(p, lr=lr), 0.1),
    "adam": (lambda p, lr: torch.optim.Adam(p, lr=lr), 1e-3),
    "signsgd": (lambda p, lr: _signsgd(p, lr), 1e-3),
}


def _signsgd(params: Any, lr: float) -> torch.optim.Optimizer:
    from steepest.optim import SignSGD

    return SignSGD(params, lr=lr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("problem", nargs="?",
                        help="built-in problem name (--list), module:function (importable or in "
                             "the current directory) or path/to/file.py:function")
    parser.add_argument("--list", action="store_true", help="list the built-in problems and exit")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="model initialization seed (default 0)")
    parser.add_argument("--examples", type=int_at_least(1), default=None,
                        help="use the first N training examples (default: all)")
    parser.add_argument("--batch", type=int_at_least(1), default=1024,
                        help="examples per forward pass when averaging the loss (default 1024)")
    parser.add_argument("--mode", choices=["auto", "dense", "matrix-free"], default="auto",
                        help="dense Hessian or Hessian-vector products only (auto, the default: "
                             "times two Hessian-vector products and picks the cheaper, dense only "
                             "if d <= --dense-max)")
    parser.add_argument("--dense-max", type=int_at_least(1), default=2000,
                        help="--mode auto never builds a dense Hessian above this many parameters "
                             "(default 2000); an explicit --mode dense does")
    parser.add_argument("--tighten", type=int_at_least(1), default=1, metavar="K",
                        help="K times the effort on the L_inf bracket (sign-vector starts and "
                             "iterations, sampled columns, branch-and-bound time); costs about K "
                             "times the bracket search, printed in the report (default 1)")
    parser.add_argument("--exact-max", type=int_in_range(1, 62), default=62,
                        help="try the exact L_inf (branch-and-bound) when d <= this (1 to 62: the "
                             "branch-and-bound's 64-bit sign masks; default 62)")
    parser.add_argument("--exact-time", type=finite_float(0.0, lo_open=True), default=30.0,
                        help="seconds allowed for the exact L_inf (default 30)")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                        help="precision of the Hessian computations (default float64)")
    parser.add_argument("--probes", type=int_at_least(1), default=8,
                        help="random probes of the trace estimates (Hutchinson, Lanczos; default 8)")
    parser.add_argument("--columns", type=int_at_least(1), default=128,
                        help="sampled Hessian columns for rho_diag (matrix-free mode)")
    parser.add_argument("--train-steps", type=int_at_least(0), default=0,
                        help="train this many steps first, logging the gradient density")
    parser.add_argument("--optimizer", choices=sorted(_OPTIMIZERS), default="sgd",
                        help="optimizer for --train-steps (default sgd)")
    parser.add_argument("--lr", type=finite_float(0.0), default=None,
                        help="learning rate for --train-steps (default: sgd 0.1, adam 1e-3, "
                             "signsgd 1e-3)")
    parser.add_argument("--density-every", type=int_at_least(1), default=50,
                        help="log the gradient density every N training steps (default 50)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument("--no-spectral", action="store_true",
                        help="skip the per-layer spectral view of the gradient (stable rank, "
                             "singular-value density; printed by default for models with matrices)")
    parser.add_argument("--no-progress", action="store_true",
                        help="hide progress bars (hidden anyway when stderr is not a terminal)")


def load_entry_point(spec: str) -> Any:
    """Import ``module:function`` or ``path/to/file.py:function`` and return the function."""
    if ":" not in spec:
        raise ValueError(f"entry point must look like module:function, got {spec!r}")
    mod_name, _, fn_name = spec.rpartition(":")
    if mod_name.endswith(".py") or "/" in mod_name:
        path = Path(mod_name)
        if not path.is_file():
            raise ValueError(f"entry point file {mod_name!r} does not exist")
        mspec = importlib.util.spec_from_file_location(path.stem, path)
        assert mspec is not None and mspec.loader is not None
        module = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(module)
    else:
        # a console script's sys.path lacks the current directory (python -m has it first)
        cwd = str(Path.cwd())
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)
        module = importlib.import_module(mod_name)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"{mod_name!r} has no callable {fn_name!r}")
    return fn


def _chunks(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _setup(args: argparse.Namespace) -> tuple[str, Any, Any, Any, Any]:
    """(name, model, loss_fn, data, train_batches) for a built-in problem or an entry point."""
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    from steepest.problems import get_problem, list_problems

    if args.problem in list_problems():
        inst = get_problem(args.problem).build(seed=args.seed, dtype=dtype)
        x, y = inst.train.tensors
        if args.examples is not None:
            x, y = x[: args.examples], y[: args.examples]
        data = _chunks(x, y, args.batch)
        return args.problem, inst.model, inst.loss_fn, data, inst.batches(seed=args.seed)
    if ":" not in args.problem:
        raise ValueError(f"unknown problem {args.problem!r}; built-in: {list_problems()}, "
                         "or give an entry point module:function")
    fn = load_entry_point(args.problem)
    kwargs = {"seed": args.seed} if "seed" in inspect.signature(fn).parameters else {}
    out = fn(**kwargs)
    if not (isinstance(out, tuple | list) and len(out) == 3):
        raise ValueError(f"{args.problem} must return (model, loss_fn, data), got {type(out).__name__}")
    model, loss_fn, data = out
    model = model.to(dtype)

    def cast(b: Any) -> Any:
        xb, yb = b
        xb = xb.to(dtype) if isinstance(xb, torch.Tensor) and xb.is_floating_point() else xb
        yb = yb.to(dtype) if isinstance(yb, torch.Tensor) and yb.is_floating_point() else yb
        return xb, yb

    from steepest.geometry.models import _batches

    batches = [cast(b) for b in _batches(data)]
    if args.examples is not None:
        kept, n = [], 0
        for xb, yb in batches:
            if n >= args.examples:
                break
            k = args.examples - n
            kept.append((xb[:k], yb[:k]))
            n += len(xb[:k])
        batches = kept

    def cycle() -> Any:
        while True:
            yield from batches

    return args.problem, model, loss_fn, batches, cycle()


def run(args: argparse.Namespace) -> int:
    from steepest.geometry.models import density_along_training
    from steepest.geometry.report import geometry_report
    from steepest.problems import describe

    if args.list or not args.problem:
        for n, desc in describe().items():
            print(f"{n:22s} {desc}")
        if not args.list:
            print("\nusage: steepest geometry PROBLEM (a name above or module:function)",
                  file=sys.stderr)
            return 2
        return 0
    try:
        name, model, loss_fn, data, train_batches = _setup(args)
    except (ValueError, ImportError) as exc:
        print(f"steepest geometry: {exc}", file=sys.stderr)
        return 2
    # progress bars only on a terminal: piped output would keep every redraw as a line
    progress = not args.no_progress and sys.stderr.isatty()
    history = []
    if args.train_steps > 0:
        make, default_lr = _OPTIMIZERS[args.optimizer]
        opt = make(model.parameters(), args.lr if args.lr is not None else default_lr)
        history = density_along_training(
            model, loss_fn, train_batches, opt, args.train_steps, eval_data=data,
            every=args.density_every, progress=progress,
        )
    try:
        rep = geometry_report(
            model, loss_fn, data, name=name, mode=args.mode, dense_max=args.dense_max,
            exact_max=args.exact_max, exact_time=args.exact_time, num_probes=args.probes, num_columns=args.columns,
            seed=args.seed, progress=progress, tighten=args.tighten,
        )
    except ValueError as exc:
        print(f"steepest geometry: {exc}", file=sys.stderr)
        return 2
    rep.density_history = history
    if args.train_steps > 0:
        rep.name = f"{name} after {args.train_steps} {args.optimizer} steps"
    print(rep.format(recommendation=False))
    out = rep.to_dict()
    if not args.no_spectral and any(p.dim() >= 2 for p in model.parameters() if p.requires_grad):
        from steepest.geometry.spectral import format_spectral_view, spectral_view

        layers = spectral_view(model, loss_fn, data)  # one gradient and one SVD per layer (issue 13)
        print()
        print(format_spectral_view(layers))
        out["spectral_view"] = [r.to_dict() for r in layers]
        print()
    print("\n".join(rep.recommend().lines()))  # the advice comes last
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    return 0
