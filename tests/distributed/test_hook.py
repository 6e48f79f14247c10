"""sign_vote_hook under real DDP: several gloo processes on localhost.

One spawn per world size runs the whole grid (``_workers.suite``) and the tests below assert on
its results; the fault tests need spawns of their own. Every check's reference comes from the
definitions ([ScaledSign, Alg. 3]; [Bernstein18]) applied to all ranks' gradients.
"""

from __future__ import annotations

import pytest

from tests.distributed import _workers
from tests.distributed._harness import results, run_workers

pytestmark = pytest.mark.distributed

GRID = [
    (t, s, g, m)
    for t in _workers.TRANSPORTS
    for s in (False, True)
    for g in (False, True)
    for m in (0.0, 0.9)
]


@pytest.fixture(scope="module")
def m2(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    extra = ("join", "checkpoint", "dtype", "nonfinite", "groups", "sparse")
    return results(
        run_workers(_workers.suite, 2, tmp_path_factory.mktemp("m2"), args=(extra,), deadline_s=300)
    )


@pytest.fixture(scope="module")
def m3(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    extra = ("byzantine",)
    return results(
        run_workers(_workers.suite, 3, tmp_path_factory.mktemp("m3"), args=(extra,), deadline_s=300)
    )


@pytest.fixture(params=["m2", "m3"])
def suite(request: pytest.FixtureRequest) -> list[dict]:
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("key", GRID, ids=lambda k: "-".join(map(str, k)))
def test_hook_equals_reference(suite: list[dict], key: tuple) -> None:
    _, scaled, _, _ = key
    for rank, res in enumerate(suite):
        r = res["grid"][key]
        assert r["sign_mismatch"] == 0, (rank, r)
        if scaled:
            assert r["rel_err"] < 1e-5, (rank, r)
            got, want = r["last_scale"]
            assert got == pytest.approx(want, rel=1e-5)
        else:
            assert r["last_scale"] == (None, None)
            assert r["rel_err"] == 0, (rank, r)  # number of differing entries
        # >= 4 iterations and DDP's bucket rebuild crossed (static_graph rebuilds after the
        # second step): the layout changed and ends with several buckets.
        assert len(r["layouts"]) >= 4 and r["layouts"][0] != r["layouts"][-1], r["layouts"]
        assert len(r["layouts"][-1]) > 1
        assert r["iterations"] == len(r["layouts"])


def test_median_scale_equals_reference(suite: list[dict]) -> None:
    for res in suite:
        r = res["grid"][("auto", True, True, 0.9, "median")]
        assert r["sign_mismatch"] == 0 and r["rel_err"] < 1e-5, r


@pytest.mark.parametrize("key", GRID, ids=lambda k: "-".join(map(str, k)))
def test_zero_gradients_do_not_vote(suite: list[dict], key: tuple) -> None:
    """``unused`` (zero gradient on every rank) and ``frozen`` never move; ``gated`` (zero on
    rank 1 only) moves by the other ranks' vote (checked exactly by the reference test)."""
    for res in suite:
        moved = res["grid"][key]["moved"]
        assert not moved["unused.weight"] and not moved["unused.bias"]
        assert not moved["frozen.weight"] and not moved["frozen.bias"]
        assert moved["gated.weight"] and moved["a.weight"]
    # a.weight[:, 0] has an exact zero gradient on every rank (dead input) inside a voting
    # parameter: no drift. Exact for int8 and for one bit in an even world (ranks of opposite
    # parity cancel); one bit in an odd world alternates by at most one step.
    transport, scaled, _, _ = key
    for res in suite:
        r = res["grid"][key]
        if transport == "int8" or len(suite) % 2 == 0:
            assert r["dead_input_drift"] == 0, r
        elif not scaled:
            assert r["dead_input_drift"] <= r["lr"] * (1 + 1e-6), r
    # rank 1 abstains on gated.weight and gated.bias and on unused (2) every step, others on unused
    r0, r1 = suite[0]["grid"][key], suite[1]["grid"][key]
    assert r1["abstentions"] == r0["abstentions"] + 2 * r0["iterations"]


def test_bytes_counted_match_socket_bytes(suite: list[dict]) -> None:
    """The state's byte counter against what the process really wrote to its sockets
    (/proc/self/io), and the compression against DDP's fp32 all-reduce, measured."""
    world = len(suite)
    for res in suite:
        b = res["bytes"]
        if b["fp32"]["measured"] is None:
            pytest.skip("/proc/self/io not available")
        fp32 = b["fp32"]["measured"]
        n = b["fp32"]["n"]
        assert fp32 == pytest.approx(8 * n * (world - 1) / world, rel=0.02)  # ring all-reduce
        for t in _workers.TRANSPORTS:
            measured, counted = b[t]["measured"], b[t]["counted"]
            # payload counted; gloo adds a header of a few hundred bytes per message
            assert measured == pytest.approx(counted, rel=0.03, abs=2048), (t, b[t])
            assert b[t]["fp32_counted"] == pytest.approx(fp32, rel=0.02)
        assert fp32 / b["int8"]["measured"] > 3.8
        if world == 3:
            assert fp32 / b["allgather"]["measured"] >= 20
            assert fp32 / b["twophase"]["measured"] >= 20
        else:
            assert fp32 / b["allgather"]["measured"] >= 30


def test_process_groups(m2: list[dict]) -> None:
    """A non-default group of all ranks behaves as the default one; in a group of one rank the
    vote is the rank's own sign, scaled by its own l1 norm, and nothing is sent."""
    for res in m2:
        r = res["groups"]
        for t in _workers.TRANSPORTS:
            assert r[t]["sign_mismatch"] == 0 and r[t]["rel_err"] < 1e-5, (t, r[t])
        assert r["alone"]["rel_err"] < 1e-6 and r["alone"]["bytes_sent"] == 0
        assert r["alone"]["world"] == (0, 1)


@pytest.mark.parametrize("transport", _workers.TRANSPORTS)
@pytest.mark.parametrize("scaled", [False, True])
def test_joined_rank_does_not_vote(m2: list[dict], transport: str, scaled: bool) -> None:
    r0, r1 = (res["join"][(transport, scaled)] for res in m2)
    assert len(r0["errors"]) == 3
    assert max(r0["errors"]) < 1e-6, r0
    # the joined rank ran the hook on its zero buckets for every shadowed step
    assert r0["iterations"] == r1["iterations"] == 5


@pytest.mark.parametrize("transport", ["allgather", "twophase"])
@pytest.mark.parametrize("bound", [True, False])
def test_state_pickles_and_resumes(m2: list[dict], transport: str, bound: bool) -> None:
    for res in m2:
        r = res["checkpoint"][(transport, bound)]
        assert r["restored_group"] is None  # dropped, the default group is used
        assert r["restored_iterations"] == 3
        assert r["n_buffers"] == 4  # momentum per parameter, not per bucket
        if bound:
            assert r["keys"] == ["0.bias", "0.weight", "2.bias", "2.weight"]
        assert r["max_diff"] < 1e-6, r
        assert r["state_dict_roundtrip"]


@pytest.mark.parametrize("transport", _workers.TRANSPORTS)
def test_nonfinite_abstains(m2: list[dict], transport: str) -> None:
    r0, r1 = (res["nonfinite"][("abstain", transport)] for res in m2)
    assert r0["raised"] is None and r1["raised"] is None
    assert r0["mismatch"] == 0 and r1["mismatch"] == 0
    assert (r0["nonfinite_segments"], r1["nonfinite_segments"]) == (0, 1)


@pytest.mark.parametrize("transport", _workers.TRANSPORTS)
def test_nonfinite_raises_on_every_rank(m2: list[dict], transport: str) -> None:
    for res in m2:
        r = res["nonfinite"][("raise", transport)]
        assert r["raised"] is not None
        assert "non-finite gradient" in r["message"]


def test_sparse_gradients_are_refused(m2: list[dict]) -> None:
    for res in m2:
        assert "sign_vote_hook does not support sparse gradients" in (res["sparse"]["error"] or "")


@pytest.mark.parametrize("transport", _workers.TRANSPORTS)
@pytest.mark.parametrize("dtype", ["torch.bfloat16", "torch.complex64"])
def test_dtypes(m2: list[dict], transport: str, dtype: str) -> None:
    for res in m2:
        r = res["dtype"][(dtype, transport)]
        tol = 1e-2 if "bfloat16" in dtype else 1e-5  # the scale rounded to the bucket dtype
        assert r["rel_err"] < tol, r
        assert r["grad_dtype"] == dtype


def test_majority_vote_tolerates_a_byzantine_worker(m3: list[dict]) -> None:
    """1 of 3 workers sends negated or large random gradients: the vote still converges; plain
    averaging under the random attack does not (so the attack has teeth)."""
    for res in m3:
        r = res["byzantine"]
        start = r[(None, "vote")]["start"]
        for case in [
            (None, "vote"),
            ("negate", "vote"),
            ("random", "vote"),
            ("random", "vote_scaled"),
        ]:
            assert r[case]["final"] < 0.1 * start, (case, r[case])
        assert r[("random", "mean")]["final"] > 0.5 * start


@pytest.mark.parametrize(
    ("fault", "world", "transport", "scaled"),
    [("die", 3, "twophase", True), ("hang", 2, "allgather", False)],
)
def test_dead_or_hung_worker_fails_fast(
    tmp_path, fault: str, world: int, transport: str, scaled: bool
) -> None:
    timeout = 4.0
    outcomes = run_workers(
        _workers.dies_or_hangs,
        world,
        tmp_path,
        args=(fault, transport, scaled),
        timeout_s=timeout,
        deadline_s=90,
        linger_s=3,
        allow_errors=True,
    )
    assert outcomes[-1] is None  # the faulty rank: died, or killed by the harness
    for rank, o in enumerate(outcomes[:-1]):
        assert o is not None and o[0] == "ok", (rank, o)
        r = o[1]
        assert r["step"] == 3, r
        assert "sign_vote_hook" in r["error"] and f"on rank {rank} of {world}" in r["error"], r
        assert r["wait"] < timeout + 10, r
