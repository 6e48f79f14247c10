"""Issue 21, the last bad-input gaps: each case failed (silently, or with an unclear error far from
its cause) before.

* non-floating (integer, bool) parameters are refused at construction, naming the parameter;
* a learning rate set on a param group after construction is re-checked at each step;
* NaturalGradientDescent / EmpiricalFisherDescent: the state-dict checks of every other class,
  deepcopy and pickle, and no non-finite update written (the EF overflows at huge parameters);
* finite but extreme gradients (|g| = 1e20, 1e38): every class keeps its parameters finite or
  raises a clear FloatingPointError with no parameter written;
* command-line numbers are checked as the Python API checks arguments (exit code 2, the range).
"""

from __future__ import annotations

import argparse
import copy
import math
import pickle
import re

import numpy as np
import pytest
import torch

import steepest
from steepest.cli import build_parser, main
from steepest.fisher import GLM, EmpiricalFisherDescent, NaturalGradientDescent
from steepest.optim.base import STATE_TAG
from tests.optim.optim_infos import all_infos
from tests.optim.test_conformance import _params, _run, _set_grads

INFOS = all_infos()
ids = [i.name for i in INFOS]
FISHER = [NaturalGradientDescent, EmpiricalFisherDescent]


# ------------------------------------------------------------------ non-floating parameters
@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_non_floating_parameters_are_refused_naming_them(info):
    # ScaledSignSGD truncated its update of an integer tensor to 0; 15 classes failed in kernels.
    for dtype in (torch.int64, torch.int32, torch.uint8, torch.bool):
        bad = torch.arange(12).reshape(4, 3).to(dtype)
        with pytest.raises(ValueError, match=rf"parameter #1 \(shape \(4, 3\), dtype {dtype}\) in "
                                             r"param group 0 is not a floating-point tensor"):
            info.make([torch.zeros(3, requires_grad=True), bad])
    with pytest.raises(ValueError, match=r"parameter 'counts' .* not a floating-point tensor"):
        info.make([("w", torch.zeros(3, requires_grad=True)), ("counts", bad)])
    opt = info.make([torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError, match=r"parameter #0 .* in param group 1 is not a floating-point"):
        opt.add_param_group({"params": [bad]})


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_complex_and_half_precision_parameters_are_still_accepted(info):
    info.make([torch.zeros(3, dtype=torch.complex64, requires_grad=True),
               torch.zeros(3, dtype=torch.bfloat16, requires_grad=True)])


def test_scaled_sign_sgd_on_integers_is_refused_not_truncated():
    # The issue's case: the update 0.5 * ||g||_1 * sign(g) was truncated to 0 in an int64 tensor.
    with pytest.raises(ValueError, match=r"dtype torch\.int64\) in param group 0"):
        steepest.ScaledSignSGD([torch.arange(12).reshape(4, 3)], lr=0.5)


# ------------------------------------------------------------------ lr set after construction
BAD_LRS = [
    ("nan", float("nan")),
    ("negative", -1e-3),
    ("inf", math.inf),
    ("string", "0.1"),
    ("bool", True),
    ("None", None),
    ("tensor-2", torch.ones(2)),
    ("tensor-int", torch.tensor(1)),
    ("tensor-nan", torch.tensor(float("nan"))),
    ("tensor-negative", torch.tensor(-1.0)),
]


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_lr_set_after_construction_is_checked_at_the_step(info):
    # Before: a NaN lr wrote NaN into every parameter, a string raised a TypeError from the
    # middle of the update (or was converted, by Stacey). Now: a ValueError naming the group and
    # the accepted range, before anything is written.
    params = _params()
    opt = _run(info, params, 1)
    opt.add_param_group({"params": [torch.zeros(2, dtype=torch.float64, requires_grad=True)]})
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(opt.state_dict()["state"])
    for name, bad in BAD_LRS:
        opt.param_groups[1]["lr"] = bad
        _set_grads(params, 1)
        if info.prepare:
            info.prepare(params)
        with pytest.raises(ValueError, match=r"param group 1 has lr = .*; lr must be a finite number >= 0"):
            opt.step()
        for p, b in zip(params, before):
            assert torch.equal(p, b), name
        after = opt.state_dict()["state"]
        for k, st in state.items():
            for key, v in st.items():
                assert torch.equal(torch.as_tensor(after[k][key]), torch.as_tensor(v)), (name, k, key)


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_valid_lr_changes_still_step(info):
    # what schedulers and users set: a smaller float, 0, an int, a numpy scalar, a 0-d tensor
    params = _params()
    opt = _run(info, params, 1)
    for lr in (0.5 * info.lr, 0, 1, np.float32(info.lr), torch.tensor(info.lr, dtype=torch.float64)):
        opt.param_groups[0]["lr"] = lr
        _run(info, params, 1, start=1, opt=opt)
    assert all(bool(torch.isfinite(p).all()) for p in params)


def test_the_step_lr_check_reads_no_device_values():
    # Off the CPU a tensor lr's value is not read (that would be a host sync every step): only its
    # shape, dtype and device are checked. Meta tensors stand in for a device (reading one raises).
    from steepest.optim.base import check_group_lr

    meta = torch.empty(3, device="meta")
    check_group_lr("X", 0, {"lr": torch.tensor(float("nan"), device="meta"), "params": [meta]})
    with pytest.raises(ValueError, match=r"lr = a tensor of shape \(\), dtype torch.float32 on meta"):
        check_group_lr("X", 0, {"lr": torch.tensor(0.1, device="meta"), "params": [torch.zeros(3)]})
    with pytest.raises(ValueError, match=r"dtype torch.int64 on meta"):
        check_group_lr("X", 0, {"lr": torch.tensor(1, device="meta"), "params": [meta]})
    check_group_lr("X", 0, {"lr": torch.tensor(0.1), "params": [meta]})  # a CPU lr with any params


# ------------------------------------------------------------------ Fisher optimizers
def _glm(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(8, 3, generator=g, dtype=dtype)
    return GLM(X, X @ torch.tensor([1.0, -2.0, 0.5], dtype=dtype) + 0.1 * torch.randn(8, generator=g, dtype=dtype))


def _fisher_step(opt, grad):
    p = opt.param_groups[0]["params"][0]
    p.grad = grad.clone()
    opt.step()
    return p


@pytest.mark.parametrize("cls", FISHER, ids=lambda c: c.__name__)
def test_fisher_state_dicts_load_only_into_the_same_class(cls):
    m = _glm()
    opt = cls([torch.zeros(3, dtype=torch.float64, requires_grad=True)], m, lr=0.5, damping=1e-3)
    _fisher_step(opt, torch.ones(3, dtype=torch.float64))
    lion = steepest.Lion([torch.zeros(3, requires_grad=True)], lr=0.1)
    _fisher_step(lion, torch.ones(3))
    # Before: Lion's state dict loaded silently (KeyError: 'damping' at the next step) and the
    # Fisher optimizer's loaded into Lion, setting its lr to 1.0.
    with pytest.raises(ValueError, match=f"saved by Lion, not {cls.__name__}"):
        opt.load_state_dict(lion.state_dict())
    with pytest.raises(ValueError, match=f"saved by {cls.__name__}, not Lion"):
        lion.load_state_dict(opt.state_dict())
    untagged = lambda o: {k: v for k, v in o.state_dict().items() if k != STATE_TAG}  # noqa: E731
    with pytest.raises(ValueError, match=f"not from {cls.__name__}"):
        opt.load_state_dict(untagged(lion))
    with pytest.raises(ValueError, match=r"not from Lion: param group 0 has options \['cg_max_iter'"):
        lion.load_state_dict(untagged(opt))
    assert lion.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["damping"] == 1e-3
    # its own state dict round-trips, tagged or not (an older checkpoint)
    other = cls([torch.zeros(3, dtype=torch.float64, requires_grad=True)], m)
    other.load_state_dict(opt.state_dict())
    other.load_state_dict(untagged(opt))
    assert other.param_groups[0]["lr"] == 0.5 and other.param_groups[0]["damping"] == 1e-3


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("cls", FISHER, ids=lambda c: c.__name__)
def test_fisher_optimizers_survive_deepcopy_and_pickle(cls, how):
    # Before: the copy's next step raised AttributeError: ... no attribute 'model'.
    opt = cls([torch.zeros(3, dtype=torch.float64, requires_grad=True)], _glm(), lr=0.5, damping=1e-3)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(3, generator=g, dtype=torch.float64) for _ in range(2)]
    _fisher_step(opt, grads[0])
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    a, b = _fisher_step(opt, grads[1]), _fisher_step(twin, grads[1])
    assert a is not b
    assert torch.equal(a, b)  # the same kernels on the same data


@pytest.mark.parametrize("cls", FISHER, ids=lambda c: c.__name__)
def test_fisher_non_floating_parameters_and_later_lr_are_refused(cls):
    m = _glm()
    with pytest.raises(ValueError, match=r"parameter #0 \(shape \(3,\), dtype torch.int64\)"):
        cls([torch.arange(3)], m)
    opt = cls([torch.zeros(3, dtype=torch.float64, requires_grad=True)], m)
    for bad in (float("nan"), -1.0, "1.0", torch.ones(2)):
        opt.param_groups[0]["lr"] = bad
        with pytest.raises(ValueError, match=r"param group 0 has lr = .*finite number >= 0"):
            _fisher_step(opt, torch.ones(3, dtype=torch.float64))


def test_empirical_fisher_never_writes_a_non_finite_update():
    # The issue's case: |g| ~ 1e21 with lr 1 moves float32 parameters to ~1e20, where the EF
    # (sum of squared residuals ~ 1e40) overflows float32 and the solve gave NaN parameters.
    m = _glm(torch.float32)
    opt = EmpiricalFisherDescent([torch.zeros(3, requires_grad=True)], m)
    p = _fisher_step(opt, torch.full((3,), 1e21))
    before = p.detach().clone()
    assert bool(torch.isfinite(before).all()) and float(before.abs().max()) > 1e19
    with pytest.raises(FloatingPointError, match="EmpiricalFisherDescent: the update is not finite"):
        _fisher_step(opt, torch.full((3,), 1e21))
    assert torch.equal(p.detach(), before)  # nothing written
    # NGD's Fisher does not depend on the residuals: it stays finite there
    ngd = NaturalGradientDescent([torch.zeros(3, requires_grad=True)], m)
    for _ in range(2):
        q = _fisher_step(ngd, torch.full((3,), 1e21))
    assert bool(torch.isfinite(q).all())


# ------------------------------------------------------------------ finite but extreme gradients
def _extreme_steps(opt, params, mag, steps=2, seed=0, prepare=None):
    """Steps with gradients of magnitude ``mag`` (random signs); returns the error raised, if any,
    after checking that the parameters stayed finite, or that nothing was written on the error."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = mag * (2 * torch.randint(0, 2, p.shape, generator=g) - 1).to(p.dtype)
        if prepare:
            prepare(params)
        before = [p.detach().clone() for p in params]
        try:
            opt.step()
        except FloatingPointError as err:
            assert re.search(r"not finite|non-finite", str(err)), str(err)
            for p, b in zip(params, before):
                assert torch.equal(p.detach(), b), "a parameter was written before the error"
            return err
        for p in params:
            assert bool(torch.isfinite(p).all()), f"{type(opt).__name__} wrote {p}"
    return None


@pytest.mark.parametrize("mag", [1e20, 1e38])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_finite_extreme_gradients_never_write_non_finite_parameters(info, dtype, mag):
    # Before: finite gradients near the dtype's range wrote inf/NaN although the gradient check
    # passed (scaled steps' ||g||_1 overflowing float32, M-SVAG's (lr/K) m~ at v~ = inf).
    torch.manual_seed(0)
    params = [torch.randn(4, 3, dtype=dtype).requires_grad_(), torch.randn(5, dtype=dtype).requires_grad_()]
    _extreme_steps(info.make(params), params, mag, prepare=info.prepare)


@pytest.mark.parametrize("mag", [1e20, 1e38])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["MSVAG", "SVAG", "AdamStar", "MSGD", "EFSignSGD", "ScaledSignSGD",
                                  "SignSGD", "Lion", "Stacey", "AdamShuffled", "AdamAveraged"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "transposed"])
def test_issue_cases_at_default_lr(name, dtype, mag, contiguous):
    # The issue's cases, at each class's default lr: MSVAG (NaN after two steps), EFSignSGD and
    # ScaledSignSGD (inf) at 1e38 in float32. A transposed parameter takes the reference path.
    w = torch.zeros(3, 4, dtype=dtype)
    params = [(w if contiguous else w.t()).requires_grad_(), torch.zeros(5, dtype=dtype).requires_grad_()]
    err = _extreme_steps(getattr(steepest, name)(params), params, mag)
    if name != "ScaledSignSGD" or dtype == torch.float64 or mag < 1e38:
        assert err is None, err  # overflow-safe: these steps are finite
    else:
        # ||g||_1 = 17e38 overflows float32: the scaled step's scale is not representable (the
        # default lr 3e-5 would bring lr ||g||_1 back in range, but the scale is formed first)
        assert "ScaledSignSGD: the update is not finite" in str(err)


def test_extreme_gradient_skip_policy_warns_and_writes_nothing():
    p = torch.ones(4, 3, requires_grad=True)
    opt = steepest.ScaledSignSGD([p], nonfinite="skip")
    p.grad = torch.full_like(p, 1e38)
    with pytest.warns(RuntimeWarning, match="the update is not finite.*step skipped"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(4, 3))


# ------------------------------------------------------------------ command-line numbers
def _subparser(command: str) -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise AssertionError("no subcommands")


def _numeric_options(command: str) -> list[str]:
    return [a.option_strings[-1] for a in _subparser(command)._actions
            if a.option_strings and a.type is not None and a.choices is None]


CLI_CASES = [(cmd, opt) for cmd in ("demo", "geometry") for opt in _numeric_options(cmd)]


def test_the_cli_has_numeric_options_to_check():
    assert {"--steps", "--seeds", "--seed"} <= {o for c, o in CLI_CASES if c == "demo"}
    assert {"--lr", "--exact-time", "--exact-max", "--train-steps"} <= \
        {o for c, o in CLI_CASES if c == "geometry"}


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "-1", "1e999", "abc"])
@pytest.mark.parametrize("command,option", CLI_CASES, ids=[f"{c}{o}" for c, o in CLI_CASES])
def test_every_numeric_cli_option_refuses_bad_numbers(command, option, bad, capsys):
    # Before: --lr nan and --exact-time inf parsed (then "Eigenvalues did not converge" or a
    # traceback); now argparse exits 2 naming the option and its range. Every numeric option
    # here accepts only finite numbers >= 0.
    args = [command] + (["digits-logreg"] if command == "geometry" else [])
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*args, f"{option}={bad}"])  # "-inf" alone reads as an option
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must be " in err and f"got '{bad}'" in err
    # its default passes its own check
    default = _subparser(command).get_default(option.lstrip("-").replace("-", "_"))
    if default is not None:
        build_parser().parse_args([*args, option, str(default)])


def test_geometry_negative_lr_is_a_clear_error_not_a_traceback(capsys):
    for bad in ("-1", "nan"):
        with pytest.raises(SystemExit) as exc:
            main(["geometry", "digits-logreg", "--train-steps", "1", "--lr", bad, "--no-progress"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --lr: must be a finite number >= 0, got '{bad}'" in err
        assert "Traceback" not in err


def test_cli_number_types():
    from steepest._cli_types import finite_float, int_at_least, int_in_range

    assert int_at_least(1)("3") == 3 and int_in_range(1, 62)("62") == 62
    assert finite_float(0.0, lo_open=True)("1e-9") == 1e-9 and finite_float()("-2.5") == -2.5
    for parse, text in [(int_at_least(1), "0"), (int_at_least(0), "1.5"), (int_in_range(1, 62), "63"),
                        (finite_float(0.0, lo_open=True), "0"), (finite_float(0.0, 1.0), "1.5"),
                        (finite_float(hi=1.0, hi_open=True), "1"), (finite_float(), "nan")]:
        with pytest.raises(argparse.ArgumentTypeError, match=f"got '{text}'"):
            parse(text)
