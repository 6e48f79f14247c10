"""The one engine (issue 18 item 2): SteepestDescent's step options against their definitions,
Modular and Muon as presets of it, and the presets' checkpoint formats."""

from __future__ import annotations

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
    for t in range(3):
        g = torch.Generator().manual_seed(11 + t)
        grads = [torch.randn(p.shape, dtype=D, generator=g) for p in params]
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        opt.step()
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
