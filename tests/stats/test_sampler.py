"""AdaptiveBatchSampler / adaptive_loader, and CABS driving a real training loop."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from steepest.stats import CABS, AdaptiveBatchSampler, GradientMoments, adaptive_loader


class Scripted:
    """A stand-in controller whose batch size the test sets."""

    def __init__(self, size):
        self.batch_size = size


def test_sizes_follow_the_controller_and_every_index_once_per_epoch():
    ctrl = Scripted(3)
    sampler = AdaptiveBatchSampler(20, ctrl, generator=torch.Generator().manual_seed(0))
    seen, sizes = [], []
    for batch in sampler:
        sizes.append(len(batch))
        seen += batch
        ctrl.batch_size += 1  # the controller changes its mind after every step
    assert sizes == [3, 4, 5, 6, 2]  # 3+4+5+6 = 18, then the 2 left over
    assert sorted(seen) == list(range(20))
    ctrl.batch_size = 6
    assert [len(b) for b in AdaptiveBatchSampler(20, ctrl, drop_last=True)] == [6, 6, 6]


def test_shuffle_generator_and_callable_source():
    a = list(AdaptiveBatchSampler(10, lambda: 4, generator=torch.Generator().manual_seed(1)))
    b = list(AdaptiveBatchSampler(10, lambda: 4, generator=torch.Generator().manual_seed(1)))
    assert a == b and [len(x) for x in a] == [4, 4, 2]
    plain = list(AdaptiveBatchSampler(range(5), lambda: 2, shuffle=False))
    assert plain == [[0, 1], [2, 3], [4]]
    torch.manual_seed(0)
    e1 = list(AdaptiveBatchSampler(50, lambda: 50))
    e2 = list(AdaptiveBatchSampler(50, lambda: 50))
    assert sorted(e1[0]) == list(range(50)) and e1 != e2  # a fresh permutation per epoch
    assert list(AdaptiveBatchSampler(0, lambda: 3)) == []


def test_sampler_validation():
    with pytest.raises(ValueError, match="batch_size must be"):
        AdaptiveBatchSampler(10, 5)
    with pytest.raises(ValueError, match="data_source"):
        AdaptiveBatchSampler(-1, lambda: 2)
    with pytest.raises(ValueError, match="int >= 1"):
        next(iter(AdaptiveBatchSampler(10, lambda: 0)))
    with pytest.raises(ValueError, match="int >= 1"):
        next(iter(AdaptiveBatchSampler(10, lambda: 2.0)))
    ds = TensorDataset(torch.zeros(4))
    with pytest.raises(ValueError, match="batch_size"):
        adaptive_loader(ds, Scripted(2), batch_size=3)
    with pytest.warns(RuntimeWarning, match="lag"):
        adaptive_loader(ds, Scripted(2), num_workers=1)


def test_adaptive_loader_collates_batches_of_the_requested_size():
    ds = TensorDataset(torch.arange(12.0), torch.arange(12))
    ctrl = Scripted(5)
    loader = adaptive_loader(ds, ctrl, shuffle=False)
    xs = []
    for x, y in loader:
        xs.append(x.tolist())
        assert torch.equal(x.long(), y)
        ctrl.batch_size = 2
    assert xs == [[0, 1, 2, 3, 4], [5, 6], [7, 8], [9, 10], [11]]


def test_cabs_drives_sgd_on_digits():
    """Seed 001 Alg. 1 end to end: GradientMoments feeds CABS, CABS sets the next batch."""
    from sklearn import datasets

    X, y = datasets.load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    lr = 0.5
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    cabs = CABS(lr=lr, min_batch=16, max_batch=512)
    loader = adaptive_loader(TensorDataset(X, y), cabs, drop_last=True,
                             generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        initial = float(F.cross_entropy(model(X), y))
    sizes, examples = [], 0
    with GradientMoments(model) as gm:
        for _epoch in range(2):
            for xb, yb in loader:
                assert len(xb) == cabs.batch_size  # the size the controller asked for
                sizes.append(len(xb))
                examples += len(xb)
                opt.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                loss = loss.detach()
                expected = cabs.round_clip(lr * (cabs.smoothing * cabs.averages["variance_sum"]
                                                 + (1 - cabs.smoothing) * gm.variance_sum)
                                           / (cabs.smoothing * cabs.averages["loss"]
                                              + (1 - cabs.smoothing) * float(loss)))
                assert cabs.update(loss, gm.variance_sum, gm.grad_sq_norm) == expected
    with torch.no_grad():
        final = float(F.cross_entropy(model(X), y))
    assert final < 0.2 * initial
    assert sizes[0] == 16 and max(sizes) > 16  # the batch grows as the loss falls
    assert sum(sizes[-20:]) / 20 > sum(sizes[:20]) / 20
    assert examples > 1.9 * len(X)


def test_gradient_moments_feed_msvag_minibatch():
    """The p.grad_var / p.grad_batch_size contract, consumed by seed 001 Alg. 6."""
    from steepest import optim

    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 8, generator=g)
    y = (X[:, :2].sum(1) > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = optim.MSVAG(model.parameters(), lr=0.1, variance="minibatch")
    with torch.no_grad():
        initial = float(F.cross_entropy(model(X), y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. MSVAG's "statistics not refreshed" warning
        with GradientMoments(model):
            for step in range(60):
                idx = torch.arange(step * 32, step * 32 + 32) % 256
                opt.zero_grad()
                F.cross_entropy(model(X[idx]), y[idx]).backward()
                assert all(p.grad_batch_size == 32 for p in model.parameters())
                opt.step()
    with torch.no_grad():
        assert float(F.cross_entropy(model(X), y)) < 0.5 * initial
