"""cabs: the training loop against a hand-written Alg. 1, the example budget, the measures behind
the claims, and a small end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from steepest.experiments import cabs_experiment as cx
from steepest.experiments.harness import run_experiment
from steepest.stats import gradient_moments


def tiny_data(n: int = 96, seed: int = 0) -> cx.Data:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    make = lambda: torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),  # noqa: E731
                                       torch.nn.Linear(8, 3))
    return cx.Data(x, y, x[:32], y[:32], x[:32], y[:32], make)


def reference_alg1(data: cx.Data, lr: float, seed: int, budget: int, rule: str, theta: float,
                   m_min: int, m_max: int, mu: float) -> tuple[list[int], torch.nn.Module]:
    """Seed 001 Alg. 1 written out: draw a batch of size m, SGD step, EMAs of ||s||_1 and f (or
    ||g||^2 for the competitor, Eq. 4.18), m <- ROUND_CLIP(...). One epoch (budget <= n), the
    permutation the experiment's sampler draws."""
    torch.manual_seed(seed)
    model = data.make_model()
    order = torch.randperm(len(data.xtr), generator=torch.Generator().manual_seed(10_000 + seed))
    m, sigma2, f_avg, g_avg, seen, sizes = m_min, 0.0, 0.0, 0.0, 0, []
    while seen < budget:
        m_now = min(m, budget - seen)
        idx = order[seen : seen + m_now]
        res = gradient_moments(model, torch.nn.functional.cross_entropy, data.xtr[idx],
                               data.ytr[idx])
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-lr)  # as torch.optim.SGD
        seen += m_now
        sizes.append(m_now)
        sigma2 = mu * sigma2 + (1 - mu) * res.variance_sum
        f_avg = mu * f_avg + (1 - mu) * float(res.loss)
        g_avg = mu * g_avg + (1 - mu) * res.grad_sq_norm
        target = lr * sigma2 / f_avg if rule == "cabs" else sigma2 / (theta**2 * g_avg)
        m = max(m_min, min(m_max, math.floor(target + 0.5)))
    return sizes, model


@pytest.mark.parametrize("rule,theta", [("cabs", None), ("competitor", 0.6)])
def test_training_loop_follows_algorithm_1(rule, theta):
    data = tiny_data()
    # mu = 0.5 and a large lr make the batch size move within one epoch of 96 examples
    lr = 3.0 if rule == "cabs" else 0.5
    run = cx.train(data, rule, theta, lr, 1, 90, 3, 4, 40, 0.5)
    sizes, _ = reference_alg1(data, lr, 1, 90, rule, theta or 1.0, 4, 40, 0.5)
    assert run.batches == sizes
    assert len(set(sizes)) > 2  # the rule did adapt the batch size
    assert run.stable and run.curve[-1]["examples"] == 90 == sum(run.batches)


def test_constant_batches_and_the_budget():
    data = tiny_data()
    run = cx.train(data, "constant", 32, 0.1, 0, 200, 4, 16, 2048, 0.95)
    # 96 examples: each epoch gives three batches of 32; the last one is cut to the budget
    assert run.batches == [32] * 6 + [8]
    assert [r["examples"] for r in run.curve] == [0, 64, 128, 160, 200]  # first log at >= marks
    assert run.curve[-1]["steps"] == 7 and run.curve[-1]["batch_size"] == 8
    with pytest.raises(ValueError, match="batches"):
        cx.train(data, "constant", 97, 0.1, 0, 200, 4, 16, 2048, 0.95)
    with pytest.raises(ValueError, match="kind"):
        cx.train(data, "adaptive", None, 0.1, 0, 200, 4, 16, 2048, 0.95)
    # a diverging run stops and is marked unstable
    bad = cx.train(data, "constant", 32, math.inf, 0, 200, 4, 16, 2048, 0.95)
    assert not bad.stable and cx.final_acc(bad) == -math.inf


def test_measures():
    cabs = np.array([3.0, 2.0, 1.0, 0.5])
    frac, last = cx.below_fraction(cabs, [np.array([3.0, 1.5, 1.2, 0.6]),
                                          np.array([3.0, 2.5, 2.0, 0.7])], skip=1)
    assert frac == pytest.approx(2 / 3) and last
    frac, last = cx.below_fraction(cabs, [np.array([3.0, 2.5, 2.0, 0.4])], skip=1)
    assert frac == pytest.approx(2 / 3) and not last
    # spread: mean over evaluations of max - min of log10 across the family
    fam = [np.array([1.0, 10.0, 100.0]), np.array([1.0, 1.0, 10.0])]
    assert cx.family_spread(fam, skip=1) == pytest.approx(1.0)
    assert cx.family_spread(fam, skip=0) == pytest.approx(2 / 3)
    assert cx.family_spread([np.array([1.0, math.inf]), np.array([1.0, 1.0])], 1) == math.inf


def test_cabs_small_run(tmp_path):
    s = run_experiment(
        "cabs", quick=True, out_dir=tmp_path, progress=False, echo=False, seeds=2,
        options={"problems": ["digits", "mnist1d"], "budget": 256, "lrs": [0.1, 0.03],
                 "thetas": [1.0], "batches": [32, 64], "evals": 2, "train_subset": 300})
    ids = {c["id"] for c in s["claims"]}
    assert {"digits/cabs-outperformed-on-easiest", "mnist1d/cabs-lowest-training-loss",
            "mnist1d/cabs-best-test-accuracy", "digits/cabs-less-step-size-sensitive",
            "mnist1d/cabs-batch-size-grows", "digits/equal-example-budget",
            "all/benefit-grows-with-complexity"} <= ids
    by_id = {c["id"]: c for c in s["claims"]}
    assert by_id["mnist1d/cabs-lowest-training-loss"]["reading"] == "primary"
    assert by_id["digits/cabs-outperformed-on-easiest"]["reading"] == "primary"
    assert by_id["digits/cabs-less-step-size-sensitive"]["reading"] == "other: digits"
    # seed 0 (reused from the tuning sweep) and seed 1: one pair, a t-interval of 1 dof
    assert s["seed_list"] == [0, 1] and s["total"] == 5
    sanity = [c for c in s["claims"] if c["kind"] == "sanity"]
    assert sanity and all(c["holds"] for c in sanity)
    info = s["settings"]["problems"]["mnist1d"]
    assert info["budget_examples"] == 256 and info["train_examples"] == 300
    assert set(info["chosen"]) == {"CABS", "batch 32", "batch 64", "competitor"}
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0] == ("problem,method,lr,seed,chosen,examples,steps,batch_size,train_loss,"
                       "test_loss,test_acc")
    # sweep: 2 problems x 4 configurations x 2 lrs, + 4 replicates each, 3 evaluations a run
    assert len(rows) == 1 + 2 * (4 * 2 + 4) * 3
    assert s["figures"] == ["cabs_batch_size_methods.png", "cabs_step_size_sensitivity.png"]
    assert all((tmp_path / f).is_file() for f in s["figures"])


def test_options_are_checked(tmp_path, capsys):
    s = run_experiment("cabs", quick=True, out_dir=tmp_path, progress=False, echo=False,
                       options={"problems": ["cifar10"]})
    assert "cifar10" in s["settings"]["skipped"] and s["claims"] == []
    assert "skipping cifar10" in capsys.readouterr().err
    for opts, match in (({"problems": ["svhn"]}, "problems"), ({"select": "best"}, "select"),
                        ({"lrs": [-0.1]}, "lrs"), ({"thetas": [1.5]}, "thetas"),
                        ({"budget": -1}, "budget")):
        with pytest.raises(ValueError, match=match):
            run_experiment("cabs", quick=True, out_dir=tmp_path, progress=False, echo=False,
                           options={"problems": ["digits"], **opts})


def test_cifar10_runs_from_data_dir(tmp_path):
    from tests.experiments.test_data import make_cifar

    make_cifar(tmp_path / "data" / "cifar-10-batches-py", per_batch=8)
    s = run_experiment(
        "cabs", quick=True, out_dir=tmp_path / "out", progress=False, echo=False,
        options={"data_dir": str(tmp_path / "data"), "problems": ["cifar10"], "budget": 64,
                 "lrs": [0.1, 0.03], "thetas": [1.0], "batches": [16], "evals": 1})
    assert s["settings"]["problems"]["cifar10"]["train_examples"] == 40
    assert any(c["id"] == "cifar10/cabs-lowest-training-loss" for c in s["claims"])
