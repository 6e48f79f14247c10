"""The loop path's two ways of running the elementwise steepest methods agree with the foreach path.

The loop path (CPU default) runs large tensors one at a time (``_apply_each``, the lean
``_elementwise_loop``, EF's interleaved update) and many small tensors with fused kernels a chunk
at a time (``norms._SMALL``); on CPU the foreach path runs the same code, and on accelerators all
tensors at once with fused kernels. The conformance suite's tensors are small and on CPU, so it
sees only one of these ways; here each optimizer is stepped three times with each way forced
(the accelerators' way simulated on CPU), in float64. Tolerance 1e-12 relative (ours): the ways differ only in the order of a few
float64 roundings (e.g. x / (n / c) against x / n * c, l1 sums per tensor or fused), ~1e-16 each.
"""

from __future__ import annotations

import pytest
import torch

import steepest
import steepest.backend.policy as policy
from steepest.norms import BlockNorm, Linf, Lp

SHAPES = [(30, 20), (50,), (7, 3, 4), (1,), (64,)]

CONFIGS = {
    "SignSGD": lambda ps, fe: steepest.SignSGD(ps, lr=0.01, foreach=fe),
    "Signum-wd": lambda ps, fe: steepest.SignSGD(ps, lr=0.01, momentum=0.9, weight_decay=0.1, foreach=fe),
    "ScaledSignSGD": lambda ps, fe: steepest.ScaledSignSGD(ps, lr=1e-3, foreach=fe),
    "ScaledSignSGD-per_tensor": lambda ps, fe: steepest.ScaledSignSGD(ps, lr=1e-3, scope="per_tensor", foreach=fe),
    "LpDescent-p3": lambda ps, fe: steepest.LpDescent(ps, lr=0.01, p=3.0, foreach=fe),
    "LpDescent-p4-eps-paper": lambda ps, fe: steepest.LpDescent(ps, lr=0.01, p=4.0, eps=1e-3, foreach=fe),
    "LpDescent-p8-eps-code": lambda ps, fe: steepest.LpDescent(ps, lr=0.01, p=8.0, eps=1e-3, eps_mode="code",
                                                               foreach=fe),
    "LpDescent-p3-scaled-momentum": lambda ps, fe: steepest.LpDescent(ps, lr=0.01, p=3.0, scaled=True,
                                                                      momentum=0.5, foreach=fe),
    "lp5-normalized-per_tensor": lambda ps, fe: steepest.SteepestDescent(
        ps, lr=0.01, norm=Lp(5.0), mode="normalized", scope="per_tensor", foreach=fe),
    "lp3-soft-wd": lambda ps, fe: steepest.SteepestDescent(ps, lr=0.01, norm=Lp(3.0), mode="soft",
                                                           weight_decay=0.1, foreach=fe),
    "l2-scaled": lambda ps, fe: steepest.SteepestDescent(ps, lr=0.01, foreach=fe),
    "l2-normalized": lambda ps, fe: steepest.SteepestDescent(ps, lr=0.01, mode="normalized", foreach=fe),
    "linf-normalized": lambda ps, fe: steepest.SteepestDescent(ps, lr=0.01, norm=Linf(), mode="normalized",
                                                               foreach=fe),
    "CoordinateDescent": lambda ps, fe: steepest.CoordinateDescent(ps, lr=0.1, foreach=fe),
    "BlockNormalizedSGD": lambda ps, fe: steepest.BlockNormalizedSGD(ps, lr=0.01, foreach=fe),
    "BlockNormalizedSGD-rows-scaled": lambda ps, fe: steepest.BlockNormalizedSGD(ps, lr=0.01, mode="scaled",
                                                                                 blocks="row", foreach=fe),
    "block-soft-momentum": lambda ps, fe: steepest.SteepestDescent(ps, lr=0.01, norm=BlockNorm(), mode="soft",
                                                                   momentum=0.9, foreach=fe),
    "EFSignSGD": lambda ps, fe: steepest.EFSignSGD(ps, lr=0.1, foreach=fe),
    "EFSignSGD-per_tensor-wd": lambda ps, fe: steepest.EFSignSGD(ps, lr=0.1, scope="per_tensor",
                                                                 weight_decay=0.1, foreach=fe),
    "Lion-wd": lambda ps, fe: steepest.Lion(ps, lr=0.01, weight_decay=0.1, foreach=fe),
    # heavy-ball momentum (dampening): an elementwise direction (streams) and a reduction
    "l2-scaled-heavy-ball": lambda ps, fe: steepest.SteepestDescent(ps, lr=0.01, momentum=0.9, dampening=0.0,
                                                                    weight_decay=0.1, foreach=fe),
    "linf-unscaled-heavy-ball": lambda ps, fe: steepest.SteepestDescent(ps, lr=0.01, norm=Linf(), mode="unscaled",
                                                                        momentum=0.9, dampening=0.3, foreach=fe),
    "lp3-normalized-heavy-ball": lambda ps, fe: steepest.SteepestDescent(ps, lr=0.01, norm=Lp(3.0), mode="normalized",
                                                                         momentum=0.5, dampening=0.2, foreach=fe),
}


def _run(make, foreach: bool) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    opt = make(ps, foreach)
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        opt.step()
    return [p.detach().clone() for p in ps]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_loop_ways_agree_with_foreach(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    make = CONFIGS[name]
    cpu_foreach = _run(make, True)  # on CPU the foreach path runs the loop path's code
    with monkeypatch.context() as m:  # as on accelerators: all tensors at once, fused kernels
        m.setattr(policy, "_per_tensor_ok", lambda xs: len(xs) <= 1)
        ref = _run(make, True)
    monkeypatch.setattr(policy, "_SMALL", 0)  # every tensor "large": one at a time
    each = _run(make, False)
    monkeypatch.setattr(policy, "_SMALL", 1 << 40)  # every tensor "small": fused chunks
    monkeypatch.setattr(policy, "_STREAM_CHUNK", 600)  # chunks [600 elements], [50, 84, 1, 64]
    fused = _run(make, False)
    for way, got in (("one at a time", each), ("fused chunks", fused), ("CPU foreach", cpu_foreach)):
        for r, g in zip(ref, got):
            assert torch.allclose(g, r, rtol=1e-12, atol=1e-12), (way, (g - r).abs().max().item())
    assert any(not torch.equal(r, p0) for r, p0 in zip(ref, _initial())), "the parameters moved"


def _initial() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]


def test_small_many_decides_by_mean_size() -> None:
    small = [torch.zeros(10) for _ in range(3)]
    assert policy._small_many(small)
    assert not policy._small_many(small[:1])  # one tensor: one kernel either way
    assert not policy._small_many([torch.zeros(policy._SMALL + 1)] * 2)
