"""Majority-vote sign compression as a DDP communication hook [ScaledSign, Sec. IV, Alg. 3].

Usage::

    state = SignVoteState(scaled=False, momentum=0.9, module=model)
    ddp = DistributedDataParallel(model)
    ddp.register_comm_hook(state, sign_vote_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)   # applies the voted direction

The hook replaces DDP's gradient all-reduce: worker ``m`` contributes ``sign(u_m)`` (``u_m`` its
gradient, or its local momentum), every bucket is filled with the vote

    v = sign(sum_m sign(u_m))            (0 on ties),

and, in the *scaled* variant (Alg. 3, distributed scaled signSGD), with

    M_k v,   M_k = mean_m ||u_m||_1   (``scale_reduce="median"``: the median over ranks)

so that an ordinary ``torch.optim.SGD(lr=alpha)`` step is ``x -= alpha M_k v``.

Decisions the paper leaves open (documented in docs/distributed.md):

* **Scale scope: global.** ``||u_m||_1`` in Alg. 3 is the l1 norm of the whole gradient, so each
  bucket's result waits for the l1 sums of *all* buckets of the iteration (every rank learns
  every rank's per-bucket sum with the bits) and is multiplied by the global scale. A per-bucket
  scale would make the update depend on DDP's bucket boundaries, which DDP rebuilds after the
  first iteration.
* **Momentum** (Signum-style local momentum, as the majority-vote paper trains):
  ``u = beta u + (1 - beta) g`` per parameter, kept in the state keyed by parameter (names when
  ``module`` is given, else the order of first appearance), never by bucket index. The first
  vote starts the buffer at ``g`` (as ``torch.optim.SGD`` does) so that the scaled variant's
  ``||u||_1`` is not biased by ``(1 - beta)`` early on.
* **Zero gradients do not vote.** A rank whose gradient is exactly zero on a whole parameter (a
  frozen/unused parameter, a joined rank's zero-filled bucket) *abstains* there: a per-parameter
  status byte travels with the bits and the vote counts only the ranks that voted; a parameter
  nobody voted on gets 0 and does not move. Its momentum is not updated either. Exact zeros
  *inside* a parameter that has non-zero entries cannot be said in one bit: rank m sends
  ``+1`` there if ``m + step`` is odd, else ``-1``. Ranks of opposite parity cancel (a
  coordinate that is zero on every rank of an even world never moves; in an odd world it
  alternates by one step, with no drift), and the bit flips every step, so zeros carry no
  persistent direction. ``transport="int8"`` is exact there.
* **Non-finite gradients**: a parameter whose gradient has NaN/inf on a rank abstains on that
  rank (``nonfinite="abstain"``) or makes the backward of *every* rank raise the same
  "non-finite gradient" error after the exchange (``nonfinite="raise"``): raising on one rank
  alone would leave the others waiting in the collective until the timeout.

Transports, with the bytes one rank sends per bucket of ``n`` coordinates over ``M`` ranks
(fp32 ring all-reduce, DDP's default, sends ``8 n (M-1)/M``):

* ``"allgather"``: all-gather of the packed bits, ``n (M-1)/8`` (32x less at M = 2, 21x at M = 3,
  no gain at M = 64);
* ``"twophase"``: all-to-all of packed bits, each rank votes on ``1/M`` of the vector, all-gather
  of the 2-bit results: ``3 n (M-1)/(8 M)``, about 21x less at any M;
* ``"int8"``: ring all-reduce of ``{-1, 0, 1}`` as int8, ``2 n (M-1)/M`` (4x less), the simple
  exact reference;
* ``"auto"``: ``allgather`` for M <= 3 (one round, fewest bytes), ``twophase`` beyond.

The small per-bucket extras (status bytes, the l1 sum, padding to 64-bit words) are counted in
:attr:`SignVoteState.bytes_sent`.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.futures import Future

from steepest.distributed.bits import (
    majority_vote,
    pack_signs,
    packed_nbytes,
    unpack_ternary,
)
from steepest.optim.base import check_choice, check_range

__all__ = [
    "TRANSPORTS",
    "SignVoteState",
    "allreduce_bytes",
    "resolve_transport",
    "sign_vote_hook",
    "wire_bytes",
]

logger = logging.getLogger(__name__)

TRANSPORTS = ("auto", "allgather", "twophase", "int8")
SCALE_REDUCE = ("mean", "median")
NONFINITE = ("abstain", "raise")

# Status byte of a parameter segment on one rank.
_VOTE, _ZERO, _NONFINITE = 0, 1, 2


# ------------------------------------------------------------------ byte models
def _round8(x: int) -> int:
    return 8 * ((x + 7) // 8)


def resolve_transport(transport: str, world_size: int) -> str:
    """The concrete transport ``"auto"`` stands for at ``world_size`` ranks."""
    check_choice("transport", transport, TRANSPORTS)
    if transport != "auto":
        return transport
    # allgather: n(M-1)/8 bytes in one round; twophase: 3n(M-1)/(8M) in two rounds.
    # Equal at M = 3, where one round wins.
    return "allgather" if world_size <= 3 else "twophase"


def allreduce_bytes(nbytes: int, world_size: int) -> int:
    """Bytes one rank sends in a ring all-reduce of ``nbytes`` (gloo's and NCCL's algorithm):
    reduce-scatter plus all-gather, ``2 (M-1)/M nbytes``."""
    return round(2 * (world_size - 1) * nbytes / world_size)


def _layout(n: int, world: int, nseg: int, scaled: bool, transport: str) -> dict[str, int]:
    """Message sizes (bytes) of one bucket; shared by the hook and :func:`wire_bytes`."""
    extra = _round8((8 if scaled else 0) + nseg)  # l1 (float64) + status bytes, 8-aligned
    if transport == "allgather":
        bits = packed_nbytes(n)
        return {"bits": bits, "row": bits + extra}
    if transport == "twophase":
        slice_coords = 64 * (-(-n // (64 * world)))  # per-rank slice, whole 64-bit words
        sb = slice_coords // 8
        return {"slice": slice_coords, "slice_bytes": sb, "row": sb + extra, "result": 2 * sb}
    if transport == "int8":
        return {"elements": n + 1, "elem_bytes": 1 if world <= 127 else 2}
    raise ValueError(f"transport must be one of {TRANSPORTS[1:]}, got {transport!r}")


def wire_bytes(
    n: int, world_size: int, transport: str, *, nseg: int = 1, scaled: bool = False
) -> int:
    """Bytes one rank sends to vote on a bucket of ``n`` coordinates holding ``nseg`` parameters.

    A model of the collectives' algorithms (ring all-gather, pairwise all-to-all, ring
    all-reduce), exact up to the transport's own headers: ``benchmarks/sign_vote.py`` checks it
    against the bytes the process actually writes to its sockets.
    """
    if n < 0 or nseg < 0:
        raise ValueError(f"n and nseg must be >= 0, got n={n}, nseg={nseg}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    transport = resolve_transport(transport, world_size)
    m = world_size
    if m == 1:
        return 0
    lay = _layout(n, m, nseg, scaled, transport)
    if transport == "allgather":
        return (m - 1) * lay["row"]
    if transport == "twophase":
        return (m - 1) * lay["row"] + (m - 1) * lay["result"]
    total = allreduce_bytes(lay["elements"] * lay["elem_bytes"], m)
    return total + ((m - 1) * 8 if scaled else 0)


# ------------------------------------------------------------------ the state
class _Iteration:
    """What the buckets of one backward pass share: per-bucket l1 sums of every rank and the
    future of the global scale (scaled variant)."""

    def __init__(self) -> None:
        self.l1_parts: dict[int, Tensor] = {}
        self.decoded: list[Future] = []
        self.scale: Future = Future()
        self.phase2_launched: Future = _done(None)
        self.scale_value: float | None = None


class SignVoteState:
    """State of :func:`sign_vote_hook`: configuration, local momentum and byte counters.

    Args:
        process_group: the group to vote in (``None``: the default group).
        scaled: multiply the vote by ``M_k``, the mean over ranks of ``||u_m||_1`` over the
            whole model ([ScaledSign, Alg. 3], distributed scaled signSGD). Default: plain vote.
        momentum: ``beta`` in ``[0, 1)`` of the local momentum ``u = beta u + (1-beta) g`` that
            is signed instead of ``g`` (Signum-style voting). 0 signs the raw gradient.
        transport: ``"auto"``, ``"allgather"``, ``"twophase"`` or ``"int8"`` (module docstring).
        scale_reduce: how ranks' l1 norms combine into ``M_k``: ``"mean"`` (Alg. 3) or
            ``"median"`` (robust to a minority of ranks sending huge gradients).
        nonfinite: ``"abstain"`` (a parameter with NaN/inf gradient on a rank does not vote
            there) or ``"raise"`` (every rank's backward raises the same error).
        module: the model (or its DDP wrapper), to key momentum buffers by parameter name in
            checkpoints. Without it they are keyed by order of first appearance, which is the
            same across runs of the same model and DDP configuration.

    Counters (this rank): ``bytes_sent``, ``fp32_allreduce_bytes`` (what DDP's fp32 ring
    all-reduce would have sent for the same buckets), ``iterations``, ``abstentions`` (parameter
    segments this rank did not vote on), ``nonfinite_segments``, ``last_scale``.

    The state pickles per rank without its process group (restored as the default group, as
    ``PowerSGDState`` does) and offers ``state_dict()`` / ``load_state_dict()``. Use one state
    per DDP model: it tracks the model's iterations.
    """

    def __init__(
        self,
        process_group: dist.ProcessGroup | None = None,
        scaled: bool = False,
        momentum: float = 0.0,
        transport: str = "auto",
        *,
        scale_reduce: str = "mean",
        nonfinite: str = "abstain",
        module: torch.nn.Module | None = None,
    ) -> None:
        if not isinstance(scaled, bool):
            raise ValueError(f"scaled must be a bool, got {scaled!r}")
        check_range("momentum", momentum, 0.0, 1.0)
        check_choice("transport", transport, TRANSPORTS)
        check_choice("scale_reduce", scale_reduce, SCALE_REDUCE)
        check_choice("nonfinite", nonfinite, NONFINITE)
        if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
            raise ValueError(
                f"process_group must be a torch.distributed.ProcessGroup or None, got "
                f"{type(process_group).__name__}"
            )
        self.process_group = process_group
        self.scaled = scaled
        self.momentum = float(momentum)
        self.transport = transport
        self.scale_reduce = scale_reduce
        self.nonfinite = nonfinite
        self.momentum_buffers: dict[str, Tensor] = {}
        self.keyed_by = "ordinal"
        self._names: dict[int, str] = {}
        self._module: torch.nn.Module | None = None
        self._ctx: _Iteration | None = None
        self._last_scale: float | None = None
        self.reset_counters()
        self.iterations = 0
        if module is not None:
            self.bind(module)

    # ---------------------------------------------------------------- bookkeeping
    def reset_counters(self) -> None:
        """Zero the byte and event counters (not the iteration count or momentum)."""
        self.bytes_sent = 0
        self.fp32_allreduce_bytes = 0
        self.abstentions = 0
        self.nonfinite_segments = 0

    @property
    def last_scale(self) -> float | None:
        """The global scale ``M_k`` of the latest completed iteration (scaled variant)."""
        current = self._ctx.scale_value if self._ctx is not None else None
        return current if current is not None else self._last_scale

    @property
    def compression_ratio(self) -> float:
        """``fp32_allreduce_bytes / bytes_sent`` so far (``inf`` before anything was sent)."""
        return self.fp32_allreduce_bytes / self.bytes_sent if self.bytes_sent else math.inf

    def bind(self, module: torch.nn.Module) -> SignVoteState:
        """Key momentum buffers by the parameter names of ``module`` (a model or its DDP)."""
        inner = getattr(module, "module", module)
        if not isinstance(inner, torch.nn.Module):
            raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if self.keyed_by == "ordinal" and self.momentum_buffers:
            raise RuntimeError(
                "bind(): this state already holds momentum buffers keyed by order of appearance; "
                "bind the module before the first step (or when restoring a state saved bound)"
            )
        self._module = inner
        self._names = {id(p): name for name, p in inner.named_parameters()}
        self.keyed_by = "name"
        return self

    def _key(self, p: Tensor) -> str:
        key = self._names.get(id(p))
        if key is not None:
            return key
        if self.keyed_by == "name":
            if self._module is None:
                raise RuntimeError(
                    "SignVoteState holds momentum keyed by parameter name but is not bound to a "
                    "module (a restored state?): call state.bind(model) before training"
                )
            raise RuntimeError(
                "sign_vote_hook: a parameter of the bucket is not in the bound module"
            )
        key = f"#{len(self._names)}"
        self._names[id(p)] = key
        return key

    def world(self) -> tuple[int, int]:
        """``(rank, world_size)`` in the state's process group."""
        return dist.get_rank(self.process_group), dist.get_world_size(self.process_group)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Momentum buffers, iteration count and counters (config included for checking)."""
        return {
            "config": {
                "scaled": self.scaled,
                "momentum": self.momentum,
                "transport": self.transport,
                "scale_reduce": self.scale_reduce,
                "nonfinite": self.nonfinite,
            },
            "keyed_by": self.keyed_by,
            "momentum_buffers": {k: v.clone() for k, v in self.momentum_buffers.items()},
            "iterations": self.iterations,
            "counters": {
                "bytes_sent": self.bytes_sent,
                "fp32_allreduce_bytes": self.fp32_allreduce_bytes,
                "abstentions": self.abstentions,
                "nonfinite_segments": self.nonfinite_segments,
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (``momentum`` must match)."""
        if state_dict["config"]["momentum"] != self.momentum:
            raise ValueError(
                f"momentum {self.momentum} differs from the saved state's "
                f"{state_dict['config']['momentum']}"
            )
        keyed_by = state_dict["keyed_by"]
        if state_dict["momentum_buffers"] and keyed_by != self.keyed_by:
            if keyed_by == "name":
                raise ValueError(
                    "the saved momentum is keyed by parameter name: construct the state with "
                    "module=model (or call bind) before load_state_dict"
                )
            raise ValueError(
                "the saved momentum is keyed by order of appearance: construct the state "
                "without module= to load it"
            )
        self.momentum_buffers = {k: v.clone() for k, v in state_dict["momentum_buffers"].items()}
        self.iterations = int(state_dict["iterations"])
        for k, v in state_dict["counters"].items():
            setattr(self, k, v)

    def __getstate__(self) -> dict[str, Any]:
        # Like PowerSGDState: the process group (and the module, and in-flight futures) are
        # not serializable; parameter identities do not survive a process either.
        logger.info("SignVoteState: the process group and module are not saved in the pickle")
        skip = {"process_group", "_module", "_ctx", "_names"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.process_group = None  # the default group; set another one after loading
        self._module = None
        self._ctx = None
        self._names = {}

    def __deepcopy__(self, memo: dict[int, Any]) -> SignVoteState:
        new = copy.copy(self)
        new.momentum_buffers = {k: v.clone() for k, v in self.momentum_buffers.items()}
        new._names = dict(self._names)
        new._ctx = None
        return new

    def __repr__(self) -> str:
        return (
            f"SignVoteState(scaled={self.scaled}, momentum={self.momentum}, "
            f"transport={self.transport!r}, scale_reduce={self.scale_reduce!r}, "
            f"nonfinite={self.nonfinite!r}, bytes_sent={self.bytes_sent})"
        )


# ------------------------------------------------------------------ the hook
def _done(value: Any) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


def _all_gather(out: Tensor, inp: Tensor, group: dist.ProcessGroup | None) -> Future:
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return gather(out, inp, group=group, async_op=True).get_future()


class _HookError(RuntimeError):
    """A failed exchange, with the context needed to tell which rank and bucket."""


@dataclass
class _Job:
    """Everything the callbacks of one bucket need.

    Callbacks run on communication threads and are released there; they must not hold the
    state or a process group (a group whose last reference dies on its own worker thread
    aborts the process). Hence this plain record instead of closures over the state.
    """

    index: int
    rank: int
    world: int
    transport: str
    scaled: bool
    nonfinite: str
    buf: Tensor
    flat: Tensor
    lengths: list[int]
    status: Tensor
    local_l1: float
    zero_bit: int
    ctx: _Iteration

    def wait(self, what: str, fut: Future) -> Any:
        """``fut.value()``; a communication failure is re-raised with the context a user needs
        (which rank, which bucket, what probably happened)."""
        try:
            return fut.value()
        except (_HookError, FloatingPointError, OverflowError):
            raise  # already explained (by this rank or, identically, by every rank)
        except Exception as err:
            msg = str(err)
            start = msg.find("sign_vote_hook:")
            if start >= 0:
                # Explained upstream; futures wrap it in "Got the following error when
                # running the callback: ..." and append tracebacks: keep the explanation.
                raise _HookError(msg[start:].split("\n\nAt:")[0].strip()) from err
            raise _HookError(
                f"sign_vote_hook: {what} of bucket {self.index} failed on rank {self.rank} of "
                f"{self.world} (transport={self.transport!r}): {msg.strip()} -- another rank "
                "has probably died, hung or run a different model; the wait is bounded by the "
                "process group's timeout."
            ) from err

    def check_nonfinite(self, status: Tensor) -> None:
        if self.nonfinite == "raise" and bool((status == _NONFINITE).any()):
            where = torch.nonzero(status == _NONFINITE).tolist()
            raise FloatingPointError(
                f"sign_vote_hook: non-finite gradient in bucket {self.index} at (rank, parameter "
                f"slot) {where}; every rank raises (nonfinite='raise')"
            )


def _segments(bucket: dist.GradBucket, flat: Tensor, complex_buffer: bool) -> list[int]:
    """Lengths of the parameters' slices of the flat bucket (DDP packs them back to back)."""
    lengths = [
        p.numel() * (2 if complex_buffer or p.is_complex() else 1) for p in bucket.parameters()
    ]
    if sum(lengths) != flat.numel() or not lengths:
        return [flat.numel()]  # unknown layout: the bucket is one segment
    return lengths


def _segment_l1(segs: list[Tensor]) -> Tensor:
    """``||s||_1`` of every segment as a float32 vector. (``abs().sum()`` measured faster on
    CPU than ``linalg.vector_norm(s, 1)`` and ``_foreach_norm``, which loops over it.)"""
    if not segs:
        return torch.zeros(0)
    return torch.stack([s.abs().sum(dtype=torch.float32) for s in segs])


def _prepare(
    state: SignVoteState, bucket: dist.GradBucket, flat: Tensor, lengths: list[int]
) -> tuple[Tensor, float]:
    """Per-segment status, momentum update written into ``flat``; returns ``(status, local l1)``.

    Status from one cheap pass: a NaN/inf in a segment makes its sum non-finite (a float32
    overflow of the sum counts as non-finite too), and only a segment whose sum is exactly 0 is
    checked for being all zero.
    """
    segs = list(flat.split(lengths))
    if state.scaled and state.momentum == 0:
        sums = _segment_l1(segs)  # needed anyway; 0 iff the segment is all zero
    else:
        sums = torch.stack([s.sum(dtype=torch.float32) for s in segs]) if segs else torch.zeros(0)
    status = torch.full((len(segs),), _VOTE, dtype=torch.uint8)
    for i in torch.nonzero(sums == 0).flatten().tolist():
        if not bool(segs[i].any()):
            status[i] = _ZERO
    status[~torch.isfinite(sums)] = _NONFINITE
    voting = (status == _VOTE).tolist()
    state.abstentions += len(voting) - sum(voting)
    state.nonfinite_segments += int((status == _NONFINITE).sum())
    if state.momentum > 0:
        beta = state.momentum
        params = bucket.parameters()
        by_param = len(params) == len(segs)
        for i, (seg, vote) in enumerate(zip(segs, voting)):
            if not vote:
                continue
            key = state._key(params[i]) if by_param else f"bucket{bucket.index()}"
            buf = state.momentum_buffers.get(key)
            wdtype = torch.promote_types(seg.dtype, torch.float32)
            if buf is None or buf.numel() != seg.numel():
                buf = seg.detach().to(wdtype, copy=True)  # start at g, as torch.optim.SGD
                state.momentum_buffers[key] = buf
            else:
                buf.view(-1).mul_(beta).add_(seg, alpha=1 - beta)
            seg.copy_(buf.view(-1))
    if not state.scaled:
        return status, 0.0
    l1 = sums if state.momentum == 0 else _segment_l1(segs)
    return status, float(l1[status == _VOTE].to(torch.float64).sum())


def _clear_bits(row: Tensor, lo: int, hi: int) -> None:
    """Zero bits ``[lo, hi)`` of a packed (LSB-first) ``uint8`` row in place."""
    first_full, last_full = -(-lo // 8), hi // 8
    if first_full > last_full:  # inside one byte
        row[lo // 8] &= ~(((1 << (hi - lo)) - 1) << (lo % 8)) & 0xFF
        return
    row[first_full:last_full] = 0
    if lo % 8:
        row[lo // 8] &= (1 << (lo % 8)) - 1
    if hi % 8:
        row[hi // 8] &= ~((1 << (hi % 8)) - 1) & 0xFF


def _active_bits(
    status: Tensor, lengths: list[int], start: int, count: int, nbytes: int
) -> Tensor | None:
    """Packed "votes here" planes of every rank for coordinates ``[start, start + count)``,
    ``None`` if every rank votes everywhere. Built on packed bytes: O(bytes + segments)."""
    abstain = status != _VOTE
    if not bool(abstain.any()):
        return None
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    rows = torch.full((status.shape[0], nbytes), 0xFF, dtype=torch.uint8)
    for r, s in torch.nonzero(abstain).tolist():
        lo, hi = max(offsets[s] - start, 0), min(offsets[s + 1] - start, count)
        if lo < hi:
            _clear_bits(rows[r], lo, hi)
    return rows


def _zero_bit(rank: int, step: int) -> int:
    """The bit a rank sends for an exact zero inside a parameter it votes on: (rank + step)
    mod 2. Ranks of opposite parity cancel, and the bit flips every step, so that zeros carry
    no persistent direction."""
    return (rank + step) % 2


def _phase2_group(process_group: dist.ProcessGroup | None) -> dist.ProcessGroup:
    """A second group over the same ranks for the two-phase vote's all-gather (cached).

    Phase 2 of a bucket can only start when its phase 1 has arrived, i.e. from a callback on a
    communication thread, while the autograd thread keeps launching later buckets' phase 1.
    Collectives of one group must be issued in the same order on every rank, which those two
    threads cannot promise; a group of its own, fed in bucket order, can. The cache is a module
    global so that no callback ever holds the last reference to a group.
    """
    parent = process_group or dist.group.WORLD
    if parent is None:  # dist.group.WORLD before init_process_group
        raise RuntimeError("the sign vote needs an initialized process group (dist.init_process_group)")
    key = parent.group_name
    # Groups registered with c10d; a destroyed and re-created world must not reuse a stale one.
    world = getattr(dist.distributed_c10d, "_world", None)
    live = getattr(world, "pg_map", None)
    cached = _PHASE2_GROUPS.get(key)
    stale = cached is not None and live is not None and cached[1] not in live
    if cached is None or cached[0] is not parent or stale:
        ranks = dist.get_process_group_ranks(parent)
        group2 = dist.new_group(ranks=ranks, use_local_synchronization=True)
        assert group2 is not None  # this rank is in `ranks`
        _PHASE2_GROUPS[key] = (parent, group2)
    return _PHASE2_GROUPS[key][1]


_PHASE2_GROUPS: dict[str, tuple[dist.ProcessGroup, dist.ProcessGroup]] = {}


def sign_vote_hook(state: SignVoteState, bucket: dist.GradBucket) -> Future:
    """DDP communication hook: fill the bucket with the majority vote of the ranks' signs
    (``state.scaled``: times the global mean l1 norm, [ScaledSign, Alg. 3]). See the module
    docstring for the semantics and :class:`SignVoteState` for the options."""
    if not isinstance(state, SignVoteState):
        raise TypeError(f"sign_vote_hook expects a SignVoteState, got {type(state).__name__}")
    group = state.process_group
    rank, world = state.world()
    transport = resolve_transport(state.transport, world)
    index, last = bucket.index(), bucket.is_last()
    buf = bucket.buffer()
    if buf.is_sparse:
        raise RuntimeError(
            "sign_vote_hook does not support sparse gradients (e.g. nn.Embedding(sparse=True)); "
            "use dense gradients"
        )
    complex_buffer = buf.is_complex()
    flat = torch.view_as_real(buf).view(-1) if complex_buffer else buf.view(-1)
    if index == 0 or state._ctx is None:
        if state._ctx is not None and state._ctx.scale_value is not None:
            state._last_scale = state._ctx.scale_value
        state._ctx = _Iteration()  # buckets are launched in index order: 0 opens an iteration
    ctx = state._ctx
    lengths = _segments(bucket, flat, complex_buffer)
    status, local_l1 = _prepare(state, bucket, flat, lengths)
    job = _Job(
        index,
        rank,
        world,
        transport,
        state.scaled,
        state.nonfinite,
        buf,
        flat,
        lengths,
        status,
        local_l1,
        _zero_bit(rank, state.iterations),
        ctx,
    )
    n = flat.numel()
    state.fp32_allreduce_bytes += allreduce_bytes(4 * n, world)
    state.bytes_sent += wire_bytes(n, world, transport, nseg=len(lengths), scaled=state.scaled)
    if last:
        state.iterations += 1

    try:
        if world == 1:
            voted = _vote_alone(job)
        elif transport == "allgather":
            voted = _vote_allgather(job, group)
        elif transport == "twophase":
            voted = _vote_twophase(job, group, _phase2_group(group))
        else:
            voted = _vote_int8(job, group)
    except dist.DistError as err:
        raise _HookError(
            f"sign_vote_hook: starting the exchange of bucket {index} failed on rank {rank} of "
            f"{world} (transport={transport!r}): {err}"
        ) from err
    if not state.scaled:
        return voted

    # Scaled variant: every bucket waits for the global scale, known once all buckets are in.
    ctx.decoded.append(voted)
    if last:
        torch.futures.collect_all(list(ctx.decoded)).then(
            functools.partial(_set_scale, ctx, state.scale_reduce, job)
        )
    return torch.futures.collect_all([voted, ctx.scale]).then(functools.partial(_apply_scale, job))


# DDP checks the hook's annotations as objects, not strings (this module postpones annotations).
sign_vote_hook.__annotations__ = {
    "state": SignVoteState,
    "bucket": dist.GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}


def _set_scale(ctx: _Iteration, reduce: str, job: _Job, all_fut: Future) -> None:
    try:
        for f in job.wait("the buckets' votes", all_fut):
            job.wait("a bucket's vote", f)  # re-raise a failed bucket
        # Rank m's ||u_m||_1 over the whole model = the sum of its per-bucket sums.
        per_rank = torch.stack([ctx.l1_parts[i] for i in sorted(ctx.l1_parts)]).sum(0)
        scale = float(per_rank.mean() if reduce == "mean" else torch.quantile(per_rank, 0.5))
        ctx.scale_value = scale
        ctx.scale.set_result(scale)
    except Exception as err:
        ctx.scale.set_exception(err)


def _apply_scale(job: _Job, both: Future) -> Tensor:
    f_voted, f_scale = job.wait("the vote", both)
    out = job.wait("the vote", f_voted)
    scale = job.wait("the global scale", f_scale)
    target = torch.view_as_real(out).view(-1) if out.is_complex() else out.view(-1)
    if scale > torch.finfo(target.dtype).max:
        raise OverflowError(
            f"sign_vote_hook: the scale {scale:.3g} does not fit in the bucket's {target.dtype}; "
            "use float32 gradients or the unscaled vote"
        )
    target.mul_(scale)
    return out


def _vote_alone(job: _Job) -> Future:
    """One rank: the vote is its own sign (exact zeros stay 0: nothing has to travel)."""
    job.check_nonfinite(job.status.unsqueeze(0))
    for seg, s in zip(job.flat.split(job.lengths), job.status.tolist()):
        if s != _VOTE:
            seg.zero_()
    job.flat.sign_()
    job.ctx.l1_parts[job.index] = torch.tensor([job.local_l1], dtype=torch.float64)
    return _done(job.buf)


def _header(job: _Job, out: Tensor) -> None:
    """Write [l1 as float64 if scaled][status bytes] into ``out`` (rows of a message)."""
    off = 0
    if job.scaled:
        out[..., :8] = torch.tensor([job.local_l1], dtype=torch.float64).view(torch.uint8)
        off = 8
    out[..., off : off + len(job.lengths)] = job.status


def _read_header(job: _Job, rows: Tensor) -> Tensor:
    """Inverse of :func:`_header` on the ``M`` received rows: records the l1 sums, checks the
    non-finite policy, returns the ``(M, nseg)`` status bytes."""
    off = 0
    if job.scaled:
        job.ctx.l1_parts[job.index] = rows[:, :8].contiguous().view(torch.float64)[:, 0]
        off = 8
    status = rows[:, off : off + len(job.lengths)]
    job.check_nonfinite(status)
    return status


def _vote_allgather(job: _Job, group: dist.ProcessGroup | None) -> Future:
    n, world = job.flat.numel(), job.world
    lay = _layout(n, world, len(job.lengths), job.scaled, "allgather")
    nbits, row = lay["bits"], lay["row"]
    msg = torch.zeros(row, dtype=torch.uint8)
    msg[:nbits] = pack_signs(job.flat, job.zero_bit)
    _header(job, msg[nbits:])
    out = torch.empty(world * row, dtype=torch.uint8)
    return _all_gather(out, msg, group).then(functools.partial(_decode_allgather, job, out, lay))


def _decode_allgather(job: _Job, out: Tensor, lay: dict[str, int], fut: Future) -> Tensor:
    job.wait("the all-gather of the signs", fut)
    nbits = lay["bits"]
    rows = out.view(job.world, lay["row"])
    status = _read_header(job, rows[:, nbits:])
    active = _active_bits(status, job.lengths, 0, job.flat.numel(), nbits)
    pos, neg = majority_vote(rows[:, :nbits], active)
    unpack_ternary(pos, neg, job.flat.numel(), out=job.flat)
    return job.buf


def _vote_twophase(job: _Job, group: dist.ProcessGroup | None, group2: dist.ProcessGroup) -> Future:
    n, world = job.flat.numel(), job.world
    lay = _layout(n, world, len(job.lengths), job.scaled, "twophase")
    sb = lay["slice_bytes"]
    bits = pack_signs(job.flat, job.zero_bit)
    send = torch.zeros(world, lay["row"], dtype=torch.uint8)
    padded = torch.zeros(world * sb, dtype=torch.uint8)
    padded[: bits.numel()] = bits
    send[:, :sb] = padded.view(world, sb)  # row j: the bits of slice j, for rank j
    _header(job, send[:, sb:])
    recv = torch.empty(world, lay["row"], dtype=torch.uint8)
    phase1 = dist.all_to_all_single(recv, send, group=group, async_op=True).get_future()
    # Phase 2 launches in bucket order: each waits for the previous bucket's launch.
    ctx = job.ctx
    previous = ctx.phase2_launched
    launched: Future[None] = Future()
    ctx.phase2_launched = launched
    result: Future = Future()
    torch.futures.collect_all([phase1, previous]).then(
        functools.partial(_twophase_vote_slice, job, lay, recv, group2, launched, result)
    )
    # A Future made in Python carries its error as a value; a `then` turns it into a real
    # error, which is what DDP's C++ side understands.
    return result.then(_unwrap)


def _unwrap(fut: Future) -> Any:
    return fut.value()


def _twophase_vote_slice(
    job: _Job,
    lay: dict[str, int],
    recv: Tensor,
    group2: dist.ProcessGroup,
    launched: Future,
    result: Future,
    both: Future,
) -> None:
    # Runs on a communication thread: never block here; phase 2's callback completes `result`.
    sc, sb, world = lay["slice"], lay["slice_bytes"], job.world
    try:
        f1, f_prev = job.wait("the all-to-all of the signs", both)
        job.wait("the previous bucket", f_prev)
        job.wait("the all-to-all of the signs", f1)
        status = _read_header(job, recv[:, sb:])
        active = _active_bits(status, job.lengths, job.rank * sc, sc, sb)
        pos, neg = majority_vote(recv[:, :sb], active)
        gathered = torch.empty(world * lay["result"], dtype=torch.uint8)
        phase2 = _all_gather(gathered, torch.cat([pos, neg]), group2)
    except Exception as err:
        launched.set_exception(err)
        result.set_exception(err)
        return
    launched.set_result(None)
    phase2.then(functools.partial(_twophase_spread, job, sb, gathered, result))


def _twophase_spread(job: _Job, sb: int, gathered: Tensor, result: Future, fut: Future) -> None:
    try:
        job.wait("the all-gather of the slice votes", fut)
        planes = gathered.view(job.world, 2, sb)
        n = job.flat.numel()
        unpack_ternary(planes[:, 0].reshape(-1), planes[:, 1].reshape(-1), n, out=job.flat)
        result.set_result(job.buf)
    except Exception as err:
        result.set_exception(err)


def _vote_int8(job: _Job, group: dist.ProcessGroup | None) -> Future:
    n, world = job.flat.numel(), job.world
    dtype = torch.int8 if world <= 127 else torch.int16
    for seg, s in zip(job.flat.split(job.lengths), job.status.tolist()):
        if s == _NONFINITE:
            seg.zero_()  # abstain; zero segments are zero already
    votes = torch.empty(n + 1, dtype=dtype)
    votes[:n] = torch.sign(job.flat)
    votes[n] = int(bool((job.status == _NONFINITE).any()))  # how many ranks saw NaN/inf
    futs = [dist.all_reduce(votes, group=group, async_op=True).get_future()]
    l1_all = torch.empty(world, dtype=torch.float64)
    if job.scaled:
        local = torch.tensor([job.local_l1], dtype=torch.float64)
        futs.append(_all_gather(l1_all, local, group))
    return torch.futures.collect_all(futs).then(functools.partial(_decode_int8, job, votes, l1_all))


def _decode_int8(job: _Job, votes: Tensor, l1_all: Tensor, fut: Future) -> Tensor:
    for f in job.wait("the int8 all-reduce", fut):
        job.wait("the int8 all-reduce", f)
    n = job.flat.numel()
    bad = int(votes[n])
    if job.nonfinite == "raise" and bad > 0:
        raise FloatingPointError(
            f"sign_vote_hook: non-finite gradient in bucket {job.index} on {bad} rank(s); "
            "every rank raises (nonfinite='raise')"
        )
    if job.scaled:
        job.ctx.l1_parts[job.index] = l1_all
    job.flat.copy_(votes[:n].sign())
    return job.buf
