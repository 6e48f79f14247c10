"""norms-charlm (issue 13): the corpus, the model, each method's optimizer, a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from steepest.experiments.harness import registry, run_experiment
from steepest.experiments.norms_charlm import METHODS, CharTransformer, corpus, make_optimizer


def test_corpus_ships_with_python_and_is_ascii():
    text = corpus()
    assert len(text) > 100_000 and all(ord(c) < 128 for c in text[:5000])
    assert "def " in text


def test_model_is_causal():
    torch.manual_seed(0)
    model = CharTransformer(vocab=20, d=16, layers=1, heads=2, context=8)
    x = torch.randint(0, 20, (2, 8))
    y = x.clone()
    y[:, 5:] = (y[:, 5:] + 1) % 20  # change the future only
    torch.testing.assert_close(model(x)[:, :5], model(y)[:, :5])


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_all_parameters(method):
    torch.manual_seed(0)
    model = CharTransformer(vocab=20, d=16, layers=1, heads=2, context=8)
    before = [p.detach().clone() for p in model.parameters()]
    opt = make_optimizer(method, model, lr=1e-2)
    x = torch.randint(0, 20, (4, 8))
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x).flatten(0, 1), torch.roll(x, -1, 1).flatten()).backward()
        opt.step()
    moved = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert all(moved), [n for (n, _), m in zip(model.named_parameters(), moved) if not m]


def test_tiny_end_to_end_run(tmp_path):
    assert "norms-charlm" in registry()
    opts = {"steps": 6, "eval_every": 3, "width": 16, "heads": 2, "context": 8, "batch": 4, "val_batches": 2,
            "methods": "AdamW,Muon+AdamW,Scion"}
    summary = run_experiment("norms-charlm", quick=True, out_dir=tmp_path, progress=False, options=opts, echo=False)
    ids = {c["id"]: c for c in summary["claims"]}
    assert ids["muon-equals-torch"]["holds"] and ids["muon-equals-torch"]["kind"] == "sanity"
    assert ids["muon-beats-adamw"]["kind"] == "paper" and ids["scion-beats-adamw"]["kind"] == "paper"
    assert (tmp_path / "loss_curves.png").exists()
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["settings"]["tokens_per_run"] == 6 * 4 * 8
