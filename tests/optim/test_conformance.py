"""The conformance suite: every optimizer in the package through one battery of tests.

Modelled on torch's ``OptimizerInfo`` tests (torch/testing/_internal/common_optimizers.py):
foreach == loop in float64 (parameters and state), loss decreases, bit-exact resume from a
state_dict (also through ``torch.load(weights_only=True)``), every LR scheduler, param-group
options, zero-grad no-op, dtypes, complex parameters, ``maximize``, closures, and the defined
behaviour for bad input (invalid options, NaN/inf and sparse gradients).
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as S

from tests.optim.optim_infos import OptimInfo, all_infos

INFOS = all_infos()
ids = [i.name for i in INFOS]


# ----------------------------------------------------------------------------- helpers
def _params(dtype=torch.float64, seed=0, with_edge_cases=True):
    """A weight, a bias, and the edge cases: a param with no grad, a frozen one, a zero-size one."""
    g = torch.Generator().manual_seed(seed)
    ps = [
        torch.randn(5, 3, generator=g, dtype=torch.float64).to(dtype).requires_grad_(),
        torch.randn(3, generator=g, dtype=torch.float64).to(dtype).requires_grad_(),
    ]
    if with_edge_cases:
        ps += [
            torch.randn(4, generator=g, dtype=torch.float64).to(dtype).requires_grad_(),  # grad None
            torch.randn(2, 2, generator=g, dtype=torch.float64).to(dtype),  # frozen
            torch.zeros(0, 3, dtype=dtype).requires_grad_(),  # zero-size
        ]
    return ps


def _set_grads(params, step, seed=123):
    g = torch.Generator().manual_seed(seed + step)
    for i, p in enumerate(params):
        if i == 2 or not p.requires_grad:
            p.grad = None
            continue
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)


def _run(info: OptimInfo, params, steps, start=0, opt=None, **kw):
    opt = opt or info.make(params, **kw)
    for t in range(start, start + steps):
        _set_grads(params, t)
        if info.prepare:
            info.prepare(params)
        if info.stochastic:
            torch.manual_seed(1000 + t)
        opt.step()
    return opt


def _state_tensors(opt):
    out = []
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for k in sorted(st):
                if isinstance(st[k], torch.Tensor):
                    out.append((k, st[k]))
    return out


def _problem(seed=0, dtype=torch.float32):
    """Least squares y = X w* (+ small noise) with a 2-layer linear model."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g)
    w = torch.randn(6, 2, generator=g)
    y = x @ w + 0.01 * torch.randn(64, 2, generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Linear(8, 2)).to(dtype)
    return model, x.to(dtype), y.to(dtype)


def _train(info: OptimInfo, steps=None, scheduler=None, dtype=torch.float32, **kw):
    model, x, y = _problem(dtype=dtype)
    opt = info.make(model.parameters(), **kw)
    sched = scheduler(opt) if scheduler else None
    losses, lrs = [], []

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if info.prepare:
            info.prepare(list(model.parameters()))
        return loss

    for _ in range(steps or info.steps):
        loss = opt.step(closure)
        losses.append(float(loss.detach()))
        lrs.append(opt.param_groups[0]["lr"])
        if sched is not None:
            if isinstance(sched, S.ReduceLROnPlateau):
                sched.step(float(loss.detach()))
            else:
                sched.step()
    return losses, lrs, opt, sched


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_foreach_matches_loop_float64(info):
    ref = _params()
    fe = [p.detach().clone().requires_grad_(p.requires_grad) for p in ref]
    o_ref = _run(info, ref, 5, foreach=False)
    o_fe = _run(info, fe, 5, foreach=True)
    # Tolerance, not bitwise: the foreach kernels and the per-tensor loop round differently in
    # the last bits (fused multi-tensor reductions, other SIMD paths); in float64 over 5 steps
    # that stays below 1e-12 relative, while a wrong update differs at O(lr).
    for a, b in zip(ref, fe):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    sa, sb = _state_tensors(o_ref), _state_tensors(o_fe)
    assert [k for k, _ in sa] == [k for k, _ in sb]
    for (k, a), (_, b) in zip(sa, sb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"state {k!r} differs")
    # The param with no grad, the frozen one and the zero-size one behave.
    assert ref[2].grad is None and ref[2] not in o_ref.state
    assert ref[3] not in o_ref.state
    assert ref[4].shape == (0, 3)


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_loss_decreases(info):
    for foreach in (False, True):
        losses, *_ = _train(info, foreach=foreach)
        assert all(map(lambda v: v == v, losses)), "NaN loss"
        assert losses[-1] < info.decrease * losses[0], (foreach, losses[0], losses[-1])


@pytest.mark.parametrize("info", INFOS, ids=ids)
@pytest.mark.parametrize("via", ["memory", "torch.save-weights_only"])
def test_state_dict_resume_is_bit_exact(info, via):
    a = _params()
    opt_a = _run(info, a, 3)
    sd = opt_a.state_dict()
    if via == "memory":
        sd = copy.deepcopy(sd)
    else:
        buf = io.BytesIO()
        torch.save(sd, buf)
        buf.seek(0)
        sd = torch.load(buf, weights_only=True)
    b = [p.detach().clone().requires_grad_(p.requires_grad) for p in a]
    opt_b = info.make(b)
    opt_b.load_state_dict(sd)
    _run(info, a, 3, start=3, opt=opt_a)
    _run(info, b, 3, start=3, opt=opt_b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for (k, x), (_, y) in zip(_state_tensors(opt_a), _state_tensors(opt_b)):
        assert torch.equal(x, y), k
    # Options round-trip too (norm objects included).
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt_a.param_groups] == [
        {k: v for k, v in g.items() if k != "params"} for g in opt_b.param_groups
    ]


SCHEDULERS = {
    "StepLR": lambda o: S.StepLR(o, step_size=5, gamma=0.5),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[5, 10], gamma=0.5),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.95),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=20),
    "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=7),
    "LinearLR": lambda o: S.LinearLR(o, start_factor=0.5, total_iters=10),
    "ConstantLR": lambda o: S.ConstantLR(o, factor=0.5, total_iters=5),
    "PolynomialLR": lambda o: S.PolynomialLR(o, total_iters=30, power=1.0),
    "LambdaLR": lambda o: S.LambdaLR(o, lambda t: 1.0 / (1 + t)),
    "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lambda t: 0.97),
    "OneCycleLR": lambda o: S.OneCycleLR(
        o, max_lr=o.param_groups[0]["lr"], total_steps=30, cycle_momentum=False
    ),
    "CyclicLR": lambda o: S.CyclicLR(
        o, base_lr=o.param_groups[0]["lr"] / 4, max_lr=o.param_groups[0]["lr"], step_size_up=5,
        cycle_momentum=False,
    ),
    "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, patience=2, factor=0.5),
    "SequentialLR": lambda o: S.SequentialLR(
        o, [S.ConstantLR(o, factor=0.5, total_iters=5), S.ExponentialLR(o, gamma=0.95)], milestones=[5]
    ),
}


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_lr_schedulers(info):
    for name, make in SCHEDULERS.items():
        losses, lrs, opt, sched = _train(info, steps=30, scheduler=make)
        assert all(v == v and abs(v) != float("inf") for v in losses), name
        if not isinstance(sched, S.ReduceLROnPlateau):
            # The optimizer used exactly the scheduler's learning rates.
            assert opt.param_groups[0]["lr"] == pytest.approx(sched.get_last_lr()[0]), name
        assert len(set(lrs)) > 1 or name == "ReduceLROnPlateau", f"{name}: lr never changed"
        assert losses[-1] < losses[0], f"{name}: loss did not decrease"


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_param_group_options_are_honoured(info):
    # Group 2 has lr = 0 and must not move; group 1 must match an optimizer built on it alone.
    a = _params(with_edge_cases=False)
    b = [p.detach().clone().requires_grad_() for p in a]
    opt = info.make([{"params": [a[0]]}, {"params": [a[1]], "lr": 0.0}])
    before = a[1].detach().clone()
    alone = info.make([b[0]])
    for t in range(3):
        _set_grads(a, t)
        _set_grads(b, t)
        if info.prepare:
            info.prepare(a)
            info.prepare(b)
        if info.stochastic:
            torch.manual_seed(t)
        opt.step()
        if info.stochastic:
            torch.manual_seed(t)
        alone.step()
    if info.lr_zero_freezes:
        assert torch.equal(a[1], before)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert not torch.equal(a[0], _params(with_edge_cases=False)[0])


@pytest.mark.parametrize("info", [i for i in INFOS if i.zero_grad_noop], ids=lambda i: i.name)
def test_zero_gradient_is_a_noop(info):
    ps = _params(with_edge_cases=False)
    before = [p.detach().clone() for p in ps]
    opt = info.make(ps)
    for _ in range(3):
        for p in ps:
            p.grad = torch.zeros_like(p)
        if info.prepare:
            info.prepare(ps)
        opt.step()
    for p, q in zip(ps, before):
        assert torch.equal(p, q)
        assert torch.isfinite(p).all()


@pytest.mark.parametrize("info", INFOS, ids=ids)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes(info, dtype):
    ref = _params(torch.float64, with_edge_cases=False)
    low = [p.detach().to(dtype).requires_grad_() for p in ref]
    o_ref = _run(info, ref, 3)
    o_low = _run(info, low, 3)
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 8e-2}[dtype]
    for r, lo in zip(ref, low):
        assert lo.dtype == dtype and torch.isfinite(lo).all()
        torch.testing.assert_close(lo.double(), r, rtol=tol, atol=tol)
    for k, v in _state_tensors(o_low):
        if k != "step" and v.is_floating_point():
            assert v.dtype == dtype, k
    assert len(_state_tensors(o_low)) == len(_state_tensors(o_ref))


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_complex_params_are_pairs_of_reals(info):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, dtype=torch.complex128, generator=g).requires_grad_()
    r = torch.view_as_real(z.detach()).clone().requires_grad_()
    oz, orr = info.make([z]), info.make([r])
    for t in range(3):
        gz = torch.randn(4, 3, dtype=torch.complex128, generator=g)
        z.grad, r.grad = gz, torch.view_as_real(gz).clone()
        if info.prepare:
            info.prepare([z])
            info.prepare([r])
        if info.stochastic:
            torch.manual_seed(t)
        oz.step()
        if info.stochastic:
            torch.manual_seed(t)
        orr.step()
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=1e-12, atol=1e-12)
    assert z.dtype == torch.complex128


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_maximize_ascends(info):
    a = _params(with_edge_cases=False)
    b = [p.detach().clone().requires_grad_() for p in a]
    oa, ob = info.make(a, maximize=True), info.make(b)
    for t in range(3):
        _set_grads(a, t)
        _set_grads(b, t)
        for p in b:
            p.grad.neg_()
        if info.prepare:
            info.prepare(a)
            info.prepare(b)
        if info.stochastic:
            torch.manual_seed(t)
        oa.step()
        if info.stochastic:
            torch.manual_seed(t)
        ob.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_closure_is_called_once_and_loss_returned(info):
    model, x, y = _problem()
    opt = info.make(model.parameters())
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if info.prepare:
            info.prepare(list(model.parameters()))
        return loss

    loss = opt.step(closure)
    assert len(calls) == 1 and isinstance(loss, torch.Tensor)


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_invalid_options_raise_value_error(info):
    ps = _params(with_edge_cases=False)
    for kwargs, match in info.invalid:
        with pytest.raises(ValueError, match=match):
            info.make(ps, **kwargs)
        # A param group carrying a bad group option is rejected too.
        if set(kwargs) <= set(info.make(ps).defaults):
            with pytest.raises(ValueError, match=match):
                info.make([{"params": ps, **kwargs}])


@pytest.mark.parametrize("info", INFOS, ids=ids)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_raises_with_name(info, bad):
    model = torch.nn.Linear(3, 2)
    opt = info.make(model.named_parameters())
    before = [p.detach().clone() for p in model.parameters()]
    model.weight.grad = torch.ones_like(model.weight)
    model.bias.grad = torch.tensor([1.0, bad])
    if info.prepare:
        info.prepare(list(model.parameters()))
    with pytest.raises(FloatingPointError, match=r"'bias' \(shape \(2,\)\)"):
        opt.step()
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_nonfinite_gradient_skipped_with_warning(info):
    ps = _params(with_edge_cases=False)
    opt = info.make(ps, nonfinite="skip")
    _run(info, ps, 2, opt=opt)
    before = [p.detach().clone() for p in ps]
    state_before = [(k, v.clone()) for k, v in _state_tensors(opt)]
    _set_grads(ps, 5)
    ps[1].grad[0] = float("nan")
    if info.prepare:
        info.prepare(ps)
    with pytest.warns(RuntimeWarning, match="step skipped"):
        opt.step()
    for p, q in zip(ps, before):
        assert torch.equal(p, q)
    for (k, v), (_, w) in zip(_state_tensors(opt), state_before):
        assert torch.equal(v, w), k


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_sparse_gradient_raises(info):
    p = torch.zeros(4, 2, requires_grad=True)
    opt = info.make([p])
    p.grad = torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.ones(2, 2), (4, 2))
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_no_gradients_at_all(info):
    ps = _params(with_edge_cases=False)
    opt = info.make(ps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
    assert len(opt.state) == 0


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_old_checkpoint_without_new_options_loads(info):
    ps = _params(with_edge_cases=False)
    opt = _run(info, ps, 2)
    sd = copy.deepcopy(opt.state_dict())
    for g in sd["param_groups"]:
        g.pop("nonfinite", None)
    opt2 = info.make([p.detach().clone().requires_grad_() for p in ps])
    opt2.load_state_dict(sd)
    opt2.__setstate__(opt2.__getstate__())
    assert opt2.param_groups[0]["nonfinite"] is None  # the default ("raise" on CPU)
