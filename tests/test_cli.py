"""The ``steepest`` command line: version, help texts, demo data errors and determinism."""

from __future__ import annotations

import argparse
import re

import pytest
import torch

from steepest import __version__
from steepest.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"steepest {__version__}"


def test_top_level_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out and ":mod:" not in out  # no RST markup
    for cmd in ("demo", "reproduce", "geometry", "--version"):
        assert cmd in out


@pytest.mark.parametrize("command", ["demo", "geometry", "reproduce"])
def test_every_option_has_help_text(command):
    sub = _subparsers(build_parser())[command]
    missing = [a.dest for a in sub._actions if not a.help]
    assert not missing, f"`steepest {command}` options without help: {missing}"


def test_demo_without_data_files_is_a_clear_error(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("STEEPEST_DATA_DIR", raising=False)
    assert main(["demo", "--problem", "cifar10-3c3d", "--steps", "1", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "Traceback" not in err
    # --data-dir is passed on to the problem's loader, which says what it looked for
    assert main(["demo", "--problem", "cifar10-3c3d", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "cifar-10-batches-py" in err
    assert main(["demo", "--data-dir", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # numbers are checked by argparse: exit code 2
        main(["demo", "--steps", "0"])
    assert exc.value.code == 2
    assert "argument --steps: must be an integer >= 1, got '0'" in capsys.readouterr().err


def _table(out: str) -> list[str]:
    """The demo's rows without the machine-dependent s/run column."""
    rows = [ln for ln in out.splitlines() if re.match(r"^(SGD|Adam|SignSGD|Signum|Scaled|Lp)", ln)]
    return [re.sub(r"\s+\d+\.\d\d( \(grid edge\))?$", "", r) for r in rows]


def test_demo_does_not_depend_on_the_thread_count(capsys):
    # The README's table must be what a user gets: the demo trains in float64 on one thread
    # whatever the caller's setting, so the rows are identical text (bitwise: same kernels on
    # the same data in the same order).
    args = ["demo", "--problem", "breast-cancer-logreg", "--steps", "15", "--seeds", "2"]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(args) == 0
        two = capsys.readouterr().out
        torch.set_num_threads(1)
        assert main(args) == 0
        one = capsys.readouterr().out
    finally:
        torch.set_num_threads(old)
    assert torch.get_num_threads() == old  # the demo restores the caller's setting
    assert len(_table(two)) == 6 and _table(two) == _table(one)
    assert "float64" in two and "[min, max]" in two


def test_reproduce_prints_option_names_that_set_accepts(capsys, tmp_path):
    # scaled-sign-toy's settings used to say ex4_steps/thm1_steps while --set took steps/thm_steps
    rc = main(["reproduce", "scaled-sign-toy", "--quick", "--out", str(tmp_path), "--set",
               "steps=8", "--set", "thm_steps=2", "--set", "thm_dim=1"])
    assert rc == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("options (change with --set"))
    for key in ("steps", "thm_steps", "thm_dim", "signum_momentum"):
        assert f'"{key}"' in line
    assert "ex4_steps" not in out and "thm1_steps" not in out
    rc = main(["reproduce", "scaled-sign-toy", "--quick", "--out", str(tmp_path), "--set",
               "ex4_steps=8"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "ex4_steps" in err and "signum_momentum, steps, thm_dim, thm_steps" in err


def test_every_experiment_lists_its_options_before_running():
    from steepest.experiments.harness import accepted_options, registry

    for name, exp in registry().items():
        assert accepted_options(exp) is not None, f"{name}: accepted --set keys unknown"


def test_reproduce_hides_progress_bars_in_pipes(monkeypatch, tmp_path):
    from steepest.experiments import reproduce as reproduce_command

    seen = {}

    def fake_run(name, **kw):
        seen.update(kw)
        return {"total": 0, "holds": 0}

    monkeypatch.setattr(reproduce_command, "run_experiment", fake_run)
    assert main(["reproduce", "quadratic-2d", "--quick", "--out", str(tmp_path)]) == 0
    assert seen["progress"] is False  # pytest's captured stderr is not a terminal


def test_float64_build_keeps_token_inputs_integer():
    # demo --dtype float64 and steepest geometry build problems in float64; the character-level
    # problems' token indices must stay integers for their embeddings
    from steepest.problems import get_problem

    inst = get_problem("pysrc-char-transformer").build(0, dtype=torch.float64)
    x, y = inst.train.tensors
    assert not x.is_floating_point() and not y.is_floating_point()
    assert next(inst.model.parameters()).dtype == torch.float64
    assert torch.isfinite(inst.loss_fn(inst.model(x[:2]), y[:2]))
