"""CABS (seed 001 Alg. 1, Eq. 4.20) and the variance-ratio competitor (Eq. 4.18)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from steepest.stats import CABS, VarianceRatioBatchSize


def alg1_reference(lr, mmin, mmax, mu, losses, variance_sums):
    """Seed 001 Alg. 1, line by line: averages start at 0, no bias correction."""
    sigma2, f_avg, sizes = 0.0, 0.0, []
    for f, s in zip(losses, variance_sums):
        sigma2 = mu * sigma2 + (1 - mu) * s
        f_avg = mu * f_avg + (1 - mu) * f
        m = lr * sigma2 / f_avg
        sizes.append(min(mmax, max(mmin, math.floor(m + 0.5))))
    return sizes


def test_cabs_hand_computed_sequence():
    # lr = 0.1, mu = 0.5, m in [2, 100]
    # t=1: sigma2 = 0.5*40 = 20,             f_avg = 0.5*2 = 1      -> 0.1*20/1 = 2
    # t=2: sigma2 = 10 + 200 = 210,          f_avg = 0.5 + 0.5 = 1  -> 21
    # t=3: sigma2 = 105 + 500 = 605,         f_avg = 0.5 + 0.25     -> 80.67 -> 81
    # t=4: sigma2 = 302.5 + 1000 = 1302.5,   f_avg = 0.375 + 0.05   -> 306.5 -> clip 100
    # t=5: sigma2 = 651.25 + 0 = 651.25,     f_avg = 0.2125 + 2.5   -> 24.01 -> 24
    cabs = CABS(lr=0.1, min_batch=2, max_batch=100, smoothing=0.5)
    assert cabs.batch_size == 2  # Alg. 1 starts at m_min
    got = [cabs.update(f, s) for f, s in [(2.0, 40.0), (1.0, 400.0), (0.5, 1000.0),
                                          (0.1, 2000.0), (5.0, 0.0)]]
    assert got == [2, 21, 81, 100, 24]
    assert cabs.batch_size == 24 and cabs.steps == 5


def test_competitor_hand_computed_sequence():
    # theta = 0.5 (theta^2 = 0.25), mu = 0.5, m in [2, 1000]
    # t=1: sigma2 = 5,   gsq = 1    -> 5/(0.25*1)   = 20
    # t=2: sigma2 = 7.5, gsq = 0.75 -> 7.5/0.1875   = 40
    # t=3: sigma2 = 3.75, gsq = 2.375 -> 3.75/0.59375 = 6.3158 -> 6
    comp = VarianceRatioBatchSize(theta=0.5, min_batch=2, max_batch=1000, smoothing=0.5)
    got = [comp.update(None, s, g) for s, g in [(10.0, 2.0), (10.0, 0.5), (0.0, 4.0)]]
    assert got == [20, 40, 6]


def test_cabs_matches_alg1_on_random_sequences():
    rng = random.Random(0)
    for _ in range(20):
        lr, mu = rng.uniform(0.01, 1.0), rng.uniform(0.0, 0.99)
        mmin, mmax = rng.randint(2, 16), rng.randint(16, 4096)
        losses = [rng.uniform(0.01, 3.0) for _ in range(30)]
        sums = [rng.uniform(0.0, 5000.0) for _ in range(30)]
        cabs = CABS(lr, mmin, mmax, smoothing=mu)
        assert [cabs.update(f, s) for f, s in zip(losses, sums)] == alg1_reference(
            lr, mmin, mmax, mu, losses, sums)


def test_round_half_up_and_clip_bounds():
    cabs = CABS(lr=1.0, min_batch=2, max_batch=10, smoothing=0.0)  # mu = 0: no smoothing
    assert cabs.update(1.0, 2.5) == 3  # halves round up (Python's round would give 2)
    assert cabs.update(1.0, 3.49) == 3
    assert cabs.update(1.0, 0.2) == 2  # clipped below
    assert cabs.update(1.0, 1e300) == 10  # clipped above


def test_inputs_accept_tensors_and_update_from_result():
    cabs = CABS(lr=0.5, min_batch=2, max_batch=64, smoothing=0.0)
    assert cabs.update(torch.tensor(2.0), torch.tensor(40.0, dtype=torch.float64)) == 10

    class Result:
        loss, variance_sum, grad_sq_norm = torch.tensor(1.0), 30.0, 2.0

    assert cabs.update_from(Result()) == 15
    comp = VarianceRatioBatchSize(theta=1.0, min_batch=2, max_batch=64, smoothing=0.0)
    assert comp.update_from(Result()) == 15


def test_zero_loss_and_zero_signal():
    cabs = CABS(lr=0.1, min_batch=4, max_batch=50, smoothing=0.0)
    assert cabs.update(0.0, 3.0) == 50  # variance with a zero loss: as large as allowed
    assert cabs.update(0.0, 0.0) == 4  # 0/0: nothing to adapt to, smallest batch
    comp = VarianceRatioBatchSize(theta=1.0, min_batch=4, max_batch=50, smoothing=0.0)
    assert comp.update(None, 1.0, 0.0) == 50
    assert comp.update(None, 0.0, 0.0) == 4


def test_nonfinite_and_negative_statistics():
    cabs = CABS(lr=0.1, min_batch=4, max_batch=50)
    with pytest.raises(ValueError, match="non-finite or negative"):
        cabs.update(float("nan"), 1.0)
    with pytest.raises(ValueError, match="non-finite or negative"):
        cabs.update(-1.0, 1.0)  # CABS assumes a loss >= 0 (Sec. 4.4.2)
    with pytest.raises(ValueError, match="non-finite or negative"):
        VarianceRatioBatchSize(1.0, 4, 50).update(None, 1.0, float("inf"))
    skip = CABS(lr=0.1, min_batch=4, max_batch=50, smoothing=0.0, nonfinite="skip")
    assert skip.update(1.0, 100.0) == 10
    with pytest.warns(RuntimeWarning, match="skipping"):
        assert skip.update(float("inf"), 100.0) == 10
    assert skip.steps == 1 and skip.averages == {"variance_sum": 100.0, "loss": 1.0}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lr=0.0), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(lr=-1.0), "lr"),
        (dict(min_batch=1), "min_batch"),
        (dict(min_batch=4.0), "min_batch"),
        (dict(max_batch=3, min_batch=4), "max_batch"),
        (dict(smoothing=1.0), "smoothing"),
        (dict(smoothing=-0.1), "smoothing"),
        (dict(nonfinite="ignore"), "nonfinite"),
    ],
)
def test_cabs_validation(kwargs, match):
    args = dict(lr=0.1, min_batch=4, max_batch=64) | kwargs
    with pytest.raises(ValueError, match=match):
        CABS(**args)


@pytest.mark.parametrize("theta", [0.0, -0.5, 1.5, float("inf"), True])
def test_competitor_theta_validation(theta):
    with pytest.raises(ValueError, match="theta"):
        VarianceRatioBatchSize(theta, 2, 10)


def test_update_argument_validation():
    with pytest.raises(ValueError, match="grad_sq_norm"):
        VarianceRatioBatchSize(1.0, 2, 10).update(1.0, 1.0)
    with pytest.raises(ValueError, match="variance_sum"):
        CABS(0.1, 2, 10).update(1.0, torch.ones(3))
    with pytest.raises(ValueError, match="loss"):
        CABS(0.1, 2, 10).update("1.0", 1.0)


def test_state_dict_round_trip_continues_identically():
    a = CABS(lr=0.2, min_batch=2, max_batch=500, smoothing=0.8)
    for f, s in [(2.0, 100.0), (1.5, 300.0)]:
        a.update(f, s)
    b = CABS(lr=0.2, min_batch=2, max_batch=500, smoothing=0.8)
    b.load_state_dict(a.state_dict())
    assert [a.update(1.0, 900.0), a.update(0.5, 50.0)] == [b.update(1.0, 900.0),
                                                           b.update(0.5, 50.0)]
    with pytest.raises(ValueError, match="averages"):
        VarianceRatioBatchSize(1.0, 2, 10).load_state_dict(a.state_dict())
