"""Worker functions for the multi-process tests (run by ``_harness.run_workers``).

Every check computes its reference from the definitions ([ScaledSign, Alg. 3]; [Bernstein18]) out
of all ranks' local gradients, gathered with a plain ``all_gather``, and never from the hook's
code. Workers return plain data; the assertions live in test_hook.py.
"""

from __future__ import annotations

import io
import math
import pickle
import statistics
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from steepest.distributed import SignVoteState, sign_vote_hook

TRANSPORTS = ("allgather", "twophase", "int8")


# ------------------------------------------------------------------ models and data
class Net(nn.Module):
    """A small tanh MLP plus the parameters the zero-gradient rule is about: ``gated`` gets an
    exactly zero gradient on rank 1 only, ``unused`` never gets a gradient, ``frozen`` does not
    require one."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.a = nn.Linear(6, 12, dtype=dtype)
        self.b = nn.Linear(12, 8, dtype=dtype)
        self.c = nn.Linear(8, 1, dtype=dtype)
        self.gated = nn.Linear(6, 1, dtype=dtype)
        self.unused = nn.Linear(3, 3, dtype=dtype)
        self.frozen = nn.Linear(3, 3, dtype=dtype)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor, gate: float) -> torch.Tensor:
        h = torch.tanh(self.b(torch.tanh(self.a(x))))
        return self.c(h) + gate * self.gated(x)


def batch(rank: int, it: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1000 * rank + it)
    x = torch.randn(16, 6, generator=g).to(dtype)
    x[:, 0] = 0  # a dead input: exact zeros inside a.weight and gated.weight on every rank
    y = torch.randn(16, 1, generator=g).to(dtype)
    return x, y


def gate_of(rank: int) -> float:
    return 0.0 if rank == 1 else 1.0


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def local_grads(model: nn.Module, rank: int, it: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """This rank's own gradient, computed on the module outside DDP (no hook fires)."""
    x, y = batch(rank, it, dtype)
    named = trainable(model)
    loss = ((model(x, gate_of(rank)) - y) ** 2).mean()
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for (_, p), g in zip(named, grads)]


def gather(t: torch.Tensor, world: int) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts)


def real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t).reshape(-1) if t.is_complex() else t.reshape(-1)


# ------------------------------------------------------------------ the reference
class Reference:
    """Alg. 3 with local momentum, from every rank's gradients, per parameter:

    * rank m votes on parameter p iff its gradient there is not all zero (and finite);
    * u_{m,p} = g on its first vote, then beta u + (1 - beta) g (only when it votes);
    * vote_p = sign(sum_{m votes on p} s(u_{m,p})) where s = sign, except that with one bit
      (``one_bit``) an exact zero of rank m at step t counts +1 if m + t is odd, else -1;
    * scaled: times reduce_m(sum_{p voted by m} ||u_{m,p}||_1), reduce = mean (Alg. 3) or median.
    """

    def __init__(
        self, world: int, momentum: float, scaled: bool, reduce: str = "mean", one_bit: bool = True
    ) -> None:
        self.world, self.beta, self.scaled, self.reduce = world, momentum, scaled, reduce
        self.one_bit = one_bit
        self.u: dict[tuple[int, int], torch.Tensor] = {}
        self.t = 0

    def step(self, all_grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """``all_grads[p]``: shape (M, *p.shape) gradients of parameter p on every rank."""
        l1 = [0.0] * self.world
        votes = []
        for p, g in enumerate(all_grads):
            total = torch.zeros(real(g[0]).shape, dtype=torch.float64)
            for m in range(self.world):
                gm = real(g[m]).to(torch.float64)
                if not bool((gm != 0).any()) or not bool(torch.isfinite(gm).all()):
                    continue
                if self.beta > 0:
                    prev = self.u.get((m, p))
                    gm = gm if prev is None else self.beta * prev + (1 - self.beta) * gm
                    self.u[(m, p)] = gm
                s = torch.sign(gm)
                if self.one_bit:
                    s[gm == 0] = 1.0 if (m + self.t) % 2 else -1.0
                total += s
                l1[m] += float(gm.abs().sum())
            votes.append(torch.sign(total))
        self.t += 1
        if self.scaled:
            scale = statistics.mean(l1) if self.reduce == "mean" else statistics.median(l1)
            self.last_scale = scale
            votes = [v * scale for v in votes]
        return votes


def compare(got: list[torch.Tensor], want: list[torch.Tensor], scaled: bool) -> dict[str, float]:
    """Mismatch statistics of the DDP gradients against the reference."""
    g = torch.cat([real(t).to(torch.float64) for t in got])
    w = torch.cat([t.reshape(-1) for t in want])
    sign_mismatch = int((torch.sign(g) != torch.sign(w)).sum())
    rel = float((g - w).abs().max() / w.abs().max().clamp_min(1e-30)) if g.numel() else 0.0
    return {"sign_mismatch": sign_mismatch, "rel_err": rel if scaled else float(g.ne(w).sum())}


# ------------------------------------------------------------------ checks
def check_against_reference(
    rank: int,
    world: int,
    *,
    transport: str,
    scaled: bool,
    momentum: float,
    gav: bool,
    reduce: str = "mean",
    dtype: torch.dtype = torch.float32,
    iters: int = 5,
    group: dist.ProcessGroup | None = None,
) -> dict[str, Any]:
    """DDP + hook for ``iters`` steps (>= 4: DDP rebuilds its buckets after the first), each
    step's gradients compared with :class:`Reference`; zero-gradient parameters must not move."""
    torch.manual_seed(0)
    model = Net(dtype)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    ddp = DDP(
        model,
        bucket_cap_mb=0.0002,
        gradient_as_bucket_view=gav,
        static_graph=True,
        process_group=group,
    )
    state = SignVoteState(
        group,
        scaled=scaled,
        momentum=momentum,
        transport=transport,
        scale_reduce=reduce,
        module=model,
    )
    layouts: list[list[int]] = []

    def hook(state, bucket):  # records DDP's bucket layout; no annotations (DDP checks them)
        if bucket.index() == 0:
            layouts.append([])
        layouts[-1].append(bucket.buffer().numel())
        return sign_vote_hook(state, bucket)

    ddp.register_comm_hook(state, hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-4 if scaled else 1e-2)
    ref = Reference(world, momentum, scaled, reduce, one_bit=transport != "int8")
    named = trainable(model)
    worst = {"sign_mismatch": 0, "rel_err": 0.0}
    for it in range(iters):
        mine = local_grads(model, rank, it, dtype)
        want = ref.step([gather(g, world) for g in mine])
        opt.zero_grad(set_to_none=False)
        x, y = batch(rank, it, dtype)
        ((ddp(x, gate_of(rank)) - y) ** 2).mean().backward()
        got = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in named]
        stats = compare(got, want, scaled)
        worst = {k: max(worst[k], v) for k, v in stats.items()}
        opt.step()
    moved = {n: bool((p.detach() != initial[n]).any()) for n, p in model.named_parameters()}
    dead = float((model.a.weight.detach()[:, 0] - initial["a.weight"][:, 0]).abs().max())
    return {
        **worst,
        "moved": moved,
        "layouts": layouts,
        "dead_input_drift": dead,
        "last_scale": (state.last_scale, getattr(ref, "last_scale", None)),
        "lr": opt.param_groups[0]["lr"],
        "iterations": state.iterations,
        "bytes_sent": state.bytes_sent,
        "fp32_bytes": state.fp32_allreduce_bytes,
        "abstentions": state.abstentions,
    }


def check_groups(rank: int, world: int) -> dict[str, Any]:
    """Non-default process groups: a group of all ranks (the two-phase vote then builds its
    second group from it), and one group per rank, where the vote of one rank is its own sign:
    ``||g||_1 sign(g)`` (scaled), exact zeros staying 0."""
    singles = [dist.new_group([r]) for r in range(world)]  # every rank creates every group
    everyone = dist.new_group(list(range(world)))
    out: dict[str, Any] = {
        t: check_against_reference(
            rank, world, transport=t, scaled=True, momentum=0.9, gav=True, group=everyone
        )
        for t in TRANSPORTS
    }
    torch.manual_seed(0)
    model = Net()
    ddp = DDP(model, process_group=singles[rank], static_graph=True)
    state = SignVoteState(singles[rank], scaled=True)
    ddp.register_comm_hook(state, sign_vote_hook)
    worst = 0.0
    for it in range(4):
        own = local_grads(model, rank, it, torch.float32)
        flat = torch.cat([g.reshape(-1) for g in own])
        want = torch.sign(flat) * float(flat.abs().sum())
        ddp.zero_grad()
        x, y = batch(rank, it)
        ((ddp(x, gate_of(rank)) - y) ** 2).mean().backward()
        got = torch.cat(
            [
                (torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1)
                for _, p in trainable(model)
            ]
        )
        worst = max(worst, float((got - want).abs().max() / want.abs().max()))
    out["alone"] = {"rel_err": worst, "bytes_sent": state.bytes_sent, "world": state.world()}
    return out


def wchar() -> int | None:
    """Bytes this process has written (files and sockets), from /proc; None if unavailable."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def measure_bytes(rank: int, world: int, iters: int = 3) -> dict[str, Any]:
    """Socket bytes this rank actually writes per step, for each transport and for plain DDP,
    next to the state's counters."""
    out: dict[str, Any] = {}
    for transport in (None, *TRANSPORTS):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 256))
        ddp = DDP(model)
        state = None
        if transport is not None:
            state = SignVoteState(transport=transport)
            ddp.register_comm_hook(state, sign_vote_hook)
        x = torch.randn(8, 256)
        ddp(x).sum().backward()  # first step: bucket rebuild, not measured
        dist.barrier()
        before = wchar()
        if state is not None:
            state.reset_counters()
        for _ in range(iters):
            ddp(x).sum().backward()
        after = wchar()
        dist.barrier()
        out[transport or "fp32"] = {
            "measured": None if before is None else (after - before) / iters,
            "counted": None if state is None else state.bytes_sent / iters,
            "fp32_counted": None if state is None else state.fp32_allreduce_bytes / iters,
            "n": sum(p.numel() for p in model.parameters()),
        }
    return out


def check_join(rank: int, world: int, *, scaled: bool, transport: str) -> dict[str, Any]:
    """Uneven inputs under ``ddp.join()``: rank 0 runs 5 steps, the others 2. Once they have
    joined, their zero buckets must abstain, so rank 0's update is its own vote: sign(g_0),
    scaled by (1/M) ||g_0||_1 (the joined ranks send 0 and Alg. 3 divides by M)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1))
    ddp = DDP(model, bucket_cap_mb=0.0002)
    state = SignVoteState(scaled=scaled, transport=transport)
    ddp.register_comm_hook(state, sign_vote_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    steps = 5 if rank == 0 else 2
    errors = []
    with ddp.join():
        for it in range(steps):
            x = torch.randn(8, 6)
            y = torch.randn(8, 1)
            params = list(model.parameters())
            own = torch.autograd.grad(((model(x) - y) ** 2).mean(), params)
            opt.zero_grad()
            ((ddp(x) - y) ** 2).mean().backward()
            if rank == 0 and it >= 2:
                g = torch.cat([t.reshape(-1) for t in own])
                want = torch.sign(g) * (float(g.abs().sum()) / world if scaled else 1.0)
                got = torch.cat([p.grad.reshape(-1) for p in params])
                errors.append(float((got - want).abs().max() / want.abs().max()))
            opt.step()
    return {"errors": errors, "iterations": state.iterations}


def check_checkpoint(rank: int, world: int, *, bound: bool, transport: str) -> dict[str, Any]:
    """Train 6 steps with momentum; separately, train 3, pickle the hook state (and the model
    and optimizer), rebuild everything from the pickles and train 3 more: same parameters."""

    def make(seed_state: bytes | None, model_state: dict | None, opt_state: dict | None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1))
        if model_state is not None:
            model.load_state_dict(model_state)
        ddp = DDP(model, bucket_cap_mb=0.0002)
        if seed_state is None:
            state = SignVoteState(momentum=0.9, scaled=True, transport=transport)
            if bound:
                state.bind(model)
        else:
            state = pickle.loads(seed_state)
            if bound:
                state.bind(model)
        ddp.register_comm_hook(state, sign_vote_hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=1e-3, momentum=0.5)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        return model, ddp, state, opt

    def train(ddp: DDP, opt: torch.optim.Optimizer, its: range) -> None:
        for it in its:
            g = torch.Generator().manual_seed(100 * rank + it)
            x, y = torch.randn(8, 6, generator=g), torch.randn(8, 1, generator=g)
            opt.zero_grad()
            ((ddp(x) - y) ** 2).mean().backward()
            opt.step()

    model, ddp, _, opt = make(None, None, None)
    train(ddp, opt, range(6))
    straight = [p.detach().clone() for p in model.parameters()]

    model, ddp, state, opt = make(None, None, None)
    train(ddp, opt, range(3))
    blob = pickle.dumps(state)
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    opt_bytes = io.BytesIO()
    torch.save(opt.state_dict(), opt_bytes)
    del ddp, opt
    restored = pickle.loads(blob)
    opt_state = torch.load(io.BytesIO(opt_bytes.getvalue()), weights_only=True)
    model, ddp, state, opt = make(blob, model_state, opt_state)
    train(ddp, opt, range(3, 6))
    resumed = [p.detach().clone() for p in model.parameters()]
    return {
        "max_diff": max(float((a - b).abs().max()) for a, b in zip(straight, resumed)),
        "restored_group": restored.process_group,
        "restored_iterations": restored.iterations,
        "n_buffers": len(restored.momentum_buffers),
        "keys": sorted(restored.momentum_buffers),
        "state_dict_roundtrip": _state_dict_roundtrip(state),
    }


def _state_dict_roundtrip(state: SignVoteState) -> bool:
    sd = state.state_dict()
    other = SignVoteState(momentum=state.momentum, scaled=state.scaled)
    if state.keyed_by == "name":
        other.bind(state._module)
    other.load_state_dict(sd)
    return (
        all(torch.equal(other.momentum_buffers[k], v) for k, v in state.momentum_buffers.items())
        and other.iterations == state.iterations
    )


def check_nonfinite(rank: int, world: int, *, mode: str, transport: str) -> dict[str, Any]:
    """Rank 1 puts a NaN into the gradient of ``a.weight``. ``abstain``: the other ranks' vote
    decides that parameter; ``raise``: every rank raises FloatingPointError."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1))
    ddp = DDP(model, bucket_cap_mb=0.0002)
    state = SignVoteState(nonfinite=mode, transport=transport)
    first = model[0].weight

    def poisoned(state, bucket):
        if rank == 1:
            offset = 0
            for p in bucket.parameters():
                if p is first:
                    bucket.buffer()[offset + 3] = float("nan")
                offset += p.numel()
        return sign_vote_hook(state, bucket)

    ddp.register_comm_hook(state, poisoned)
    x, y = torch.randn(8, 6), torch.randn(8, 1)
    own = torch.autograd.grad(((model(x) - y) ** 2).mean(), [first])[0]
    others = gather(own, world)
    try:
        ((ddp(x) - y) ** 2).mean().backward()
    except Exception as err:  # the 'raise' policy
        return {"raised": type(err).__name__, "message": str(err)}
    honest = [m for m in range(world) if m != 1]
    want = torch.sign(torch.sign(others[honest]).sum(0))
    return {
        "raised": None,
        "mismatch": int((first.grad != want).sum()),
        "nonfinite_segments": state.nonfinite_segments,
    }


def check_sparse(rank: int, world: int) -> dict[str, Any]:
    """Sparse gradients (nn.Embedding(sparse=True)) are refused with a clear error, on every
    rank alike (before any exchange, so nobody is left waiting)."""
    torch.manual_seed(0)
    model = nn.Embedding(10, 3, sparse=True)
    ddp = DDP(model)
    ddp.register_comm_hook(SignVoteState(), sign_vote_hook)
    try:
        ddp(torch.tensor([1, 2, 3])).sum().backward()
    except Exception as err:
        return {"error": str(err)}
    return {"error": None}


def check_dtype(rank: int, world: int, *, dtype: torch.dtype, transport: str) -> dict[str, Any]:
    """bfloat16 and complex parameters: the vote acts on real components, in the bucket dtype."""
    torch.manual_seed(0)
    model = nn.Linear(6, 3, dtype=dtype)  # no saturating layer: no exact zeros in bfloat16
    ddp = DDP(model)
    ddp.register_comm_hook(SignVoteState(transport=transport, scaled=True), sign_vote_hook)
    worst = 0.0
    for it in range(4):
        g = torch.Generator().manual_seed(10 * rank + it)
        x = torch.randn(8, 6, generator=g).to(dtype)
        params = list(model.parameters())
        own = torch.autograd.grad(model(x).abs().pow(2).mean(), params)
        ref = Reference(world, 0.0, True).step([gather(real(t), world) for t in own])
        ddp.zero_grad()
        ddp(x).abs().pow(2).mean().backward()
        got = torch.cat([real(p.grad).to(torch.float64) for p in params])
        want = torch.cat([r.reshape(-1) for r in ref]).to(got.dtype)
        # bfloat16 holds the scale to 3 significant digits.
        worst = max(worst, float((got - want).abs().max() / want.abs().max()))
    return {"rel_err": worst, "grad_dtype": str(params[0].grad.dtype)}


# ------------------------------------------------------------------ fault tolerance
def regression(rank: int, steps: int, attack: str | None, mode: str) -> dict[str, float]:
    """Linear regression y = X w* + noise, each rank with its own data stream; rank 2 is
    Byzantine when ``attack`` is set (``negate``: sends -g; ``random``: sends 100 N(0, 1)).
    ``mode``: ``vote``, ``vote_scaled`` (scale_reduce="median") or ``mean`` (plain averaging
    all-reduce, the contrast)."""
    d = 10
    w_star = torch.randn(d, generator=torch.Generator().manual_seed(7))
    model = nn.Linear(d, 1, bias=False)
    nn.init.zeros_(model.weight)
    ddp = DDP(model)
    if mode == "mean":
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        inner, hook_state = allreduce_hook, None
    else:
        inner = sign_vote_hook
        hook_state = SignVoteState(scaled=mode == "vote_scaled", scale_reduce="median")
    gen = torch.Generator().manual_seed(rank)

    def hook(state, bucket):
        if attack is not None and rank == 2:
            buf = bucket.buffer()
            if attack == "negate":
                buf.neg_()
            else:
                buf.copy_(100 * torch.randn(buf.shape, generator=gen))
        return inner(state, bucket)

    ddp.register_comm_hook(hook_state, hook)
    lr0 = 0.05 if mode != "vote_scaled" else 0.005
    opt = torch.optim.SGD(ddp.parameters(), lr=lr0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / math.sqrt(1 + t / 20))
    start = float(w_star.norm())
    for _ in range(steps):
        x = torch.randn(32, d, generator=gen)
        y = x @ w_star + 0.1 * torch.randn(32, generator=gen)
        opt.zero_grad()
        ((ddp(x).squeeze(1) - y) ** 2).mean().backward()
        opt.step()
        sched.step()
    err = float((model.weight.detach().squeeze(0) - w_star).norm())
    return {"start": start, "final": err if math.isfinite(err) else math.inf}


# ------------------------------------------------------------------ suites (one spawn each)
def suite(rank: int, world: int, extra: tuple[str, ...]) -> dict[str, Any]:
    t0 = time.perf_counter()
    out: dict[str, Any] = {"grid": {}}
    for transport in TRANSPORTS:
        for scaled in (False, True):
            for gav in (False, True):
                for momentum in (0.0, 0.9):
                    key = (transport, scaled, gav, momentum)
                    out["grid"][key] = check_against_reference(
                        rank,
                        world,
                        transport=transport,
                        scaled=scaled,
                        momentum=momentum,
                        gav=gav,
                    )
    out["grid"][("auto", True, True, 0.9, "median")] = check_against_reference(
        rank, world, transport="auto", scaled=True, momentum=0.9, gav=True, reduce="median"
    )
    out["bytes"] = measure_bytes(rank, world)
    if "groups" in extra:
        out["groups"] = check_groups(rank, world)
    if "join" in extra:
        out["join"] = {
            (t, s): check_join(rank, world, scaled=s, transport=t)
            for t in TRANSPORTS
            for s in (False, True)
        }
    if "checkpoint" in extra:
        out["checkpoint"] = {
            (t, b): check_checkpoint(rank, world, bound=b, transport=t)
            for t in ("allgather", "twophase")
            for b in (True, False)
        }
    if "dtype" in extra:
        out["dtype"] = {
            (str(dt), t): check_dtype(rank, world, dtype=dt, transport=t)
            for dt in (torch.bfloat16, torch.complex64)
            for t in TRANSPORTS
        }
    if "sparse" in extra:
        out["sparse"] = check_sparse(rank, world)
    if "nonfinite" in extra:
        out["nonfinite"] = {
            (m, t): check_nonfinite(rank, world, mode=m, transport=t)
            for t in TRANSPORTS
            for m in ("abstain", "raise")
        }
    if "byzantine" in extra:
        out["byzantine"] = {
            (attack, mode): regression(rank, 150, attack, mode)
            for attack, mode in [
                (None, "vote"),
                ("negate", "vote"),
                ("random", "vote"),
                ("random", "vote_scaled"),
                ("random", "mean"),
            ]
        }
    out["seconds"] = time.perf_counter() - t0
    return out


def dies_or_hangs(rank: int, world: int, fault: str, transport: str, scaled: bool) -> dict:
    """Train; at step 3 the last rank dies (``os._exit``) or hangs (sleeps 10 minutes). The
    other ranks must fail with a clear error within the process group's timeout."""
    import os

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1))
    ddp = DDP(model, bucket_cap_mb=0.0002)
    ddp.register_comm_hook(SignVoteState(transport=transport, scaled=scaled), sign_vote_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-2)
    for it in range(6):
        x, y = torch.randn(8, 6), torch.randn(8, 1)
        if it == 3 and rank == world - 1:
            if fault == "die":
                os._exit(3)
            time.sleep(600)
        opt.zero_grad()
        t = time.monotonic()
        try:
            ((ddp(x) - y) ** 2).mean().backward()
        except Exception as err:
            return {
                "step": it,
                "error": f"{type(err).__name__}: {err}",
                "wait": time.monotonic() - t,
            }
        opt.step()
    return {"step": None, "error": None, "wait": 0.0}
