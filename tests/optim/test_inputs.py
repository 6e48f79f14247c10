"""Inputs torch.optim accepts and so must we: old checkpoints whose ``step`` is a Python
number, numpy scalars as hyper-parameters, and a tensor learning rate (issue 12)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.optim.optim_infos import all_infos
from tests.optim.test_conformance import _params, _run, _state_tensors

INFOS = all_infos()
ids = [i.name for i in INFOS]


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_old_checkpoint_with_python_number_step_resumes(info):
    """torch.optim's older format stored ``state["step"]`` as a Python number; torch's own
    optimizers convert it on load. The resumed run must equal the uninterrupted one bit for bit
    (same kernels on the same data: the step count 3 is exact in float32 and as a float)."""
    a = _params()
    opt_a = _run(info, a, 3)
    sd = copy.deepcopy(opt_a.state_dict())
    had_step = False
    for st in sd["state"].values():
        if "step" in st:
            st["step"] = float(st["step"])  # the old format
            had_step = True
    b = [p.detach().clone().requires_grad_(p.requires_grad) for p in a]
    opt_b = info.make(b)
    opt_b.load_state_dict(sd)
    _run(info, a, 2, start=3, opt=opt_a)
    _run(info, b, 2, start=3, opt=opt_b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for (k, x), (_, y) in zip(_state_tensors(opt_a), _state_tensors(opt_b)):
        assert torch.equal(x, y), k
    if had_step:
        steps = [st["step"] for st in opt_b.state.values() if "step" in st]
        assert all(isinstance(s, torch.Tensor) and s.dtype == torch.float32 for s in steps)


def _numpy_kwargs(info):
    """The info's numeric options as numpy float32/int64 scalars (tuples element-wise)."""
    out = {}
    for k, v in info.kwargs.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, tuple)):
            out[k] = v
        elif isinstance(v, tuple):
            out[k] = tuple(np.float32(x) for x in v)
        elif isinstance(v, int):
            out[k] = np.int64(v)
        else:
            out[k] = np.float32(v)
    return out


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_numpy_scalar_hyperparameters(info):
    """``lr=np.float32(1e-3)`` and friends are accepted (torch.optim accepts them) and give the
    same run as the Python numbers they hold (the same float values reach the same kernels)."""
    kw = _numpy_kwargs(info)
    a, b = _params(), _params()
    opt_a = info.make(a, lr=np.float32(info.lr), **kw)
    plain = {k: (v.item() if isinstance(v, np.generic) else
                 tuple(x.item() for x in v) if isinstance(v, tuple) else v) for k, v in kw.items()}
    opt_b = info.make(b, lr=float(np.float32(info.lr)), **plain)
    _run(info, a, 3, opt=opt_a)
    _run(info, b, 3, opt=opt_b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for g in opt_a.param_groups:
        assert not any(isinstance(v, np.generic) for v in g.values())
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        info.make(_params(), lr=np.float32(-1.0))


@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_tensor_lr(info):
    """A 0-d tensor ``lr`` (what torch recommends for compiled optimizers) gives the float run.
    Tolerance: a tensor lr can route a product through a different kernel (tensor x tensor vs
    tensor x scalar), so float64 results may differ in the last bits; 1e-12 relative."""
    a, b = _params(), _params()
    opt_a = info.make(a, lr=torch.tensor(info.lr, dtype=torch.float64))
    opt_b = info.make(b, lr=info.lr)
    _run(info, a, 3, opt=opt_a)
    _run(info, b, 3, opt=opt_b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="lr must be a scalar"):
        info.make(_params(), lr=torch.ones(2))


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("info", INFOS, ids=ids)
def test_meta_device_steps_without_host_reads(info, foreach):
    """Parameters on the meta device (shape-only tracing, deferred initialization): a step must
    not read values (``.item()`` raises there); the default non-finite policy checks nothing."""
    ps = [torch.empty(4, 3, device="meta", requires_grad=True), torch.empty(5, device="meta", requires_grad=True)]
    opt = info.make(ps, foreach=foreach)
    for _ in range(2):
        for p in ps:
            p.grad = torch.empty_like(p)
        if info.prepare:
            info.prepare(ps)
        opt.step()
    assert all(p.device.type == "meta" and p.shape == s for p, s in zip(ps, [(4, 3), (5,)]))
