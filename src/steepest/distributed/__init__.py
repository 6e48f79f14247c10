"""Distributed 1-bit training: majority-vote sign compression as a DDP communication hook.

``ddp.register_comm_hook(SignVoteState(...), sign_vote_hook)`` replaces DDP's gradient
all-reduce by the vote ``sign(sum_m sign(g_m))`` ([Bernstein18]; [ScaledSign, Sec. IV]), optionally
scaled by the mean l1 norm (Alg. 3) and with local momentum. The bit packing and vote are plain
functions (:mod:`steepest.distributed.bits`) usable without processes. See docs/distributed.md.
"""

from steepest.distributed.bits import (
    majority_vote,
    pack_bits,
    pack_signs,
    pack_ternary,
    packed_nbytes,
    unpack_bits,
    unpack_signs,
    unpack_ternary,
    vote_signs,
)
from steepest.distributed.sign_vote import (
    TRANSPORTS,
    SignVoteState,
    allreduce_bytes,
    resolve_transport,
    sign_vote_hook,
    wire_bytes,
)

__all__ = [
    "TRANSPORTS",
    "SignVoteState",
    "allreduce_bytes",
    "majority_vote",
    "pack_bits",
    "pack_signs",
    "pack_ternary",
    "packed_nbytes",
    "resolve_transport",
    "sign_vote_hook",
    "unpack_bits",
    "unpack_signs",
    "unpack_ternary",
    "vote_signs",
    "wire_bytes",
]
