"""The fused backend (``fused=True``; steepest.backend.fused, steepest.optim.updates).

What is checked, against the eager loop path (``foreach=False``, the reference):

* every optimizer with fused kernels, for float32, float64 and bfloat16 parameters, three steps
  with changing gradients and lr (weight decay and momentum in several cases): parameters and
  state agree within the tolerances below. float32 runs the compiled kernels, traced with
  ``backend="aot_eager"`` (dynamo + AOTAutograd's functionalized graph, what inductor receives;
  no C++ compile); float64 and bfloat16 run the same kernel functions eagerly (the traced graph
  does not depend on the dtype), which checks their dtype handling at no compile cost. Two tests
  compile with inductor itself (C++), and check the saved kernels load in a warm start;
* a norm written outside the package (public ``map``/``duals`` only) fuses;
* ``maximize`` and complex parameters; a compile failure warns once and the step is still right;
* the non-finite policy: "raise" leaves parameters and state bit-identical, "skip" skips with a
  warning, for one-pass and two-pass (deferred-check) updates, the NaN in the deferred group or
  in a scanned one;
* a changing lr and step count recompile nothing; state dicts load across fused and non-fused
  optimizers; ``fused=True`` is refused clearly where it cannot run.

Tolerances (the fused kernels compute the same formulas in one pass, but the compiled graph may
contract ``a * b + c`` into an FMA, reassociate reductions, and divide where eager divides once
by a combined divisor, and the eager path sums ``||g||_1`` with another kernel, in another
order): float64 1e-12 and float32 1e-5 relative to the tensor's largest entry over 3 steps (a
float32 sum of 40,000 terms in another order moves by up to ~log2(n) = 16 ulp, ~1e-6 relative,
and a scaled step multiplies every entry by it, three steps in a row); bfloat16 one bfloat16
rounding step (2^-7 relative), since a float32 difference of one ulp can move a bfloat16
rounding.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

import steepest.optim as so
from steepest.backend import fused as F
from steepest.norms import Norm

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
    # heavy-ball momentum (dampening): a one-pass (l2 scaled: c itself) and a two-pass update
    ("Steepest-l2-heavy-ball", so.SteepestDescent, dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.1)),
    ("Steepest-lp-normalized-heavy-ball", so.SteepestDescent,
     dict(lr=0.1, norm={"name": "lp", "p": 3.0}, mode="normalized", momentum=0.5, dampening=0.3)),
    ("MSGD", so.MSGD, dict(lr=0.1, weight_decay=0.1)),
    ("MSGD-beta0", so.MSGD, dict(lr=0.1, beta=0.0)),
    ("SVAG", so.SVAG, dict(lr=0.1, weight_decay=0.1)),
    ("MSVAG", so.MSVAG, dict(lr=0.1)),
    ("MSVAG-beta0", so.MSVAG, dict(lr=0.1, beta=0.0)),
    ("AdamStar", so.AdamStar, dict(lr=0.1, beta=0.5)),
    ("EFSignSGD", so.EFSignSGD, dict(lr=0.1)),
    ("EFSignSGD-per_tensor", so.EFSignSGD, dict(lr=0.1, scope="per_tensor", weight_decay=0.1)),
    # STACEY: every variant, descent map (s_eps in both forms, s, sign, identity) and momentum
    # scheme (Lion-style, tied, none), the coupling's tau in (0, 1), 0 and 1, weight decay.
    ("Stacey-p2", so.Stacey, dict(lr=0.1, weight_decay=0.1)),
    ("Stacey-pp", so.Stacey, dict(lr=0.1, alpha=0.05, variant="pp", p=4.0, tau=0.3, weight_decay=0.1)),
    ("Stacey-pp-paper-tied", so.Stacey, dict(lr=0.1, variant="pp", eps=0.1, eps_mode="paper",
                                             betas=(0.9, 0.9), tau=0.7)),
    ("Stacey-2p-tau1", so.Stacey, dict(lr=0.1, variant="2p", tau=1.0, weight_decay=0.1)),
    ("Stacey-p2-sign-tau0", so.Stacey, dict(lr=0.1, p=math.inf, tau=0.0, betas=(0.0, 0.0))),
    ("Stacey-p2-eps0", so.Stacey, dict(lr=0.1, p=3.0, eps=0.0, tau=0.5)),
    ("AdamAveraged", so.AdamAveraged, dict(lr=0.1, weight_decay=0.1)),
    ("AdamAveraged-eps0", so.AdamAveraged, dict(lr=0.1, eps=0.0, betas=(0.3, 0.9))),
]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2.0**-7}
SHAPES = [(5, 3), (7,), (2, 2, 2), (40000,)]  # one list kernel for all (flattened)


def _case(name: str):  # type: ignore[no-untyped-def]
    return next(c for c in CASES if c[0] == name)


@pytest.fixture(scope="module", autouse=True)
def _aot_eager():
    """The broad matrix traces with aot_eager (module docstring); kernels are shared across the
    module's tests (one per function, options and dtype). One intra-op thread: on a loaded 2-core
    machine OpenMP's barriers made every op on these small tensors ~30x slower (ms, not us)."""
    old, threads, bucket = F.BACKEND, torch.get_num_threads(), F.BUCKET
    F.BACKEND = "aot_eager"
    F.BUCKET = 3  # (list kernels of 3 rows: SHAPES' 4 tensors make a full call and a padded one)
    torch.set_num_threads(1)
    F.reset()
    yield
    F.BACKEND, F.BUCKET = old, bucket
    torch.set_num_threads(threads)
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


def _run(cls, kw, dtype, fused, steps=3, **extra):  # type: ignore[no-untyped-def]
    ps = _params(dtype)
    opt = cls(ps, **kw, **extra, fused=True) if fused else cls(ps, **kw, **extra, foreach=False)
    for t in range(steps):
        _set_grads(ps, t)
        opt.param_groups[0]["lr"] = kw["lr"] * (1.0 + 0.25 * t)  # a changing lr (no freeze)
        opt.step()
    return ps, opt


def _compare(name, ref_ps, ref, ps, opt, dtype):  # type: ignore[no-untyped-def]
    for i, (a, b) in enumerate(zip(ref_ps, ps)):
        _close(a, b, dtype, f"{name} param {i}")
        assert b.dtype == dtype
        for k, v in ref.state[a].items():
            w = opt.state[b][k]
            assert w.dtype == v.dtype, k
            _close(v, w, dtype, f"{name} state {k!r} of param {i}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,cls,kw", CASES, ids=[c[0] for c in CASES])
def test_fused_equals_eager_loop(name, cls, kw, dtype, monkeypatch):
    if dtype != torch.float32:  # the kernel functions eagerly (module docstring)
        monkeypatch.setattr(F, "available", lambda: False)
    compiled = F.STATS["compiled"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no compile failure (its fallback warns)
        ref_ps, ref = _run(cls, kw, dtype, False)
        ps, opt = _run(cls, kw, dtype, True)
    _compare(name, ref_ps, ref, ps, opt, dtype)
    if dtype == torch.float32 and not any(k[0].__name__ != "_" and k[3] == "aot_eager" for k in F._KERNELS):
        assert F.STATS["compiled"] > compiled  # (the first case compiles its kernels)
    assert F.STATS["failed"] == 0


@pytest.mark.parametrize("name", ["MSGD", "SVAG", "MSVAG", "AdamStar", "AdamAveraged"])
def test_fused_step_counts_that_differ_between_tensors(name):
    """A parameter without a gradient at the first step has a step count one behind the others
    from then on: the per-count scalars (bias corrections, variance adaptation) of the fused
    drivers, read for the whole group at once, must follow each tensor's own count."""
    _, cls, kw = _case(name)
    runs = []
    for fused in (False, True):
        ps = _params(torch.float32)
        opt = cls(ps, **kw, fused=True) if fused else cls(ps, **kw, foreach=False)
        for t in range(3):
            _set_grads(ps, t)
            if t == 0:
                ps[1].grad = None
            opt.step()
        runs.append((ps, opt))
    (ref_ps, ref), (ps, opt) = runs
    assert float(opt.state[ps[1]]["step"]) == 2.0 and float(opt.state[ps[0]]["step"]) == 3.0
    _compare(name, ref_ps, ref, ps, opt, torch.float32)


def test_fused_step_counters_of_shape_one_read_as_floats():
    """Step counters loaded as (1,)-shaped tensors (not what the optimizers make, but what a
    checkpoint edited by hand may hold) are read one by one, as ``float()`` reads them."""
    _, cls, kw = _case("MSGD")
    runs = []
    for shaped in (False, True):
        ps = _params(torch.float32)
        opt = cls(ps, **kw, fused=True)
        _set_grads(ps, 0)
        opt.step()
        if shaped:
            for p in ps:
                opt.state[p]["step"] = opt.state[p]["step"].reshape(1)
        _set_grads(ps, 1)
        opt.step()
        runs.append((ps, opt))
    (ref_ps, ref), (ps, opt) = runs
    _compare("MSGD", ref_ps, ref, ps, opt, torch.float32)


class UserLinf(Norm):
    """l_inf written as a user would: the public map and duals only (no partial)."""

    name = "user-linf"

    def map(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)

    def duals(self, xs: list[torch.Tensor], per_tensor: bool = False) -> torch.Tensor:
        d = torch.stack([x.abs().sum() for x in xs])
        return d if per_tensor else d.sum().expand(len(xs))


def test_user_written_norm_fuses():
    """A norm from outside the package with an elementwise map fuses (unscaled: its map alone),
    equal to the built-in sign descent; a mode that needs a reduction without Norm.partial is
    refused, naming why."""
    ref_ps, ref = _run(so.SignSGD, dict(lr=0.1, momentum=0.9), torch.float32, False)
    ps, opt = _run(so.SteepestDescent, dict(lr=0.1, momentum=0.9), torch.float32, True,
                   norm=UserLinf(), mode="unscaled")
    _compare("UserLinf", ref_ps, ref, ps, opt, torch.float32)
    with pytest.raises(ValueError, match=r"Norm\.partial"):
        so.SteepestDescent([torch.zeros(3)], norm=UserLinf(), mode="scaled", fused=True)


@pytest.mark.parametrize("name", ["Signum", "ScaledSignSGD", "Stacey-pp", "AdamAveraged"])
def test_fused_maximize_and_complex(name):
    """maximize=True (the kernels' sign) and complex parameters (real views) as on the loop path."""
    _, cls, kw = _case(name)
    for make in (lambda: _params(torch.float32), lambda: [torch.randn(3, 2, dtype=torch.complex64)]):
        torch.manual_seed(0)
        a = make()
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
@pytest.mark.parametrize("name", ["Signum", "ScaledSignSGD", "Stacey-pp", "AdamAveraged"])
def test_fused_inductor_equals_eager_loop(name, monkeypatch, tmp_path):
    """The same with inductor's C++ kernels (the default backend): a one-pass and a two-pass
    update, float32, over shapes that share one kernel; then, the kernels forgotten, a warm
    start loads every kernel from the saved files (no compile)."""
    monkeypatch.setattr(F, "BACKEND", "inductor")
    monkeypatch.setenv("STEEPEST_FUSED_CACHE", str(tmp_path))
    F.reset()
    _, cls, kw = _case(name)
    try:
        ref_ps, ref = _run(cls, kw, torch.float32, False)
        compiled, loaded = F.STATS["compiled"], F.STATS["loaded"]
        ps, opt = _run(cls, kw, torch.float32, True)
        assert F.STATS["compiled"] > compiled and F.STATS["failed"] == 0
        F.reset()
        ps2, opt2 = _run(cls, kw, torch.float32, True)
        assert F.STATS["loaded"] - loaded == F.STATS["compiled"] - compiled  # all from the files
        lists = [k for key, k in F._KERNELS.items() if key[4][0] == "list"]
        assert lists and all(map(_is_direct, lists))  # loaded ones too
    finally:
        F.reset()
    _compare(name, ref_ps, ref, ps, opt, torch.float32)
    _compare(name + " (warm)", ref_ps, ref, ps2, opt2, torch.float32)


def test_compile_failure_warns_once_and_stays_correct(monkeypatch):
    def broken(fn, *args):  # type: ignore[no-untyped-def]
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(F, "_compile", broken)
    monkeypatch.setattr(F, "_compile_aot", broken)
    F.reset()
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            ps, _ = _run(so.Lion, dict(lr=0.1), torch.float32, True)
            ps2, _ = _run(so.ScaledSignSGD, dict(lr=0.01), torch.float32, True)
        msgs = [w for w in rec if "fused=True could not compile" in str(w.message)]
        assert len(msgs) == 1
        assert all(k is None for k in F._KERNELS.values())  # every kernel ran eagerly
        assert any(isinstance(k[4], tuple) and k[4][0] == "list" for k in F._KERNELS)  # lists too
    finally:
        F.reset()
    for (cls, kw), got in (((so.Lion, dict(lr=0.1)), ps), ((so.ScaledSignSGD, dict(lr=0.01)), ps2)):
        ref_ps, _ = _run(cls, kw, torch.float32, False)
        for a, b in zip(ref_ps, got):
            _close(a, b, torch.float32, f"{cls.__name__}, eager fallback")


def _snapshot(ps, opt):  # type: ignore[no-untyped-def]
    return [p.clone() for p in ps] + [v.clone() for p in ps for v in opt.state[p].values()]


@pytest.mark.parametrize("name", ["Signum", "ScaledSignSGD", "EFSignSGD", "MSGD", "Stacey-pp",
                                  "AdamAveraged"])
@pytest.mark.parametrize("where,bad", [("first", math.nan), ("last", math.inf)])
def test_fused_nonfinite_policy(name, where, bad):
    """One-pass (scanned before the step) and two-pass (checked by the reduction pass, run
    first) updates, two param groups: a NaN/inf gradient in the first group (the deferred one,
    for two-pass updates) or the last raises and leaves every parameter and state tensor
    bit-identical; "skip" warns and changes nothing."""
    _, cls, kw = _case(name)
    ps = _params(torch.float32)
    opt = cls([{"params": ps[:2]}, {"params": ps[2:]}], **kw, fused=True)
    _set_grads(ps, 0)
    opt.step()  # state exists
    _set_grads(ps, 1)
    (ps[0] if where == "first" else ps[-1]).grad.view(-1)[1] = bad
    before = _snapshot(ps, opt)
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt.step()
    assert all(torch.equal(x, y) for x, y in zip(before, _snapshot(ps, opt)))
    for g in opt.param_groups:
        g["nonfinite"] = "skip"
    with pytest.warns(RuntimeWarning, match="step skipped"):
        opt.step()
    assert all(torch.equal(x, y) for x, y in zip(before, _snapshot(ps, opt)))


def test_fused_huge_finite_gradient_follows_the_overflow_policy():
    """A reduction that overflows on finite gradients is not a NaN/inf gradient: as on the eager
    path, ScaledSignSGD's overflowed scale is refused ("raise") with nothing written, and
    EFSignSGD's overflow-safe coefficient makes a finite step."""
    ps = [torch.full((4,), 1.0)]
    ps[0].grad = torch.full((4,), 3e38)
    opt = so.ScaledSignSGD(ps, lr=1e-40, fused=True)
    with pytest.raises(FloatingPointError, match="overflowed"):
        opt.step()
    assert torch.equal(ps[0], torch.ones(4))
    qs = [torch.full((4,), 1.0)]
    qs[0].grad = torch.full((4,), 3e38)
    so.EFSignSGD(qs, lr=1.0, fused=True).step()
    assert torch.isfinite(qs[0]).all()


@pytest.mark.parametrize("name", ["Lion", "MSGD", "EFSignSGD", "Stacey-pp", "AdamAveraged"])
def test_state_dict_round_trip_fused_and_not(name):
    _, cls, kw = _case(name)
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
    with pytest.raises(ValueError, match="minibatch"):
        so.MSVAG(p, variance="minibatch", fused=True)
    with pytest.raises(ValueError, match="fused=True is not supported by SteepestDescent"):
        so.SteepestDescent([torch.zeros(3, 3)], norm={"name": "block", "blocks": "row"}, fused=True)
    with pytest.raises(ValueError, match="fused=True is not supported by SteepestDescent"):
        so.SteepestDescent([torch.zeros(3, 3)], norm="spectral", fused=True)
    with pytest.raises(ValueError, match=r"fused=True is not supported by AdamShuffled \(.*randperm"):
        so.AdamShuffled(p, fused=True)
    with pytest.raises(ValueError, match="exclusive"):
        so.Stacey(p, fused=True, foreach=True)

    class NoKernels(so.StepOptimizer):  # an optimizer without kernels (the base class's answer)
        def __init__(self, params):  # type: ignore[no-untyped-def]
            super().__init__(params, dict(lr=0.1))

    with pytest.raises(ValueError, match=r"fused=True is not supported by NoKernels \(it has no fused kernels"):
        NoKernels([{"params": p, "fused": True}])  # (a group option)


@pytest.mark.parametrize("name", ["Lion", "ScaledSignSGD", "MSVAG", "Stacey-pp", "AdamAveraged"])
def test_fused_no_recompiles_after_warmup(name, monkeypatch):
    """A changing lr and per-step bias corrections never recompile a kernel (they are 0-d
    tensors), and shapes share one. In "jit" mode, where dynamo checks guards at every call:
    this is what lets "aot" mode call its kernels with the guard check off."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(F, "MODE", "jit")
    _, cls, kw = _case(name)
    ps = _params(torch.float32)
    opt = cls(ps, **kw, fused=True)
    graphs = []
    for t in range(5):
        _set_grads(ps, t)
        opt.param_groups[0]["lr"] = kw["lr"] * (1.0 + 0.1 * t)
        opt.step()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1:] == [graphs[1]] * 4, f"graphs compiled so far, per step: {graphs}"


# ------------------------------------------------------------------ list kernels (run_many)
def _msgd_rows(sizes, seed=0, dtype=torch.float32):  # type: ignore[no-untyped-def]
    """Rows of msgd_step (p, g, m, lr_hat, lr), one shared lr object as the drivers pass it."""
    g = torch.Generator().manual_seed(seed)
    lr = torch.tensor(0.1, dtype=dtype)
    return [(torch.randn(s, generator=g, dtype=dtype), torch.randn(s, generator=g, dtype=dtype),
             torch.randn(s, generator=g, dtype=dtype), torch.tensor(0.05 * (i + 1), dtype=dtype), lr)
            for i, s in enumerate(sizes)]


def _cols(rows):  # type: ignore[no-untyped-def]
    """Rows as the columns run_many/map_many take (a tuple of one value per row, per argument)."""
    return list(zip(*rows))


def _eager_rows(fn, rows, **static):  # type: ignore[no-untyped-def]
    ref = [tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in r) for r in rows]
    return ref, [fn(*r, **static) for r in ref]


@pytest.mark.slow
def test_list_kernel_assumes_no_relation_between_row_sizes(monkeypatch, tmp_path):
    """aot mode checks no guards, so a list kernel must hold for any sizes of its rows: compiled
    (inductor, C++) on rows of one size, it is right on rows of different sizes, and compiled on
    rows of different sizes, right on rows of one size (and on more rows than a call takes, the
    last call padded). Were the rows' sizes one symbol (dynamo's duck shaping), the kernel would
    run every row with the first row's size. Tolerance: inductor may contract a * b + c into
    an FMA where eager rounds twice (a float32 ulp or two, relative 1e-6)."""
    from steepest.optim.updates import msgd_step

    monkeypatch.setattr(F, "BACKEND", "inductor")
    monkeypatch.setattr(F, "BUCKET", 4)
    monkeypatch.setenv("STEEPEST_FUSED_CACHE", str(tmp_path))
    st = dict(wd=0.1, w=0.1, sgn=1.0, hi=False)
    for first, then in (([1000] * 4, [3, 5000, 17, (20, 30), 2, 1000]),
                        ([3, 5000, 17, 1000], [700] * 6)):
        F.reset()
        compiled, failed = F.STATS["compiled"] + F.STATS["loaded"], F.STATS["failed"]
        for sizes in (first, then):
            rows = _msgd_rows(sizes, seed=len(sizes))
            ref, _ = _eager_rows(msgd_step, rows, **st)
            F.run_many(msgd_step, _cols(rows), **st)
            for r, e in zip(rows, ref):
                for a, b in zip(r[:3], e[:3]):
                    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert F.STATS["compiled"] + F.STATS["loaded"] == compiled + 1  # one kernel for all
        assert F.STATS["failed"] == failed
        assert [_is_direct(k) for k in F._KERNELS.values()] == [True]  # C++ graph, called directly
    F.reset()


def _is_direct(kernel) -> bool:  # type: ignore[no-untyped-def]
    return getattr(kernel, "__name__", "") == "_direct"


def test_list_kernels_call_their_graph_directly_with_the_prologues_results(monkeypatch):
    """List kernels call their compiled graph without dynamo's Python prologue (``F._direct``:
    the rows' sizes passed by the caller). On rows of mixed sizes (padded calls included) the
    update pass and a reduction pass give bitwise what the same kernels give through the
    prologue (aot_eager: the same ATen kernels on the same data), and every list kernel is
    called directly when ``DIRECT`` is on, none when it is off."""
    from steepest.norms import L2
    from steepest.optim.updates import msgd_step, steepest_partial

    sizes = [5, 300, 7, 2, 40, 4097]
    st = dict(wd=0.1, w=0.1, sgn=1.0, hi=False)
    pst = dict(norm=L2(), b1=0.9, sgn=1.0, momentum="ema", hi1=False)
    got = []
    for direct in (True, False):
        monkeypatch.setattr(F, "DIRECT", direct)
        F.reset()
        rows = _msgd_rows(sizes, seed=3)
        F.run_many(msgd_step, _cols(rows), **st)
        sums = F.map_many(steepest_partial, _cols([(r[1], r[2]) for r in rows]), **pst)
        kernels = [k for k in F._KERNELS.values() if k is not None]
        assert len(kernels) == 3  # the update, the reduction's plain and blocked size classes
        assert [_is_direct(k) for k in kernels] == [direct] * 3
        got.append(([t for r in rows for t in r[:3]], list(sums.unbind(0))))
    F.reset()
    for x, y in zip(got[0][0] + got[0][1], got[1][0] + got[1][1]):
        assert torch.equal(x, y)


@pytest.mark.slow
def test_direct_call_of_inductor_code_writes_and_bumps_versions_as_the_full_path(monkeypatch, tmp_path):
    """With inductor, a list kernel's direct caller calls inductor's compiled code itself, below
    AOT autograd's runtime wrapper; it must then bump the version counters of the tensors the
    kernel writes, as that wrapper does. Against the same kernel called through every layer
    (``DIRECT`` off): the same writes (bitwise: the same C++ on the same data) and the same
    version counter increments; and a tensor saved for backward, then written by a step, makes
    backward raise (autograd sees the in-place write)."""
    from steepest.optim.updates import msgd_step

    monkeypatch.setattr(F, "BACKEND", "inductor")
    monkeypatch.setattr(F, "BUCKET", 4)
    monkeypatch.setenv("STEEPEST_FUSED_CACHE", str(tmp_path))
    st = dict(wd=0.1, w=0.1, sgn=1.0, hi=False)
    sizes = [3, 700, 17, 2, 40]  # a full call of 4 rows and a padded one
    got = []
    for direct in (True, False):
        monkeypatch.setattr(F, "DIRECT", direct)
        F.reset()
        rows = _msgd_rows(sizes, seed=5)
        before = [t._version for r in rows for t in r[:3]]
        F.run_many(msgd_step, _cols(rows), **st)
        moved = [t._version - v for t, v in zip((t for r in rows for t in r[:3]), before)]
        levels = [getattr(k, "level", None) for k in F._KERNELS.values()]
        assert levels == (["inductor"] if direct else [None])
        got.append(([t for r in rows for t in r[:3]], moved))
    assert got[0][1] == got[1][1]
    assert got[0][1][:3] == [1, 0, 1]  # p and m written once, g only read
    for x, y in zip(got[0][0], got[1][0]):
        assert torch.equal(x, y)
    # autograd's view of it: p saved for backward (y = x * p), then written by the kernel
    monkeypatch.setattr(F, "DIRECT", True)
    rows = _msgd_rows(sizes, seed=6)
    x = torch.ones(sizes[1], requires_grad=True)
    y = (x * rows[1][0]).sum()
    F.run_many(msgd_step, _cols(rows), **st)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    F.reset()


class _FakeAot:
    """Stands for an aot-compiled kernel: ``fn``'s bytecode calls one ``__compiled_fn_*``."""

    def __init__(self, body: str, graph) -> None:  # type: ignore[no-untyped-def]
        glob = {"__compiled_fn_0": graph}
        exec(f"def fn(a0, a1, a2):\n    return {body}\n", glob)
        self.fn = glob["fn"]

    def __call__(self, *args):  # type: ignore[no-untyped-def]
        return self.fn(*args)


@pytest.mark.parametrize("body,graph,direct", [
    ("__compiled_fn_0(a0, a1.shape[0], a2)", lambda x, n, y: (x.sum() + n, y.sum()), True),
    ("tuple(__compiled_fn_0(a0, a1, a2))", lambda *xs: [x.sum() for x in xs], True),
    # an argument that is neither an input nor a row's size
    ("__compiled_fn_0(a0, 7, a2)", lambda x, n, y: (x.sum() + n,), False),
    # an argument made from an input
    ("__compiled_fn_0(a0 * 2, a1, a2)", lambda *xs: (xs[0].sum(),), False),
    # a result the prologue changes
    ("(__compiled_fn_0(a0, a1, a2)[0] * 2,)", lambda *xs: (xs[0].sum(),), False),
])
def test_direct_call_only_where_the_kernel_is_understood(body, graph, direct, monkeypatch):
    """``F._direct`` builds a caller only where every argument of the graph is an input or an
    input row's size and every result of the kernel a result of the graph; otherwise None, and
    the kernel is called as it is (slower, never wrong)."""
    monkeypatch.setattr(F, "BUCKET", 3)
    example = (torch.ones(4), torch.ones(5), torch.ones(6))
    call = F._direct(_FakeAot(body, graph), example)
    assert (call is not None) == direct
    if call is not None:
        xs = (torch.arange(3.0), torch.ones(9), torch.ones(2))
        # exact: both callers run the same lambda on the same tensors
        assert all(torch.equal(u, v) for u, v in zip(call(*xs), _FakeAot(body, graph)(*xs)))


def test_list_kernels_equal_per_tensor_eager():
    """run_many and map_many (aot_eager, BUCKET rows a call) against the per-tensor function run
    eagerly, over rows the list path takes (1-d, 2-d, per-row and shared scalars, None), rows it
    runs eagerly (not contiguous, one element) and rows of two dtypes (two kernels); bitwise,
    since aot_eager runs the same ATen kernels on the same data."""
    from steepest.norms import Lp
    from steepest.optim.updates import steepest_partial, steepest_step

    F.reset()
    norm = Lp(3.0)
    g = torch.Generator().manual_seed(1)
    lr = torch.tensor(0.1)
    lr64 = torch.tensor(0.1, dtype=torch.float64)

    def rows():  # type: ignore[no-untyped-def]
        g.manual_seed(1)
        out = []
        for i, shape in enumerate([(5, 3), (7,), (2, 2, 2), (400,), (9,), (6, 4), (1,), (3, 8)]):
            dt = torch.float64 if i == 4 else torch.float32
            p = torch.randn(shape, generator=g, dtype=dt)
            if i == 7:
                p = torch.randn(8, 3, generator=g).t()  # not contiguous
            out.append((p, torch.randn(p.shape, generator=g, dtype=dt).contiguous(),
                        torch.randn(p.shape, generator=g, dtype=dt).contiguous(),
                        torch.tensor(1.0 + i, dtype=dt), None, lr64 if dt == torch.float64 else lr))
        return out

    st = dict(norm=norm, b1=0.9, b2=0.9, momentum="ema", hi1=False, hi2=False)
    got, (ref, _) = rows(), _eager_rows(steepest_step, rows(), **st)
    F.run_many(steepest_step, _cols(got), **st)
    for i, (r, e) in enumerate(zip(got, ref)):
        assert torch.equal(r[0], e[0]) and torch.equal(r[2], e[2]), f"row {i}"
    pst = dict(norm=norm, b1=0.9, sgn=1.0, momentum="ema", hi1=False)
    grads = [(r[1], r[2]) for r in rows()]
    sums = F.map_many(steepest_partial, _cols(grads), **pst)
    assert [torch.equal(a, steepest_partial(*r, **pst)) for a, r in zip(sums, grads)] == [True] * 8
    kinds = [k[4] for k in F._KERNELS if isinstance(k[4], tuple) and k[4][0] == "list"]
    assert len(kinds) == 4  # float32 and float64, for each function
    F.reset()


def test_columns_same_vec_and_a_one_element_row_equal_per_tensor_eager():
    """Columns as the drivers give them: ``Same`` (a shared lr; None for an absent momentum),
    ``Vec`` (per-row scalars as one 1-d tensor, one of them expanded: stride 0), and a row of one
    element among the others (it runs eagerly, the others keep the column path): against the
    per-tensor function run eagerly on each row, with row i's scalar the (1,)-shaped
    ``pre[i:i+1]``; bitwise, since aot_eager runs the same ATen kernels on the same data."""
    from steepest.norms import Lp
    from steepest.optim.updates import steepest_partial, steepest_step

    F.reset()
    norm = Lp(3.0)
    sizes = [5, 7, 1, 12, 3, 9, 4]  # 7 rows (BUCKET 3: padded calls); 6 without the 1-element row
    n = len(sizes)

    def tensors():  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(2)
        return [[torch.randn(k, generator=g) for k in sizes] for _ in range(3)]

    pre = torch.rand(n, generator=torch.Generator().manual_seed(3)) + 0.5
    post = torch.tensor([1.25]).expand(n)  # not contiguous
    lr = torch.tensor(0.1)
    for momentum in ("ema", "none"):
        st = dict(norm=norm, b1=0.9, b2=0.9, momentum=momentum, hi1=False, hi2=False)
        (ps, gs, ms), (rp, rg, rm) = tensors(), tensors()
        m_col = ms if momentum == "ema" else F.Same(None)
        F.run_many(steepest_step, [ps, gs, m_col, F.Vec(pre), F.Vec(post), F.Same(lr)], **st)
        for i in range(n):  # (a Vec's element, eagerly: its (1,)-shaped slice; rows_of)
            steepest_step(rp[i], rg[i], rm[i] if momentum == "ema" else None, pre[i:i + 1], post[i:i + 1], lr,
                          **st)
        assert [torch.equal(a, b) for a, b in zip(ps + ms, rp + rm)] == [True] * (2 * n), momentum
        pst = dict(norm=norm, b1=0.9, sgn=1.0, momentum=momentum, hi1=False)
        sums = F.map_many(steepest_partial, [gs, m_col], **pst)
        want = [steepest_partial(g, m if momentum == "ema" else None, **pst) for g, m in zip(gs, ms)]
        assert [torch.equal(a, b) for a, b in zip(sums, want)] == [True] * n, momentum
    layouts = {k[4][4] for k in F._KERNELS if isinstance(k[4], tuple) and k[4][0] == "list"}
    # the column path was taken: scalar columns (the Vecs, the shared lr) as vectors, None once
    assert ("row", "row", "row", "vec", "vec", "vec") in layouts
    assert ("row", "row", "one", "vec", "vec", "vec") in layouts
    F.reset()


def test_vec_scalars_promote_alike_in_list_kernels_and_eager_rows():
    """A mixed float32/float64 group's per-tensor plan is float64. A float32 row in a list kernel
    gets its scalar as a (1,)-shaped float64 slice, which promotes the row's math to float64, as
    the loop path does; a float32 row that runs eagerly (here: not contiguous) must get it in the
    same form, not as a 0-d scalar (which would leave its math in float32: 1 ulp apart, found in
    review). Two parameters with the same values and gradients, one contiguous and one not:
    bitwise equal on any CPU -- the gradients are multiples of 1/8, so each ||g||_1 is exact
    whatever the summation order of the two layouts, and the rest is correctly rounded
    elementwise arithmetic (sign, products, sums of two terms), the same per element whether
    vectorized or not -- and within 1e-6 of the loop path (another path: rounding may differ)."""
    outs = []
    for kw in (dict(fused=True), dict(foreach=False)):
        g = torch.Generator().manual_seed(0)
        base = torch.randn(4, 6, generator=g)
        a = torch.nn.Parameter(base.clone())
        b = torch.nn.Parameter(base.t().contiguous().t())  # same values, not contiguous
        c = torch.nn.Parameter(torch.randn(8, generator=g, dtype=torch.float64))
        d = torch.nn.Parameter(torch.randn(4, 6, generator=g))
        opt = so.ScaledSignSGD([a, b, c, d], lr=0.01, scope="per_tensor", **kw)
        for t in range(3):
            gg = torch.Generator().manual_seed(10 + t)
            grad = torch.randint(-8, 9, (4, 6), generator=gg).float() / 8
            a.grad, b.grad = grad.clone(), grad.t().contiguous().t()
            c.grad = torch.randn(8, generator=gg, dtype=torch.float64)
            d.grad = torch.randn(4, 6, generator=gg)
            opt.step()
        outs.append((a.detach(), b.detach()))
    (fa, fb), (la, _) = outs
    assert torch.equal(fa, fb)  # exact by construction of the data (docstring)
    torch.testing.assert_close(fa, la, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["MSGD", "MSVAG", "AdamAveraged", "Signum-mixed"])
def test_no_new_kernel_when_a_steps_scalars_stop_being_shared(name):
    """A kernel's layout must not depend on whether a step's scalars are shared: a parameter
    with no gradient on one step (its step count then lags: per-row bias corrections instead of
    one) or a float64 tensor of a float32 group with no gradient on a step (the group then runs
    as one dtype) compiles no new kernel (found in review: a multi-second compile mid-run)."""
    g = torch.Generator().manual_seed(0)
    if name == "Signum-mixed":
        ps = [torch.nn.Parameter(torch.randn(k, generator=g)) for k in (10, 20, 30)]
        ps.append(torch.nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64)))
        opt = so.SignSGD(ps, lr=0.1, momentum=0.9, fused=True)
        late = 3
    else:
        ps = [torch.nn.Parameter(torch.randn(k, generator=g)) for k in (10, 20, 30, 40)]
        opt = {"MSGD": so.MSGD, "MSVAG": so.MSVAG, "AdamAveraged": so.AdamAveraged}[name](ps, lr=0.1, fused=True)
        late = 0
    F.reset()
    compiled = []
    for t in range(4):
        for i, p in enumerate(ps):
            p.grad = None if (t == 1 and i == late) else torch.randn(p.shape, generator=g, dtype=p.dtype)
        before = F.STATS["compiled"]
        opt.step()
        compiled.append(F.STATS["compiled"] - before)
    assert compiled[1:] == [0, 0, 0], compiled
    F.reset()


def test_columns_that_disagree_on_the_number_of_rows_raise():
    """Columns of different lengths are a driver's bug: a clear error, not rows cut short."""
    from steepest.optim.updates import msgd_step

    ps = [torch.zeros(3) for _ in range(4)]
    with pytest.raises(ValueError, match="columns of 4 and 3 rows"):
        F.run_many(msgd_step, [ps, ps[:3], ps, F.Same(torch.tensor(0.1)), F.Same(torch.tensor(0.1))])
    with pytest.raises(ValueError, match="columns of 4 and 5 rows"):
        F.map_many(msgd_step, [ps, F.Vec(torch.zeros(5))])
    with pytest.raises(ValueError, match="1-d tensor"):
        F.Vec(torch.zeros(()))


@pytest.mark.parametrize("name", ["Signum", "MSGD", "ScaledSignSGD", "BlockNormalizedSGD", "EFSignSGD-per_tensor",
                                  "Stacey-pp", "AdamAveraged"])
def test_fused_zero_dim_and_one_element_parameters(name):
    """A 0-d parameter first in the group (before list kernels, run_many read the row layout
    from the first row and found no per-element tensor: IndexError), and (1, n)/(n, 1) shapes,
    whose size-1 dimensions are flattened away, against the loop path. The per-tensor scalars
    (block norms, EF's per-tensor coefficient, AdamAveraged's sizes) are (1,)-shaped for the
    kernels and 0-d for the 0-d parameter, which runs eagerly."""
    _, cls, kw = _case(name)
    shapes = [(), (1, 7), (7, 1), (5, 3), (1,)]
    outs = []
    for fused in (False, True):
        g = torch.Generator().manual_seed(3)
        ps = [torch.randn(s, generator=g) for s in shapes]
        opt = cls(ps, **kw, fused=True) if fused else cls(ps, **kw, foreach=False)
        for t in range(3):
            _set_grads(ps, t)
            opt.step()
        outs.append(ps)
    for i, (a, b) in enumerate(zip(*outs)):
        _close(a, b, torch.float32, f"{name} param {i}")


# ------------------------------------ fused reduction passes: blocked sums (issue 18)
# Inductor's C++ sums a float32 reduction it takes to be longer than 4096 elements through its
# cascade helper (a store and reload per 16 floats); with a symbolic row size it decides from
# the size it compiled with. The passes' sums are blocked instead (backend.ops._blocked_sum).


def _reduction_passes():  # type: ignore[no-untyped-def]
    """(name, pass function, its static options, rows of size n): ScaledSignSGD's ||c||_1,
    BlockNormalizedSGD's ||c||_2 (pass 1 of fused_steepest) and EF-signSGD's ||lr g + e||_1."""
    from steepest.norms import BlockNorm, Lp
    from steepest.optim.updates import ef_reduce, steepest_partial

    lr = torch.tensor(0.1)
    st = dict(b1=0.0, sgn=1.0, momentum="none", hi1=False)
    return [
        ("l1", steepest_partial, dict(norm=Lp(math.inf), **st), lambda g, n: (torch.randn(n, generator=g), None)),
        ("l2", steepest_partial, dict(norm=BlockNorm(), **st), lambda g, n: (torch.randn(n, generator=g), None)),
        ("ef", ef_reduce, dict(sgn=1.0),
         lambda g, n: (torch.randn(n, generator=g), torch.randn(n, generator=g), lr)),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["l1", "l2", "ef"])
def test_fused_reduction_takes_no_cascade_sum_at_any_size(which, monkeypatch, tmp_path):
    """A reduction pass compiled (inductor, C++) on rows of 100,000 elements: its C++ sums
    vectorized without ``cascade_sum_combine``; then, the same kernel for every row longer than a
    block and one more for the shorter ones (plain sums; no other recompile: aot mode checks no
    guards), right on rows of every kind of size: below a block (3, 4095), one block
    (4096), a block and one (4097), whole blocks (8192), blocks and a tail (12,345, 99,999) and
    rows of different sizes in one call. Against the float64 sum, relative 1e-6: float32 sums of
    up to 100,000 terms in blocks of 4096 (and eager ATen's own, ~1e-7 off here)."""
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setattr(F, "BACKEND", "inductor")
    monkeypatch.setattr(F, "BUCKET", 4)
    monkeypatch.setenv("STEEPEST_FUSED_CACHE", str(tmp_path))
    _, fn, st, make = next(c for c in _reduction_passes() if c[0] == which)
    g = torch.Generator().manual_seed(0)
    F.reset()
    failed = F.STATS["failed"]  # a process-wide count (reset() keeps it): earlier tests' failures
    try:
        rows = [make(g, 100_000) for _ in range(4)]
        out, code = run_and_get_code(lambda: F.map_many(fn, _cols(rows), **st))
        text = "\n".join(code)
        assert "tmp_acc0_vec + " in text  # the sums vectorized, in the kernel ...
        assert "cascade_sum_combine" not in text  # ... without the cascade helper
        compiled = F.STATS["compiled"] + F.STATS["loaded"]
        for sizes in ([100_000] * 4, [3, 4095, 4096, 4097], [8192, 12_345, 99_999, 2], [17] * 4):
            rows = [make(g, n) for n in sizes]
            out = F.map_many(fn, _cols(rows), **st)
            for r, o, n in zip(rows, out, sizes):
                ref = fn(*[a.double() if isinstance(a, torch.Tensor) else a for a in r], **st)
                torch.testing.assert_close(o.double().reshape(()), ref.reshape(()), rtol=1e-6, atol=0,
                                           msg=lambda m, n=n: f"{which}, size {n}: {m}")
        # two kernels for all sizes: rows longer than a block (the first) and shorter ones
        assert F.STATS["compiled"] + F.STATS["loaded"] == compiled + 1
        assert F.STATS["failed"] == failed  # none compiled eagerly in this test
    finally:
        F.reset()


def test_checked_columns_are_reused_only_within_a_run_and_only_whole(monkeypatch):
    """``_columns`` skips the checks of a column it checked earlier in the same fused run (the
    gradients in a two-pass update's second pass), recognized by every element's identity: a
    column that shares its first tensor but not the rest is checked again (here it has a row of
    another size, so the rows run row by row), and nothing is kept outside a run."""
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(6, generator=g) for _ in range(3))
    odd = torch.randn(5, generator=g)
    ps = [torch.randn(6, generator=g) for _ in range(3)]
    F._columns([ps, [a, b, c]], 3)
    assert not F._CHECKED  # outside a run: nothing kept
    monkeypatch.setattr(F, "_CHECKING", True)
    try:
        assert F._columns([ps, [a, b, c]], 3) is not None
        assert F._CHECKED  # the parameter and gradient columns
        # same first gradient, another tensor (of another size) in row 2: not the checked column
        assert F._columns([ps, [a, b, odd]], 3) is None
        # the checked column again, beside parameters of another size: the sizes still compared
        other = [torch.randn(7, generator=g) for _ in range(3)]
        assert F._columns([other, [a, b, c]], 3) is None
    finally:
        F._CHECKED.clear()


def test_fused_run_leaves_no_checked_columns():
    """A fused step clears its record of checked columns when it ends, also when it raises."""
    ps = _params(torch.float32)
    opt = so.BlockNormalizedSGD(ps, lr=0.1, fused=True)
    _set_grads(ps, 0)
    opt.step()
    assert not F._CHECKED and not F._CHECKING
    ps[1].grad[0] = float("nan")
    with pytest.raises(FloatingPointError):
        opt.step()
    assert not F._CHECKED and not F._CHECKING
