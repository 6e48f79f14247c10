"""FSDP2 (``fully_shard``, DTensor parameters): every optimizer gives the unsharded result.

Two gloo processes shard a small MLP with odd layer sizes (uneven, padded shards). Global-scope
norms must reduce across shards (DTensor reductions do), and CoordinateDescent's argmax must be
the global one, not the one of each rank's shard.

Tolerance: 1e-5 absolute after 3 steps at lr <= 0.3. Sharded reductions sum in another order
(per shard, then across ranks), and FSDP2 averages gradients with a reduce-scatter, so float32
results differ in the last bits (measured: <= 1e-7); a wrong shard-local argmax or norm moves a
coordinate by O(lr) (4.8e-3 for CoordinateDescent before the fix).
"""

from __future__ import annotations

import pytest

from tests.distributed import _fsdp_workers
from tests.distributed._harness import results, run_workers

pytestmark = pytest.mark.distributed

NAMES = list(_fsdp_workers.OPTIMIZERS)


@pytest.fixture(scope="module")
def diffs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, float]]:
    return results(
        run_workers(_fsdp_workers.compare, 2, tmp_path_factory.mktemp("fsdp"), args=(NAMES, 3),
                    deadline_s=300, timeout_s=60)
    )


@pytest.mark.parametrize("name", NAMES)
def test_fully_shard_matches_unsharded(diffs, name):
    assert len(diffs) == 2
    for rank, d in enumerate(diffs):
        assert d[name] <= 1e-5, f"rank {rank}: max |sharded - unsharded| = {d[name]:.3g}"
