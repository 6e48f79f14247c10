"""Issue 14, optimizer side: param-group scopes, schedulers that cycle momentum, clear errors for
a bad norm and for another optimizer's state dict."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import steepest
from steepest import EFSignSGD, Lion, ScaledSignSGD, SignSGD, SteepestDescent
from steepest.norms import L2, Linf, Lp
from steepest.optim.base import STATE_TAG


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _split(model: nn.Module, **extra) -> list[dict]:
    """The usual training-script split: weights in one group, biases (no decay) in another."""
    w = [p for n, p in model.named_parameters() if n.endswith("weight")]
    b = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": w, **extra}, {"params": b, **extra}]


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 5) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


# ------------------------------------------------------------------ scope over param groups
def test_scope_all_groups_makes_grouping_irrelevant():
    # The case: splitting biases off changes ScaledSignSGD's update (the l1 norm is over
    # the group). lr = 0.05 makes that difference large within 5 steps.
    ref = _model()
    _train(ref, ScaledSignSGD(ref.parameters(), lr=0.05))

    per_group = _model()
    _train(per_group, ScaledSignSGD(_split(per_group), lr=0.05, scope="group"))
    assert _max_diff(ref, per_group) > 0.1  # the grouping changes the update with a norm per group

    joint = _model()
    _train(joint, ScaledSignSGD(_split(joint), lr=0.05, scope="all_groups"))
    # Same numbers up to the order of the l1 partial sums (weights first, then biases, instead of
    # layer order): float32 rounding of a 5-term sum, amplified over 5 steps; far below the 0.1 above.
    assert _max_diff(ref, joint) < 1e-5


def test_default_scope_with_several_groups_is_quiet_and_keeps_the_per_group_norm():
    # Issue 21: a default never warns; the usual weight-decay split into two groups is a normal
    # use, and the default scope ("global") is the norm over each group, as scope="group".
    a, b = _model(), _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt_a = ScaledSignSGD(_split(a), lr=0.05)
        EFSignSGD(_split(_model()), lr=0.05)
        SteepestDescent(_split(_model()), lr=0.05, norm=L2(), mode="normalized")
        steepest.LpDescent(_split(_model()), lr=0.05, p=3.0, scaled=True)
        steepest.CoordinateDescent(_split(_model()), lr=0.05)
    _train(a, opt_a)
    _train(b, ScaledSignSGD(_split(b), lr=0.05, scope="group"))
    assert _max_diff(a, b) == 0.0  # the same kernels on the same data


def test_default_scope_is_quiet_when_a_group_is_added_later():
    m = _model()
    w = [p for n, p in m.named_parameters() if n.endswith("weight")]
    b = [p for n, p in m.named_parameters() if n.endswith("bias")]
    opt = SteepestDescent(w, lr=0.1, norm=L2(), mode="normalized")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.add_param_group({"params": b})
    assert opt.param_groups[1]["scope"] == "global"


def test_all_groups_against_the_definition_with_per_group_lr_and_weight_decay():
    # [BPL20, Eq. 11] over the concatenation of all groups: x -= lr_k (||g||_1 sign(g) + wd_k x)
    torch.manual_seed(3)
    ps = [torch.randn(4, 3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    gs = [torch.randn_like(p) for p in ps]
    groups = [{"params": ps[:2], "lr": 0.1, "weight_decay": 0.5}, {"params": ps[2:], "lr": 0.02}]
    opt = ScaledSignSGD(groups, scope="all_groups")
    before = [p.detach().clone() for p in ps]
    for p, g in zip(ps, gs):
        p.grad = g
    opt.step()
    l1 = sum(float(g.abs().sum()) for g in gs)
    for k, (p, x, g) in enumerate(zip(ps, before, gs)):
        lr, wd = (0.1, 0.5) if k < 2 else (0.02, 0.0)
        torch.testing.assert_close(p.detach(), (1 - lr * wd) * x - lr * l1 * torch.sign(g))


def test_all_groups_lr_zero_group_is_frozen_but_counts_in_the_norm():
    torch.manual_seed(4)
    ps = [torch.randn(5, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    gs = [torch.randn_like(p) for p in ps]
    opt = SteepestDescent([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.0}], lr=0.1,
                          norm=L2(), mode="normalized", scope="all_groups")
    x0, x1 = ps[0].detach().clone(), ps[1].detach().clone()
    for p, g in zip(ps, gs):
        p.grad = g
    opt.step()
    total = torch.cat(gs).norm()
    torch.testing.assert_close(ps[0].detach(), x0 - 0.1 * gs[0] / total)
    assert torch.equal(ps[1].detach(), x1)


def test_all_groups_ef_signsgd_against_the_definition():
    # [ScaledSign, Eq. 12] with d and ||p||_1 over every group: p = lr_k g + e, delta = ||p||_1/d sign(p)
    torch.manual_seed(5)
    ps = [torch.randn(3, 2, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    opt = EFSignSGD([{"params": [ps[0]], "lr": 0.1}, {"params": [ps[1]], "lr": 0.3}], scope="all_groups")
    xs = [p.detach().clone() for p in ps]
    es = [torch.zeros_like(p) for p in ps]
    for _ in range(3):
        gs = [torch.randn_like(p) for p in ps]
        for p, g in zip(ps, gs):
            p.grad = g
        opt.step()
        pt = [lr * g + e for lr, g, e in zip((0.1, 0.3), gs, es)]
        scale = sum(float(q.abs().sum()) for q in pt) / sum(q.numel() for q in pt)
        deltas = [scale * torch.sign(q) for q in pt]
        xs = [x - d for x, d in zip(xs, deltas)]
        es = [q - d for q, d in zip(pt, deltas)]
    for p, x in zip(ps, xs):
        torch.testing.assert_close(p.detach(), x)


def test_all_groups_needs_one_norm_and_a_supporting_optimizer():
    m = _model()
    opt = SteepestDescent([{"params": [m[0].weight], "norm": Lp(3)}, {"params": [m[2].weight]}],
                          lr=0.1, norm=Linf(), scope="all_groups")
    _model_grads(m)
    with pytest.raises(ValueError, match="must share norm, mode and beta"):
        opt.step()
    with pytest.raises(ValueError, match="scope='all_groups' is not supported by"):
        _NoJoint([torch.zeros(2, requires_grad=True)], {"lr": 0.1, "scope": "all_groups"})


class _NoJoint(steepest.optim.StepOptimizer):
    def _update(self, group, params, grads, states, foreach):  # pragma: no cover - never stepped
        pass


def _model_grads(m: nn.Module) -> None:
    for p in m.parameters():
        p.grad = torch.randn_like(p)


# ------------------------------------------------------------------ schedulers that cycle momentum
_WITH_MOMENTUM = {
    "MSVAG": lambda p: steepest.MSVAG(p, lr=0.01),
    "AdamStar": lambda p: steepest.AdamStar(p, lr=0.01),
    "MSGD": lambda p: steepest.MSGD(p, lr=0.01),
    "SVAG": lambda p: steepest.SVAG(p, lr=0.01),
    "SignSGD": lambda p: SignSGD(p, lr=0.01, momentum=0.9),
    "ScaledSignSGD": lambda p: ScaledSignSGD(p, lr=0.01),
    "Lion": lambda p: Lion(p, lr=0.01),
    "Stacey": lambda p: steepest.Stacey(p, lr=0.01),
    "AdamShuffled": lambda p: steepest.AdamShuffled(p, lr=0.01),
}


@pytest.mark.parametrize("name", list(_WITH_MOMENTUM))
def test_one_cycle_lr_cycles_momentum(name):
    m = _model()
    opt = _WITH_MOMENTUM[name](m.parameters())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10)
    key = "betas" if "betas" in opt.defaults else "momentum"
    seen = set()
    for _ in range(9):
        _train(m, opt, steps=1)
        sched.step()
        v = opt.param_groups[0][key]
        seen.add(round(v[0] if key == "betas" else v, 6))
    assert len(seen) > 3  # it is cycled (0.85 ... 0.95)
    assert all(torch.isfinite(p).all() for p in m.parameters())


@pytest.mark.parametrize("cls", [steepest.MSVAG, steepest.AdamStar, steepest.MSGD, steepest.SVAG])
def test_the_cycled_momentum_is_the_beta_the_update_uses(cls):
    # Setting the group's "momentum" (what schedulers do) must act exactly as constructing with
    # that beta, from the start of the run; so must a param group giving "beta".
    a, b, c = _model(), _model(), _model()
    opt_a = cls(a.parameters(), lr=0.01, beta=0.9)
    opt_a.param_groups[0]["momentum"] = 0.5
    opt_b = cls(b.parameters(), lr=0.01, beta=0.5)
    opt_c = cls([{"params": list(c.parameters()), "beta": 0.5}], lr=0.01)
    for m, o in ((a, opt_a), (b, opt_b), (c, opt_c)):
        _train(m, o, steps=4)
    assert _max_diff(a, b) == 0.0 and _max_diff(c, b) == 0.0  # the same kernels on the same data
    ref = _model()
    _train(ref, cls(ref.parameters(), lr=0.01, beta=0.9), steps=4)
    assert _max_diff(ref, b) > 0  # and beta does change the run (the test can fail)


def test_old_checkpoints_with_beta_still_load():
    m = _model()
    opt = steepest.MSVAG(m.parameters(), lr=0.01, beta=0.7)
    _train(m, opt, steps=2)
    sd = opt.state_dict()
    del sd[STATE_TAG]  # an older checkpoint: no tag, and the option named "beta"
    for g in sd["param_groups"]:
        g["beta"] = g.pop("momentum")
    fresh = steepest.MSVAG(m.parameters(), lr=0.01)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["momentum"] == 0.7 and "beta" not in fresh.param_groups[0]


def test_optimizer_without_momentum_refuses_cycle_momentum_clearly():
    m = _model()
    opt = EFSignSGD(m.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="momentum"):
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10)
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10, cycle_momentum=False)


# ------------------------------------------------------------------ clear errors
@pytest.mark.parametrize("bad", [42, 3.0, None, Linf, [1, 2]])
def test_a_bad_norm_says_what_a_norm_may_be(bad):
    with pytest.raises(ValueError, match=r"norm must be a steepest.norms.Norm instance .* a norm name"):
        SteepestDescent([torch.zeros(2, requires_grad=True)], norm=bad)


def test_norm_class_instead_of_instance_gets_a_hint():
    with pytest.raises(ValueError, match=r"did you mean Linf\(\)"):
        SteepestDescent([torch.zeros(2, requires_grad=True)], norm=Linf)


def _trained_state(opt_factory) -> dict:
    m = _model()
    opt = opt_factory(m.parameters())
    _train(m, opt, steps=2)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_adamw_state_into_lion_is_refused():
    sd = _trained_state(lambda p: torch.optim.AdamW(p, lr=1e-3))
    opt = Lion(_model().parameters(), lr=1e-4)
    with pytest.raises(ValueError, match=r"not from Lion: param group 0 has options \['amsgrad'"):
        opt.load_state_dict(sd)


def test_lion_state_into_signsgd_is_refused_tagged_or_not():
    sd = _trained_state(lambda p: Lion(p, lr=1e-4))
    assert sd[STATE_TAG] == "Lion"
    opt = SignSGD(_model().parameters(), lr=1e-3, momentum=0.9)
    with pytest.raises(ValueError, match="saved by Lion, not SignSGD"):
        opt.load_state_dict(sd)
    del sd[STATE_TAG]  # an untagged (older) Lion checkpoint: its "betas" give it away
    with pytest.raises(ValueError, match=r"not from SignSGD: param group 0 has options \['betas'\]"):
        opt.load_state_dict(sd)
    assert "betas" not in opt.param_groups[0]  # nothing was loaded


def test_foreign_state_keys_are_refused():
    sd = _trained_state(lambda p: SignSGD(p, lr=1e-3, momentum=0.9))
    del sd[STATE_TAG]
    for st in sd["state"].values():
        st["exp_avg_sq"] = torch.zeros_like(st["momentum_buffer"])
    opt = SignSGD(_model().parameters(), lr=1e-3, momentum=0.9)
    with pytest.raises(ValueError, match=r"parameter state has \['exp_avg_sq'\]"):
        opt.load_state_dict(sd)
    assert not opt.state  # refused before anything was loaded


def test_own_tagged_checkpoint_loads_after_options_changed_mid_run():
    # Momentum switched off mid-run leaves a momentum buffer the new options would not create:
    # a tagged checkpoint of the same class is trusted, whatever its state layout.
    m = _model()
    opt = SignSGD(m.parameters(), lr=1e-3, momentum=0.9)
    _train(m, opt, steps=2)
    opt.param_groups[0]["momentum"] = 0.0
    sd = copy.deepcopy(opt.state_dict())
    fresh = SignSGD(_model().parameters(), lr=1e-3)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["momentum"] == 0.0 and len(fresh.state) == len(opt.state)


@pytest.mark.parametrize("factory", [
    lambda p: SignSGD(p, lr=1e-3, momentum=0.9), lambda p: Lion(p, lr=1e-4),
    lambda p: steepest.MSVAG(p, lr=0.01), lambda p: steepest.Stacey(p, lr=0.01),
    lambda p: EFSignSGD(p, lr=0.01), lambda p: steepest.AdamShuffled(p, lr=0.01),
    lambda p: ScaledSignSGD(_split_params(p), lr=1e-3, scope="all_groups"),
], ids=["Signum", "Lion", "MSVAG", "Stacey", "EFSignSGD", "AdamShuffled", "ScaledSignSGD-all_groups"])
@pytest.mark.parametrize("tagged", [True, False])
def test_own_checkpoints_load_tagged_or_untagged(factory, tagged):
    # Untagged = written before the tag existed; it must still load, and resume bit-exactly.
    m = _model()
    opt = factory(m.parameters())
    _train(m, opt, steps=2)
    sd = copy.deepcopy(opt.state_dict())  # state_dict() holds references to the live buffers
    if not tagged:
        del sd[STATE_TAG]
    m2 = _model()
    m2.load_state_dict(m.state_dict())
    opt2 = factory(m2.parameters())
    opt2.load_state_dict(sd)
    _train(m, opt, steps=2)
    _train(m2, opt2, steps=2)
    if isinstance(opt, steepest.AdamShuffled):
        return  # its permutations come from the global generator, not resumed here
    assert _max_diff(m, m2) == 0.0  # the same kernels on the same data


def _split_params(params) -> list[dict]:
    ps = list(params)
    return [{"params": ps[::2]}, {"params": ps[1::2]}]


# ------------------------------------------------------------------ the sweep's text problem
def test_char_transformer_problem_is_causal_and_starts_near_uniform():
    from steepest.problems import CHAR_VOCAB, get_problem

    inst = get_problem("pysrc-char-transformer").build(seed=0)
    x, y = inst.train.tensors
    assert x.shape[1] == 32 and torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    assert int(x.max()) < CHAR_VOCAB and int(x.min()) >= 0
    out = inst.model(x[:4])
    assert out.shape == (4, 32, CHAR_VOCAB)
    # causal: changing the last character does not change the logits at earlier positions (the
    # masked scores add exact zeros; the tolerance allows a fused attention kernel to reorder sums)
    x2 = x[:4].clone()
    x2[:, -1] = (x2[:, -1] + 1) % CHAR_VOCAB
    torch.testing.assert_close(inst.model(x2)[:, :-1], out[:, :-1], rtol=1e-5, atol=1e-5)
    # small init: the initial loss is within 0.5 nats of the uniform log(96) = 4.56
    assert abs(inst.evaluate("train")["loss"] - torch.log(torch.tensor(96.0)).item()) < 0.5
