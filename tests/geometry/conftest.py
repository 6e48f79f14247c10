"""One intra-op thread for the geometry tests: their tensors are tiny, and with the cores shared
(pytest-xdist workers, other jobs) torch's thread pool costs more than it saves (measured: a
26-parameter Hessian-vector product took ~20x longer with 2 threads on a loaded 2-core machine)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
