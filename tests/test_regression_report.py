"""The regression trust report: error metrics, error by target decile, residual plot, model card sections."""

from __future__ import annotations

import json

import numpy as np
import pytest

from finexp.analysis.regression import analyze_regression, error_by_decile, regression_summary

Y_TRUE = np.array([1.0, 2.0, 3.0, 4.0])
Y_PRED = np.array([1.0, 3.0, 2.0, 4.0])  # residuals 0, +1, -1, 0


def test_summary_matches_hand_computed_values():
    summary = regression_summary(Y_TRUE, Y_PRED)
    # SS_res = 2, SS_tot = 1.5² + 0.5² + 0.5² + 1.5² = 5
    assert summary == pytest.approx({"mae": 0.5, "rmse": np.sqrt(0.5), "r2": 1 - 2 / 5, "bias": 0.0})


def test_error_by_decile_bins_by_the_true_target():
    rows = error_by_decile(Y_TRUE, Y_PRED, n_bins=2)  # edges 1, 2.5, 4: {1, 2} and {3, 4}
    assert [(r["decile"], r["rows"], r["target_from"], r["target_to"]) for r in rows] == [(1, 2, 1, 2), (2, 2, 3, 4)]
    assert [r["bias"] for r in rows] == [0.5, -0.5]  # over-predicts the low half, under-predicts the high half
    assert [r["mae"] for r in rows] == [0.5, 0.5]
    many = error_by_decile(np.arange(100.0), np.arange(100.0) + 1)
    assert len(many) == 10 and sum(r["rows"] for r in many) == 100 and all(r["bias"] == 1 for r in many)
    assert len(error_by_decile(np.ones(20), np.ones(20))) == 1  # a constant target: one bin, not ten empty ones


def test_bad_predictions_are_rejected():
    with pytest.raises(ValueError, match="as many predictions as targets"):
        regression_summary(Y_TRUE, Y_PRED[:3])
    with pytest.raises(ValueError, match="finite"):
        regression_summary(Y_TRUE, np.array([1.0, np.nan, 2.0, 3.0]))


def test_report_has_the_regression_sections_and_no_classification_ones(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.uniform(5, 25, 200)
    pred = y + rng.normal(0, 1, 200)
    config = {
        "task": {"name": "interest_rate", "description": "Predict a loan's interest rate."},
        "data": {"rdataset": "openintro/loans_full_schema"},
        "model": {"name": "tiny_bert", "pooling": "mean"},
        "optimizer": {"_target_": "finexp.optim.adamw", "lr": 1e-3},
        "privacy": {"name": "none"},
        "seed": 1,
    }
    headline = analyze_regression(
        tmp_path, y, pred, "interest_rate", config=config, command="finexp-train task=interest_rate",
        rows_per_split={"train": 700, "val": 100, "test": 200}, fingerprints={"test": "abc"},
    )  # fmt: skip
    assert set(headline) == {"test/bias", "test/worst_decile_mae"}
    assert (tmp_path / "residuals.png").stat().st_size > 0 and (tmp_path / "error_by_decile.png").stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    for title in ("Task and data", "Model and strategy", "Errors", "Error by target decile", "Reproduce"):
        assert f"## {title}" in report
    for absent in ("Calibration", "Fairness", "Privacy", "Threshold"):
        assert absent not in report
    assert report.rstrip().endswith("`config.yaml`; versions, git commit and data fingerprints are in `run_info.json`.")
    analysis = json.loads((tmp_path / "analysis.json").read_text())
    assert analysis["regression"]["rmse"] == pytest.approx(np.sqrt(np.mean((pred - y) ** 2)))
    assert len(analysis["error_by_decile"]) == 10
