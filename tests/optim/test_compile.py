"""``torch.compile(opt.step)``: no recompiles after warm-up, and compiled == eager (issue 12).

Recompiles are counted with dynamo's own counter of distinct compiled graphs
(``torch._dynamo.utils.counters["stats"]["unique_graphs"]``) under ``backend="eager"``, which
traces exactly as inductor does but compiles nothing (fast on a 2-core CPU). Warm-up is two
steps: the first creates the state (a different program), the second sees step-dependent
scalars change for the first time (dynamo then makes them symbolic instead of constants).
After that, fresh gradient tensors from ``zero_grad()`` and an LR scheduler changing ``lr``
every step must not add a single graph.

Compiled-vs-eager agreement runs every optimizer class under ``aot_eager`` (AOTAutograd's
functionalized graph, the input inductor sees) and a small set under inductor itself.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.utils import counters

from tests.optim.optim_infos import all_infos

INFOS = all_infos()
ids = [i.name for i in INFOS]


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=g).requires_grad_(), torch.randn(5, generator=g).requires_grad_()]


def _grads(params, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)  # a fresh tensor every step, as after zero_grad


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


# One configuration per optimizer class (the recompile test covers every configuration on the
# loop path): an aot_eager compile costs ~1-2 s, and the suite must stay fast on 2 cores.
_ONE_PER_CLASS = list({i.cls: i for i in reversed(INFOS)}.values())
_RECOMPILE_CASES = [pytest.param(i, False, id=f"{i.name}-loop") for i in INFOS] + [
    pytest.param(i, True, id=f"{i.name}-foreach") for i in _ONE_PER_CLASS
]


@pytest.mark.parametrize(("info", "foreach"), _RECOMPILE_CASES)
def test_no_recompiles_after_warmup(info, foreach):
    params = _params()
    opt = info.make(params, foreach=foreach)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)  # lr changes every step
    step = torch.compile(opt.step, backend="eager")
    graphs = []
    for t in range(10):
        _grads(params, t)
        if info.prepare:
            info.prepare(params)
        step()
        sched.step()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] > 0
    assert graphs[2:] == [graphs[1]] * 8, f"graphs compiled so far, per step: {graphs}"


@pytest.mark.parametrize("info", _ONE_PER_CLASS, ids=[i.name for i in _ONE_PER_CLASS])
def test_no_graph_breaks(info):
    """One graph per step: the default non-finite policy checks nothing while compiling (no
    ``bool()`` of a tensor), step counters stay tensors (no ``float(step)``), and coordinate
    descent picks its coordinate on device (no ``.item()``). Issue 12 counted 5-9 breaks a step."""
    params = _params()
    opt = info.make(params)
    step = torch.compile(opt.step, backend="eager")
    for t in range(4):
        _grads(params, t)
        if info.prepare:
            info.prepare(params)
        step()
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])


def _compare(info, foreach: bool, backend: str, steps: int = 5) -> None:
    a, b = _params(), _params()
    oa, ob = info.make(a, foreach=foreach), info.make(b, foreach=foreach)
    sa = torch.optim.lr_scheduler.StepLR(oa, step_size=1, gamma=0.9)
    sb = torch.optim.lr_scheduler.StepLR(ob, step_size=1, gamma=0.9)
    compiled = torch.compile(oa.step, backend=backend)
    for t in range(steps):
        _grads(a, t)
        _grads(b, t)
        if info.prepare:
            info.prepare(a)
            info.prepare(b)
        if info.stochastic:
            torch.manual_seed(1000 + t)
        compiled()
        if info.stochastic:
            torch.manual_seed(1000 + t)
        ob.step()
        sa.step()
        sb.step()
    # Tolerance: compiled graphs may reassociate and fuse float32 arithmetic (and write a lerp
    # as x + w (y - x)), so results differ in the last bits: 1e-5 relative over 5 steps at these
    # learning rates, while a frozen or wrong scalar differs at O(lr) ~ 1e-2.
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("info", _ONE_PER_CLASS, ids=[i.name for i in _ONE_PER_CLASS])
def test_compiled_matches_eager_aot(info, foreach):
    _compare(info, foreach, "aot_eager")


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_heavy_ball_compiled_matches_eager_aot(foreach):
    """Heavy-ball momentum (``dampening``) through the list ops' compiled forms (``mul_scalar_``,
    ``axpy_``): a second SteepestDescent configuration beside ``_ONE_PER_CLASS``'s."""
    (info,) = [i for i in INFOS if i.name == "SteepestDescent-l2-heavy-ball"]
    _compare(info, foreach, "aot_eager")


INDUCTOR = ["Signum", "MSVAG", "Stacey-pp-p3"]  # inductor compiles take ~10-60 s each on 2 cores


@pytest.mark.slow
@pytest.mark.parametrize("info", [i for i in INFOS if i.name in INDUCTOR], ids=INDUCTOR)
def test_compiled_matches_eager_inductor_loop(info):
    """The loop path under inductor, with a scheduler: inductor froze changing Python floats
    passed as ``alpha=``/``value=``/lerp weights (SVAG/MSVAG diverged by 0.13 from step 3)."""
    _compare(info, False, "inductor")


# ---------------------------------------------------------------- what inductor makes of a step
# Issue 18: compiled MSGD/MSVAG steps ran 2.6x/5.5x slower than SGD's because of the C++ that
# inductor wrote for them, not because of graph breaks. These tests read that C++.


def _in_loops(code: str, token: str, header: str = "") -> list[str]:
    """Lines of the C++ kernels in ``code`` (inductor's output module) that contain ``token``
    inside a ``for`` loop (brace depth tracked line by line, as inductor formats its kernels);
    with ``header``, only inside a loop whose ``for`` line contains it (e.g. its bound)."""
    hits: list[str] = []
    for src in code.split('extern "C"')[1:]:
        src = src.split("'''")[0]
        depth, loops = 0, []  # loops: [depth at the `for`, entered, header matches]
        for line in src.splitlines():
            if any(loop[2] for loop in loops) and token in line:
                hits.append(line.strip())
            if "for(" in line or "for (" in line:
                loops.append([depth, False, header in line])
            depth += line.count("{") - line.count("}")
            for loop in loops:
                loop[1] = loop[1] or depth > loop[0]
            while loops and loops[-1][1] and depth <= loops[-1][0]:
                loops.pop()
    return hits


def _compiled_beside_eager(cls, shapes, lr: float, seed: int):  # type: ignore[no-untyped-def]
    """One ``torch.compile(opt.step)`` of ``cls`` on fresh parameters of ``shapes`` and one eager
    step of a twin on the same data: (compiled parameters, eager parameters, inductor's code)."""
    from torch._inductor.utils import run_and_get_code

    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    ref = [p.detach().clone().requires_grad_() for p in params]
    opt, eager = cls(params, lr=lr), cls(ref, lr=lr)
    for p, q in zip(params, ref):
        p.grad = torch.randn(p.shape, generator=gen)
        q.grad = p.grad.clone()
    _, code = run_and_get_code(torch.compile(opt.step))
    eager.step()
    return params, ref, "\n".join(code)


def test_in_loops_reads_inductor_cpp():
    code = ('extern "C" void kernel(float* p)\n{\n    {\n        auto a = std::pow(2.0, 3.0);\n'
            '        for(int64_t x0=0; x0<8; x0+=8)\n        {\n            auto b = std::pow(a, 2.0);\n'
            '        }\n        auto c = std::pow(a, 4.0);\n    }\n}\n\'\'\'')
    assert _in_loops(code, "pow(") == ["auto b = std::pow(a, 2.0);"]
    assert _in_loops(code, "pow(", header="x0<8") == ["auto b = std::pow(a, 2.0);"]
    assert _in_loops(code, "pow(", header="x0<16") == []


def test_step_scalars_are_computed_once_per_tensor_not_per_element():
    """MSGD's bias-corrected step ``-lr / (1 - beta^k)`` is a 0-d tensor expression while
    compiling (the step counter is a tensor). Inductor inlined it into the update loop, one
    double ``pow`` per 8 floats (MSGD compiled: 2.6x slower than eager, issue 18); stacked by the
    list ops (``steepest.backend.ops._once``) it is a buffer written once per tensor. (One
    inductor compile of two small tensors: ~5-15 s on 2 cores.)"""
    from torch._inductor.utils import run_and_get_code

    from steepest import MSGD

    params = [torch.randn(64).requires_grad_(), torch.randn(40).requires_grad_()]
    ref = [p.detach().clone().requires_grad_() for p in params]
    opt, eager = MSGD(params, lr=0.1), MSGD(ref, lr=0.1)
    for p, q in zip(params, ref):
        p.grad = torch.randn(p.shape)
        q.grad = p.grad.clone()
    opt.step(), eager.step()  # lazy state; the compiled step below sees step = 1 -> 2
    _, code = run_and_get_code(torch.compile(opt.step))
    eager.step()
    text = "\n".join(code)
    assert "pow(" in text  # the coefficient is computed in the graph ...
    assert _in_loops(text, "pow(") == []  # ... but not per element
    for p, q in zip(params, ref):  # float32; the same formula, fused: a few ulp
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_gamma_closed_form_and_no_scalar_isnan(backend):
    """SVAG/M-SVAG's factor ``gamma = m^2/(m^2 + e)`` (:func:`steepest.optim.noise._gamma_`, the
    compiled and DTensor form) at its edges, eager and compiled: 0/0 (m = v = 0) and the
    overflow cases (e = NaN from inf - inf, e = inf) give 0, e = 0 gives exactly 1 also for
    |m| > 1 (where flooring e at ``tiny`` made subnormals, ~15x slower on CPUs), and inductor's
    C++ has no per-element ``isnan`` (a scalar loop per 8 floats: ~15x slower, issue 18)."""
    from steepest.backend import LoopOps
    from steepest.optim.noise import _gamma_

    nan, inf = math.nan, math.inf
    e = torch.tensor([0.0, 1.0, 0.0, nan, inf, 2.0, 0.0, 3.0])
    m = torch.tensor([1.0, 2.0, 0.0, 5.0, 3.0, 0.0, -7.0, -1.0])
    want = torch.tensor([1.0, 0.8, 0.0, 0.0, 0.0, 0.0, 1.0, 0.25])

    def gamma(e: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return _gamma_([e.clone()], [m], LoopOps)[0]

    if backend == "inductor":
        from torch._inductor.utils import run_and_get_code

        got, code = run_and_get_code(torch.compile(gamma), e, m)
        assert _in_loops("\n".join(code), "isnan") == []
    elif backend == "eager":
        got = gamma(e, m)
    else:
        got = torch.compile(gamma, backend=backend)(e, m)
    # 0.8 = 1/(1 + 1/2/2) and 0.25 = 1/(1 + 3) are rounded once or twice: 1 ulp
    torch.testing.assert_close(got, want, rtol=1.2e-7, atol=0.0)
    assert got[0] == 1.0 and got[6] == 1.0  # exactly


@pytest.mark.parametrize("block", [None, 2, 4], ids=["one-stage", "block2", "block4"])
@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_compiled_coordinate_descent_moves_the_first_maximal_coordinate(scope, block, monkeypatch):
    """Compiled, l1 steepest descent moves one coordinate (per scope) through an index tensor
    (``L1._coordinates_on_device``: no one-hot unit tensors, no guard on the winner). By the
    definition [BPL20, Eq. 33]: ``x_ij -= lr ||g||_inf sign(g_ij)`` at the first maximal |g_ij|
    in concatenation order, ties included, under aot_eager (the graph inductor gets). ``block``:
    the two-stage argmax of ``policy.absargmax`` with blocks of 2 or 4 elements (ties in
    different blocks; a 6-element tensor in blocks of 4 has a tail of 2)."""
    from steepest import CoordinateDescent
    from steepest.backend import policy

    if block is not None:
        monkeypatch.setattr(policy, "_ARGMAX_BLOCK", block)

    params = [torch.zeros(2, 3).requires_grad_(), torch.zeros(4).requires_grad_()]
    opt = CoordinateDescent(params, lr=0.5, scope=scope)
    step = torch.compile(opt.step, backend="aot_eager")
    grads = [  # |g| = 3 three times: tensor 0 at flat index 1 and 4, tensor 1 at index 2
        (torch.tensor([[1.0, -3.0, 2.0], [0.0, 3.0, -1.0]]), torch.tensor([1.0, 2.0, 3.0, -3.0])),
        (torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]), torch.tensor([0.0, -2.0, 0.0, 2.0])),
    ]
    want = [torch.zeros(2, 3), torch.zeros(4)]
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        step()
        gmax = [g.abs().max() for g in gs]
        movers = range(2) if scope == "per_tensor" else [max(range(2), key=lambda i: (gmax[i], -i))]
        for i in movers:
            j = int(gs[i].abs().reshape(-1).argmax())  # first maximal
            want[i].view(-1)[j] -= 0.5 * gmax[i] * gs[i].reshape(-1)[j].sign()
        for p, w in zip(params, want):
            torch.testing.assert_close(p.detach(), w, rtol=0, atol=0)  # lr 0.5: the product is exact


# ---------------------------------------- two-stage reductions while compiling (issue 18)
# CoordinateDescent and BlockNormalizedSGD compiled ran 4.4x and 1.3x their eager steps: an
# argmax over every tensor (inductor carries an index per lane) that did not fuse with the max,
# and l2 norms summed through inductor's cascade helper (a store and reload per 16 floats).


def _ties_nan_inf(n: int, gen: torch.Generator, k: int) -> torch.Tensor:
    x = torch.randint(-3, 4, (n,), generator=gen).float()  # few values: many ties
    if k % 3 == 0:
        x[int(torch.randint(0, n, (1,), generator=gen))] = math.nan
    if k % 5 == 0:
        x[int(torch.randint(0, n, (1,), generator=gen))] = -math.inf
    return x


@pytest.mark.parametrize("backend", ["none", "aot_eager", "inductor"])
def test_absargmax_is_the_first_maximal_coordinate(backend, monkeypatch):
    """``policy.absargmax`` while compiling (blocks of 8 elements: one-block tensors, whole
    blocks, tails) gives ``max|x|`` and ``torch.argmax(|x|)``: the first maximal coordinate, NaN
    as the maximum, -inf as +inf, 0 for an empty tensor; ``none``: the two-stage function
    itself, eagerly. (The inductor compile: ~10 s on 2 cores.)"""
    from steepest.backend import policy

    monkeypatch.setattr(policy, "_ARGMAX_BLOCK", 8)
    gen = torch.Generator().manual_seed(0)
    sizes = [1, 7, 8, 9, 16, 21, 40, 0, 63]
    xs = [_ties_nan_inf(n, gen, k) if n else torch.zeros(0) for k, n in enumerate(sizes)]

    def run(xs: list[torch.Tensor]):
        return policy.absargmax(xs)

    if backend == "none":
        pairs = [policy._absargmax_blocks(x) if x.numel() else (x.new_zeros(()), None) for x in xs]
        maxes, idx = torch.stack([m for m, _ in pairs]), [j for _, j in pairs]
    else:
        maxes, idx = torch.compile(run, backend=backend, fullgraph=True)(xs)
    for x, m, j in zip(xs, maxes, idx):
        if not x.numel():
            assert j is None and m == 0
            continue
        want = torch.argmax(x.abs())
        assert int(j) == int(want), (x, j, want)
        torch.testing.assert_close(m, x.abs().amax(), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("list_ops", ["LoopOps", "ForeachOps"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_compiled_norms_in_blocks_match_vector_norm(dtype, list_ops, monkeypatch):
    """``LoopOps.norms`` (and ``ForeachOps.norms``, which takes them while compiling on CPU) for
    l1 and l2 while compiling sums in blocks (``ops._compiled_norm``,
    blocks of 16 here): the same norms as the eager kernels to rounding (float32: ~n eps
    worst case, a few eps in practice; half precision accumulates in float32 as ATen and rounds
    once, so within half an ulp of each other: 2^-8 for bfloat16), the dtype of the input, 0 for
    an empty tensor, under aot_eager."""
    from steepest.backend import ops

    monkeypatch.setattr(ops, "_SUM_BLOCK", 16)
    list_ops_cls = getattr(ops, list_ops)
    blocked, calls = ops._compiled_norm, []

    def spy(x: torch.Tensor, ord: float) -> torch.Tensor:
        calls.append(x.numel())
        return blocked(x, ord)

    monkeypatch.setattr(ops, "_compiled_norm", spy)
    gen = torch.Generator().manual_seed(1)
    xs = [(3 * torch.randn(n, generator=gen)).to(dtype) for n in (5, 16, 17, 100, 1000, 0)]
    xs.append((3 * torch.randn(7, 9, generator=gen)).to(dtype).t())  # not contiguous
    tol = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    for ord in (1.0, 2.0):
        got = torch.compile(lambda xs, o=ord: list_ops_cls.norms(xs, o), backend="aot_eager", fullgraph=True)(xs)
        want = list_ops_cls.norms(xs, ord)  # eager: the ATen kernels
        assert got.dtype == want.dtype == dtype
        torch.testing.assert_close(got, want, rtol=tol, atol=0)
        assert got[5] == 0
    assert calls == [x.numel() for x in xs] * 2  # every tensor through the blocked sums


def test_compiled_coordinate_descent_has_no_argmax_over_a_whole_tensor():
    """The C++ of a compiled CoordinateDescent step on a 5000- and a 3000-element tensor: no
    argmax loop over a whole tensor (per element, inductor's argmax costs ~4x a max; there were
    two reads per tensor), one coordinate moved as eager moves it (exactly: one product)."""
    from steepest import CoordinateDescent

    params, ref, text = _compiled_beside_eager(CoordinateDescent, [(50, 100), (3000,)], lr=0.5, seed=2)
    assert "argmax" in text  # the coordinate is chosen in the graph ...
    assert _in_loops(text, "argmax", header="<static_cast<int64_t>(5000L)") == []  # ... not per element
    assert _in_loops(text, "argmax", header="<static_cast<int64_t>(3000L)") == []
    for p, q in zip(params, ref):  # lr 0.5: lr |g_j| is exact, so p_j - lr |g_j| sign rounds once in any order
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["BlockNormalizedSGD", "ScaledSignSGD"])
def test_compiled_norms_take_no_cascade_sum(name):
    """The C++ of a compiled BlockNormalizedSGD (l2 norms) and ScaledSignSGD (||g||_1) step on
    tensors of 10,000 and 6,000 elements: no ``cascade_sum_combine`` (inductor's helper for float
    sums of more than 4096 elements, ~3.5x the time of ATen's norm), the step as eager's to
    rounding: the norms are float32 sums in another order (eager's ``|g|.sum()`` of 16,000
    floats is itself ~4e-6 off in relative terms, and ScaledSignSGD's step is ``lr ||g||_1``)."""
    import steepest

    params, ref, text = _compiled_beside_eager(getattr(steepest, name), [(100, 100), (6000,)], lr=0.1, seed=3)
    assert "tmp_acc0_vec + " in text  # the sums are in the graph, vectorized ...
    assert "cascade_sum_combine" not in text  # ... without the cascade helper
    rtol = 1e-5 if name == "ScaledSignSGD" else 1e-6
    for p, q in zip(params, ref):
        torch.testing.assert_close(p, q, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("how", ["load_state_dict", "reassign", "clear", "replace"])
def test_compiled_step_sees_a_replaced_state(how):
    """A compiled step after the state is replaced (loaded from a checkpoint, reassigned,
    cleared, or one entry replaced by hand) updates the new state, as the eager step does:
    dynamo guards what the step reads from ``self.state`` (a cache of the state dicts that
    bypassed it went stale here silently; docs/performance.md). Against the same sequence run
    eagerly; tolerance 1e-6: ``aot_eager`` decomposes ``lerp_`` (~1 ulp)."""
    import collections
    import copy

    import steepest

    def run(compiled: bool) -> tuple[list[torch.Tensor], list[dict]]:
        torch._dynamo.reset()
        g = torch.Generator().manual_seed(3)
        ps = [torch.randn(7, generator=g).requires_grad_() for _ in range(6)]
        opt = steepest.MSGD(ps, lr=1e-2)
        other = steepest.MSGD([p.detach().clone().requires_grad_() for p in ps], lr=1e-2)
        for k in (11, 12, 13):  # a checkpoint of another history
            _grads(other.param_groups[0]["params"], k)
            other.step()
        sd = copy.deepcopy(other.state_dict())
        _grads(ps, 0)
        opt.step()
        step = torch.compile(opt.step, backend="aot_eager") if compiled else opt.step
        for k in (1, 2):
            _grads(ps, k)
            step()
        if how == "load_state_dict":
            opt.load_state_dict(sd)
        elif how == "reassign":
            opt.state = collections.defaultdict(dict)
        elif how == "clear":
            opt.state.clear()
        else:
            opt.state[ps[0]] = {}
        for k in (3, 4):
            _grads(ps, k)
            step()
        return [p.detach().clone() for p in ps], [dict(opt.state[p]) for p in ps]

    (want, want_st), (got, got_st) = run(False), run(True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(got_st, want_st):
        assert a.keys() == b.keys()
        for key in b:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("info", _ONE_PER_CLASS, ids=[i.name for i in _ONE_PER_CLASS])
def test_compiled_step_takes_no_state_tensor_as_an_input(info):
    """The state tensors are graph attributes, not inputs: ``StepOptimizer._init_group`` is run
    eagerly by dynamo, which then marks the state static and guards it by id. As inputs, each
    one was fetched per call by an O(k) walk of ``self.state``'s keys (1.7 ms a step for 1,000
    tensors; docs/performance.md). The steady-state graph takes only the gradients (parameters
    are static already). A replaced state recompiles: test_compiled_step_sees_a_replaced_state."""
    inputs: list[int] = []

    def backend(gm, example_inputs):
        inputs.append(sum(node.op == "placeholder" for node in gm.graph.nodes))
        return gm.forward

    params = _params()
    opt = info.make(params)
    step = torch.compile(opt.step, backend=backend)
    for t in range(3):
        _grads(params, t)
        if info.prepare:
            info.prepare(params)
        step()
    assert inputs and inputs[-1] == len(params), f"graph inputs per compiled graph: {inputs}"
