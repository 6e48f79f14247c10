# ruff: noqa: B023  (closures are called within the loop iteration that defines them, as in torch)
"""PyTorch's optimizer battery (``TestOptimRenewed``) with every ``steepest`` optimizer in its table.

Each test ports the torch test of the same name (tests/optim/_torch_battery/__init__.py says
from where, and under which licence); docstrings note adaptations. The table is
tests/optim/_torch_battery/infos.py; torch's SGD and Adam run as controls. Tests are
parametrized by (optimizer, configuration) where torch loops over configurations inside one test,
so that a failure names its configuration; torch's loop over implementation flags
(``foreach=False`` / ``True``) stays inside.

Not ported (they do not apply here): the sparse tests (``test_rosenbrock_sparse``: no steepest
optimizer takes sparse gradients, they raise, see ``test_errors``), the ``fused`` tests (no
fused implementations), ``test_second_order_optims_return_consistent_types`` (no closure-only
optimizer), ``test_foreach_large_tensor`` / ``test_fused_large_tensor`` (64-72 GB), and the
multi-GPU tests. CUDA-only tests skip without CUDA. ``test_peak_memory_foreach`` and
``test_set_default_dtype_works_with_foreach`` are CUDA-only in torch; they run here on CPU
(memory measured by a dispatch mode, see ``LiveBytes``).
"""

from __future__ import annotations

import functools
import math
import tempfile
from copy import deepcopy
from typing import Any

import pytest
import torch
from torch.nn import Parameter
from torch.optim import SGD, Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from steepest._memory import LiveBytes
from tests.optim._torch_battery.common import (
    OptimizerInfo,
    TensorTracker,
    assert_equal,
    cases,
    impl_variants,
    info_cases,
    rosenbrock,
    storages,
)
from tests.optim._torch_battery.infos import DB

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA-only test in torch's battery; no CUDA here")


@pytest.fixture(autouse=True)
def _seed() -> None:
    """torch's TestCase seeds the RNG before every test (common_utils.SEED = 1234); so do we, so
    that each case draws the same problem in any order or process."""
    torch.manual_seed(1234)


def _variants(info: OptimizerInfo, desc: str) -> list[dict[str, Any]]:
    return [v.kwargs for v in impl_variants(info, info.input(desc))]


# ------------------------------------------------------------------------------ the table
@pytest.mark.parametrize("info", info_cases(DB, "test_optim_infos_do_not_specify_global_cliquey_kwargs"))
def test_optim_infos_do_not_specify_global_cliquey_kwargs(info: OptimizerInfo) -> None:
    for inp in info.optim_inputs_func():
        assert not any(f in inp.kwargs for f in ("foreach", "fused", "differentiable")), inp.desc


@pytest.mark.parametrize("info", info_cases(DB, "test_errors", lambda i: i.error_inputs_func is not None))
def test_errors(info: OptimizerInfo) -> None:
    """torch's test_errors, with torch's generic CPU error inputs, our records' invalid options,
    and step errors for sparse and non-finite gradients."""
    assert info.error_inputs_func is not None
    for params, kwargs, on, err, regex in info.error_inputs_func():
        if params is None:
            p = Parameter(torch.randn(2, 3))
            params = [p]
        if on == "construction":
            if issubclass(err, Warning):
                with pytest.warns(err, match=regex):
                    info.optim_cls(params, **kwargs)
            else:
                with pytest.raises(err, match=regex):
                    info.optim_cls(params, **kwargs)
        else:
            opt = info.optim_cls(params, **kwargs)
            with pytest.raises(err, match=regex):
                opt.step()


# ------------------------------------------------------------------------------ direction
@pytest.mark.parametrize("with_lrsched", [True, False])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_forloop_goes_right_direction"))
def test_forloop_goes_right_direction(info: OptimizerInfo, desc: str, contiguous: bool, with_lrsched: bool) -> None:
    dtype = torch.float32
    for sched_cs in info.scheduler_inputs if with_lrsched else [None]:
        kwargs = info.input(desc).kwargs  # fresh: a tensor lr is mutated by schedulers
        if "foreach" in info.supported_impls:
            kwargs["foreach"] = False
        if contiguous:
            weight = Parameter(torch.randn((10, 5), dtype=dtype))
            bias = Parameter(torch.randn(10, dtype=dtype))
        else:
            weight = Parameter(torch.randn((10, 5, 2), dtype=dtype)[..., 0])
            bias = Parameter(torch.randn((10, 2), dtype=dtype)[..., 0])
        inpt = torch.randn(5, dtype=dtype)
        optimizer = info.optim_cls([weight, bias], **kwargs)
        schedulers = [s(optimizer) for s in (sched_cs or [])]

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = (weight.mv(inpt) + bias).pow(2).sum()
            loss.backward()
            return loss

        initial = closure().item()
        for _ in range(20):
            loss = closure()
            optimizer.step()
            for s in schedulers:
                s.step(loss) if isinstance(s, ReduceLROnPlateau) else s.step()
        if kwargs.get("maximize", False):
            assert closure().item() > initial
        else:
            assert closure().item() < initial


@pytest.mark.parametrize("info", info_cases(DB, "test_param_group_with_lrscheduler_goes_right_direction"))
def test_param_group_with_lrscheduler_goes_right_direction(info: OptimizerInfo) -> None:
    """Constructed with the class defaults (bias group at lr 0.01), as torch does."""
    for sched_cs in info.scheduler_inputs:
        weight = Parameter(torch.randn((10, 5)))
        bias = Parameter(torch.randn(10))
        inpt = torch.randn(5)
        optimizer = info.optim_cls([{"params": [weight]}, {"params": [bias], "lr": 0.01}], **info.required_kwargs)
        schedulers = [s(optimizer) for s in sched_cs]

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = (weight.mv(inpt) + bias).pow(2).sum()
            loss.backward()
            return loss

        initial = closure().item()
        for _ in range(20):
            loss = optimizer.step(closure)
            for s in schedulers:
                s.step(loss) if isinstance(s, ReduceLROnPlateau) else s.step()
        assert closure().item() < initial


@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_tensor_lr"))
def test_tensor_lr(info: OptimizerInfo, desc: str) -> None:
    """A tensor lr gives the same steps as the float lr. Adapted: torch's version calls the
    closures but, for optimizers that do not require a closure, never ``step()`` (so it cannot
    fail for them); here both optimizers step."""
    for kwargs in _variants(info, desc):
        weight = Parameter(torch.randn((10, 5)))
        weight_c = weight.detach().clone().requires_grad_(True)
        bias = Parameter(torch.randn(10))
        bias_c = bias.detach().clone().requires_grad_(True)
        inpt = torch.randn(5)
        kwargs.pop("lr", None)
        optimizer_r = info.optim_cls([weight, bias], lr=1e-3, **deepcopy(kwargs))
        try:
            optimizer = info.optim_cls([weight_c, bias_c], lr=torch.tensor(1e-3), **deepcopy(kwargs))
        except ValueError as e:
            assert "lr as a Tensor is not supported" in str(e)
            continue

        def closure(opt: Optimizer, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            opt.zero_grad()
            loss = (w.mv(inpt) + b).pow(2).sum()
            loss.backward()
            return loss

        for _ in range(5):
            optimizer_r.step(functools.partial(closure, optimizer_r, weight, bias))
            optimizer.step(functools.partial(closure, optimizer, weight_c, bias_c))
            assert_equal(weight, weight_c)
            assert_equal(bias, bias_c)


# ------------------------------------------------------------------------------ complex
@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_complex", lambda i: i.supports_complex))
def test_complex(info: OptimizerInfo, desc: str) -> None:
    """A complex parameter steps as its real view (mixed with a real parameter)."""
    for kwargs in _variants(info, desc):
        complex_params = [
            torch.randn(10, 5, dtype=torch.complex64, requires_grad=True),
            torch.randn(10, dtype=torch.complex64, requires_grad=True),
            torch.randn(10, 5, dtype=torch.float32, requires_grad=True),
        ]
        real_params = [
            (torch.view_as_real(p) if p.is_complex() else p).detach().clone().requires_grad_()
            for p in complex_params
        ]
        complex_opt = info.optim_cls(complex_params, **deepcopy(kwargs))
        real_opt = info.optim_cls(real_params, **deepcopy(kwargs))
        real_steps: list[torch.Tensor] = []
        complex_steps: list[torch.Tensor] = []
        grads_losses: list[torch.Tensor] = []

        def real_closure() -> torch.Tensor:
            for p in real_params:
                g = torch.randn_like(p)
                p.grad = g
                real_steps.append(p.detach().clone())
                grads_losses.append(g.clone())
            loss = torch.randn(1)
            grads_losses.append(loss.clone())
            return loss

        def complex_closure() -> torch.Tensor:
            for p in complex_params:
                if p.is_complex():
                    g = torch.view_as_complex(grads_losses.pop(0))
                    complex_steps.append(torch.view_as_real_copy(p.detach()))
                else:
                    g = grads_losses.pop(0)
                    complex_steps.append(p.detach().clone())
                p.grad = g
            return grads_losses.pop(0)

        for _ in range(3):
            real_closure()
            complex_closure()
            real_opt.step()
            complex_opt.step()
        assert_equal(real_params, [torch.view_as_real(p) if p.is_complex() else p for p in complex_params])
        assert_equal(complex_steps, real_steps)


@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_complex_2d", lambda i: i.supports_complex))
def test_complex_2d(info: OptimizerInfo, desc: str) -> None:
    """One complex 2-vector against its real and imaginary parts as two real parameters."""
    for kwargs in _variants(info, desc):
        a1 = torch.randn(2, dtype=torch.complex64, requires_grad=True)
        a1_real = a1.real.detach().clone().requires_grad_()
        a1_imag = a1.imag.detach().clone().requires_grad_()
        optim1 = info.optim_cls([a1], **deepcopy(kwargs))
        optim2 = info.optim_cls([a1_real, a1_imag], **deepcopy(kwargs))
        reals, imags, grad_reals, grad_imags, losses = (TensorTracker() for _ in range(5))

        def closure1() -> torch.Tensor:
            optim1.zero_grad()
            loss = rosenbrock(a1).abs()
            loss.backward()
            reals.add(a1.real)
            imags.add(a1.imag)
            grad_reals.add(a1.grad.real)
            grad_imags.add(a1.grad.imag)
            losses.add(loss)
            return loss

        def closure2() -> torch.Tensor:
            optim2.zero_grad()
            reals.pop_check_set(a1_real, "real")
            imags.pop_check_set(a1_imag, "imag")
            loss = rosenbrock(torch.complex(a1_real, a1_imag)).abs()
            losses.pop_check_set(loss, "loss")
            loss.backward()
            grad_reals.pop_check_set(a1_real.grad, "grad.real")
            grad_imags.pop_check_set(a1_imag.grad, "grad.imag")
            return loss

        for _ in range(3):
            closure1()
            closure2()
            optim1.step()
            optim2.step()
            assert_equal(a1.real, a1_real)
            assert_equal(a1.imag, a1_imag)
        assert all(t.all_popped() for t in (reals, imags, grad_reals, grad_imags, losses))


# ------------------------------------------------------------------------------ foreach == loop
def _compare_between(inputs: Any, models: list[torch.nn.Module], optimizers: list[Optimizer],
                     tol: dict[str, Any] | None = None, step_dtype: torch.dtype | None = None) -> None:
    """torch's ``_compare_between``: 7 iterations; no gradients at iteration 2; the third layer
    frozen at 3-4; parameters and every state entry checked (and re-synchronized) each time."""
    tracker = TensorTracker(**(tol or {}))
    if not isinstance(inputs, list):
        inputs = [inputs, inputs]
    for i in range(7):
        state, updated = [], []
        for inpt, model, optimizer in zip(inputs, models, optimizers):
            optimizer.zero_grad()
            if i == 3:
                model[2].requires_grad_(False)
            if i == 5:
                model[2].requires_grad_(True)
            if i != 2:
                model(inpt).sum().backward()
            optimizer.step()
            state.append(optimizer.state)
            updated.append(model.parameters())
        og_state, new_state = state
        for og_p, new_p in zip(*updated):
            tracker.add(og_p)
            tracker.pop_check_set(new_p, "param")
            og_s, new_s = og_state[og_p], new_state[new_p]
            if step_dtype is not None:
                for s in (og_s, new_s):
                    if torch.is_tensor(s.get("step")):
                        assert s["step"].dtype == step_dtype
            for k in og_s:
                if torch.is_tensor(og_s[k]):
                    tracker.add(og_s[k])
                    tracker.pop_check_set(new_s[k], f"state[{k!r}]")
                else:
                    assert_equal(new_s[k], og_s[k], f"state[{k!r}]")
    assert tracker.all_popped()


def _derived(info: OptimizerInfo, desc: str, dtype: torch.dtype, tol: dict[str, Any] | None = None,
             step_dtype: torch.dtype | None = None) -> None:
    kwargs = info.input(desc).kwargs
    models, optimizers = [], []
    for flag in (False, True):
        kw = deepcopy(kwargs)
        kw["foreach"] = flag
        inpt = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid())
        model.to(dtype=dtype)
        # a 0-d parameter last, as torch's test (pytorch issue 100701)
        empty = torch.empty((), dtype=dtype, requires_grad=True)
        empty.grad = torch.rand_like(empty)
        optimizers.append(info.optim_cls([*model.parameters(), empty], **kw))
        models.append(model)
    _compare_between(inpt, models, optimizers, tol, step_dtype)


@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_foreach_matches_forloop", lambda i: "foreach" in i.supported_impls))
def test_foreach_matches_forloop(info: OptimizerInfo, desc: str) -> None:
    """float64, torch's default tolerances for float64 (rtol 1e-7, atol 1e-7)."""
    _derived(info, desc, torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_set_default_dtype_works_with_foreach", lambda i: "foreach" in i.supported_impls))
def test_set_default_dtype_works_with_foreach(info: OptimizerInfo, desc: str) -> None:
    """CUDA-only in torch (pytorch issue 110940), run on CPU: foreach == loop under a float64
    and a float16 default dtype; a tensor ``step`` is float64 under a float64 default, else
    float32. Tolerances under float16: torch's FP16_REDUCED_PRECISION (atol 1e-5, rtol 1e-4)."""
    old = torch.get_default_dtype()
    for default in (torch.float64, torch.float16):
        try:
            torch.set_default_dtype(default)
            _derived(info, desc, torch.float64,
                     tol={"atol": 1e-5, "rtol": 1e-4} if default == torch.float16 else None,
                     step_dtype=torch.float64 if default == torch.float64 else torch.float32)
        finally:
            torch.set_default_dtype(old)


@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_peak_memory_foreach", lambda i: "foreach" in i.supported_impls))
def test_peak_memory_foreach(info: OptimizerInfo, desc: str) -> None:
    """torch's criterion, on CPU: the foreach step's peak memory is at most the loop step's plus
    one intermediate the size of all parameters (torch: ``nintermediates = 1`` for all but a few
    of its own optimizers). 10 float32 parameters of 16 x 8, second step measured. Measured with
    ``LiveBytes`` (bytes of tensors created during the step and still alive) instead of
    ``torch.cuda.max_memory_allocated``: both sides of the comparison exclude the parameters,
    gradients and state, which torch's numbers include on both sides."""
    nparams = 10
    peaks = []
    for flag in (False, True):
        kwargs = info.input(desc).kwargs
        kwargs["foreach"] = flag
        torch.manual_seed(0)
        param = torch.rand(16, 8)
        params = [torch.rand_like(param) for _ in range(nparams)]
        optimizer = info.optim_cls(params, **kwargs)
        for p in params:
            p.grad = torch.rand_like(p)
        optimizer.step()
        # torch calls gc.collect() around the measured step for the CUDA caching allocator;
        # LiveBytes counts by reference (freed at once), so no collection is needed here.
        with LiveBytes(storages(optimizer, params)) as mode:
            optimizer.step()
        peaks.append(mode.peak)
    st_peak, mt_peak = peaks
    intermediate = nparams * param.nelement() * param.element_size()
    assert mt_peak <= st_peak + intermediate, (
        f"foreach peak {mt_peak} B > loop peak {st_peak} B + one intermediate {intermediate} B "
        f"({(mt_peak - st_peak) / intermediate:.2f} intermediates)"
    )


# ------------------------------------------------------------------------------ param groups
@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_param_groups_weight_decay"))
def test_param_groups_weight_decay(info: OptimizerInfo, desc: str) -> None:
    for kwargs in _variants(info, desc):
        bias_kwargs = deepcopy(kwargs)
        bias_kwargs["weight_decay"] = 0.0
        weight = Parameter(torch.randn((10, 5)))
        bias = Parameter(torch.randn(10))
        inpt = torch.randn(5)
        optimizer = info.optim_cls([dict(params=[weight], **kwargs), dict(params=[bias], **bias_kwargs)])
        initial = (weight.mv(inpt) + bias).pow(2).sum().item()
        for _ in range(20):
            optimizer.zero_grad()
            loss = (weight.mv(inpt) + bias).pow(2).sum()
            loss.backward()
            optimizer.step()
        if kwargs.get("maximize", False):
            assert loss.item() > initial
        else:
            assert loss.item() < initial


@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_param_groups_lr"))
def test_param_groups_lr(info: OptimizerInfo, desc: str) -> None:
    """A group at lr 1e-28 (the constructor's lr) does not move; the other group descends."""
    for kwargs in _variants(info, desc):
        if "lr" not in kwargs or kwargs["lr"] == 0:
            kwargs["lr"] = 1e-3
        weight = Parameter(torch.randn((10, 5)))
        bias = Parameter(torch.randn(10))
        irrelevant = Parameter(torch.randn(2))
        irrelevant_clone = irrelevant.detach().clone()
        inpt = torch.randn(5)
        optimizer = info.optim_cls([dict(params=[weight, bias], **kwargs), dict(params=[irrelevant])],
                                   lr=1e-28, **info.required_kwargs)
        initial = (weight.mv(inpt) + bias).pow(2).sum().item()
        for _ in range(20):
            optimizer.zero_grad()
            loss = (weight.mv(inpt) + bias).pow(2).sum()
            loss.backward()
            irrelevant.grad = torch.rand_like(irrelevant)
            optimizer.step()
        if kwargs.get("maximize", False):
            assert loss.item() > initial
        else:
            assert loss.item() < initial
        assert_equal(irrelevant.detach(), irrelevant_clone)


# ------------------------------------------------------------------------------ no-op steps
@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_step_is_noop_when_params_have_no_grad"))
def test_step_is_noop_when_params_have_no_grad(info: OptimizerInfo, desc: str) -> None:
    """Adapted: torch's version only checks that the step runs; here the parameters must also be
    unchanged (the test's name)."""
    params = [torch.randn(2, 3, requires_grad=False) for _ in range(2)]
    old = [p.detach().clone() for p in params]
    for kwargs in _variants(info, desc):
        optimizer = info.optim_cls(params, **kwargs)
        optimizer.step(lambda: torch.tensor([1.0]))
        assert_equal(params, old)


@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_step_is_noop_for_zero_grads"))
def test_step_is_noop_for_zero_grads(info: OptimizerInfo, desc: str) -> None:
    """Configurations with weight decay are exempt (torch: 'params will decay even if grads are
    empty'). Adapted: torch reads ``weight_decay`` from the configuration's options; here from
    the constructed group, so that a class whose *default* weight decay is not 0 (Muon's 0.1, as
    torch's Muon) is exempt as well."""
    param = torch.randn((5, 1), requires_grad=True)
    old = param.detach().clone()
    ran = 0
    for kwargs in _variants(info, desc):
        if info.optim_cls is torch.optim.AdamW:
            kwargs["lr"] = 1e-5
        optimizer = info.optim_cls([param], **kwargs)
        if optimizer.param_groups[0].get("weight_decay", 0) != 0:
            continue
        param.grad = torch.zeros_like(param)
        optimizer.step(lambda: torch.tensor([1.0]))
        assert_equal(param.detach(), old)
        ran += 1
    if not ran:
        pytest.skip("every variant has weight decay (exempt, as in torch)")


@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_optimizer_can_be_printed"))
def test_optimizer_can_be_printed(info: OptimizerInfo, desc: str) -> None:
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for kwargs in _variants(info, desc):
        text = repr(info.optim_cls(params, **kwargs))
        assert info.optim_cls.__name__ in text


# ------------------------------------------------------------------------------ state dicts
def _named(params: list[torch.Tensor], named: bool) -> Any:
    return [(f"name{i}", p) for i, p in enumerate(params)] if named else params


def _without_names(sd: dict[str, Any]) -> dict[str, Any]:
    sd = deepcopy(sd)
    for g in sd["param_groups"]:
        g.pop("param_names", None)
    return sd


@pytest.mark.parametrize("named1", [True, False])
@pytest.mark.parametrize("named0", [True, False])
@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_state_dict_deterministic"))
def test_state_dict_deterministic(info: OptimizerInfo, desc: str, named0: bool, named1: bool) -> None:
    weight = Parameter(torch.randn(2, 3))
    bias = Parameter(torch.randn(2))
    inpt = torch.randn(3)

    def fwd_bwd(opt: Optimizer, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        opt.zero_grad()
        loss = (w.mv(inpt) + b).pow(2).sum()
        loss.backward()
        return loss

    for kwargs in _variants(info, desc):
        optimizer = info.optim_cls(_named([weight, bias], named0), **deepcopy(kwargs))
        for _ in range(10):
            fwd_bwd(optimizer, weight, bias)
            optimizer.step()
        with torch.no_grad():
            weight_c = Parameter(weight.clone())
            bias_c = Parameter(bias.clone())
        optimizer_c = info.optim_cls(_named([weight_c, bias_c], named1), **deepcopy(kwargs))
        optimizer_c.load_state_dict(deepcopy(optimizer.state_dict()))
        for _ in range(10):
            fwd_bwd(optimizer, weight, bias)
            fwd_bwd(optimizer_c, weight_c, bias_c)
            optimizer.step()
            optimizer_c.step()
            assert_equal(weight, weight_c)
            assert_equal(bias, bias_c)
        assert_equal(_without_names(optimizer.state_dict()), _without_names(optimizer_c.state_dict()))
        # repeated parameters have identical representations (pytorch issue 36831)
        optimizer_c.param_groups.extend(optimizer_c.param_groups)
        assert_equal(_without_names(optimizer.state_dict())["param_groups"][-1],
                     _without_names(optimizer_c.state_dict())["param_groups"][-1])


def _conv_bn() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.BatchNorm2d(2, eps=1e-05, momentum=0.1))
    return model, torch.rand(1, 4, 16, 16)


def _fwd_bwd(opt: Optimizer, model: torch.nn.Module, inpt: torch.Tensor) -> torch.Tensor:
    opt.zero_grad()
    loss = model(inpt).sum()
    loss.backward()
    return loss


@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_can_load_older_state_dict"))
def test_can_load_older_state_dict(info: OptimizerInfo, desc: str) -> None:
    """A state dict without the flags added after the optimizer's first release still loads
    and steps (ours: ``foreach``, ``maximize``, ``nonfinite``)."""
    for kwargs in _variants(info, desc):
        model, inpt = _conv_bn()
        optimizer = info.optim_cls(model.parameters(), **kwargs)
        for _ in range(3):
            _fwd_bwd(optimizer, model, inpt)
            optimizer.step()
        old = deepcopy(optimizer.state_dict())
        for g in old["param_groups"]:
            for flag in info.not_og_supported_flags:
                g.pop(flag, None)
        optimizer.load_state_dict(old)
        _fwd_bwd(optimizer, model, inpt)
        optimizer.step()


@pytest.mark.parametrize("named1", [True, False])
@pytest.mark.parametrize("named0", [True, False])
@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_can_load_from_to_named_state_dict"))
def test_can_load_from_to_named_state_dict(info: OptimizerInfo, desc: str, named0: bool, named1: bool) -> None:
    for kwargs in _variants(info, desc):
        model, inpt = _conv_bn()
        optimizer = info.optim_cls(model.named_parameters() if named0 else model.parameters(), **deepcopy(kwargs))
        for _ in range(3):
            _fwd_bwd(optimizer, model, inpt)
            optimizer.step()
        old = deepcopy(optimizer.state_dict())
        optimizer2 = info.optim_cls(model.named_parameters() if named1 else model.parameters(), **deepcopy(kwargs))
        optimizer2.load_state_dict(old)
        _fwd_bwd(optimizer2, model, inpt)
        optimizer2.step()
        if named0 or named1:
            assert optimizer2.state_dict()["param_groups"][0]["param_names"] == ["0.weight", "0.bias", "1.weight", "1.bias"]


@pytest.mark.parametrize("named", [True, False])
@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_save_load_equality_with_weights_only"))
def test_save_load_equality_with_weights_only(info: OptimizerInfo, desc: str, named: bool) -> None:
    weight = Parameter(torch.randn(2, 3))
    bias = Parameter(torch.randn(2))
    inpt = torch.randn(3)
    for kwargs in _variants(info, desc):
        optimizer = info.optim_cls(_named([weight, bias], named), **kwargs)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = (weight.mv(inpt) + bias).pow(2).sum()
            loss.backward()
            return loss

        for _ in range(3):
            optimizer.step(closure)
        sd = optimizer.state_dict()
        with tempfile.TemporaryFile() as f:
            torch.save(sd, f)
            f.seek(0)
            assert_equal(torch.load(f, weights_only=False), sd)
            f.seek(0)
            assert_equal(torch.load(f, weights_only=True), sd)


@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_load_nontensor_step"))
def test_load_nontensor_step(info: OptimizerInfo, desc: str) -> None:
    """A state dict whose ``step`` is a Python number (torch.optim's older format) loads and
    steps."""
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.rand_like(p)
    for kwargs in _variants(info, desc):
        optimizer = info.optim_cls(params, **kwargs)
        for _ in range(3):
            optimizer.step()
        sd = deepcopy(optimizer.state_dict())
        for st in sd["state"].values():
            if "step" in st and torch.is_tensor(st["step"]):
                st["step"] = st["step"].item()
        optimizer.load_state_dict(sd)
        optimizer.step()


@needs_cuda
@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_state_dict_with_cuda_params"))
def test_state_dict_with_cuda_params(info: OptimizerInfo, desc: str) -> None:  # pragma: no cover - CUDA
    """A CPU optimizer's state dict loads into a CUDA optimizer; both then step the same (a
    tensor ``step`` stays on the CPU)."""
    for kwargs in _variants(info, desc):
        params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer = info.optim_cls(params, **deepcopy(kwargs))
        for _ in range(3):
            optimizer.step()
        with torch.no_grad():
            params_cuda = [p.to("cuda") for p in params]
            for p, q in zip(params, params_cuda):
                q.grad = p.grad.to("cuda")
        optimizer_cuda = info.optim_cls(params_cuda, **deepcopy(kwargs))
        sd_cpu = deepcopy(optimizer.state_dict())
        sd_cuda = deepcopy(optimizer.state_dict())
        optimizer_cuda.load_state_dict(sd_cuda)
        assert_equal(sd_cpu, sd_cuda)
        for st in optimizer_cuda.state_dict()["state"].values():
            if torch.is_tensor(st.get("step")):
                assert st["step"].device.type == "cpu"
        for _ in range(5):
            optimizer.step()
            optimizer_cuda.step()
            assert_equal([p.cpu() for p in params_cuda], params)


# ------------------------------------------------------------------------------ hooks
def _sd_pre_hook(optimizer: Optimizer) -> None:
    optimizer.state["test"] = 1


def _sd_post_hook(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    if "test" in state_dict["state"]:
        state_dict["state"].pop("test")
        state_dict["ran_state_dict_pre_hook"] = True
    else:
        state_dict["ran_state_dict_pre_hook"] = False
    return state_dict


def _load_pre_hook1(optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
    state_dict["param_groups"][0]["lr"] = 0.002


def _load_pre_hook2(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    sd = deepcopy(state_dict)  # a returned state dict replaces the one being loaded
    sd["param_groups"][0]["lr"] = 0.003
    return sd


def _load_post_hook(optimizer: Optimizer) -> None:
    optimizer.state["ran_load_state_dict_pre_hook2"] = optimizer.param_groups[0]["lr"] == 0.003
    optimizer.state["ran_load_state_dict_post_hook"] = True


def _one_param_optimizers(info: OptimizerInfo, desc: str) -> list[Optimizer]:
    """Adapted: the load hooks mark themselves by setting lr to 0.002 / 0.003, so an optimizer
    whose lr already is one of those (SignSGD's default is 0.003) would make the checks
    meaningless; such a configuration runs at lr 1e-3 instead."""
    out = []
    for kwargs in _variants(info, desc):
        optim = info.optim_cls([torch.rand(2, 3, requires_grad=True)], **kwargs)
        if any(math.isclose(float(optim.param_groups[0]["lr"]), v, rel_tol=1e-6) for v in (0.002, 0.003)):
            optim = info.optim_cls([torch.rand(2, 3, requires_grad=True)], **{**kwargs, "lr": 1e-3})
        out.append(optim)
    return out


@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_state_dict_hooks"))
def test_state_dict_hooks(info: OptimizerInfo, desc: str) -> None:
    """torch's test_state_dict_pre_hook, test_state_dict_post_hook, test_state_dict_pre_post_hook."""
    for optim in _one_param_optimizers(info, desc):
        optim.register_state_dict_pre_hook(_sd_pre_hook)
        assert optim.state_dict()["state"]["test"] == 1
    for optim in _one_param_optimizers(info, desc):
        optim.register_state_dict_post_hook(_sd_post_hook)
        assert not optim.state_dict()["ran_state_dict_pre_hook"]
    for optim in _one_param_optimizers(info, desc):
        optim.register_state_dict_pre_hook(_sd_pre_hook)
        optim.register_state_dict_post_hook(_sd_post_hook)
        sd = optim.state_dict()
        assert "test" not in sd["state"]
        assert sd["ran_state_dict_pre_hook"]


@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_load_state_dict_hooks"))
def test_load_state_dict_hooks(info: OptimizerInfo, desc: str) -> None:
    """torch's test_load_state_dict_pre_hook_and_prepend, test_load_state_dict_post_hook,
    test_load_state_dict_pre_post_hook."""
    for optim in _one_param_optimizers(info, desc):
        sd = optim.state_dict()
        optim.register_load_state_dict_pre_hook(_load_pre_hook1)
        optim.load_state_dict(sd)
        assert optim.param_groups[0]["lr"] == 0.002
        optim.register_load_state_dict_pre_hook(_load_pre_hook2, prepend=True)
        optim.load_state_dict(sd)
        # prepended, hook2 runs first and hook1 then overrides its lr
        assert optim.param_groups[0]["lr"] == 0.002
    for optim in _one_param_optimizers(info, desc):
        optim.register_load_state_dict_post_hook(_load_post_hook)
        optim.load_state_dict(optim.state_dict())
        assert not optim.state["ran_load_state_dict_pre_hook2"]
        assert optim.state["ran_load_state_dict_post_hook"]
    for optim in _one_param_optimizers(info, desc):
        optim.register_load_state_dict_pre_hook(_load_pre_hook2)
        optim.register_load_state_dict_post_hook(_load_post_hook)
        optim.load_state_dict(optim.state_dict())
        assert optim.state["ran_load_state_dict_pre_hook2"]
        assert optim.state["ran_load_state_dict_post_hook"]


@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_step_hooks"))
def test_step_hooks(info: OptimizerInfo, desc: str) -> None:
    """torch's test_step_post_hook, test_step_pre_hook and test_step_all_hooks (global and local
    hooks fire in the order global pre, local pre, local post, global post)."""
    params = [torch.tensor([1.0, 1.0])]  # no gradient: the step itself does nothing
    for kwargs in _variants(info, desc):
        for register, start in (("register_step_post_hook", 2), ("register_step_pre_hook", 5)):
            optim = info.optim_cls(params, **kwargs)
            data = [start]
            handle = getattr(optim, register)(lambda opt, args, kw, data=data: data.__setitem__(0, data[0] + 2))
            optim.step()
            optim.step()
            assert data[0] == start + 4
            handle.remove()
            optim.step()
            assert data[0] == start + 4

        optim = info.optim_cls(params, **kwargs)
        optim2 = SGD(params)
        log: list[int] = []
        handles = [
            register_optimizer_step_pre_hook(lambda o, a, k: log.append(0)),
            register_optimizer_step_post_hook(lambda o, a, k: log.append(5)),
            optim.register_step_pre_hook(lambda o, a, k: log.append(1)),
            optim.register_step_post_hook(lambda o, a, k: log.append(2)),
            optim2.register_step_pre_hook(lambda o, a, k: log.append(1)),
            optim2.register_step_post_hook(lambda o, a, k: log.append(2)),
        ]
        try:
            optim.step()
            assert log == [0, 1, 2, 5]
            optim2.step()
            assert log == [0, 1, 2, 5] * 2
            optim.step()
            assert log == [0, 1, 2, 5] * 3
        finally:
            for h in handles:
                h.remove()
        optim.step()
        optim2.step()
        assert log == [0, 1, 2, 5] * 3


# ------------------------------------------------------------------------------ misc
@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_deepcopy_copies_all_public_attrs"))
def test_deepcopy_copies_all_public_attrs(info: OptimizerInfo, desc: str) -> None:
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.rand_like(p)

    def public(obj: Any) -> set[str]:
        return {k for k in obj.__dict__ if not k.startswith("_")}

    for kwargs in _variants(info, desc):
        optimizer = info.optim_cls(params, **kwargs)
        for _ in range(3):
            optimizer.step()
        assert public(optimizer) == public(deepcopy(optimizer))


@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_non_empty_state"))
def test_non_empty_state(info: OptimizerInfo, desc: str) -> None:
    """After one step every stepped parameter has state (torch: 'internal tests check that the
    state is not empty')."""
    model = torch.nn.Linear(5, 5)
    inpt = torch.rand(2, 5)
    kwargs = info.input(desc).kwargs
    optim = info.optim_cls(model.parameters(), **kwargs)
    optim.zero_grad()
    model(inpt).sum().backward()
    optim.step()
    assert optim.state, "no state at all"
    for st in optim.state.values():
        assert len(st) > 0


@needs_cuda
@pytest.mark.parametrize(("info", "desc"), cases(DB, "test_defaults_changed_to_foreach", lambda i: not i.control))
def test_defaults_changed_to_foreach(info: OptimizerInfo, desc: str) -> None:  # pragma: no cover - CUDA
    """Adapted (torch mocks its ``_multi_tensor_<name>`` function): on CUDA parameters, the
    default ``foreach=None`` resolves to the foreach path."""
    model = torch.nn.Linear(5, 5).cuda()
    optim = info.optim_cls(model.parameters(), **info.input(desc).kwargs)
    assert optim._use_foreach(optim.param_groups[0], list(model.parameters()))

