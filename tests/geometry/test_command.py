"""``steepest geometry``: built-in problems, user entry points, JSON output, errors."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from steepest.cli import main

ENTRY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make(seed=0):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
        x = torch.randn(30, 4)
        y = torch.randint(0, 2, (30,))
        return model, nn.functional.cross_entropy, [(x[:16], y[:16]), (x[16:], y[16:])]

    def wrong():
        return 42
    """
)


@pytest.fixture
def entry_file(tmp_path):
    path = tmp_path / "mymodel.py"
    path.write_text(ENTRY)
    return path


def test_list(capsys):
    assert main(["geometry", "--list"]) == 0
    out = capsys.readouterr().out
    assert "digits-logreg" in out and "mnist1d-mlp" in out


def test_entry_point_report_and_json(entry_file, tmp_path, capsys):
    out_json = tmp_path / "rep.json"
    rc = main(["geometry", f"{entry_file}:make", "--exact-max", "30", "--json", str(out_json)])
    assert rc == 0
    out = capsys.readouterr().out
    for key in ("L_2 = max|lambda|", "rho_diag", "[certified", "R in [", "favours:"):
        assert key in out
    rep = json.loads(out_json.read_text())
    assert rep["dim"] == 4 * 3 + 3 + 3 * 2 + 2 and rep["num_examples"] == 30
    assert rep["mode"] == "dense+exact"
    assert rep["linf_lower"] == pytest.approx(rep["linf_upper"])
    assert rep["L2"] <= rep["linf_lower"] * (1 + 1e-9) <= rep["dim"] * rep["L2"] * (1 + 1e-9)


def test_builtin_problem_with_training(capsys):
    rc = main(["geometry", "breast-cancer-logreg", "--examples", "64", "--no-progress",
               "--train-steps", "4", "--density-every", "2", "--mode", "matrix-free",
               "--columns", "16", "--probes", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "after 4 sgd steps" in out
    assert "gradient density along training" in out
    assert "matrix-free" in out


def test_errors(entry_file, capsys):
    assert main(["geometry", "no-such-problem", "--no-progress"]) == 2
    assert "unknown problem" in capsys.readouterr().err
    assert main(["geometry", f"{entry_file}:wrong", "--no-progress"]) == 2
    assert "(model, loss_fn, data)" in capsys.readouterr().err
    assert main(["geometry", f"{entry_file}:missing", "--no-progress"]) == 2
    assert "no callable" in capsys.readouterr().err
    assert main(["geometry", "nowhere.py:f", "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    # numbers are checked by argparse (steepest._cli_types): exit code 2 and the range
    with pytest.raises(SystemExit) as exc:
        main(["geometry", "digits-logreg", "--examples", "0"])
    assert exc.value.code == 2
    assert "argument --examples: must be an integer >= 1, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["geometry", "digits-logreg", "--exact-max", "100"])
    assert exc.value.code == 2
    assert "argument --exact-max: must be an integer in [1, 62]" in capsys.readouterr().err
    assert main(["geometry"]) == 2  # no problem: the list and the usage, and a failing exit
    assert "usage: steepest geometry PROBLEM" in capsys.readouterr().err


def test_undecided_hint_does_not_offer_the_mode_already_used():
    from steepest.geometry.report import GeometryReport

    rep = GeometryReport.__new__(GeometryReport)
    # R = density * dim * L2 / L_inf in [0.5, 2.0]: undecided
    rep.density, rep.dim, rep.L2, rep.linf_lower, rep.linf_upper = 1.0, 1, 1.0, 0.5, 2.0
    for mode, offered in (("dense+exact", False), ("dense", False), ("matrix-free", True)):
        rep.mode = mode
        assert rep.verdict().startswith("undecided")
        assert ("--mode dense" in rep.verdict()) is offered, mode


def test_entry_point_module_in_the_current_directory(tmp_path, monkeypatch, capsys):
    # `steepest geometry mymodels:small` from the folder holding mymodels.py (issue 14): a console
    # script's sys.path does not start with the current directory
    (tmp_path / "mymodels_h14.py").write_text(ENTRY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "mymodels_h14", raising=False)
    rc = main(["geometry", "mymodels_h14:make", "--exact-max", "30"])
    assert rc == 0, capsys.readouterr().err
    assert "recommendation" in capsys.readouterr().out
    assert main(["geometry", "no_such_module_h14:make"]) == 2
    assert "No module named 'no_such_module_h14'" in capsys.readouterr().err


def test_report_ends_in_a_recommendation_and_json_has_it(entry_file, tmp_path, capsys):
    out_json = tmp_path / "rep.json"
    rc = main(["geometry", f"{entry_file}:make", "--exact-max", "30", "--json", str(out_json)])
    assert rc == 0
    out = capsys.readouterr().out
    tail = out.rstrip().splitlines()
    start = max(i for i, ln in enumerate(tail) if ln == "recommendation")
    assert "confidence" in tail[start + 1] and "starting learning rate" in tail[start + 2]
    assert len(tail) - start <= 6  # the advice is the last thing printed
    rec = json.loads(out_json.read_text())["recommendation"]
    rep = json.loads(out_json.read_text())
    assert rec["choice"] in ("gd", "sign") and rec["confidence"] in ("high", "medium", "low")
    assert rec["lr_gd"] == pytest.approx(1 / rep["L2"])
    assert rec["lr_scaled_sign"] == pytest.approx(1 / rep["linf_upper"])


def test_no_progress_bars_when_stderr_is_not_a_terminal(entry_file, capsys):
    # without --no-progress: pytest's captured stderr is not a tty, so nothing is drawn
    assert main(["geometry", f"{entry_file}:make", "--mode", "matrix-free", "--columns", "8",
                 "--probes", "2"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err


def test_tighten_option(entry_file, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["geometry", f"{entry_file}:make", "--tighten", "0"])
    assert exc.value.code == 2
    assert "argument --tighten: must be an integer >= 1" in capsys.readouterr().err
    assert main(["geometry", f"{entry_file}:make", "--mode", "matrix-free", "--columns", "8",
                 "--probes", "2", "--tighten", "2"]) == 0
    assert "tighten=2" in capsys.readouterr().out
