"""Per-layer geometry: classify, layer_groups, Modular's constrained (Scion) step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from steepest import Modular, Spectral, layer_groups
from steepest.norms import ColNorm, L1ToLinf, Linf, polar_svd
from steepest.optim.layerwise import classify


class TinyLM(nn.Module):
    def __init__(self, vocab=11, d=8, tie=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.conv = nn.Conv1d(d, d, 3, padding=1)
        self.out = nn.Linear(d, vocab, bias=False)
        if tie:
            self.out.weight = self.emb.weight

    def forward(self, idx):
        h = self.emb(idx)
        h = h + self.conv(h.transpose(1, 2)).transpose(1, 2)
        return self.out(self.norm(torch.relu(self.mix(h))))


class _PlainTables(nn.Module):
    """A GPT-style model holding its tables as plain parameters: ``wte`` (indexed), ``pos``
    (added), ``table`` (indexed, with a name that says nothing), and the output layer registered
    before a hidden one (the last ``nn.Linear`` is not the head)."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Parameter(torch.randn(11, 8))
        self.pos = nn.Parameter(torch.randn(6, 8))
        self.table = nn.Parameter(torch.randn(11, 8))
        self.out = nn.Linear(8, 11)
        self.mix = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.wte[x] + self.table[x] + self.pos[: x.shape[1]]
        return self.out(torch.relu(self.mix(h)))


def _names(groups: dict[str, list[tuple[str, nn.Parameter]]]) -> dict[str, list[str]]:
    return {r: sorted(n for n, _ in v) for r, v in groups.items() if v}


def test_classify_plain_embedding_names_without_example_input():
    # Before: the plain 2-D ``pos`` and ``wte`` were "hidden" (orthogonalized as matrices).
    roles = _names(classify(_PlainTables()))
    assert roles["embedding"] == ["pos", "wte"]
    assert "table" in roles["hidden"]  # a name that says nothing: by shape, without a forward pass
    assert roles["head"] == ["mix.weight"]  # by module order (the last nn.Linear)
    for name in ("embed_tokens", "token_table", "pos_emb"):
        m = nn.Module()
        m.register_parameter(name, nn.Parameter(torch.randn(3, 2)))
        assert _names(classify(m)) == {"embedding": [name]}
    m = nn.Module()
    m.pos = nn.Parameter(torch.randn(4))  # a 1-D "pos" is a vector (gain/bias-like): ndim < 2
    assert _names(classify(m)) == {"vector": ["pos"]}


def test_classify_with_example_input_delegates_to_detect_roles():
    from steepest.recipes import detect_roles

    model, x = _PlainTables(), torch.randint(0, 11, (2, 6))
    roles = _names(classify(model, example_input=x))
    # By use: the indexed ``table`` is an embedding, the output's matmul is the head
    assert roles == {"embedding": ["pos", "table", "wte"], "hidden": ["mix.weight"],
                     "head": ["out.weight"], "vector": ["mix.bias", "out.bias"]}
    report = detect_roles(model, x).roles
    assert {n: r for r, ns in roles.items() for n in ns} == report
    # layer_groups passes it on; head given as a module or its name reaches detect_roles
    groups = {g["role"]: [n for n, _ in g["params"]] for g in layer_groups(model, example_input=x)}
    assert sorted(groups["embedding"]) == ["pos", "table", "wte"]
    assert _names(classify(model, head=model.mix, example_input=x)) == \
        _names(classify(model, head="mix", example_input=x))


def test_classify_by_layer_kind():
    roles = {r: [n for n, _ in v] for r, v in classify(TinyLM()).items()}
    assert roles == {
        "embedding": ["emb.weight"],
        "hidden": ["mix.weight"],
        "conv": ["conv.weight"],
        "head": ["out.weight"],
        "vector": ["mix.bias", "norm.weight", "norm.bias", "conv.bias"],
    }
    tied = {r: [n for n, _ in v] for r, v in classify(TinyLM(tie=True)).items()}
    assert tied["embedding"] == ["emb.weight"] and tied["head"] == []
    assert [n for n, _ in classify(TinyLM(), head="mix")["head"]] == ["mix.weight"]
    with pytest.raises(ValueError, match="head must name a submodule"):
        classify(TinyLM(), head="decoder")


@pytest.mark.parametrize("recipe", ["steepest", "scion"])
def test_one_optimizer_trains_the_whole_model(recipe):
    torch.manual_seed(0)
    model = TinyLM()
    opt = Modular(layer_groups(model, recipe), lr=0.1 if recipe == "steepest" else 0.005)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40)
    idx = torch.randint(0, 11, (8, 12))
    tgt = torch.roll(idx, -1, dims=1)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), tgt.flatten())
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    roles = {g["role"]: g for g in opt.param_groups}
    assert set(roles) == {"embedding", "hidden", "conv", "head", "vector"}
    assert isinstance(roles["hidden"]["norm"], Spectral) and roles["hidden"]["param_names"] == ["mix.weight"]
    # One state_dict for all groups; it resumes exactly.
    sd = copy.deepcopy(opt.state_dict())
    clone = copy.deepcopy(model)
    opt2 = Modular(layer_groups(clone, recipe), lr=0.02)
    opt2.load_state_dict(sd)
    for m, o in ((model, opt), (clone, opt2)):
        o.zero_grad()
        nn.functional.cross_entropy(m(idx).flatten(0, 1), tgt.flatten()).backward()
        o.step()
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)


def test_recipe_norms_and_overrides():
    groups = {g["role"]: g for g in layer_groups(TinyLM(), "scion", overrides={"head": {"radius": 10.0}})}
    assert groups["embedding"]["norm"] == ColNorm(scale="shape", transpose=True)
    assert groups["head"]["norm"] == L1ToLinf(scale="shape") and groups["head"]["radius"] == 10.0
    assert groups["hidden"]["mode"] == "normalized" and groups["hidden"]["nesterov"] is False
    steep = {g["role"]: g for g in layer_groups(TinyLM(), "steepest")}
    assert steep["embedding"]["norm"] == Linf() and steep["hidden"]["adjust_lr_fn"] == "match_rms_adamw"
    with pytest.raises(ValueError, match="recipe must be one of"):
        layer_groups(TinyLM(), "adam")
    with pytest.raises(ValueError, match="overrides keys must be roles"):
        layer_groups(TinyLM(), overrides={"bias": {}})


def test_constrained_step_is_scions_formula_and_stays_in_the_ball():
    """x <- (1 - lr) x + lr * radius * lmo(m) ([Pethick25]): with the exact (SVD) polar
    factor, a convex combination of two points of the spectral ball of the given radius stays in
    it, so an iterate started inside never leaves (tolerance: float64 rounding)."""
    g = torch.Generator().manual_seed(0)
    p = (0.5 * torch.randn(5, 3, generator=g, dtype=torch.float64)).requires_grad_()
    radius, lr = 2.0, 0.3
    p.data *= 0.5 * radius / torch.linalg.matrix_norm(p.detach(), 2)
    opt = Modular([p], lr=lr, norm=Spectral(), mode="normalized", step="constrained", radius=radius,
                  momentum=0.0, nesterov=False)
    for _ in range(20):
        grad = torch.randn(5, 3, generator=g, dtype=torch.float64)
        x = p.detach().clone()
        p.grad = grad
        opt.step()
        torch.testing.assert_close(p.detach(), (1 - lr) * x - lr * radius * polar_svd(grad)[0])
        assert float(torch.linalg.matrix_norm(p.detach(), 2)) <= radius * (1 + 1e-12)
