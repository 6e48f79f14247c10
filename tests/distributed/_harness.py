"""Run a function on several gloo processes on localhost, with hard deadlines.

``run_workers(fn, world_size, tmp_path, ...)`` spawns ``world_size`` processes (the ``spawn``
start method), each joining a gloo process group through a ``file://`` store in ``tmp_path``
with the given collective ``timeout``, and calls ``fn(rank, world_size, *args)``. Each worker
writes its result (or its traceback) to a file and leaves with ``os._exit`` after flushing: no
process-group teardown, which can abort in gloo's destructors when ranks exit together and is
not what these tests are about.

The parent joins every worker against one deadline, and once one worker has exited gives the
others at most ``linger_s`` (default: the collective timeout + 10 s) more; it then kills (only
its own children, by handle) whatever is still alive, so that a hung worker fails the test
instead of hanging the suite.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import pickle
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _entry(
    fn: Callable[..., Any],
    rank: int,
    world_size: int,
    store: str,
    out_dir: str,
    timeout_s: float,
    args: tuple[Any, ...],
) -> None:
    code = 0
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo",
            init_method=f"file://{store}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        outcome: tuple[str, Any] = ("ok", fn(rank, world_size, *args))
    except BaseException:
        outcome = ("error", traceback.format_exc())
        code = 1
    path = Path(out_dir) / f"rank{rank}.pkl"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(outcome, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    os._exit(code)


class WorkerFailure(AssertionError):
    pass


def run_workers(
    fn: Callable[..., Any],
    world_size: int,
    tmp_path: Path,
    *,
    args: tuple[Any, ...] = (),
    timeout_s: float = 20.0,
    deadline_s: float = 120.0,
    linger_s: float | None = None,
    allow_errors: bool = False,
) -> list[tuple[str, Any] | None]:
    """Outcomes per rank: ``("ok", result)``, ``("error", traceback)`` or ``None`` (the
    worker was killed at the deadline or died without a word).

    Raises ``WorkerFailure`` with every rank's traceback if a worker failed, unless
    ``allow_errors`` (then the caller inspects the outcomes itself).
    """
    tmp_path = Path(tmp_path)
    out_dir = tmp_path / f"out-{time.monotonic_ns()}"
    out_dir.mkdir(parents=True)
    store = str(out_dir / "store")
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_entry,
            args=(fn, rank, world_size, store, str(out_dir), timeout_s, args),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    # Wait for all, but once one has exited the others get only `linger_s` more: a rank that
    # outlives its peers by more than the collective timeout is stuck.
    linger = timeout_s + 10.0 if linger_s is None else linger_s
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and any(p.is_alive() for p in procs):
        if any(not p.is_alive() for p in procs):
            end = min(end, time.monotonic() + linger)
            for p in procs:
                p.join(max(0.0, end - time.monotonic()))
            break
        procs[0].join(0.05)
    killed = []
    for rank, p in enumerate(procs):
        if p.is_alive():
            killed.append(rank)
            p.terminate()
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
    outcomes: list[tuple[str, Any] | None] = []
    for rank in range(world_size):
        path = out_dir / f"rank{rank}.pkl"
        if path.exists():
            with open(path, "rb") as f:
                outcomes.append(pickle.load(f))
        else:
            outcomes.append(None)
    if not allow_errors:
        problems = []
        for rank, o in enumerate(outcomes):
            if o is None:
                why = "killed at the deadline" if rank in killed else "died without a result"
                problems.append(f"rank {rank}: {why}")
            elif o[0] != "ok":
                problems.append(f"rank {rank} raised:\n{o[1]}")
        if problems:
            raise WorkerFailure("\n\n".join(problems))
    return outcomes


def results(outcomes: list[tuple[str, Any] | None]) -> list[Any]:
    """The per-rank results of successful outcomes."""
    return [o[1] for o in outcomes if o is not None]
