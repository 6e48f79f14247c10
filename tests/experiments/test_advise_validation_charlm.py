"""advise-validation-charlm: the charlm cases of advise()'s validation (issue 20 item 4)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from steepest.experiments import advise_validation_charlm as vc


def test_criterion_is_the_issue_bar_on_the_issue_set() -> None:
    c = vc.CRITERION
    assert "ours" in c["label"]
    assert ">= 0.80" in c["primary"] and "+ 0.10" in c["primary"] and "35 cases" in c["primary"]
    assert vc.BUDGET == 20.0 and vc.CASE_SEEDS == [1, 2, 3]
    # the pooled part is the 32 cases advise-validation-v2 judged, as committed
    rows = vc._v2_rows()
    assert len(rows) == 32 and sum(r["search_hit"] for r in rows) == 27
    # the pooled constant answers count v2's hits as v2's own run counted them (a "False" cell
    # read as a string would count as a hit for every constant)
    v2 = json.loads((vc.V2_RESULTS.parent / "summary.json").read_text())["settings"]["summary"]
    for name, hits in v2["constant_hits"].items():
        assert sum(r[f"const_hit_{name}"] is True for r in rows) == hits


def test_case_loss_is_advise_own_score() -> None:
    # the criterion scores the advisor's choice by retraining it with the case's protocol; that
    # protocol is advise()'s own (same batches, order, constant lr, eval batches), so advise's
    # score of a configuration and the case's final loss agree (same kernels on the same data)
    from steepest.advise import Candidate, advise

    torch.set_num_threads(1)
    case = vc._case(1, 4)

    def make(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def model_fn() -> torch.nn.Module:
        case.model.load_state_dict(case.state0)
        import copy
        return copy.deepcopy(case.model)

    adv = advise(model_fn, vc._loss, case.batches, steps_total=4, budget=1.0, method="search",
                 candidates={"sgd": Candidate(make, 0.1)}, lrs={"sgd": [0.1]}, extend=0,
                 explain=False, eval_data=case.evals)
    mine = case.final_loss(make, 0.1, 4)
    assert math.isfinite(mine) and adv.score == mine


def test_tiny_run(tmp_path: Path) -> None:
    from steepest.experiments.harness import run_experiment

    s = run_experiment("advise-validation-charlm", quick=True, out_dir=tmp_path,
                       options={"steps": 3}, progress=False, echo=False)
    assert [c["id"] for c in s["claims"]] == ["advise-search-pooled", "advise-search-charlm"]
    summary = json.loads((tmp_path / "criterion_summary.json").read_text())
    assert summary["charlm_cases"] == 1 and summary["pooled_cases"] == 33
    assert 0 < summary["search_budget_used"][0] <= vc.BUDGET
    assert (tmp_path / "advise_charlm.png").stat().st_size > 0


def test_committed_criterion_file_matches_the_module() -> None:
    path = Path(__file__).parents[2] / "docs/results/advise-validation-charlm/criterion.json"
    assert json.loads(path.read_text())["criterion"] == vc.CRITERION
