"""Peak intermediate memory of ``step()``: at most one parameter-sized tensor beyond the state.

Measured with :class:`steepest._memory.LiveBytes`, a ``TorchDispatchMode`` that sees every
tensor an op returns during ``step()`` and keeps the bytes of the storages that did not exist
before the step (the parameters, gradients and state) alive until the last tensor viewing them
is garbage-collected (CPython frees tensors by reference counting, at once, so "live" is
exact). The peak of that sum is the intermediate memory of the step. This works on CPU, where
torch keeps no allocator statistics. ``benchmarks/optim_memory.py`` runs the same meter at a
50M-parameter scale.

Budgets (ours, fixed before measuring, from the issue's "at most one parameter-sized tensor"):

* loop path (one tensor at a time): the bytes of the largest parameter;
* foreach path (all tensors at once, as torch.optim's foreach optimizers): the bytes of all
  parameters together (one tensor list the size of the parameters);

each plus a slack of 64 bytes per parameter and 4 KiB for 0-d scalars (norms, step counts).
The first step (which creates the state) is not measured.
"""

from __future__ import annotations

import pytest
import torch

from steepest._memory import LiveBytes, step_peak_bytes
from steepest._memory import existing_storages as _existing
from steepest.backend.policy import _FOREACH_CHUNK
from tests.optim.optim_infos import all_infos

INFOS = all_infos()
ids = [i.name for i in INFOS]


def _peak(info, foreach: bool, shapes) -> tuple[int, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    opt = info.make(params, foreach=foreach)
    for t in range(3):  # the third step is measured (the first creates the state)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        if info.prepare:
            info.prepare(params)
        if t < 2:
            opt.step()
    mode = LiveBytes(_existing(opt, params))
    with mode:
        opt.step()
    return mode.peak, params


SHAPES = [(64, 64), (4096,), (32, 16), (100,)]  # the largest: 16 KiB


@pytest.fixture(autouse=True)
def _small_stream_chunk(monkeypatch):
    """The loop path streams elementwise updates in chunks of 2^16 elements; at these test sizes
    (kept small so that the suite stays fast) a 1,024-element chunk puts the two large tensors
    above it, as a real model's are."""
    import steepest.backend.policy as policy

    monkeypatch.setattr(policy, "_STREAM_CHUNK", 1024)


# Configurations over the issue-12 target (one tensor's bytes), with the multiple of the budget's
# tensor bytes measured on 2026-11-30 (loop, foreach), rounded up to a quarter: allowances, not the
# target, that keep the test able to fail (a regression past the measured peak fails). Allocation
# sizes do not depend on the CPU. Only the operator norms are left, for buffers that matrix
# products make inherent (tests/optim/test_operator_memory.py checks them at other shapes):
# * Newton-Schulz (Muon, Scion, spectral ns): the iterate X plus A = X X^T and B = bA + cA^2
#   (m x m, m the smaller side): B is a product of A with itself, so A stays whole while B is
#   written, and a product cannot write into its own input: 1 + 2m/n, 3 for these square 64 x 64;
# * SVD (Muon-svd, spectral normalized): LAPACK's U and V^T (2 for a square matrix) plus one stream
#   chunk of scratch to write U V^T over V^T (0.25 at the 1,024-element chunk of these tests).
# Every elementwise optimizer, STACEY and the Adam ablations included, is within 1.0 on both paths.
_OVER_TARGET: dict[str, tuple[float, float]] = {
    "Muon": (3.0, 1.5),
    "Muon-wd-match_rms_adamw": (3.0, 1.5),
    "Muon-no-momentum": (3.0, 1.5),
    "Modular-scion-constrained": (3.0, 1.5),
    "SteepestDescent-spectral-ns-scaled-momentum": (3.0, 1.5),
    "Muon-svd-no-nesterov": (2.25, 1.0),
    "SteepestDescent-spectral-normalized": (2.25, 1.0),
}


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_peak_intermediate_memory(info, foreach):
    peak, params = _peak(info, foreach, SHAPES)
    sizes = [p.numel() * p.element_size() for p in params]
    unit = sum(sizes) if foreach else max(sizes)
    allowance = _OVER_TARGET.get(info.name, (1.0, 1.0))[int(foreach)]
    budget = int(allowance * unit) + 64 * len(params) + 4096
    assert peak <= budget, (
        f"peak {peak} B = {peak / unit:.2f} x the tensor bytes > budget {budget} B "
        f"({allowance} x; params {sizes})"
    )


def test_the_meter_sees_temporaries():
    """The meter itself: a step that keeps two parameter-sized temporaries alive is caught."""

    class Wasteful(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 0.1})

        @torch.no_grad()
        def step(self):
            for p in self.param_groups[0]["params"]:
                a = p.grad * 2
                b = p.grad * 3
                p.sub_(a + b)

    p = torch.randn(1000, requires_grad=True)
    p.grad = torch.randn(1000)
    opt = Wasteful([p])
    mode = LiveBytes(_existing(opt, [p]))
    with mode:
        opt.step()
    assert mode.peak == 3 * 4000  # a, b and a + b live at once
    assert mode.live == 0


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("case", ["bfloat16", "maximize", "complex"])
@pytest.mark.parametrize("name", ["MSVAG", "AdamStar", "Stacey-p2-p3"])
def test_working_copies_are_streamed(name, case, foreach):
    """float32 working copies of half-precision tensors, real views of complex ones and the
    negated gradients of ``maximize=True`` are made a chunk at a time for elementwise
    optimizers: the peak does not grow with the number of tensors (it held a copy of every
    parameter, gradient and state tensor at once)."""
    import steepest.backend.policy as policy

    info = next(i for i in INFOS if i.name == name)
    dtype = {"bfloat16": torch.bfloat16, "complex": torch.complex64}.get(case, torch.float32)

    def peak(k: int) -> int:
        g = torch.Generator().manual_seed(0)
        params = [torch.randn(4096, generator=g).to(dtype).requires_grad_() for _ in range(k)]
        opt = info.make(params, foreach=foreach, **({"maximize": True} if case == "maximize" else {}))
        for _ in range(2):
            for p in params:
                p.grad = torch.randn(4096, generator=g).to(dtype)
            if info.prepare:
                info.prepare(params)
        opt.step()
        for p in params:
            p.grad = torch.randn(4096, generator=g).to(dtype)
        return step_peak_bytes(opt, params)

    policy._FOREACH_CHUNK = 4096  # one tensor per chunk on both paths (monkeypatched back below)
    try:
        assert peak(8) == peak(2)
    finally:
        policy._FOREACH_CHUNK = _FOREACH_CHUNK
