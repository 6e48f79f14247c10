"""Bit packing, the packed majority vote and the byte model, without processes.

References: ``numpy.packbits`` for the layout, brute-force counting for the vote ([Bernstein18]
Sec. 5: ``sign(sum_m sign(g_m))``, 0 on ties), the transports' costs as the issue derives them.
"""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steepest.distributed import (
    SignVoteState,
    allreduce_bytes,
    majority_vote,
    pack_bits,
    pack_signs,
    pack_ternary,
    packed_nbytes,
    resolve_transport,
    sign_vote_hook,
    unpack_bits,
    unpack_signs,
    unpack_ternary,
    vote_signs,
    wire_bytes,
)


# ------------------------------------------------------------------ packing
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 64, 65, 1000, 4097])
def test_pack_bits_is_numpy_packbits_little(n: int) -> None:
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) > 0.5
    got = pack_bits(mask).numpy()
    ref = np.packbits(mask.numpy(), bitorder="little")
    assert got.dtype == np.uint8 and got.size == packed_nbytes(n) == 8 * math.ceil(n / 64)
    np.testing.assert_array_equal(got[: ref.size], ref)
    assert not got[ref.size :].any()  # padding is zero


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), max_size=300))
def test_unpack_bits_inverts_pack_bits(bits: list[bool]) -> None:
    mask = torch.tensor(bits, dtype=torch.bool)
    assert torch.equal(unpack_bits(pack_bits(mask), len(bits)), mask)


def test_pack_bits_accepts_non_contiguous() -> None:
    mask = torch.rand(200) > 0.5
    assert torch.equal(pack_bits(mask[::2]), pack_bits(mask[::2].clone()))


@pytest.mark.parametrize("zero_as", [0, 1])
def test_pack_signs_bits_and_zero_rule(zero_as: int) -> None:
    x = torch.tensor([1.5, -2.0, 0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-45])
    bits = unpack_bits(pack_signs(x, zero_as), x.numel()).tolist()
    assert bits == [True, False, bool(zero_as), bool(zero_as), False, True, False, True]
    signs = unpack_signs(pack_signs(x, zero_as), x.numel())
    assert signs.tolist() == [1, -1, 2 * zero_as - 1, 2 * zero_as - 1, -1, 1, -1, 1]


def test_pack_signs_complex_packs_the_real_view() -> None:
    z = torch.tensor([1 - 2j, -3 + 0j], dtype=torch.complex64)
    assert unpack_bits(pack_signs(z), 4).tolist() == [True, False, False, False]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int8])
def test_unpack_signs_values(dtype: torch.dtype) -> None:
    x = torch.randn(77)
    s = unpack_signs(pack_signs(x), 77, dtype)
    assert s.dtype == dtype and torch.equal(s.float(), torch.where(x > 0, 1.0, -1.0))


@pytest.mark.parametrize("n", [0, 5, 8, 64, 129])
def test_ternary_roundtrip(n: int) -> None:
    v = torch.randint(-1, 2, (n,), generator=torch.Generator().manual_seed(n)).float()
    pos, neg = pack_ternary(v)
    assert torch.equal(unpack_ternary(pos, neg, n), v)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        out = torch.full((n,), 7.0, dtype=dtype)
        assert unpack_ternary(pos, neg, n, out=out) is out
        assert torch.equal(out.float(), v)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pack_bits(torch.ones(3)), "mask must be a 1-D bool"),
        (lambda: pack_bits(torch.ones(2, 2, dtype=torch.bool)), "mask must be a 1-D bool"),
        (lambda: unpack_bits(torch.zeros(8, dtype=torch.uint8), 65), r"n must be in \[0, 64\]"),
        (lambda: unpack_bits(torch.zeros(8, dtype=torch.uint8), -1), "n must be in"),
        (lambda: unpack_bits(torch.zeros(8), 3), "packed must be a 1-D uint8"),
        (lambda: pack_signs(torch.ones(3), 2), "zero_as must be 0 or 1"),
        (lambda: majority_vote(torch.zeros(8, dtype=torch.uint8)), r"\(M, B\) uint8"),
        (lambda: majority_vote(torch.zeros(2, 5, dtype=torch.uint8)), "multiple of 8 bytes"),
        (
            lambda: majority_vote(
                torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(3, 8, dtype=torch.uint8)
            ),
            "active must be",
        ),
        (
            lambda: unpack_ternary(
                torch.zeros(8, dtype=torch.uint8),
                torch.zeros(8, dtype=torch.uint8),
                4,
                out=torch.zeros(5),
            ),
            "out must be a 1-D tensor of 4",
        ),
        (lambda: packed_nbytes(-1), "n must be >= 0"),
        (lambda: vote_signs(torch.ones(3)), r"shape \(M, n\)"),
    ],
)
def test_bad_input_raises(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------ the vote
def brute_vote(signs: np.ndarray) -> np.ndarray:
    """sign(sum_m s_m) with s in {-1, 0, 1} (0 = abstain), one coordinate at a time."""
    out = np.zeros(signs.shape[1], dtype=np.int8)
    for i in range(signs.shape[1]):
        total = 0
        for m in range(signs.shape[0]):
            total += int(signs[m, i])
        out[i] = (total > 0) - (total < 0)
    return out


def packed_vote(signs: torch.Tensor, with_active: bool) -> torch.Tensor:
    n = signs.shape[1]
    packed = torch.stack([pack_bits(s > 0) for s in signs])
    active = torch.stack([pack_bits(s != 0) for s in signs]) if with_active else None
    pos, neg = majority_vote(packed, active)
    return unpack_ternary(pos, neg, n, dtype=torch.int8)


@pytest.mark.parametrize("m", range(1, 17))
def test_vote_matches_brute_force_random(m: int) -> None:
    g = torch.Generator().manual_seed(m)
    full = torch.where(torch.rand(m, 333, generator=g) > 0.5, 1, -1)
    ref = brute_vote(full.numpy())
    assert np.array_equal(packed_vote(full, False).numpy(), ref)
    assert np.array_equal(packed_vote(full, True).numpy(), ref)
    # ties happen exactly when M is even
    assert (ref == 0).any() == (m % 2 == 0)
    abstaining = torch.randint(-1, 2, (m, 333), generator=g)
    assert np.array_equal(packed_vote(abstaining, True).numpy(), brute_vote(abstaining.numpy()))


@pytest.mark.parametrize("m", range(1, 11))
def test_vote_exhaustive_binary(m: int) -> None:
    """Every combination of M signs, one combination per coordinate."""
    combos = torch.tensor(list(itertools.product([-1, 1], repeat=m)), dtype=torch.int64).T
    assert np.array_equal(packed_vote(combos, False).numpy(), brute_vote(combos.numpy()))


@pytest.mark.parametrize("m", range(1, 7))
def test_vote_exhaustive_with_abstentions(m: int) -> None:
    combos = torch.tensor(list(itertools.product([-1, 0, 1], repeat=m)), dtype=torch.int64).T
    got = packed_vote(combos, True).numpy()
    assert np.array_equal(got, brute_vote(combos.numpy()))
    assert got[(combos == 0).all(0).numpy()].tolist() == [0]  # nobody votes: 0


def test_vote_signs_reference() -> None:
    s = torch.tensor([[1, -1, 0, 1], [1, 1, 0, -1], [-1, 1, 0, 0]])
    assert vote_signs(s).tolist() == [1, 1, 0, 0]


def test_vote_on_non_contiguous_rows() -> None:
    rows = torch.randint(0, 256, (3, 24), dtype=torch.uint8)
    pos, neg = majority_vote(rows[:, :16])
    pos2, neg2 = majority_vote(rows[:, :16].clone())
    assert torch.equal(pos, pos2) and torch.equal(neg, neg2)


@pytest.mark.parametrize("seed", range(20))
def test_active_planes_against_dense_masks(seed: int) -> None:
    """The hook's "who votes where" planes (built on packed bytes) against dense masks."""
    from steepest.distributed.sign_vote import _active_bits

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 40, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g)
    lengths = lengths.tolist()
    n, world = sum(lengths), 3
    status = torch.randint(0, 3, (world, len(lengths)), generator=g).to(torch.uint8)
    start = int(torch.randint(0, n, (1,), generator=g)) // 8 * 8
    count = n - start
    planes = _active_bits(status, lengths, start, count, packed_nbytes(count))
    for r in range(world):
        dense = torch.cat(
            [torch.full((k,), bool(s == 0)) for k, s in zip(lengths, status[r].tolist())]
        )[start:]
        got = (
            torch.ones(count, dtype=torch.bool) if planes is None else unpack_bits(planes[r], count)
        )
        assert torch.equal(got, dense)


def test_zero_bits_of_opposite_parity_cancel() -> None:
    """The hook's rule for exact zeros: rank m sends +1 iff m + step is odd, so an all-zero
    coordinate of an even world gets 0, and the leftover of an odd world flips every step."""
    from steepest.distributed.sign_vote import _zero_bit

    zeros = torch.zeros(10)
    for world in (2, 3, 4, 5):
        outcome = []
        for step in (0, 1):
            packed = torch.stack([pack_signs(zeros, _zero_bit(m, step)) for m in range(world)])
            outcome.append(unpack_ternary(*majority_vote(packed), 10))
        if world % 2 == 0:
            assert not outcome[0].any() and not outcome[1].any()
        else:
            assert torch.equal(outcome[0], -outcome[1]) and outcome[0].abs().min() == 1


# ------------------------------------------------------------------ bytes on the wire
def test_wire_bytes_formulas() -> None:
    """Per rank, for n coordinates over M ranks (issue 6): all-gather n(M-1)/8, two-phase
    3n(M-1)/(8M), int8 ring 2n(M-1)/M; fp32 ring 8n(M-1)/M. Big n, so the small per-bucket
    extras vanish."""
    n = 64 * 3 * 5 * 7 * 4096
    for m in (2, 3, 4, 5, 7, 8, 64):
        fp32 = allreduce_bytes(4 * n, m)
        assert fp32 == 8 * n * (m - 1) / m
        ag = wire_bytes(n, m, "allgather")
        tp = wire_bytes(n, m, "twophase")
        i8 = wire_bytes(n, m, "int8")
        assert ag == pytest.approx(n * (m - 1) / 8, rel=1e-5)
        assert tp == pytest.approx(3 * n * (m - 1) / (8 * m), rel=1e-3)
        assert i8 == pytest.approx(2 * n * (m - 1) / m, rel=1e-5)
        assert fp32 / tp == pytest.approx(64 / 3, rel=1e-3)  # ~21x at any M
        assert fp32 / i8 == pytest.approx(4, rel=1e-5)
        assert fp32 / ag == pytest.approx(64 / m, rel=1e-5)  # 32x at M=2, none at M=64
        assert wire_bytes(n, m, "auto") == min(ag, tp)
    assert wire_bytes(n, 1, "allgather") == 0


def test_wire_bytes_counts_extras() -> None:
    # 10 coordinates: one 8-byte word of bits, 3 status bytes (+ 8 bytes of l1) padded to 8.
    assert wire_bytes(10, 2, "allgather", nseg=3) == 8 + 8
    assert wire_bytes(10, 2, "allgather", nseg=3, scaled=True) == 8 + 16
    assert wire_bytes(10, 3, "allgather", nseg=3) == 2 * 16
    with pytest.raises(ValueError, match="world_size"):
        wire_bytes(10, 0, "allgather")
    with pytest.raises(ValueError, match="transport"):
        wire_bytes(10, 2, "ring")


def test_auto_transport() -> None:
    assert [resolve_transport("auto", m) for m in (1, 2, 3, 4, 16)] == [
        "allgather",
        "allgather",
        "allgather",
        "twophase",
        "twophase",
    ]
    assert resolve_transport("int8", 3) == "int8"


# ------------------------------------------------------------------ the state
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scaled": 1}, "scaled must be a bool"),
        ({"momentum": 1.0}, r"momentum must be in \[0.0, 1.0\)"),
        ({"momentum": -0.1}, "momentum must be in"),
        ({"momentum": float("nan")}, "momentum must be in"),
        ({"transport": "ring"}, "transport must be one of"),
        ({"scale_reduce": "max"}, "scale_reduce must be one of"),
        ({"nonfinite": "skip"}, "nonfinite must be one of"),
        ({"process_group": "world"}, "process_group must be"),
        ({"module": 3}, "module must be a torch.nn.Module"),
    ],
)
def test_state_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SignVoteState(**kwargs)


def test_hook_rejects_other_states() -> None:
    with pytest.raises(TypeError, match="SignVoteState"):
        sign_vote_hook(None, None)  # type: ignore[arg-type]


def test_state_pickles_without_group_and_module() -> None:
    model = torch.nn.Linear(3, 2)
    state = SignVoteState(momentum=0.5, scaled=True, module=model)
    state.momentum_buffers["weight"] = torch.randn(2, 3)
    state.iterations, state.bytes_sent = 7, 123
    back = pickle.loads(pickle.dumps(state))
    assert back.process_group is None and back._module is None
    assert back.iterations == 7 and back.bytes_sent == 123 and back.scaled and back.momentum == 0.5
    assert torch.equal(back.momentum_buffers["weight"], state.momentum_buffers["weight"])
    assert back.keyed_by == "name"
    back.bind(model)  # name-keyed buffers need the module again
    assert back._key(model.weight) == "weight"


def test_restored_name_keyed_state_requires_bind() -> None:
    model = torch.nn.Linear(3, 2)
    state = SignVoteState(momentum=0.5, module=model)
    state.momentum_buffers["weight"] = torch.zeros(2, 3)
    back = pickle.loads(pickle.dumps(state))
    with pytest.raises(RuntimeError, match="bind"):
        back._key(model.weight)


def test_ordinal_keys_follow_first_appearance() -> None:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    state = SignVoteState(momentum=0.9)
    assert [state._key(b), state._key(a), state._key(b)] == ["#0", "#1", "#0"]
    state.momentum_buffers["#0"] = torch.ones(3)
    with pytest.raises(RuntimeError, match="bind the module before"):
        state.bind(torch.nn.Linear(2, 2))


def test_state_dict_roundtrip_and_checks() -> None:
    model = torch.nn.Linear(3, 2)
    state = SignVoteState(momentum=0.9, module=model)
    state.momentum_buffers["bias"] = torch.randn(2)
    state.iterations = 4
    sd = state.state_dict()
    other = SignVoteState(momentum=0.9, module=model)
    other.load_state_dict(sd)
    assert other.iterations == 4 and torch.equal(
        other.momentum_buffers["bias"], sd["momentum_buffers"]["bias"]
    )
    with pytest.raises(ValueError, match=r"momentum 0\.5 differs"):
        SignVoteState(momentum=0.5, module=model).load_state_dict(sd)
    with pytest.raises(ValueError, match="keyed by parameter name"):
        SignVoteState(momentum=0.9).load_state_dict(sd)
    unbound = SignVoteState(momentum=0.9)
    unbound.momentum_buffers["#0"] = torch.ones(2)
    with pytest.raises(ValueError, match="keyed by order of appearance"):
        SignVoteState(momentum=0.9, module=model).load_state_dict(unbound.state_dict())


def test_counters_and_ratio_start_empty() -> None:
    state = SignVoteState()
    assert state.bytes_sent == 0 and state.compression_ratio == math.inf
    assert state.last_scale is None
    state.bytes_sent, state.fp32_allreduce_bytes = 10, 320
    assert state.compression_ratio == 32
    state.reset_counters()
    assert state.bytes_sent == 0
