"""charlm-bench (issue 20): the statistics it reports and a tiny end-to-end run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from steepest.experiments.charlm_bench import GPT, PRESETS, paired_interval, steps_to_reach, verdict
from steepest.experiments.harness import accepted_options, registry, run_experiment
from steepest.recipes import detect_roles


def test_paired_interval_is_students_t():
    # diffs 1, 2, 3: mean 2, sd 1, t_{0.95, 2} = 2.919986 (tables): half-width 2.919986 / sqrt(3)
    mean, lo, hi = paired_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert hi - mean == pytest.approx(2.919986 / math.sqrt(3), rel=1e-6)
    assert mean - lo == pytest.approx(hi - mean)
    assert math.isnan(paired_interval([0.5])[1])
    assert verdict(-0.3, -0.1) == "better" and verdict(0.1, 0.2) == "worse"
    assert verdict(-0.1, 0.1) == "inconclusive" and verdict(math.nan, math.nan) == "inconclusive"


def test_steps_to_reach_interpolates_between_evaluations():
    curve = [(0, 4.0), (10, 3.0), (20, 2.0), (30, 1.5)]
    assert steps_to_reach(curve, 2.5) == pytest.approx(15.0)
    assert steps_to_reach(curve, 2.0) == pytest.approx(20.0)
    assert steps_to_reach(curve, 5.0) == 0.0
    assert steps_to_reach(curve, 1.0) == math.inf


def test_the_model_has_a_plain_positional_parameter_found_as_an_embedding():
    torch.manual_seed(0)
    m = GPT(vocab=12, d=16, layers=1, heads=2, context=8)
    assert isinstance(m.pos, torch.nn.Parameter) and m.pos.dim() == 2
    roles = detect_roles(m, torch.randint(0, 12, (1, 8))).roles
    assert roles["pos"] == "embedding" and roles["tok.weight"] == "embedding"
    assert roles["head.weight"] == "head" and roles["blocks.0.qkv.weight"] == "hidden"
    x = torch.randint(0, 12, (2, 8))
    y = x.clone()
    y[:, 5:] = (y[:, 5:] + 1) % 12  # change the future only: causal
    torch.testing.assert_close(m(x)[:, :5], m(y)[:, :5])


def test_tiny_end_to_end_run(tmp_path):
    assert "charlm-bench" in registry()
    opts = {"steps": 6, "eval_every": 3, "warmup": 2, "width": 16, "context": 8, "batch": 4, "val_batches": 1,
            "recipes": "muon,lion", "cache": str(tmp_path / "cache")}
    summary = run_experiment("charlm-bench", quick=True, out_dir=tmp_path, progress=False, options=opts, echo=False)
    ids = {c["id"]: c for c in summary["claims"]}
    assert {"muon-recipe-target", "recipes-vs-adamw", "time-per-step"} <= set(ids)
    assert (tmp_path / "loss_curves.png").exists() and (tmp_path / "results.csv").exists()
    table = json.loads((tmp_path / "summary.json").read_text())["settings"]["table"]
    assert set(table) == {"adamw", "muon", "lion"}
    for t in table.values():
        assert len(t["finals"]) == 2 and all(math.isfinite(v) for v in t["finals"])
        # paired differences to AdamW, by seed, from the finals themselves
        assert t["diffs"] == pytest.approx([a - b for a, b in zip(t["finals"], table["adamw"]["finals"])])
    assert len(list((tmp_path / "cache").glob("*.json"))) == 6  # 3 recipes x 2 seeds, reused on a rerun


def test_first_seed_moves_the_report_seeds(tmp_path):
    """``first_seed`` (fresh report seeds after a choice made on seeds 1-3) runs exactly those
    seeds; seed 0 (the tuning seed) is refused."""
    opts = {"steps": 6, "eval_every": 3, "warmup": 2, "width": 16, "context": 8, "batch": 4, "val_batches": 1,
            "recipes": "adamw", "cache": str(tmp_path / "cache"), "first_seed": 4}
    run_experiment("charlm-bench", quick=True, out_dir=tmp_path, progress=False, options=opts, echo=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["report_seeds"] == [4, 5]
    assert summary["seed_list"] == [4, 5]  # the seeds it ran (no sweep under quick: no seed 0)
    assert sorted(p.name.split("-")[2] for p in (tmp_path / "cache").glob("*.json")) == ["4", "5"]
    with pytest.raises(ValueError, match="first_seed"):
        run_experiment("charlm-bench", quick=True, out_dir=tmp_path / "b", progress=False,
                       options={**opts, "first_seed": 0}, echo=False)


def test_options_are_declared_and_a_misspelled_one_is_refused_before_running(tmp_path):
    # the module docstring: every preset setting (seeds via report_seeds) and the run's knobs
    expected = (set(PRESETS["small-gpt"]) - {"seeds"}) | {"preset", "sweep", "report_seeds", "first_seed", "cache", "recipes"}
    assert set(accepted_options(registry()["charlm-bench"]) or ()) == expected
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['widht'\].*width"):
        run_experiment("charlm-bench", quick=True, out_dir=tmp_path, progress=False, options={"widht": 8}, echo=False)
    assert not (tmp_path / "results.csv").exists()
