"""scaled-sign-toy and scaled-sign-logreg: definitions, claim logic, quick smoke runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from steepest.distributed.bits import vote_signs
from steepest.experiments import scaled_sign_logreg as lr_
from steepest.experiments import scaled_sign_toy as toy
from steepest.experiments.harness import run_experiment


# ------------------------------------------------------------------------------ toy
def test_theorem1_zeta():
    # seed 004 Eq. 16: zeta = 1 - 2 mu a (1 - L a / 2); best at a = 1/L: 1 - mu/L
    assert toy.theorem1_zeta(1.0, 10.0, 0.1) == pytest.approx(0.9)
    assert toy.theorem1_zeta(2.0, 4.0, 0.5) == pytest.approx(1.0)  # a = 2/L: no guarantee


def test_contraction_and_rate():
    gaps = 0.5 ** np.arange(10.0)
    np.testing.assert_allclose(toy.contraction(gaps), 0.5)
    assert toy.linear_rate(gaps) == pytest.approx(0.5)
    assert toy.contraction(np.array([1.0, 0.0, 0.0])).tolist() == [0.0]


def _stats(tail_max, rate, flips, max_x=0.1):
    return {"tail_max_gap": tail_max, "rate": rate, "sign_flips": flips, "final_gap": tail_max,
            "tail_max_abs_x": max_x}


def test_ex4_verdicts():
    good = {m: [_stats(1e-40, 0.36, 0)] for m in toy.LINEAR}
    good |= {m: [_stats(1e-2, 1.0, 20)] for m in toy.OSCILLATING}
    assert toy.ex4_verdicts(good) == (True, True)
    slow = dict(good, GD=[_stats(1e-10, 0.999, 0)])  # not below the tolerance
    assert toy.ex4_verdicts(slow) == (False, True)
    settled = dict(good, Signum=[_stats(1e-30, 0.5, 2)])  # Signum converged: no oscillation
    assert toy.ex4_verdicts(settled) == (True, False)
    missing = {m: v for m, v in good.items() if m != "signGD"}
    assert toy.ex4_verdicts(missing)[1] is False
    # below the floor a constant sign step allows (f(a/2) ~ a^2), or far from x*: no
    low = dict(good, signGD=[_stats(0.5 * toy.sign_floor(), 1.0, 20)])
    assert toy.ex4_verdicts(low) == (True, False)
    far = dict(good, Signum=[_stats(1e-2, 1.0, 20, max_x=11 * toy.STEP)])
    assert toy.ex4_verdicts(far) == (True, False)


def test_sign_floor_is_f_at_half_a_step():
    h = toy.STEP / 2
    assert toy.sign_floor() == pytest.approx(h * h + 3 * math.sin(h) ** 2, rel=1e-15)
    # near 0, f(x) ~ 4 x^2, so the floor is ~ a^2
    assert toy.sign_floor() == pytest.approx(toy.STEP**2, rel=1e-3)


def test_classify_counts_zero_crossings():
    xs = np.array([[3.0], [1.0], [-0.1], [0.1], [-0.1], [0.1], [-0.1], [0.1], [-0.1]])
    gaps = xs[:, 0] ** 2
    st = toy.classify(gaps, xs)
    assert st["sign_flips"] == 1.0 and st["tail_max_gap"] == pytest.approx(0.01)


def test_ex1_iterates_by_hand():
    xs, fs = toy.run_optimizer(lambda p: toy.SignSGD(p, lr=0.3), lambda x: (x**2).sum(),
                               np.array([0.15, 0.15]), 4)
    np.testing.assert_allclose(xs[:, 0], [0.15, -0.15, 0.15, -0.15, 0.15], atol=1e-15)
    np.testing.assert_allclose(fs, 2 * 0.15**2)


def test_scaled_sign_toy_quick(tmp_path):
    s = run_experiment("scaled-sign-toy", quick=True, seeds=1, out_dir=tmp_path, progress=False,
                       echo=False, options={"steps": 60, "thm_steps": 30, "thm_dim": 3})
    ids = [c["id"] for c in s["claims"]]
    assert ids == ["ex1-oscillation", "ex4-linear", "ex4-oscillation", "thm1-rate"]
    assert s["claims"][0]["holds"] and s["claims"][3]["holds"]  # exact statements
    kinds = [c["kind"] for c in s["claims"]]
    # constant-size sign steps oscillate by construction and Thm. 1 is a theorem: sanity checks
    assert kinds == ["sanity", "sanity", "sanity", "sanity"] and s["total"] == 0
    assert all(c["criterion"] for c in s["claims"])
    assert len(s["figures"]) == 2


# ------------------------------------------------------------------------------ logreg
@pytest.fixture(scope="module")
def small():
    A, b = lr_.synthetic_epsilon(60, 5, seed=3)
    At, bt = torch.tensor(A), torch.tensor(b)
    x_star, f_star = lr_.solve(At, bt)
    return lr_.LogRegData("small", At, bt, x_star, f_star, "test")


def test_synthetic_epsilon_shape_and_rows():
    A, b = lr_.synthetic_epsilon(50, 7)
    np.testing.assert_allclose(np.linalg.norm(A, axis=1), 1.0)
    assert set(np.unique(b)) == {-1.0, 1.0}


def test_gradient_matches_autograd(small):
    x = torch.randn(small.d, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([0, 3, 3, 7])
    n = small.n
    # the batch objective whose gradient the oracle returns: mean loss on the batch + ||x||^2/(2n)
    f = torch.nn.functional.softplus(-small.b[idx] * (small.A[idx] @ x)).mean() + x @ x / (2 * n)
    (g,) = torch.autograd.grad(f, x)
    torch.testing.assert_close(lr_.minibatch_gradient(small.A, small.b, x.detach(), idx), g)
    full = lr_.objective(small.A, small.b, x)
    (gf,) = torch.autograd.grad(full, x)
    torch.testing.assert_close(lr_.full_gradient(small.A, small.b, x.detach()), gf)


def test_solve_reaches_the_optimum(small):
    assert float(lr_.full_gradient(small.A, small.b, small.x_star).norm()) < 1e-12
    for _ in range(5):
        x = small.x_star + 1e-3 * torch.randn(small.d, dtype=torch.float64)
        assert float(lr_.objective(small.A, small.b, x)) >= small.f_star


def test_simulated_vote_is_algorithm_3():
    g = [torch.tensor([1.0, -2.0, 3.0, -0.5]), torch.tensor([2.0, 1.0, -1.0, -1.0]),
         torch.tensor([-1.0, 1.0, 1.0, 4.0])]
    vote, scale = lr_.simulated_vote(g)
    torch.testing.assert_close(vote, vote_signs(torch.stack([t.sign() for t in g])).double()
                               .to(vote.dtype))
    assert float(scale) == pytest.approx(np.mean([float(t.abs().sum()) for t in g]))
    vote1, scale1 = lr_.simulated_vote(g[:1])  # M = 1: scaled signSGD's direction
    torch.testing.assert_close(scale1 * vote1, g[0].abs().sum() * g[0].sign())


def test_schedules_and_helpers():
    assert lr_.schedule("constant", 0.5)(100) == 0.5
    assert lr_.schedule("diminishing", 0.5)(3) == pytest.approx(0.125)  # a_0 / (k + 1)
    assert lr_.schedule("diminishing", 0.5, 10.0)(10) == pytest.approx(0.25)
    assert lr_.similar(1.0, 2.9) and not lr_.similar(1.0, 3.1) and not lr_.similar(1.0, math.inf)
    assert lr_.tail_gap(np.array([5.0, 1.0, 3.0]), 0.5) == pytest.approx(2.0)
    assert lr_.tail_gap(np.array([1.0, np.inf])) == math.inf
    assert lr_.geo_mean([1.0, 100.0]) == pytest.approx(10.0)


def test_diverging_run_is_marked_inf(small):
    log_at = np.array([0, 5, 10, 20])
    out = lr_.run_config(small, "SGD", "constant", 1e6, 20, 4, 0, log_at)
    assert out[0] < math.inf and out[-1] == math.inf


def test_scaled_sign_logreg_quick(tmp_path):
    s = run_experiment(
        "scaled-sign-logreg", quick=True, out_dir=tmp_path, progress=False, echo=False,
        options={"datasets": ["breast-cancer"], "steps": 40, "grid": 1, "log_points": 4},
    )
    # breast cancer is another reading (the paper does not use it): no statement is voted;
    # ef-like-sgd and the tied diminishing schedule are sanity checks
    assert s["total"] == 0 and s["readings_total"] == 4 and s["sanity_total"] == 2
    assert all(c["reading"].startswith("other: breast-cancer") for c in s["claims"]
               if c["kind"] == "paper")
    assert all(c["criterion"] for c in s["claims"])
    lr = s["settings"]["datasets"]["breast-cancer"]["lr"]
    # the diminishing schedule starts at the constant step (tied, not tuned): a_0 = 1 a, 3 a
    a0 = s["settings"]["datasets"]["breast-cancer"]["diminishing_a0"]
    assert a0["x1"]["SGD"] == lr["SGD"]["lr"] and a0["x3"]["SGD"] == 3 * lr["SGD"]["lr"]
    assert {c["id"].split("/")[1] for c in s["claims"]} == {
        "scaled-like-sgd", "scaled-beats-sign", "ef-like-sgd", "constant-faster",
        "constant-faster-tied", "more-workers"}
    # the fair version: the diminishing schedule tuned on its own grid
    assert "scaled signSGD, diminishing (tuned a_0)" in lr
    quote = next(c["paper"] for c in s["claims"] if c["id"].endswith("/scaled-like-sgd"))
    assert "[scaled] SIGNSGD has a similar performance" in quote
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert header == "dataset,method,schedule,workers,seed,lr0,step,suboptimality"
    with pytest.raises(ValueError, match="unknown data set"):
        run_experiment("scaled-sign-logreg", quick=True, out_dir=tmp_path, echo=False,
                       progress=False, options={"datasets": ["epsilon"]})
