"""FSDP2 (``fully_shard``): the operator norms (Muon, Modular, SteepestDescent) give the unsharded
result (2 gloo processes).

A matrix direction (Newton-Schulz's or the SVD's matmuls over DTensors) comes out replicated; it
is cut to each rank's shard before the update, and the global scope's shape factors are
replicated DTensors like the duals they divide. Tolerance as tests/distributed/test_fsdp.py:
1e-5 absolute after 3 steps (float32 sums in another order across shards: last bits; a wrong
direction moves O(lr) = 1e-2). Not covered: ``ns_dtype="bfloat16"`` (sharded products round to
bfloat16 in another order: measured 2.9e-3 apart after 3 steps at lr 0.02).
"""

from __future__ import annotations

import pytest

from tests.distributed._harness import results, run_workers

pytestmark = pytest.mark.distributed

NAMES = ["Muon", "Modular-rownorm-soft", "Modular-colnorm-global-scaled", "Modular-spectral-global-scaled",
         "Modular-scion-constrained", "SteepestDescent-colnorm-global-scaled", "SteepestDescent-spectral-svd-normalized"]


def compare(rank: int, world: int, names: list[str], steps: int) -> dict[str, float]:
    from steepest import ColNorm, Linf, Modular, Muon, RowNorm, Spectral, SteepestDescent
    from tests.distributed import _fsdp_workers as workers

    ns = lambda **kw: Spectral("newton_schulz", **kw)  # noqa: E731
    workers.OPTIMIZERS.update({
        "Muon": lambda ps: Muon(ps, lr=0.02, nonmatrix_norm=Linf()),
        "Modular-rownorm-soft": lambda ps: Modular(ps, lr=0.01, norm=RowNorm(scale="shape"), mode="soft"),
        "Modular-colnorm-global-scaled": lambda ps: Modular(ps, lr=0.01, norm=ColNorm(), mode="scaled",
                                                            scope="global", nonmatrix_norm=Linf()),
        "Modular-spectral-global-scaled": lambda ps: Modular(ps, lr=0.01, norm=ns(), mode="scaled", scope="global",
                                                             nonmatrix_norm=Linf()),
        "Modular-scion-constrained": lambda ps: Modular(ps, lr=0.01, norm=ns(scale="shape"), mode="normalized",
                                                        nonmatrix_norm=ColNorm(scale="shape"), step="constrained",
                                                        radius=5.0, momentum=0.9, nesterov=False),
        "SteepestDescent-colnorm-global-scaled": lambda ps: SteepestDescent(ps, lr=0.01, norm=ColNorm(), mode="scaled"),
        "SteepestDescent-spectral-svd-normalized": lambda ps: SteepestDescent(ps, lr=0.01, norm=Spectral(),
                                                                              mode="normalized", scope="per_tensor"),
    })
    return workers.compare(rank, world, names, steps)


@pytest.fixture(scope="module")
def diffs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, float]]:
    return results(
        run_workers(compare, 2, tmp_path_factory.mktemp("fsdp_muon"), args=(NAMES, 3), deadline_s=300, timeout_s=60)
    )


@pytest.mark.parametrize("name", NAMES)
def test_fully_shard_matches_unsharded(diffs, name):
    assert len(diffs) == 2
    for rank, d in enumerate(diffs):
        assert d[name] <= 1e-5, f"rank {rank}: max |sharded - unsharded| = {d[name]:.3g}"
