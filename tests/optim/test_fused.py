"""The fused backend (``fused=True``, steepest.backend.fused and steepest.optim.updates).

What is checked, against the eager loop path (``foreach=False``, the reference):

* every optimizer with fused kernels, for float32, float64 and bfloat16 parameters, several
  steps with changing gradients and lr: parameters and state agree within the tolerances below.
  The broad matrix compiles with ``backend="aot_eager"`` (dynamo + AOTAutograd's functionalized
  graph, what inductor receives; ~1 s a kernel on 2 cores); a small set with inductor itself
  (C++), marked slow;
* a compile failure warns once, and the step is still the eager step;
* the non-finite policy on the fused path: "raise" leaves parameters and state bit-identical,
  "skip" skips with a warning, for one-pass and two-pass (deferred-check) updates;
* state dicts load across fused and non-fused optimizers;
* ``fused=True`` is refused clearly where it cannot run.

Tolerances (the fused kernels compute the same formulas in one pass, but inductor may contract
``a * b + c`` into an FMA, reassociate reductions, and divide where eager divides once by a
combined divisor): float64 1e-12 and float32 2e-6 relative to the tensor's largest entry over
3 steps; bfloat16 one bfloat16 rounding step (2^-7 relative), since a float32 difference of one
ulp can move a bfloat16 rounding.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

import steepest.optim as so
from steepest.backend import fused as F

CASES = [
    ("SignSGD", so.SignSGD, dict(lr=0.1)),
    ("Signum", so.SignSGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
    ("Lion", so.Lion, dict(lr=0.1, weight_decay=0.1)),
    ("ScaledSignSGD", so.ScaledSignSGD, dict(lr=0.01, momentum=0.5)),
    ("ScaledSignSGD-per_tensor", so.ScaledSignSGD, dict(lr=0.01, scope="per_tensor")),
    ("LpDescent", so.LpDescent, dict(lr=0.1)),
    ("LpDescent-eps-paper", so.LpDescent, dict(lr=0.1, p=4.0, eps=0.1)),
    ("LpDescent-eps-code", so.LpDescent, dict(lr=0.1, p=4.0, eps=0.1, eps_mode="code")),
    ("LpDescent-scaled", so.LpDescent, dict(lr=0.1, scaled=True, momentum=0.5)),
    ("BlockNormalizedSGD", so.BlockNormalizedSGD, dict(lr=0.1)),
    ("BlockNormalizedSGD-scaled", so.BlockNormalizedSGD, dict(lr=0.01, mode="scaled", momentum=0.9)),
    ("Steepest-l2", so.SteepestDescent, dict(lr=0.1, momentum=0.9)),
    ("Steepest-linf-soft", so.SteepestDescent, dict(lr=0.1, norm="linf", mode="soft", beta=0.5)),
    ("Steepest-lp-normalized", so.SteepestDescent, dict(lr=0.1, norm={"name": "lp", "p": 3.0}, mode="normalized")),
    ("MSGD", so.MSGD, dict(lr=0.1, weight_decay=0.1)),
    ("MSGD-beta0", so.MSGD, dict(lr=0.1, beta=0.0)),
    ("SVAG", so.SVAG, dict(lr=0.1, weight_decay=0.1)),
    ("MSVAG", so.MSVAG, dict(lr=0.1)),
    ("MSVAG-beta0", so.MSVAG, dict(lr=0.1, beta=0.0)),
    ("AdamStar", so.AdamStar, dict(lr=0.1, beta=0.5)),
    ("EFSignSGD", so.EFSignSGD, dict(lr=0.1)),
    ("EFSignSGD-per_tensor", so.EFSignSGD, dict(lr=0.1, scope="per_tensor", weight_decay=0.1)),
]
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2.0**-7}
SHAPES = [(5, 3), (7,), (2, 2, 2), (40000,)]  # the last one is not packed (run_many)


@pytest.fixture(scope="module", autouse=True)
def _aot_eager():
    """The broad matrix traces with aot_eager (module docstring); kernels are shared across the
    module's tests (one per function, options and dtype)."""
    old = F.BACKEND
    F.BACKEND = "aot_eager"
    F.reset()
    yield
    F.BACKEND = old
    F.reset()


def _params(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in SHAPES]


def _set_grads(ps: list[torch.Tensor], step: int, scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in ps:
        p.grad = (scale * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(p.dtype)


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    a64, b64 = a.double(), b.double()
    ref = max(a64.abs().max().item(), 1e-30)
    bad = (a64 - b64).abs() > TOL[dtype] * ref
    # bfloat16: a float32 difference of one ulp in a momentum that is within one rounding of 0
    # flips its sign (a tie); among 40,000 bfloat16-quantized entries a few do. At most 0.1 %.
    allowed = int(1e-3 * a.numel()) if dtype == torch.bfloat16 else 0
    err = (a64 - b64).abs().max().item() / ref
    assert int(bad.sum()) <= allowed, (
        f"{what}: {int(bad.sum())} entries off by more than {TOL[dtype]:.3g} relative (max {err:.3g})")


def _run(cls, kw, dtype, fused, steps=3, **extra):
    ps = _params(dtype)
    opt = cls(ps, **kw, **extra, fused=fused) if fused else cls(ps, **kw, **extra, foreach=False)
    for t in range(steps):
        _set_grads(ps, t)
        opt.param_groups[0]["lr"] = kw["lr"] * (1.0 + 0.25 * t)  # a changing lr (no freeze)
        opt.step()
    return ps, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,cls,kw", CASES, ids=[c[0] for c in CASES])
def test_fused_equals_eager_loop(name, cls, kw, dtype, monkeypatch):
    if dtype != torch.float32:
        # The traced graph does not depend on the dtype (float32 traces it above): here the
        # kernels run as plain functions, which checks their dtype handling at no compile cost.
        monkeypatch.setattr(F, "_FAILED", [RuntimeError("not compiled in this test")])
    ref_ps, ref = _run(cls, kw, dtype, False)
    ps, opt = _run(cls, kw, dtype, True)
    for i, (a, b) in enumerate(zip(ref_ps, ps)):
        _close(a, b, dtype, f"{name} param {i}")
        assert b.dtype == dtype
        for k, v in ref.state[a].items():
            w = opt.state[b][k]
            assert w.dtype == v.dtype, k
            _close(v, w, dtype, f"{name} state {k!r} of param {i}")


@pytest.mark.parametrize("name,cls,kw", [c for c in CASES if c[0] in ("Signum", "ScaledSignSGD")],
                         ids=["Signum", "ScaledSignSGD"])
def test_fused_maximize_and_complex(name, cls, kw):
    """maximize=True (the kernels' sign) and complex parameters (real views) as on the loop path."""
    for make in (lambda: _params(torch.float32), lambda: [torch.randn(3, 2, dtype=torch.complex64)]):
        torch.manual_seed(0)
        a, b = make(), None
        b = [x.clone() for x in a]
        o1 = cls(a, **kw, maximize=True, foreach=False)
        o2 = cls(b, **kw, maximize=True, fused=True)
        for _t in range(2):
            for x, y in zip(a, b):
                x.grad = torch.randn_like(x)
                y.grad = x.grad.clone()
            o1.step()
            o2.step()
        for x, y in zip(a, b):
            _close(torch.view_as_real(x) if x.is_complex() else x,
                   torch.view_as_real(y) if y.is_complex() else y, torch.float32, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Signum", "ScaledSignSGD"])
def test_fused_inductor_equals_eager_loop(name, monkeypatch):
    """The same with inductor's C++ kernels (the default backend): a one-pass and a two-pass
    update, float32, over shapes that share one kernel."""
    monkeypatch.setattr(F, "BACKEND", "inductor")
    F.reset()
    _, cls, kw = next(c for c in CASES if c[0] == name)
    try:
        ref_ps, _ = _run(cls, kw, torch.float32, False)
        ps, _ = _run(cls, kw, torch.float32, True)
        assert F.available()
    finally:
        F.reset()
    for a, b in zip(ref_ps, ps):
        _close(a, b, torch.float32, name)


def test_compile_failure_warns_once_and_stays_correct(monkeypatch):
    def broken(fn, *args):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(F, "_compile", broken)
    monkeypatch.setattr(F, "_compile_aot", broken)
    F.reset()
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            ps, _ = _run(so.Lion, dict(lr=0.1), torch.float32, True)
            _run(so.ScaledSignSGD, dict(lr=0.01), torch.float32, True)
        msgs = [w for w in rec if "fused=True could not compile" in str(w.message)]
        assert len(msgs) == 1
        assert not F.available()
    finally:
        F.reset()
    ref_ps, _ = _run(so.Lion, dict(lr=0.1), torch.float32, False)
    for a, b in zip(ref_ps, ps):
        _close(a, b, torch.float32, "Lion, eager fallback")


def _snapshot(ps, opt):
    return [p.clone() for p in ps], [{k: v.clone() for k, v in opt.state[p].items()} for p in ps]


@pytest.mark.parametrize("name", ["Signum", "ScaledSignSGD", "EFSignSGD", "MSGD"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("two_groups", [False, True])
def test_fused_nonfinite_policy(name, bad, two_groups):
    """One-pass (scanned before the step) and two-pass (checked by the reduction pass, then run
    first) updates: a NaN/inf gradient in the last tensor of the last group raises and leaves
    every parameter and state tensor bit-identical; "skip" warns and changes nothing."""
    _, cls, kw = next(c for c in CASES if c[0] == name)
    ps = _params(torch.float32)
    groups = [{"params": ps[:1]}, {"params": ps[1:]}] if two_groups else ps
    opt = cls(groups, **kw, fused=True)
    _set_grads(ps, 0)
    opt.step()  # state exists
    _set_grads(ps, 1)
    ps[-1].grad[0] = bad
    before = _snapshot(ps, opt)
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt.step()
    after = _snapshot(ps, opt)
    for x, y in zip(before[0] + [v for d in before[1] for v in d.values()],
                    after[0] + [v for d in after[1] for v in d.values()]):
        assert torch.equal(x, y)
    for g in opt.param_groups:
        g["nonfinite"] = "skip"
    with pytest.warns(RuntimeWarning, match="step skipped"):
        opt.step()
    after = _snapshot(ps, opt)
    for x, y in zip(before[0] + [v for d in before[1] for v in d.values()],
                    after[0] + [v for d in after[1] for v in d.values()]):
        assert torch.equal(x, y)


def test_fused_huge_finite_gradient_proceeds():
    """A reduction that overflows on finite gradients is not a NaN/inf gradient: the step runs."""
    ps = [torch.full((4,), 3e38)]
    ps[0].grad = torch.full((4,), 3e38)
    opt = so.ScaledSignSGD(ps, lr=1e-40, fused=True)
    opt.step()  # ||g||_1 = inf: the exact check finds every gradient finite


@pytest.mark.parametrize("name", ["Lion", "MSGD", "EFSignSGD"])
def test_state_dict_round_trip_fused_and_not(name):
    _, cls, kw = next(c for c in CASES if c[0] == name)
    for first, second in ((True, None), (None, True)):
        a = _params(torch.float32)
        oa = cls(a, **kw, fused=first)
        _set_grads(a, 0)
        oa.step()
        b = [p.clone() for p in a]
        ob = cls(b, **kw, fused=second)
        ob.load_state_dict(copy.deepcopy(oa.state_dict()))  # (loading shares same-dtype tensors)
        ob.param_groups[0]["fused"] = second  # the backend is this optimizer's choice
        for x, y in ((a, oa), (b, ob)):
            _set_grads(x, 1)
            y.step()
        for p, q in zip(a, b):
            _close(p, q, torch.float32, f"{name} after loading {first} -> {second}")


def test_fused_refused_clearly():
    p = [torch.zeros(3)]
    with pytest.raises(ValueError, match="fused must be one of"):
        so.SignSGD(p, fused="yes")
    with pytest.raises(ValueError, match="exclusive"):
        so.SignSGD(p, fused=True, foreach=True)
    with pytest.raises(ValueError, match="fused=True is not supported by CoordinateDescent"):
        so.CoordinateDescent(p, fused=True)
    with pytest.raises(ValueError, match="all_groups"):
        so.ScaledSignSGD(p, scope="all_groups", fused=True)
    with pytest.raises(ValueError, match="fused=True is not supported by SteepestDescent"):
        so.SteepestDescent([torch.zeros(3, 3)], norm={"name": "block", "blocks": "row"}, fused=True)


@pytest.mark.parametrize("name", ["Lion", "MSGD", "ScaledSignSGD", "EFSignSGD", "MSVAG", "AdamStar"])
def test_fused_no_recompiles_after_warmup(name, monkeypatch):
    """A changing lr and per-step bias corrections never recompile a kernel (they are symbolic
    floats, or 0-d tensors where a symbolic float would be specialized), and shapes share one.
    In "jit" mode, where dynamo checks guards at every call: this is what lets "aot" mode call
    its kernels with the guard check off."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(F, "MODE", "jit")

    _, cls, kw = next(c for c in CASES if c[0] == name)
    ps = _params(torch.float32)
    opt = cls(ps, **kw, fused=True)
    graphs = []
    for t in range(5):
        _set_grads(ps, t)
        opt.param_groups[0]["lr"] = kw["lr"] * (1.0 + 0.1 * t)
        opt.step()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1:] == [graphs[1]] * 4, f"graphs compiled so far, per step: {graphs}"
