"""Train with a steepest optimizer on FSDP2-sharded parameters (or DDP), CPU/gloo or GPU/nccl.

    torchrun --standalone --nproc_per_node=2 examples/fsdp_steepest.py                  # FSDP2
    torchrun --standalone --nproc_per_node=2 examples/fsdp_steepest.py --ddp            # DDP
    torchrun --standalone --nproc_per_node=2 examples/fsdp_steepest.py --opt scaled

Every rank trains on its own slice of scikit-learn's bundled digits (no download). With
``fully_shard`` each rank holds 1/M of every parameter, gradient and optimizer state as a DTensor;
global-scope norms (ScaledSignSGD's ||g||_1, CoordinateDescent's argmax) are reduced across the
shards, so the run equals the unsharded one (tests/distributed/test_fsdp.py).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn

import steepest

OPTS = {
    "lion": lambda ps: steepest.Lion(ps, lr=1e-3, weight_decay=0.1),
    "signum": lambda ps: steepest.SignSGD(ps, lr=1e-3, momentum=0.9),
    "scaled": lambda ps: steepest.ScaledSignSGD(ps, lr=1e-5),
    "coordinate": lambda ps: steepest.CoordinateDescent(ps, lr=0.5),
    "stacey": lambda ps: steepest.Stacey(ps, lr=1e-3),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--opt", choices=sorted(OPTS), default="lion")
    ap.add_argument("--ddp", action="store_true", help="DistributedDataParallel instead of FSDP2")
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)

    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    n_train = 1500
    xs, ys = x[rank:n_train:world].to(device), y[rank:n_train:world].to(device)  # this rank's slice
    xt, yt = x[n_train:].to(device), y[n_train:].to(device)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    if args.ddp:
        model = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    opt = OPTS[args.opt](model.parameters())

    for epoch in range(args.epochs):
        perm = torch.randperm(len(xs), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(xs), 32):
            idx = perm[i:i + 32].to(device)
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
        with torch.no_grad():
            acc = (model(xt).argmax(1) == yt).float().mean().item()
        if rank == 0:
            print(f"epoch {epoch + 1}: test accuracy {acc:.3f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
