"""dissecting-adam: the step grid and its search, the methods' definitions, the verdict logic, the
CPU-sized problems (incl. the char LSTM) and a small end-to-end run."""

from __future__ import annotations

import math

import pytest
import torch

from steepest.experiments import dissecting_adam as da
from steepest.experiments.harness import run_experiment
from steepest.problems import (
    CharLSTM,
    char_lstm_data,
    cnn_2c2d,
    cnn_3c3d,
    get_problem,
    pydoc_text,
    sequence_cross_entropy,
)


# ------------------------------------------------------------------------------ the grid
def test_grid_is_one_three_six_times_powers_of_ten():
    assert [da.grid_value(k) for k in (-9, -8, -7, -3, -2, -1, 0, 1, 2, 3)] == [
        1e-3, 3e-3, 6e-3, 0.1, 0.3, 0.6, 1.0, 3.0, 6.0, 10.0]
    for k in range(-20, 6):
        assert da.grid_index(da.grid_value(k)) == k
    values = [da.grid_value(k) for k in range(-12, 3)]
    assert values == sorted(values)
    for bad in (0.5, 2.0, 0.0, -1.0, math.inf):
        with pytest.raises(ValueError):
            da.grid_index(bad)


def test_grid_search_brackets_the_best_and_skips_unstable():
    calls: list[float] = []

    def score(lr: float) -> tuple[float, float]:
        calls.append(lr)
        if lr > 0.05:
            return (-math.inf, -math.inf)  # unstable
        return (-abs(math.log10(lr) - math.log10(3e-3)), 0.0)  # peak at 3e-3

    best, tried = da.grid_search(score, 0.1)
    assert best == pytest.approx(3e-3)
    lrs = [lr for lr, _ in tried]
    assert lrs[0] < best < lrs[-1] and lrs == sorted(lrs)
    assert len(calls) == len(set(calls)) == len(tried)  # every value scored once
    # a best at the centre needs exactly the three initial runs
    calls.clear()
    best, tried = da.grid_search(lambda lr: (-abs(math.log10(lr / 0.3)), 0.0), 0.3)
    assert best == pytest.approx(0.3) and len(tried) == 3
    # ties on the first key (accuracy) are broken by the second (minus the final loss): the
    # smallest lr here, so from 0.06, 0.1, 0.3 the search walks down max_extend = 2 values
    best, tried = da.grid_search(lambda lr: (1.0, -lr), 0.1, max_extend=2)
    assert best == pytest.approx(0.01) and best == tried[0][0] and len(tried) == 5
    # all unstable around the centre: the search goes down until a stable value
    best, tried = da.grid_search(lambda lr: (1.0, 0.0) if lr <= 0.01 else (-math.inf,) * 2, 1.0)
    assert best == pytest.approx(0.01)


# ------------------------------------------------------------------------------ methods
def _one_step(method: str, g: torch.Tensor, lr: float) -> torch.Tensor:
    p = torch.nn.Parameter(torch.zeros_like(g))
    opt = da.make_optimizer(method, [p], lr)
    p.grad = g.clone()
    if method == "M-SVAG-mb":
        p.grad_var = torch.zeros_like(g)  # type: ignore[attr-defined]
        p.grad_batch_size = 8  # type: ignore[attr-defined]
    opt.step()
    return p.detach().clone()


def test_methods_first_steps_follow_the_definitions():
    g = torch.tensor([0.5, -2.0, 0.0, 1e-3], dtype=torch.float64)
    lr = 0.1
    # Alg. 3: bias-corrected EMA, first m = g; M-SIGN-SGD steps along sign(m)
    torch.testing.assert_close(_one_step("M-SGD", g, lr), -lr * g)
    torch.testing.assert_close(_one_step("M-SIGN-SGD", g, lr), -lr * torch.sign(g))
    # Alg. 2/4: s = 0 at t = 0, so M-SVAG and SVAG start with an SGD step; Alg. 5 a sign step
    torch.testing.assert_close(_one_step("M-SVAG", g, lr), -lr * g)
    torch.testing.assert_close(_one_step("SVAG", g, lr), -lr * g)
    torch.testing.assert_close(_one_step("Adam*", g, lr), -lr * torch.sign(g))
    # Alg. 6 with zero minibatch variance: gamma = 1
    torch.testing.assert_close(_one_step("M-SVAG-mb", g, lr), -lr * g)
    adam = da.make_optimizer("Adam", [torch.nn.Parameter(torch.zeros(1))], 1e-3)
    assert isinstance(adam, torch.optim.Adam)
    assert adam.defaults["betas"] == (0.9, 0.999) and adam.defaults["eps"] == 1e-8
    with pytest.raises(ValueError, match="method"):
        da.make_optimizer("RMSprop", [torch.nn.Parameter(torch.zeros(1))], 1e-3)


# ------------------------------------------------------------------------------ verdicts
def test_separation():
    ok, gap, spread = da.separation({"a": 1.0, "b": 1.2, "c": 2.0, "d": 2.1}, ("a", "b"), ("c", "d"))
    assert ok and gap == pytest.approx(0.8) and spread == pytest.approx(0.2)
    # interleaved groups
    assert not da.separation({"a": 1.0, "b": 2.05, "c": 2.0, "d": 2.1}, ("a", "b"), ("c", "d"))[0]
    # apart, but the gap is smaller than the spread within a group
    assert not da.separation({"a": 0.0, "b": 1.0, "c": 1.2, "d": 1.3}, ("a", "b"), ("c", "d"))[0]
    assert not da.separation({"a": math.inf, "b": 1.0, "c": 2.0, "d": 2.1}, ("a", "b"),
                             ("c", "d"))[0]


def test_alike_and_at_least_as_good():
    base = {"final_train_loss": 1.0, "max_test_acc": 0.90}
    assert da.alike(base, {"final_train_loss": 1.2, "max_test_acc": 0.885})[0]
    assert not da.alike(base, {"final_train_loss": 1.3, "max_test_acc": 0.90})[0]
    assert not da.alike(base, {"final_train_loss": 1.0, "max_test_acc": 0.87})[0]
    assert da.at_least_as_good({"final_train_loss": 1.09, "max_test_acc": 0.895}, base)[0]
    assert da.at_least_as_good({"final_train_loss": 0.5, "max_test_acc": 0.95}, base)[0]
    assert not da.at_least_as_good({"final_train_loss": 1.15, "max_test_acc": 0.95}, base)[0]
    assert not da.at_least_as_good({"final_train_loss": 0.5, "max_test_acc": 0.885}, base)[0]
    assert not da.at_least_as_good({"final_train_loss": math.inf, "max_test_acc": 0.95}, base)[0]


# ------------------------------------------------------------------------------ problems
def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_small_cnns_keep_the_layer_structure():
    # 1-d 2c2d narrowed to conv 8-16, fc 64 on length 40: conv 1*8*5+8, conv 8*16*5+16,
    # two "same" 3/2 pools 40 -> 20 -> 10, fc 160*64+64, out 64*10+10
    assert n_params(get_problem("mnist1d-2c2d-small").make_model()) == 48 + 656 + 10304 + 650
    # 2-d on 8x8: 8 -> 4 -> 2, flatten 16*4 = 64
    expected = (1 * 8 * 25 + 8) + (8 * 16 * 25 + 16) + (64 * 64 + 64) + (64 * 10 + 10)
    assert n_params(get_problem("digits-2c2d-small").make_model()) == expected
    # the defaults are still the paper's networks (DeepOBS parameter counts)
    assert n_params(cnn_2c2d((1, 28, 28))) == 3_274_634
    assert n_params(cnn_3c3d((3, 32, 32))) == 895_210
    small = get_problem("cifar10-3c3d-small").make_model
    assert small()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_char_lstm_data_are_shifted_windows_of_the_text():
    text = pydoc_text()
    assert len(text) > 100_000  # the help topics, English prose
    xtr, ytr, xte, yte, vocab = char_lstm_data(seq_len=50)
    assert vocab == sorted(set(text))
    assert xtr.shape[1] == 50 and xtr.shape == ytr.shape and xte.shape == yte.shape
    assert torch.equal(ytr[:, :-1], xtr[:, 1:])  # targets are the next characters
    decode = "".join(vocab[i] for i in xtr[0].tolist()) + vocab[int(ytr[0, -1])]
    assert decode == text[:51]
    assert torch.equal(xtr[1, :1], ytr[0, -1:])  # non-overlapping consecutive windows
    n_test = len(xte) * 50
    assert n_test <= 0.1 * len(text) + 51
    with pytest.raises(ValueError, match="seq_len"):
        char_lstm_data(seq_len=0)
    model = CharLSTM(len(vocab), hidden=8)
    out = model(xtr[:3])
    assert out.shape == (3, 50, len(vocab))
    loss = sequence_cross_entropy(out, ytr[:3])
    ref = torch.nn.functional.cross_entropy(out.permute(0, 2, 1), ytr[:3])  # (N, C, T) form
    torch.testing.assert_close(loss, ref)


# ------------------------------------------------------------------------------ runs
def test_train_logs_applies_the_decay_and_stops_on_divergence(monkeypatch):
    setup = da.Setup("digits-2c2d-small", "P1", steps=8, quick_steps=8, batch=16, evals=4,
                     lr={}, decay_at=0.5, decay=0.1)
    xtr, ytr, xte, yte = get_problem("digits-2c2d-small").load_data(0)
    data = da.Data(xtr[:64], ytr[:64], xte[:32], yte[:32], xtr[:32], ytr[:32],
                   get_problem("digits-2c2d-small").make_model, torch.nn.functional.cross_entropy)
    made: list[torch.optim.Optimizer] = []
    real = da.make_optimizer
    monkeypatch.setattr(da, "make_optimizer", lambda *a: made.append(real(*a)) or made[-1])
    curve = da.train(setup, data, "M-SVAG-mb", 0.1, 0, 8, 4)
    assert [r["step"] for r in curve] == [0, 2, 4, 6, 8]
    assert made[-1].param_groups[0]["lr"] == pytest.approx(0.01)  # x0.1 after half the steps
    assert da.stable(curve, 8)
    bad = da.train(setup, data, "M-SGD", 1e30, 0, 8, 4)
    assert not da.stable(bad, 8) and da.tuning_score(bad, 8) == (-math.inf, -math.inf)
    # the same seed gives the same run
    assert da.train(setup, data, "Adam", 0.01, 3, 8, 4) == da.train(setup, data, "Adam", 0.01, 3,
                                                                      8, 4)


def test_dissecting_adam_small_run(tmp_path):
    s = run_experiment(
        "dissecting-adam", quick=True, out_dir=tmp_path, progress=False, echo=False, seeds=2,
        options={"problems": ["digits"], "steps": 6, "evals": 2,
                 "methods": ["M-SGD", "M-SIGN-SGD", "Adam", "M-SVAG", "M-SVAG-mb"]})
    ids = {c["id"] for c in s["claims"]}
    assert {"digits/sign-methods-cluster-loss", "digits/sign-methods-cluster-acc",
            "digits/adam-like-m-sign-sgd", "digits/variance-adaptation-m-svag-vs-m-sgd",
            "digits/variance-adaptation-adam-vs-m-sign-sgd",
            "digits/minibatch-variance-like-moving-average", "all/variance-adaptation-helps"} == ids
    # digits is another reading (MNIST-1D is the primary one for P1); 'in all experiments' is
    # the one primary reading of the variance-adaptation statement
    by_id = {c["id"]: c for c in s["claims"]}
    assert by_id["all/variance-adaptation-helps"]["reading"] == "primary"
    assert by_id["digits/adam-like-m-sign-sgd"]["reading"] == "other: digits"
    assert s["total"] == 1 and s["readings_total"] == 6
    assert all(c["verdict"] in ("holds", "fails", "inconclusive") for c in s["claims"])
    info = s["settings"]["problems"]["digits"]
    assert info["steps"] == 6 and info["lr"]["M-SGD"] == da.SETUPS["digits"].lr["M-SGD"]
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0] == "problem,method,lr,seed,chosen,step,train_loss,test_loss,test_acc"
    assert len(rows) == 1 + 5 * 2 * 3  # 5 methods, 2 seeds, evaluations at steps 0, 3, 6
    assert s["figures"] == ["dissecting_adam.png", "dissecting_adam_variants.png"]
    assert all((tmp_path / f).is_file() for f in s["figures"])


def test_dissecting_adam_tuning_and_lstm(tmp_path):
    s = run_experiment(
        "dissecting-adam", quick=True, out_dir=tmp_path, progress=False, echo=False,
        options={"problems": ["char-lstm"], "steps": 2, "evals": 1, "tune": True,
                 "lstm_hidden": 4, "methods": ["M-SGD", "M-SVAG-mb"]})
    info = s["settings"]["problems"]["char-lstm"]
    assert set(info["lr"]) == {"M-SGD"}  # no minibatch variance for nn.LSTM, as the paper
    tried = info["tuning"]["M-SGD"]
    assert len(tried) >= 3 and info["lr"]["M-SGD"] in [t["lr"] for t in tried]
    assert any(c["id"] == "char-lstm/step-sizes-bracketed" for c in s["claims"])


def test_missing_cifar_is_skipped_with_a_message(tmp_path, capsys):
    s = run_experiment("dissecting-adam", quick=True, out_dir=tmp_path, progress=False,
                       echo=False, options={"problems": ["cifar10"]})
    assert "cifar10" in s["settings"]["skipped"] and s["claims"] == []
    assert "skipping cifar10" in capsys.readouterr().err
    with pytest.raises(ValueError, match="problems"):
        run_experiment("dissecting-adam", quick=True, out_dir=tmp_path, progress=False,
                       echo=False, options={"problems": ["imagenet"]})
    with pytest.raises(ValueError, match="methods"):
        run_experiment("dissecting-adam", quick=True, out_dir=tmp_path, progress=False,
                       echo=False, options={"problems": ["digits"], "methods": ["Lion"]})


def test_cifar10_runs_from_data_dir(tmp_path):
    from tests.experiments.test_data import make_cifar

    make_cifar(tmp_path / "data" / "cifar-10-batches-py", per_batch=8)
    s = run_experiment(
        "dissecting-adam", quick=True, out_dir=tmp_path / "out", progress=False, echo=False,
        options={"data_dir": str(tmp_path / "data"), "problems": ["cifar10"], "steps": 2,
                 "evals": 1, "methods": ["M-SGD", "M-SVAG-mb", "SVAG", "M-SVAG"]})
    info = s["settings"]["problems"]["cifar10"]
    assert info["train_examples"] == 40 and info["l2"] == 0.002
    kinds = {c["id"]: c["kind"] for c in s["claims"]}
    assert kinds["cifar10/svag-vs-m-svag"] == "paper"  # stated for P2 in App. B.3.3
    reading = {c["id"]: c["reading"] for c in s["claims"]}
    assert reading["cifar10/svag-vs-m-svag"] == "primary"
