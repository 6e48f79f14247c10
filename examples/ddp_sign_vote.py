"""Train with 1-bit majority-vote gradients under DistributedDataParallel (CPU, gloo).

    torchrun --standalone --nproc_per_node=3 examples/ddp_sign_vote.py
    torchrun --standalone --nproc_per_node=2 examples/ddp_sign_vote.py --scaled --transport int8

Each process trains an MLP on its shard of scikit-learn's bundled 8x8 digits (no download;
synthetic data if scikit-learn is missing). DDP's gradient all-reduce is replaced by
``steepest.distributed.sign_vote_hook``: every rank sends sign(u) (u: its gradient, or its local
momentum with ``--momentum``), one bit a coordinate, and every rank applies the majority vote
``sign(sum_m sign(u_m))`` with plain SGD (``--scaled``: times the mean l1 norm, [ScaledSign]
Alg. 3). Rank 0 prints loss, test accuracy and the bytes this rank put on the wire next to what
DDP's fp32 all-reduce would have sent. ``--byzantine`` makes the last rank send negated
gradients: the vote still trains (with 3 or more ranks).
"""

from __future__ import annotations

import argparse
import datetime
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from steepest.distributed import SignVoteState, sign_vote_hook


def load_data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    try:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32) / 16.0
        y = torch.tensor(y)
    except ImportError:  # synthetic stand-in: 10 Gaussian blobs in 64 dimensions
        g = torch.Generator().manual_seed(seed)
        centers = torch.randn(10, 64, generator=g)
        y = torch.randint(0, 10, (1800,), generator=g)
        x = centers[y] + 0.8 * torch.randn(1800, 64, generator=g)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_test = len(y) // 5
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32, help="per rank")
    ap.add_argument("--lr", type=float, default=None, help="default: 2e-3, or 1e-4 if --scaled")
    ap.add_argument("--momentum", type=float, default=0.9, help="local momentum before the sign")
    ap.add_argument("--scaled", action="store_true", help="[ScaledSign, Alg. 3] (scaled signSGD)")
    ap.add_argument(
        "--transport", default="auto", choices=["auto", "allgather", "twophase", "int8"]
    )
    ap.add_argument("--byzantine", action="store_true", help="last rank sends negated gradients")
    ap.add_argument("--timeout", type=float, default=60, help="collective timeout, seconds")
    ap.add_argument("--save", default=None, help="save model + hook state to SAVE.rank<r>.pt")
    args = ap.parse_args()
    lr = args.lr if args.lr is not None else (1e-4 if args.scaled else 2e-3)

    torch.set_num_threads(1)  # several processes share the CPU
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    rank, world = dist.get_rank(), dist.get_world_size()

    x_train, y_train, x_test, y_test = load_data()
    x_mine, y_mine = x_train[rank::world], y_train[rank::world]  # this rank's shard

    torch.manual_seed(0)  # same initial model everywhere (DDP also broadcasts rank 0's)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    ddp = DDP(model)
    state = SignVoteState(
        scaled=args.scaled, momentum=args.momentum, transport=args.transport, module=model
    )

    def hook(state, bucket):
        if args.byzantine and rank == world - 1:
            bucket.buffer().neg_()  # a faulty worker: its vote is reversed
        return sign_vote_hook(state, bucket)

    ddp.register_comm_hook(state, hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(100 + rank)
    steps = len(y_mine) // args.batch  # equal on every rank (shards differ by at most one)
    steps = torch.tensor(steps)
    dist.all_reduce(steps, op=dist.ReduceOp.MIN)

    for epoch in range(args.epochs):
        order = torch.randperm(len(y_mine), generator=gen)
        total = 0.0
        for i in range(int(steps)):
            idx = order[i * args.batch : (i + 1) * args.batch]
            opt.zero_grad()
            loss = loss_fn(ddp(x_mine[idx]), y_mine[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach())
        with torch.no_grad():
            acc = float((model(x_test).argmax(1) == y_test).float().mean())
        if rank == 0:
            print(
                f"epoch {epoch + 1}: loss {total / int(steps):.3f}  test acc {acc:.3f}  "
                f"sent {state.bytes_sent / 1e3:.0f} kB vs fp32 all-reduce "
                f"{state.fp32_allreduce_bytes / 1e3:.0f} kB ({state.compression_ratio:.1f}x)",
                flush=True,
            )
    if args.save:
        torch.save(
            {"model": model.state_dict(), "hook": state.state_dict()},
            f"{args.save}.rank{rank}.pt",
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT.
    if "RANK" not in os.environ:
        raise SystemExit(
            "run me with torchrun, e.g.: torchrun --standalone --nproc_per_node=3 "
            "examples/ddp_sign_vote.py"
        )
    main()
