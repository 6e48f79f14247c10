"""advisor-validation: a tiny run, and the hit counting against its definition."""

from __future__ import annotations

import json

from steepest.experiments import advisor_validation as av
from steepest.experiments.harness import run_experiment


def test_tiny_run_writes_rows_claims_and_figure(tmp_path):
    opts = {"d": 4, "lam_max": "100", "thetas": "0,1", "steps": 5, "examples": 16,
            "problems": "breast-cancer-logreg"}
    s = run_experiment("advisor-validation", quick=True, out_dir=tmp_path, options=opts,
                       progress=False, echo=False)
    assert {c["id"] for c in s["claims"]} == {"hit-rate-scaled_sign", "hit-rate-signsgd",
                                              "fig3-corners-tuned", "advised-lr"}
    assert all(c["criterion"] for c in s["claims"])
    assert s["options"]["d"] == 4 and s["options"]["problems"] == ["breast-cancer-logreg"]
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 + 1  # two quadratics, one problem
    assert (tmp_path / "advisor_vs_outcome.png").stat().st_size > 0
    summary = json.loads((tmp_path / "summary.json").read_text())["settings"]["summary"]
    assert summary["scaled_sign"]["cases"] + summary["scaled_sign"]["ties"] == 3


def test_hits_leave_out_ties_and_count_matches():
    rows = [{"winner_x": "gd", "choice": "gd"}, {"winner_x": "sign", "choice": "gd"},
            {"winner_x": "tie", "choice": "sign"}, {"winner_x": "sign", "choice": "none"},
            {"winner_x": "sign", "choice": "sign"}]
    assert av._hits(rows, "x", lambda r: r["choice"]) == (2, 3)
    assert av._hits(rows, "x", lambda r: "gd") == (1, 4)
