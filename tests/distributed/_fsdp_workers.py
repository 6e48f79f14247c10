"""Worker for the FSDP2 test (run by ``_harness.run_workers``): every optimizer on a small MLP
sharded with ``fully_shard`` (DTensor parameters) against the same optimizer unsharded.

Every rank trains on the same batches, so FSDP2's averaged gradient equals the unsharded one;
the reference is the same model, same seed, unsharded, in the same process. Workers return the
largest parameter difference per optimizer; the assertions live in test_fsdp.py.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

import steepest

OPTIMIZERS: dict[str, Any] = {
    "SignSGD": lambda ps: steepest.SignSGD(ps, lr=1e-2),
    "Signum": lambda ps: steepest.SignSGD(ps, lr=1e-2, momentum=0.9, weight_decay=0.1),
    "ScaledSignSGD": lambda ps: steepest.ScaledSignSGD(ps, lr=1e-3),
    "ScaledSignSGD-per_tensor": lambda ps: steepest.ScaledSignSGD(ps, lr=1e-3, scope="per_tensor"),
    "LpDescent-p3": lambda ps: steepest.LpDescent(ps, lr=1e-2, p=3.0),
    "LpDescent-p3-scaled": lambda ps: steepest.LpDescent(ps, lr=1e-2, p=3.0, scaled=True),
    "CoordinateDescent": lambda ps: steepest.CoordinateDescent(ps, lr=0.3),
    "CoordinateDescent-per_tensor": lambda ps: steepest.CoordinateDescent(ps, lr=0.3, scope="per_tensor"),
    "BlockNormalizedSGD": lambda ps: steepest.BlockNormalizedSGD(ps, lr=1e-2),
    "EFSignSGD": lambda ps: steepest.EFSignSGD(ps, lr=1e-2),
    "Lion": lambda ps: steepest.Lion(ps, lr=1e-2, weight_decay=0.1),
    "SteepestDescent-l1-normalized": lambda ps: steepest.SteepestDescent(ps, lr=0.3, norm="l1", mode="normalized"),
    "SteepestDescent-linf-normalized": lambda ps: steepest.SteepestDescent(ps, lr=1e-2, norm="linf", mode="normalized"),
    "MSGD": lambda ps: steepest.MSGD(ps, lr=1e-2),
    "SVAG": lambda ps: steepest.SVAG(ps, lr=1e-2),
    "MSVAG": lambda ps: steepest.MSVAG(ps, lr=1e-2),
    "AdamStar": lambda ps: steepest.AdamStar(ps, lr=1e-2),
    "AdamAveraged": lambda ps: steepest.AdamAveraged(ps, lr=1e-2),
    "Stacey-p2": lambda ps: steepest.Stacey(ps, lr=1e-2),
    "Stacey-pp": lambda ps: steepest.Stacey(ps, lr=1e-2, variant="pp"),
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    # Odd sizes: FSDP2 pads uneven shards, which the reductions must not count.
    return nn.Sequential(nn.Linear(7, 9), nn.Tanh(), nn.Linear(9, 5), nn.Tanh(), nn.Linear(5, 1))


def _batch(it: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + it)
    return torch.randn(16, 7, generator=g), torch.randn(16, 1, generator=g)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for it in range(steps):
        x, y = _batch(it)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def compare(rank: int, world: int, names: list[str], steps: int) -> dict[str, float]:
    from torch.distributed.fsdp import fully_shard

    out: dict[str, float] = {}
    base = _model()
    for name in names:
        ref = copy.deepcopy(base)
        _train(ref, OPTIMIZERS[name](ref.parameters()), steps)
        sharded = copy.deepcopy(base)
        for layer in sharded:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(sharded)
        _train(sharded, OPTIMIZERS[name](sharded.parameters()), steps)
        diff = 0.0
        for p, q in zip(ref.parameters(), sharded.parameters()):
            full = q.full_tensor() if hasattr(q, "full_tensor") else q
            d = float((p.detach() - full.detach()).abs().max())
            diff = max(diff, d if math.isfinite(d) else math.inf)
        out[name] = diff
    return out
