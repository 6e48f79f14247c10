"""create_optimizer (issue 20): role detection by what a parameter does, one optimizer for all
roles (scheduler, state_dict, zero_grad), and each recipe's update per role against its definition."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import steepest
from steepest.recipes import RECIPES, RecipeOptimizer, create_optimizer, detect_roles

V, D, T = 11, 8, 6


class TinyGPT(nn.Module):
    """Token embedding, a plain-parameter positional embedding read by slicing, a fused qkv matrix
    used through slices of it, an MLP and an untied head."""

    def __init__(self, tied: bool = False, pos_by_add: bool = False) -> None:
        super().__init__()
        self.tied, self.pos_by_add = tied, pos_by_add
        self.tok = nn.Embedding(V, D)
        self.pos = nn.Parameter(0.1 * torch.randn(T, D))
        self.qkv = nn.Parameter(0.3 * torch.randn(3 * D, D))  # used as W[:D], W[D:2D], W[2D:]
        self.ln = nn.LayerNorm(D)
        self.fc = nn.Linear(D, 2 * D)
        self.proj = nn.Linear(2 * D, D)
        self.unused = nn.Parameter(torch.zeros(D, D))
        if not tied:
            self.out = nn.Linear(D, V, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx)
        x = x + self.pos if self.pos_by_add else x + self.pos[: idx.shape[1]]
        h = self.ln(x)
        q, k, v = (F.linear(h, self.qkv[i * D : (i + 1) * D]) for i in range(3))
        x = x + F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(F.gelu(self.fc(x)))
        return x @ self.tok.weight.T if self.tied else self.out(x)


def _data(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, V, (n, T), generator=g)
    return x, torch.roll(x, -1, 1)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


# ------------------------------------------------------------------------------------ roles
@pytest.mark.parametrize("pos_by_add", [False, True])
def test_roles_by_what_parameters_do(pos_by_add):
    torch.manual_seed(0)
    m = TinyGPT(pos_by_add=pos_by_add)
    r = detect_roles(m, _data()[0])
    assert r.method == "forward pass"
    assert r.roles["tok.weight"] == "embedding"
    assert r.roles["pos"] == "embedding"  # a plain 2-D parameter, indexed or added: not "hidden"
    assert ("added" in r.how["pos"]) == pos_by_add
    assert r.roles["qkv"] == "hidden"  # sliced, but the slices are matmul weights
    assert r.roles["fc.weight"] == r.roles["proj.weight"] == "hidden"
    assert r.roles["out.weight"] == "head"
    assert r.roles["fc.bias"] == r.roles["ln.weight"] == "vector"
    assert "not used" in r.how["unused"] and r.roles["unused"] == "hidden"


def test_tied_head_is_an_embedding_noted_as_tied():
    m = TinyGPT(tied=True)
    r = detect_roles(m, _data()[0])
    assert r.roles["tok.weight"] == "embedding" and "tok.weight" in r.tied
    assert "head" not in r.roles.values()


def test_conv_kernels_and_a_concatenated_class_token():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.cls = nn.Parameter(torch.zeros(1, 1, 4))
            self.mix = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x).flatten(2).transpose(1, 2)  # (B, tokens, 4)
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)
            return self.fc(self.mix(h)[:, 0])

    r = detect_roles(Net(), torch.randn(2, 3, 6, 6))
    assert r.roles["conv.weight"] == "conv" and r.roles["cls"] == "embedding"
    assert r.roles["mix.weight"] == "hidden" and r.roles["fc.weight"] == "head"


def test_detection_pass_has_no_side_effects():
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    buffers = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(16, 4)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    r = detect_roles(net, x)
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is untouched
    assert all(torch.equal(v, buffers[k]) for k, v in net.state_dict().items()) and net.training
    assert r.roles == {"0.weight": "hidden", "0.bias": "vector", "1.weight": "vector", "1.bias": "vector",
                       "3.weight": "head", "3.bias": "vector"}


def test_fallback_without_example_input_uses_types_and_names():
    r = detect_roles(TinyGPT())
    assert r.method == "module types and names"
    assert r.roles["tok.weight"] == "embedding" and r.roles["pos"] == "embedding"
    assert r.roles["out.weight"] == "head" and r.roles["fc.weight"] == "hidden"
    assert detect_roles(TinyGPT(), head_module="proj").roles["proj.weight"] == "head"
    opt = create_optimizer(TinyGPT(), "adamw")
    assert "module types and names" in str(opt) and "example_input" in str(opt)


def test_roles_override_and_errors():
    m = TinyGPT()
    r = detect_roles(m, _data()[0], roles={"pos": "hidden", "out.weight": "embedding"})
    assert r.roles["pos"] == "hidden" and r.roles["out.weight"] == "embedding"
    with pytest.raises(ValueError, match="'poss' is not a trainable parameter"):
        detect_roles(m, roles={"poss": "embedding"})
    with pytest.raises(ValueError, match="must be one of"):
        detect_roles(m, roles={"pos": "positional"})


# ------------------------------------------------------------------------------------ one optimizer
@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_is_one_optimizer_over_every_parameter(name):
    torch.manual_seed(0)
    m = TinyGPT()
    x, y = _data()
    opt = create_optimizer(m, name, example_input=x)
    assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt, RecipeOptimizer)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters()) and len(ids) == len(set(ids))
    # the groups are the children's very dicts (so schedulers reach them)
    child_groups = [g for c in opt.children for g in c.param_groups]
    assert all(a is b for a, b in zip(opt.param_groups, child_groups))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    _loss(m, x, y).backward()
    opt.step()
    moved = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert moved == set(before) - {"unused"}  # every parameter with a gradient moves
    opt.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    text = str(opt)
    for role in ("embedding", "hidden", "head", "vector"):
        assert role in text
    assert "pos" in text and "weight decay" in text


def test_scheduler_writes_the_children_lrs():
    m = TinyGPT()
    opt = create_optimizer(m, "muon", lr=0.04, example_input=_data()[0])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = _data()
    _loss(m, x, y).backward()
    opt.step()
    sched.step()
    lrs = [g["lr"] for c in opt.children for g in c.param_groups]
    assert len(lrs) == 4 and all(lr == 0.02 for lr in lrs)


@pytest.mark.parametrize("name", ["muon", "steepest", "adamw", "Stacey"])
def test_state_dict_round_trip_resumes_bit_exactly(name):
    torch.manual_seed(0)
    x, y = _data()
    kw = {"lr": 1e-2} if name == "Stacey" else {}
    m = TinyGPT()
    opt = create_optimizer(m, name, example_input=x, **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))

    def steps(model: nn.Module, o: torch.optim.Optimizer, s: torch.optim.lr_scheduler.LRScheduler, n: int) -> None:
        for _ in range(n):
            o.zero_grad()
            _loss(model, x, y).backward()
            o.step()
            s.step()

    steps(m, opt, sched, 3)
    saved = copy.deepcopy((m.state_dict(), opt.state_dict(), sched.state_dict()))
    assert set(saved[1]) >= {"state", "param_groups"}  # torch's format, over all children
    steps(m, opt, sched, 3)
    m2 = TinyGPT()
    m2.load_state_dict(saved[0])
    opt2 = create_optimizer(m2, name, example_input=x, **kw)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    steps(m2, opt2, sched2, 3)
    for (n, a), b in zip(m.named_parameters(), m2.parameters()):
        assert torch.equal(a, b), n  # same kernels, same data, same order: bitwise


def test_state_dict_of_another_recipe_is_refused():
    m = TinyGPT()
    sd = create_optimizer(m, "muon").state_dict()
    with pytest.raises(ValueError, match="saved by a recipe of"):
        create_optimizer(m, "lion").load_state_dict(sd)
    with pytest.raises(ValueError, match="not saved by a RecipeOptimizer"):
        create_optimizer(m, "lion").load_state_dict({"state": {}, "param_groups": []})


# ------------------------------------------------------------------------------------ the updates
def _first_step(name: str, lr: float) -> tuple[TinyGPT, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    m = TinyGPT()
    x, y = _data()
    opt = create_optimizer(m, name, lr=lr, example_input=x)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    _loss(m, x, y).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    opt.step()
    return m, before, grads


@pytest.mark.parametrize("name", ["adamw", "lion", "signum"])
def test_first_step_is_a_sign_step_for_adamw_lion_signum(name):
    # From zero state: AdamW's m/(sqrt(v)+eps) = g/(|g|+eps) (bias corrections cancel), Lion's
    # interpolation (1-b1) g and Signum's (1-b) g have the sign of g: x1 = x0 - lr sign(g).
    lr = 1e-2
    m, before, grads = _first_step(name, lr)
    for n, p in m.named_parameters():
        if n not in grads:
            continue
        g = grads[n]
        expected = before[n] - lr * torch.sign(g)
        # AdamW's eps=1e-8 shortens the step by lr eps/|g| <= 1e-6 where |g| > 1e-4
        big = g.abs() > 1e-4
        torch.testing.assert_close(p.detach()[big], expected[big], rtol=0, atol=2e-6)


def test_muon_recipe_orthogonalizes_hidden_matrices_and_adam_steps_the_rest():
    lr = 1e-2
    m, before, grads = _first_step("muon", lr)
    for n in ("tok.weight", "pos", "out.weight", "fc.bias"):  # AdamW's first step: lr sign(g)
        big = grads[n].abs() > 1e-4  # eps's share lr eps/|g| <= 1e-6 there
        torch.testing.assert_close((before[n] - m.get_parameter(n).detach())[big],
                                   lr * torch.sign(grads[n])[big], rtol=0, atol=2e-6)
    # hidden matrices: steepest.Muon with adjust_lr_fn="match_rms_adamw" (Liu et al. 2025,
    # Sec. 2.2: 0.2 lr sqrt(max(m, n)) times the polar factor), to float32 rounding (the recipe's
    # group may batch same-shaped matrices where the reference steps one: other CPUs differ there
    # in the last bit, so 1e-6 relative, not bitwise);
    # and near torch.optim.Muon's step (the reference) where the gradient is well conditioned
    for n in ("fc.weight", "proj.weight", "qkv"):
        ours = before[n] - m.get_parameter(n).detach()
        w = before[n].clone().requires_grad_(True)
        w.grad = grads[n].clone()
        steepest.Muon([w], lr=lr, weight_decay=0.0, adjust_lr_fn="match_rms_adamw").step()
        torch.testing.assert_close(ours, before[n] - w.detach(), rtol=1e-6, atol=1e-9, msg=n)
        if n != "qkv":
            t = before[n].clone().requires_grad_(True)
            t.grad = grads[n].clone()
            torch.optim.Muon([t], lr=lr, weight_decay=0.0, adjust_lr_fn="match_rms_adamw").step()
            theirs = before[n] - t.detach()
            # torch's Newton-Schulz runs in bfloat16, ours in float32 on CPU: its rounding (2^-8)
            # grows over 5 iterations to a few percent of the step (measured: under 5% here)
            rel = float((ours - theirs).norm() / theirs.norm())
            assert rel < 0.08, (n, rel)


def test_weight_decay_on_matrices_only_and_recipe_defaults():
    m = TinyGPT()
    opt = create_optimizer(m, "muon", weight_decay=0.1, example_input=_data()[0])
    wd = {g["role"]: g["weight_decay"] for g in opt.param_groups}
    assert wd == {"hidden": 0.1, "embedding": 0.0, "head": 0.1, "vector": 0.0}
    opt = create_optimizer(m, "steepest")
    assert all(g["lr"] == RECIPES["steepest"].lr for g in opt.param_groups)
    assert all(g["weight_decay"] == RECIPES["steepest"].weight_decay for g in opt.param_groups
               if g["role"] in ("hidden", "head"))


def test_per_role_options_and_class_names():
    m = TinyGPT()
    opt = create_optimizer(m, "muon", head={"lr": 1e-3}, betas=(0.8, 0.95), example_input=_data()[0])
    g = {g["role"]: g for g in opt.param_groups}
    assert g["head"]["lr"] == 1e-3 and g["vector"]["betas"] == (0.8, 0.95)
    opt = create_optimizer(m, "SignSGD", momentum=0.5)
    assert type(opt.children[0]).__name__ == "SignSGD" and opt.param_groups[0]["momentum"] == 0.5
    assert steepest.create_optimizer is create_optimizer
    # an exact class name is the class, with its constructor's options; any other case the recipe
    opt = create_optimizer(m, "Lion", nonfinite="skip", betas=(0.9, 0.99))
    assert [type(c).__name__ for c in opt.children] == ["Lion"] and opt.recipe == "Lion"
    assert opt.param_groups[0]["nonfinite"] == "skip"
    assert create_optimizer(m, "LION").recipe == create_optimizer(m, "lion").recipe == "lion"
    muon = create_optimizer(m, "Muon", lr=0.02, adjust_lr_fn="original", nonmatrix_norm=steepest.norms.Linf())
    assert [type(c).__name__ for c in muon.children] == ["Muon"]


def test_one_cycle_scheduler_with_cycle_momentum_off():
    """OneCycleLR/CyclicLR cycle momentum through one key for all groups, which a recipe's mixed
    groups (Muon's momentum, AdamW's betas) cannot take: with cycle_momentum=False (the
    docstring's example) the lr follows the cycle in every group."""
    opt = create_optimizer(TinyGPT(), "muon", example_input=_data()[0])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                total_steps=10, cycle_momentum=False)
    first = [g["lr"] for g in opt.param_groups]
    opt.step()
    sched.step()
    assert all(g["lr"] > f for g, f in zip(opt.param_groups, first))  # warming up


def test_no_trainable_parameters_is_named():
    m = nn.Linear(3, 2)
    m.requires_grad_(False)
    for name in ("muon", "lion", "SignSGD"):
        with pytest.raises(ValueError, match="has no parameters that require grad"):
            create_optimizer(m, name)
        with pytest.raises(ValueError, match="has no parameters that require grad"):
            create_optimizer(nn.ReLU(), name)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "adam-ish"}, "unknown name 'adam-ish'"),
        ({"name": "muon", "lr": -1.0}, "lr must be a finite number > 0"),
        ({"name": "muon", "lr": float("nan")}, "lr must be a finite number > 0"),
        ({"name": "muon", "weight_decay": -0.1}, "weight_decay must be"),
        ({"name": "muon", "bogus": 1}, r"unknown option\(s\) \['bogus'\]"),
        ({"name": "muon", "head": 3}, "head= must be a dict"),
        ({"name": "muon", "head": {"learning_rate": 1e-3}}, r"head=: unknown group option\(s\) \['learning_rate'\]"),
        ({"name": "lion", "vector": {"lr": 0}}, r"vector=\{'lr': \.\.\.\} must be a finite number > 0"),
        ({"name": "SignSGD", "hidden": {"weight_decay": -1}}, r"hidden=\{'weight_decay'.*>= 0"),
        ({"name": "SignSGD", "hidden": {"momentm": 0.9}}, r"unknown group option\(s\) \['momentm'\]"),
    ],
)
def test_bad_input_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_optimizer(TinyGPT(), **kwargs)


def test_a_wrong_example_input_says_where_it_failed():
    with pytest.raises(RuntimeError, match="forward pass on example_input that detects"):
        create_optimizer(TinyGPT(), "muon", example_input=torch.zeros(2, 3, 4))


def test_class_name_summary_says_where_the_lr_came_from():
    text = str(create_optimizer(TinyGPT(), "SignSGD"))
    assert "SignSGD's default" in text
