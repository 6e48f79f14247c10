"""Bit packing and the majority vote on packed signs: the pure functions behind
:func:`steepest.distributed.sign_vote_hook`, usable without any process group.

Majority vote ([Bernstein18]; [ScaledSign, Alg. 3]): worker ``m`` sends ``sign(g_m)`` in one bit a
coordinate, the update direction is ``sign(sum_m sign(g_m))`` with ``sign(0) = 0`` (a tie).

Layout conventions, shared by every function here:

* **signs** are packed LSB-first, 8 coordinates a byte: bit ``k`` of byte ``j`` is 1 iff
  coordinate ``8 j + k`` is positive (``numpy.packbits(x > 0, bitorder="little")``). The packed
  length is rounded up to whole 64-bit words so that the vote can run on ``int64`` words;
  padding bits are 0.
* **ternary** vectors in ``{-1, 0, +1}`` (the vote's result) are two such bit planes,
  ``pos = pack(v > 0)`` and ``neg = pack(v < 0)``, i.e. 2 bits a coordinate.
* **votes** are counted *bit-sliced*: the ``M`` workers' words are added into ``ceil(log2(M+1))``
  counter planes with a ripple-carry adder, so 64 coordinates are counted by one word operation,
  and the comparison ``2 * (#positive) vs (#voters)`` is also done bit-sliced. Workers that
  abstain on a coordinate (zero or non-finite gradient there) are masked out with an
  ``active`` bit plane and are then neither ``+1`` nor ``-1``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "majority_vote",
    "pack_bits",
    "pack_signs",
    "pack_ternary",
    "packed_nbytes",
    "unpack_bits",
    "unpack_signs",
    "unpack_ternary",
    "vote_signs",
]


def _i64(x: int) -> int:
    """An unsigned 64-bit constant as the signed value torch's int64 arithmetic wraps to."""
    return x - (1 << 64) if x >= 1 << 63 else x


# Gathers the low bit of each of the 8 bytes of a word into the top byte: byte k (bit 8k) is
# multiplied by 2**(56 - 7k), landing on bit 56 + k. The 64 partial products occupy distinct
# bit positions, so no carry disturbs the top byte. (The classic "pack bytes of 0/1" multiply.)
_GATHER = _i64(0x0102040810204080)
# Spreads bit k of a byte to byte k of a word: replicate the byte (x 0x0101..), keep bit k in
# byte k (& 0x8040..), then turn each non-zero byte into 0x01 (+0x7F sets its high bit iff the
# byte is non-zero; no carry can cross bytes since 0x80 + 0x7F = 0xFF).
_REPLICATE = _i64(0x0101010101010101)
_SELECT = _i64(0x8040201008040201)
_ROUND = _i64(0x7F7F7F7F7F7F7F7F)
_HIGH = _i64(0x8080808080808080)
_LOW = _i64(0x0101010101010101)


def packed_nbytes(n: int) -> int:
    """Bytes that :func:`pack_bits` uses for ``n`` coordinates: ``8 * ceil(n / 64)``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return 8 * ((n + 63) // 64)


def pack_bits(mask: Tensor) -> Tensor:
    """Pack a 1-D boolean tensor into ``uint8`` bytes, LSB-first, padded to whole 64-bit words.

    Equals ``numpy.packbits(mask, bitorder="little")`` followed by zero padding to
    :func:`packed_nbytes` bytes.
    """
    if mask.dim() != 1 or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a 1-D bool tensor, got {mask.dtype} of shape {tuple(mask.shape)}"
        )
    n = mask.numel()
    out = torch.empty(packed_nbytes(n), dtype=torch.uint8)
    full = n // 64 * 64
    if full:
        _gather_bytes(mask[:full].contiguous(), out[: full // 8])
    if full < n:  # the last partial word: pad a copy of < 64 bools, not the whole mask
        tail = torch.zeros(64, dtype=torch.bool)
        tail[: n - full] = mask[full:]
        _gather_bytes(tail, out[full // 8 :])
    return out


def _gather_bytes(mask: Tensor, out: Tensor) -> None:
    """Pack a contiguous bool tensor of a multiple of 64 elements into ``out`` (uint8)."""
    # 8 bools (bytes 0/1) are one little-endian int64 word; the multiply gathers them.
    words = mask.view(torch.uint8).view(torch.int64)
    out.copy_(words.mul(_GATHER).bitwise_right_shift_(56).bitwise_and_(0xFF))


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` bits of ``packed`` as a 1-D bool tensor."""
    packed = _check_packed(packed, n)
    wide = packed.to(torch.int64)
    wide = wide.mul_(_REPLICATE).bitwise_and_(_SELECT).add_(_ROUND).bitwise_and_(_HIGH)
    # Arithmetic shift drags the sign bit along; the final mask keeps one bit per byte.
    wide = wide.bitwise_right_shift_(7).bitwise_and_(_LOW)
    return wide.view(torch.uint8)[:n].view(torch.bool)


def _check_packed(packed: Tensor, n: int) -> Tensor:
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(
            f"packed must be a 1-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}"
        )
    if n < 0 or 8 * packed.numel() < n:
        raise ValueError(
            f"n must be in [0, {8 * packed.numel()}] for {packed.numel()} bytes, got {n}"
        )
    return packed


def pack_signs(x: Tensor, zero_as: int = 0) -> Tensor:
    """One bit a coordinate: bit = 1 iff ``x > 0`` (:func:`pack_bits` layout).

    A bit cannot say "zero": an exact zero is sent as ``zero_as`` (0, i.e. ``-1``, by default;
    1, i.e. ``+1``). NaN is sent as 0. :func:`steepest.distributed.sign_vote_hook` alternates
    ``zero_as`` with rank and step so that zeros carry no persistent direction. Complex
    tensors are packed as their real view.
    """
    if zero_as not in (0, 1):
        raise ValueError(f"zero_as must be 0 or 1, got {zero_as!r}")
    flat = x.reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    # One comparison either way: zeros fall on the side that `zero_as` names.
    return pack_bits(flat >= 0 if zero_as else flat > 0)


def unpack_signs(packed: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The first ``n`` packed bits as ``+1`` (bit 1) / ``-1`` (bit 0) in ``dtype``."""
    packed = _check_packed(packed, n)
    nb = (n + 7) // 8
    table = _sign_table(dtype)
    return torch.index_select(table, 0, packed[:nb].to(torch.int32)).view(-1)[:n]


# Lookup tables turn packed bytes into values with one gather (much faster than bit twiddling
# followed by a dtype conversion): 256 x 8 for signs, 65536 x 8 indexed by pos | neg << 8 for
# ternary vectors (2 MiB in float32), built once per dtype.
_TABLES: dict[tuple[str, torch.dtype], Tensor] = {}


def _bit_rows(count: int) -> Tensor:
    """Row ``i`` = the 8 low bits of ``i`` (LSB first) as int8, for ``i < count``."""
    i = torch.arange(count, dtype=torch.int64).unsqueeze(1)
    return (i.bitwise_right_shift(torch.arange(8)).bitwise_and(1)).to(torch.int8)


def _sign_table(dtype: torch.dtype) -> Tensor:
    key = ("sign", dtype)
    if key not in _TABLES:
        _TABLES[key] = (_bit_rows(256) * 2 - 1).to(dtype)
    return _TABLES[key]


def _ternary_table(dtype: torch.dtype) -> Tensor:
    key = ("ternary", dtype)
    if key not in _TABLES:
        bits = _bit_rows(256)
        idx = torch.arange(65536)
        _TABLES[key] = (bits[idx & 255] - bits[idx >> 8]).to(dtype).contiguous()
    return _TABLES[key]


def pack_ternary(v: Tensor) -> tuple[Tensor, Tensor]:
    """Two bit planes ``(pack(v > 0), pack(v < 0))`` of a vector in ``{-1, 0, 1}`` (2 bits each)."""
    flat = v.reshape(-1)
    return pack_bits(flat > 0), pack_bits(flat < 0)


def unpack_ternary(
    pos: Tensor, neg: Tensor, n: int, dtype: torch.dtype = torch.float32, out: Tensor | None = None
) -> Tensor:
    """Inverse of :func:`pack_ternary`: ``unpack(pos) - unpack(neg)`` as ``dtype``, or written
    into ``out`` (a 1-D tensor of ``n`` elements, any dtype, e.g. a DDP bucket)."""
    _check_packed(pos, n)
    _check_packed(neg, n)
    if pos.numel() != neg.numel():
        raise ValueError(
            f"pos and neg must have the same length, got {pos.numel()} and {neg.numel()}"
        )
    nb = (n + 7) // 8
    if out is not None:
        if out.dim() != 1 or out.numel() != n:
            raise ValueError(
                f"out must be a 1-D tensor of {n} elements, got shape {tuple(out.shape)}"
            )
        dtype = out.dtype
    idx = pos[:nb].to(torch.int32).bitwise_or_(neg[:nb].to(torch.int32).bitwise_left_shift_(8))
    table = _ternary_table(dtype)
    if out is not None and n % 8 == 0 and out.is_contiguous():
        # Gather straight into the destination: no temporary of n elements.
        torch.index_select(table, 0, idx, out=out.view(nb, 8))
        return out
    values = torch.index_select(table, 0, idx).view(-1)[:n]
    return values if out is None else out.copy_(values)


# ------------------------------------------------------------------ bit-sliced counting
def _count_planes(words: list[Tensor], nbits: int) -> list[Tensor]:
    """Per bit position, the number of set bits among ``words`` as ``nbits`` bit planes
    (plane ``i`` holds bit ``i`` of the count): a ripple-carry adder on whole words."""
    planes = [torch.zeros_like(words[0]) for _ in range(nbits)]
    for m, w in enumerate(words):
        carry = w
        # After adding m words the count is <= m, so only the low bit_length(m+1) planes move.
        for i in range(min(nbits, (m + 1).bit_length())):
            nxt = planes[i] & carry
            planes[i] ^= carry
            carry = nxt
    return planes


def _compare_const(planes: list[Tensor], k: int) -> tuple[Tensor, Tensor]:
    """Bit-sliced ``(count > k, count < k)`` for a constant ``k``, most significant plane first."""
    gt = torch.zeros_like(planes[0])
    lt = torch.zeros_like(planes[0])
    eq = torch.full_like(planes[0], -1)
    for i in reversed(range(len(planes))):
        c = planes[i]
        if (k >> i) & 1:
            lt |= eq & ~c
            eq &= c
        else:
            gt |= eq & c
            eq &= ~c
    if k >> len(planes):  # k larger than any count
        return torch.zeros_like(gt), torch.full_like(lt, -1)
    return gt, lt


def _compare(a: list[Tensor], b: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Bit-sliced ``(a > b, a < b)`` of two counts given as bit planes."""
    nbits = max(len(a), len(b))
    zero = torch.zeros_like(a[0])
    a = a + [zero] * (nbits - len(a))
    b = b + [zero] * (nbits - len(b))
    gt = torch.zeros_like(zero)
    lt = torch.zeros_like(zero)
    eq = torch.full_like(zero, -1)
    for i in reversed(range(nbits)):
        gt |= eq & a[i] & ~b[i]
        lt |= eq & ~a[i] & b[i]
        eq &= ~(a[i] ^ b[i])
    return gt, lt


def majority_vote(packed: Tensor, active: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Majority vote over ``M`` workers' packed signs, on the packed data.

    Args:
        packed: ``uint8`` tensor of shape ``(M, B)``, row ``m`` = worker ``m``'s
            :func:`pack_signs` bits, ``B`` a multiple of 8.
        active: optional ``uint8`` tensor of the same shape, bit = 1 where worker ``m`` votes
            (``None``: everybody votes everywhere). Inactive workers abstain.

    Returns:
        ``(pos, neg)`` bit planes (:func:`pack_ternary` layout) of
        ``sign(sum_{m active} (2 bit_m - 1))``; a coordinate without a strict majority
        (a tie, or no active voter) is 0 in both planes.
    """
    if packed.dim() != 2 or packed.dtype != torch.uint8:
        raise ValueError(
            f"packed must be a (M, B) uint8 tensor, got {packed.dtype} {tuple(packed.shape)}"
        )
    m, nbytes = packed.shape
    if m < 1 or nbytes % 8:
        raise ValueError(
            f"packed must have M >= 1 rows of a multiple of 8 bytes, got {tuple(packed.shape)}"
        )
    if active is not None and (active.shape != packed.shape or active.dtype != torch.uint8):
        raise ValueError(f"active must be a uint8 tensor of shape {tuple(packed.shape)}")
    rows = (
        packed.view(torch.int64)
        if packed.is_contiguous()
        else packed.contiguous().view(torch.int64)
    )
    words = list(rows.unbind(0))
    nbits = m.bit_length()
    if active is None:
        # 2P > M  <=>  P > floor(M/2);   2P < M  <=>  P < ceil(M/2).
        planes = _count_planes(words, nbits)
        pos, _ = _compare_const(planes, m // 2)
        _, neg = _compare_const(planes, (m + 1) // 2)
    else:
        act = list(active.contiguous().view(torch.int64).unbind(0))
        yes = _count_planes([w & a for w, a in zip(words, act)], nbits)
        voters = _count_planes(act, nbits)
        twice_yes = [torch.zeros_like(yes[0]), *yes]  # 2P: shift the planes by one
        pos, neg = _compare(twice_yes, voters)
    return pos.view(torch.uint8), neg.view(torch.uint8)


def vote_signs(signs: Tensor) -> Tensor:
    """Dense reference of the vote: ``sign(sum_m signs[m])`` for ``signs`` of shape ``(M, n)``
    with entries in ``{-1, 0, 1}`` (0 = abstain). Plain torch, no packing."""
    if signs.dim() != 2:
        raise ValueError(f"signs must have shape (M, n), got {tuple(signs.shape)}")
    return torch.sign(signs.to(torch.int32).sum(0)).to(torch.int8)
