"""The one engine (issue 18 item 2): SteepestDescent's step options against their definitions,
Modular and Muon as presets of it, and the presets' checkpoint formats."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from steepest import (
    L2,
    ColNorm,
    Linf,
    Lion,
    Lp,
    Modular,
    Muon,
    ScaledSignSGD,
    SignSGD,
    Spectral,
    SteepestDescent,
)
from steepest.optim.engine import STEP_OPTIONS

D = torch.float64


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 4, dtype=D, generator=g).requires_grad_(),
            torch.randn(4, dtype=D, generator=g).requires_grad_(),
            torch.randn(3, 2, 2, dtype=D, generator=g).requires_grad_()]


def _run(opt, params, steps=4, seed=11):
    for t in range(steps):
        g = torch.Generator().manual_seed(seed + t)
        for p in params:
            p.grad = torch.randn(p.shape, dtype=D, generator=g)
        opt.step()
    return [p.detach().clone() for p in params]


def _steps(opt, params, steps=3, seed=11):
    """Steps ``opt`` on fresh float64 gradients and yields each step's gradients, for a reference
    that replays the definition beside it."""
    for t in range(steps):
        g = torch.Generator().manual_seed(seed + t)
        grads = [torch.randn(p.shape, dtype=D, generator=g) for p in params]
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        opt.step()
        yield grads


def _clone(params):
    return [p.detach().clone().requires_grad_() for p in params]


def test_modular_is_the_engine_with_modulars_defaults():
    """Same options, same kernels, same order: bitwise."""
    kw = dict(norm=Spectral("newton_schulz"), mode="unscaled", momentum=0.95, nesterov=True,
              scope="per_tensor", adjust_lr_fn="match_rms_adamw", radius=0.5, nonmatrix_norm=Linf(),
              weight_decay=0.1)
    a, b = _params(), _params()
    xa = _run(Modular(a, lr=0.02, **kw), a)
    xb = _run(SteepestDescent(b, lr=0.02, **kw), b)
    for x, y in zip(xa, xb):
        assert torch.equal(x, y)


def test_per_parameter_step_against_its_definition():
    """x <- (1 - lr)(1 - lr wd) x - adjust(lr radius) d, d = polar(lerp(g, m, b)) for matrices
    (Nesterov), sign(...) for the vector (nonmatrix_norm), with the matrices' shape-adjusted lr."""
    lr, wd, b, r = 0.05, 0.1, 0.9, 3.0
    params = _params()
    ref = [p.detach().clone() for p in params]
    opt = SteepestDescent(params, lr=lr, norm=Spectral("svd"), mode="unscaled", momentum=b, nesterov=True,
                          scope="per_tensor", weight_decay=wd, adjust_lr_fn="original", radius=r,
                          step="constrained", nonmatrix_norm=Linf())
    ms = [torch.zeros_like(x) for x in ref]
    for grads in _steps(opt, params):
        for i, (x, gr) in enumerate(zip(ref, grads)):
            ms[i] = b * ms[i] + (1 - b) * gr
            u = (1 - b) * gr + b * ms[i]
            if x.dim() < 2:
                d, step_lr = torch.sign(u), lr * r
            else:
                m = u.reshape(u.shape[0], -1)
                uu, _, vh = torch.linalg.svd(m, full_matrices=False)
                d = (uu @ vh).reshape(u.shape)
                step_lr = lr * r * math.sqrt(max(1.0, m.shape[0] / m.shape[1]))
            ref[i] = (1 - lr) * (1 - lr * wd) * x - step_lr * d
    for p, x in zip(params, ref):
        # float64 SVD polar factor against torch.linalg.svd: rounding only
        torch.testing.assert_close(p.detach(), x, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm,mode,scope", [
    (Linf(), "unscaled", "global"), (Linf(), "scaled", "global"), (Lp(3), "scaled", "per_tensor"),
    (L2(), "normalized", "global"), (ColNorm(), "scaled", "global"), (Spectral("svd"), "normalized", "per_tensor"),
])
def test_neutral_step_options_agree_with_the_plain_step(norm, mode, scope):
    """A group holding the step options at their neutral values is stepped one parameter at a time;
    the plain (list) step gives the same numbers up to rounding (float64: 1e-12 relative; a wrong
    update differs at O(lr))."""
    a, b = _params(), _params()
    plain = SteepestDescent(a, lr=0.01, norm=norm, mode=mode, scope=scope, momentum=0.5, weight_decay=0.1)
    per_param = SteepestDescent([{"params": b, **STEP_OPTIONS}], lr=0.01, norm=norm, mode=mode, scope=scope,
                                momentum=0.5, weight_decay=0.1)
    for x, y in zip(_run(plain, a), _run(per_param, b)):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


def test_lion_style_momentum_with_a_radius_is_lion_at_radius_times_lr():
    a, b = _params(), _params()
    xa = _run(Lion(a, lr=0.02, betas=(0.9, 0.99)), a)
    xb = _run(Lion([{"params": b, "radius": 2.0}], lr=0.01, betas=(0.9, 0.99)), b)
    for x, y in zip(xa, xb):
        torch.testing.assert_close(x, y, rtol=1e-14, atol=1e-15)  # lr * 2 vs (lr/2) * 2: exact or 1 ulp


def test_bad_step_options_are_named():
    p = _params()
    with pytest.raises(ValueError, match=r"radius must be a finite number > 0, got 0.0"):
        SteepestDescent(p, radius=0.0)
    with pytest.raises(ValueError, match=r"step must be one of \('descent', 'constrained'\)"):
        SteepestDescent(p, step="fw")
    with pytest.raises(ValueError, match=r"nesterov=True takes the EMA momentum"):
        Lion([{"params": p, "nesterov": True}])
    with pytest.raises(ValueError, match=r"scope='all_groups' is not supported by SteepestDescent"):
        SteepestDescent(p, scope="all_groups", radius=2.0)
    with pytest.raises(ValueError, match=r"nonmatrix_norm must be a steepest.norms.Norm instance"):
        Modular(p, nonmatrix_norm=42)
    # The engine views a vector as a column; Modular and Muon refuse it under the spectral norm.
    SteepestDescent(p, norm=Spectral())
    with pytest.raises(ValueError, match=r"Muon only supports matrix parameters"):
        Muon(p)


@pytest.mark.parametrize("cls,extra", [
    (SteepestDescent, set()), (SignSGD, set()), (ScaledSignSGD, set()), (Lion, {"betas"}),
    (Modular, set(STEP_OPTIONS)), (Muon, set(STEP_OPTIONS)),
])
def test_checkpoint_formats_are_unchanged(cls, extra):
    """The param-group keys of each preset's checkpoints (a set step option joins them)."""
    base = {"lr", "norm", "mode", "beta", "scope", "weight_decay", "maximize", "foreach", "fused",
            "nonfinite"}
    base |= set() if cls is Lion else {"momentum"}
    opt = cls([torch.zeros(3, 3, requires_grad=True)])
    assert set(opt.state_dict()["param_groups"][0]) == base | extra | {"params"}
    sd = SteepestDescent([torch.zeros(3, 3, requires_grad=True)], radius=2.0).state_dict()
    assert sd["param_groups"][0]["radius"] == 2.0 and "step" not in sd["param_groups"][0]
    # dampening (heavy ball) likewise joins the keys only where set (None, the EMA, is absent)
    sd = SteepestDescent([torch.zeros(3, 3, requires_grad=True)], momentum=0.9, dampening=0.0).state_dict()
    assert sd["param_groups"][0]["dampening"] == 0.0 and set(sd["param_groups"][0]) == base | {"momentum", "dampening", "params"}


@pytest.mark.parametrize("cls", [SteepestDescent, SignSGD, Lion, Modular])
def test_checkpoint_without_fused_key_loads(cls):
    """A checkpoint saved before ``fused`` existed (no such group key) loads and steps like one
    with ``fused=None``: the same numbers, bit for bit (the same eager kernels run)."""
    runs = []
    for drop in (False, True):
        torch.manual_seed(0)
        p = torch.randn(4, 3, requires_grad=True)
        opt = cls([p], lr=0.01)
        p.grad = torch.randn(4, 3)
        opt.step()
        sd = opt.state_dict()
        if drop:
            for g in sd["param_groups"]:
                del g["fused"]
        q = p.detach().clone().requires_grad_(True)
        opt2 = cls([q], lr=0.01)
        opt2.load_state_dict(sd)
        q.grad = torch.randn(4, 3)
        opt2.step()
        runs.append(q.detach())
    assert torch.equal(runs[0], runs[1])


# ------------------------------------------------------------------ heavy-ball momentum
# ``dampening=d``: m <- b m + (1 - d) g, c = m (Nesterov: c = g + b m), torch.optim.SGD's form.
# The l2 norm's scaled direction is c itself (c# = c), so the engine with it is SGD.


def _sgd_pair(kw_ours, kw_torch, steps=5, lr=0.1):
    a, b = _params(), _params()
    xa = _run(SteepestDescent(a, lr=lr, norm=L2(), mode="scaled", **kw_ours), a, steps)
    xb = _run(torch.optim.SGD(b, lr=lr, **kw_torch), b, steps)
    return xa, xb


@pytest.mark.parametrize("foreach", [False, True, "all-at-once"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_heavy_ball_is_torch_sgd(nesterov, foreach, monkeypatch):
    """dampening=0 under the l2 norm, scaled: torch.optim.SGD(momentum=b[, nesterov]) over 5 steps.
    The same ops in the same order (m.mul_(b).add_(g, alpha=1); torch's first buffer g.clone()
    equals our 0 * b + g exactly): bitwise here, asserted with a float64 tolerance of 1e-14
    relative so that a future reordering of one rounding does not fail it (a wrong momentum
    differs at O(lr)). "all-at-once": the foreach path as on accelerators (the list ops over all
    tensors, heavy_ball_ with _foreach_mul_/_foreach_add_), forced on CPU."""
    if foreach == "all-at-once":
        import steepest.backend.policy as policy

        monkeypatch.setattr(policy, "_per_tensor_ok", lambda xs: len(xs) <= 1)
        foreach = True
    xa, xb = _sgd_pair(dict(momentum=0.9, dampening=0.0, nesterov=nesterov, foreach=foreach),
                       dict(momentum=0.9, nesterov=nesterov, foreach=foreach))
    for x, y in zip(xa, xb):
        torch.testing.assert_close(x, y, rtol=1e-14, atol=1e-15)


def test_heavy_ball_with_dampening_is_torch_sgd_after_its_first_step():
    """dampening=0.3: torch's buffer starts at g (ours at (1 - d) g, m_0 = 0); from the same
    buffer on, the recurrence is torch's. So: one torch step, its buffer copied into ours, then 4
    more steps of each (float64, 1e-14 relative: the same ops; a wrong dampening differs at O(lr))."""
    a, b = _params(), _params()
    ours = SteepestDescent(a, lr=0.1, norm=L2(), mode="scaled", momentum=0.9, dampening=0.3)
    ref = torch.optim.SGD(b, lr=0.1, momentum=0.9, dampening=0.3)
    _run(ref, b, 1)
    with torch.no_grad():
        for p, q in zip(a, b):
            p.copy_(q)
            ours.state[p]["momentum_buffer"] = ref.state[q]["momentum_buffer"].clone()
    xa, xb = _run(ours, a, 4, seed=20), _run(ref, b, 4, seed=20)
    for x, y in zip(xa, xb):
        torch.testing.assert_close(x, y, rtol=1e-14, atol=1e-15)


def test_heavy_ball_with_dampening_against_its_definition():
    """m_0 = 0, m <- b m + (1 - d) g, x <- (1 - lr wd) x - lr m (l2, scaled: d = c), decoupled
    decay (torch's SGD couples it to the gradient, so it is compared with the written definition
    here). float64, 1e-13 relative (rounding of 5 steps; an error is O(lr))."""
    lr, b, d, wd = 0.1, 0.8, 0.3, 0.05
    params = _params()
    ref = [p.detach().clone() for p in params]
    ms = [torch.zeros_like(x) for x in ref]
    opt = SteepestDescent(params, lr=lr, norm=L2(), mode="scaled", momentum=b, dampening=d, weight_decay=wd)
    for t in range(5):
        g = torch.Generator().manual_seed(11 + t)
        grads = [torch.randn(p.shape, dtype=D, generator=g) for p in params]
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        opt.step()
        for i, gr in enumerate(grads):
            ms[i] = b * ms[i] + (1 - d) * gr
            ref[i] = (1 - lr * wd) * ref[i] - lr * ms[i]
    for p, x in zip(params, ref):
        torch.testing.assert_close(p.detach(), x, rtol=1e-13, atol=1e-14)


def test_heavy_ball_with_dampening_b_is_the_ema():
    """dampening = momentum gives the EMA (1 - d = 1 - b): equal up to rounding (the EMA's lerp
    against mul/add: float64, 1e-13 relative), with and without Nesterov... except that Nesterov
    heavy ball takes dampening=0 only (torch's rule), so the EMA's Nesterov is not compared."""
    for norm, mode in ((L2(), "scaled"), (Linf(), "unscaled"), (Lp(3), "normalized")):
        a, b = _params(), _params()
        xa = _run(SteepestDescent(a, lr=0.01, norm=norm, mode=mode, momentum=0.9), a)
        xb = _run(SteepestDescent(b, lr=0.01, norm=norm, mode=mode, momentum=0.9, dampening=0.9), b)
        for x, y in zip(xa, xb):
            torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("norm,mode,scope", [
    (Linf(), "unscaled", "global"), (L2(), "scaled", "global"), (Lp(3), "scaled", "per_tensor"),
    (L2(), "normalized", "global"), (ColNorm(), "scaled", "global"), (Spectral("svd"), "normalized", "per_tensor"),
])
@pytest.mark.parametrize("damp", [0.0, 0.3])
def test_heavy_ball_loop_foreach_per_parameter_agree(norm, mode, scope, damp):
    """The list path (loop and foreach) and the per-parameter path (a group with neutral step
    options) take the same heavy-ball momentum: float64, 1e-12 relative (the paths fold the
    step's scalars differently; a wrong momentum differs at O(lr)). Loop vs foreach: bitwise on
    CPU, where foreach takes the loop's code (engine.SteepestDescent._update)."""
    kw = dict(lr=0.01, norm=norm, mode=mode, scope=scope, momentum=0.9, dampening=damp, weight_decay=0.1)
    a, b, c = _params(), _params(), _params()
    xa = _run(SteepestDescent(a, foreach=False, **kw), a)
    xb = _run(SteepestDescent(b, foreach=True, **kw), b)
    xc = _run(SteepestDescent([{"params": c, **STEP_OPTIONS}], **kw), c)
    for x, y, z in zip(xa, xb, xc):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(x, z, rtol=1e-12, atol=1e-14)


def test_heavy_ball_nesterov_per_parameter_against_its_definition():
    """Nesterov heavy ball (a step option: the per-parameter path) under a matrix norm:
    d = polar(g + b m) with m <- b m + g (dampening=0), the vector by sign (nonmatrix_norm).
    float64 SVD polar factor against torch.linalg.svd: 1e-10 relative (rounding only)."""
    lr, b = 0.05, 0.9
    params = _params()
    ref = [p.detach().clone() for p in params]
    opt = SteepestDescent(params, lr=lr, norm=Spectral("svd"), mode="unscaled", momentum=b, dampening=0.0,
                          nesterov=True, scope="per_tensor", nonmatrix_norm=Linf())
    ms = [torch.zeros_like(x) for x in ref]
    for grads in _steps(opt, params):
        for i, (x, gr) in enumerate(zip(ref, grads)):
            ms[i] = b * ms[i] + gr
            u = gr + b * ms[i]
            if x.dim() < 2:
                d = torch.sign(u)
            else:
                uu, _, vh = torch.linalg.svd(u.reshape(u.shape[0], -1), full_matrices=False)
                d = (uu @ vh).reshape(u.shape)
            ref[i] = x - lr * d
    for p, x in zip(params, ref):
        torch.testing.assert_close(p.detach(), x, rtol=1e-10, atol=1e-12)


def test_heavy_ball_sign_direction_sanity_check():
    """A sanity check, not a definition test: with dampening=0 the heavy-ball buffer is the EMA's
    times 1/(1 - b) (both are sums of the same b-weighted gradients), a positive factor, so
    their signs agree and unscaled sign steps (SignSGD-style) coincide. Up to rounding: an entry
    of m within rounding of 0 could flip sign; none does on these draws, so exact."""
    a, b = _params(), _params()
    xa = _run(SteepestDescent(a, lr=0.01, norm=Linf(), mode="unscaled", momentum=0.9), a)
    xb = _run(SteepestDescent(b, lr=0.01, norm=Linf(), mode="unscaled", momentum=0.9, dampening=0.0), b)
    for x, y in zip(xa, xb):
        assert torch.equal(x, y)


def test_heavy_ball_state_dict_round_trip():
    """A heavy-ball checkpoint keeps ``dampening`` (a set group option) and continues bit for bit."""
    kw = dict(lr=0.1, norm=L2(), mode="scaled", momentum=0.9, dampening=0.25)
    a, b = _params(), _params()
    oa = SteepestDescent(a, **kw)
    _run(oa, a, 2)
    sd = copy.deepcopy(oa.state_dict())  # (torch's load keeps the saved tensors: no aliasing)
    assert sd["param_groups"][0]["dampening"] == 0.25
    with torch.no_grad():
        for p, q in zip(b, a):
            p.copy_(q)
    ob = SteepestDescent(b, lr=0.1, norm=L2(), mode="scaled", momentum=0.9)  # no dampening given
    ob.load_state_dict(sd)
    assert ob.param_groups[0]["dampening"] == 0.25
    for x, y in zip(_run(oa, a, 3, seed=30), _run(ob, b, 3, seed=30)):
        assert torch.equal(x, y)


def test_checkpoint_without_dampening_key_loads_as_the_ema():
    """A checkpoint saved before ``dampening`` existed (the EMA's groups have no such key, today
    as before) loads and steps as the EMA, bit for bit."""
    runs = []
    for drop in (False, True):
        torch.manual_seed(0)
        p = torch.randn(4, 3, requires_grad=True)
        opt = SteepestDescent([p], lr=0.01, momentum=0.9, dampening=None if drop else 0.9)
        p.grad = torch.randn(4, 3)
        opt.step()
        sd = opt.state_dict()
        assert ("dampening" in sd["param_groups"][0]) is not drop
        q = p.detach().clone().requires_grad_(True)
        opt2 = SteepestDescent([q], lr=0.01, momentum=0.9)
        opt2.load_state_dict(sd)
        q.grad = torch.randn(4, 3)
        opt2.step()
        runs.append((q.detach(), opt2.param_groups[0].get("dampening")))
    assert runs[1][1] is None  # loaded without the key: the EMA
    assert runs[0][1] == 0.9
    # d = b heavy ball vs EMA: the same momentum up to rounding (float32, 1e-6 relative)
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-6, atol=1e-7)


def test_bad_dampening_is_named():
    p = _params()
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=r"dampening"):
            SteepestDescent(p, momentum=0.9, dampening=bad)
    with pytest.raises(ValueError, match=r"dampening.*\[0\.0, 1\.0\]"):
        SteepestDescent(p, momentum=0.9, dampening=2.0)
    with pytest.raises(ValueError, match=r"dampening sets the heavy-ball momentum.*betas"):
        Lion([{"params": p, "dampening": 0.0}])
    with pytest.raises(ValueError, match=r"nesterov=True with heavy-ball momentum takes dampening=0"):
        SteepestDescent(p, momentum=0.9, dampening=0.5, nesterov=True)
    SteepestDescent(p, momentum=0.9, dampening=1.0)  # the closed end: m <- b m (torch allows it)
    SteepestDescent(p, momentum=0.9, dampening=0.0, nesterov=True)


def test_heavy_ball_all_groups_scope_takes_each_groups_momentum():
    """scope='all_groups' (_update_joint): each group's own momentum scheme, heavy ball in one,
    the EMA in the other, one l2 norm over both; against a written definition (float64, 1e-12
    relative: rounding of the joint norm; a wrong scheme differs at O(lr))."""
    lr, b, d = 0.05, 0.9, 0.0
    params = _params()
    ref = [p.detach().clone() for p in params]
    opt = SteepestDescent([{"params": params[:2], "dampening": d}, {"params": params[2:]}], lr=lr, norm=L2(),
                          mode="normalized", scope="all_groups", momentum=b)
    ms = [torch.zeros_like(x) for x in ref]
    for t in range(3):
        g = torch.Generator().manual_seed(11 + t)
        grads = [torch.randn(p.shape, dtype=D, generator=g) for p in params]
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        opt.step()
        for i, gr in enumerate(grads):
            ms[i] = b * ms[i] + ((1 - d) if i < 2 else (1 - b)) * gr
        nrm = torch.sqrt(sum((m * m).sum() for m in ms))
        for i in range(len(ref)):
            ref[i] = ref[i] - lr * ms[i] / nrm
    for p, x in zip(params, ref):
        torch.testing.assert_close(p.detach(), x, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fused", [False, True])
def test_stateless_step_walks_no_state_and_momentum_switched_on_later_gets_its_buffer(fused, monkeypatch):
    """A stateless group (no momentum) skips ``_init_group`` (it found every state still empty,
    each step: 0.1-0.8 ms on 1,000 tensors); momentum switched on mid-run creates its buffer then,
    and the step continues as a Signum started from a zero buffer at that point."""
    from steepest.backend import fused as F

    monkeypatch.setattr(F, "BACKEND", "aot_eager")
    params = _params()
    opt = SignSGD(params, lr=0.01, fused=fused)
    calls = []
    from steepest.optim.base import StepOptimizer

    orig = StepOptimizer._init_group
    # (patched on the base class: a subclass's own _init_group means "it makes state there")
    monkeypatch.setattr(StepOptimizer, "_init_group", lambda self, g: (calls.append(self), orig(self, g)))
    _run(opt, params, steps=2)
    assert calls == [] and all(not opt.state[p] for p in params)
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    ref = SignSGD(ref_params, lr=0.01, momentum=0.9, fused=fused)
    opt.param_groups[0]["momentum"] = 0.9
    _run(opt, params, steps=3, seed=40)
    _run(ref, ref_params, steps=3, seed=40)
    assert [c is opt for c in calls] == [True, False]  # opt once, the step its buffers were made; ref once
    for p, q in zip(params, ref_params):
        # same kernels on the same data in one process: bitwise
        assert torch.equal(p, q) and torch.equal(opt.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"])


def test_subclass_that_extends_the_state_keeps_it_without_momentum():
    """A subclass of a preset that adds state in ``_init_state`` (the documented hook) gets it
    also when the group has no momentum: the engine's "stateless without momentum" rule is for
    its own state only."""

    class Counting(SignSGD):
        def _init_state(self, group, p, state):  # type: ignore[no-untyped-def]
            super()._init_state(group, p, state)
            state["seen"] = torch.zeros((), dtype=D)

    params = _params()
    opt = Counting(params, lr=0.01)
    _run(opt, params, steps=1)
    assert all(sorted(opt.state[p]) == ["seen"] for p in params)
