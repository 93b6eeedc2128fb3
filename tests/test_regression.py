"""Regression (``task.problem=regression``): a float target through the shared pipeline, MSE/Huber, MAE/RMSE/R²."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from finexp import build, recipe
from finexp.config import ConfigError, validate_config
from finexp.data.sources import DataError
from finexp.evaluate import evaluate
from finexp.train import train

LEVELS = {"negligible": 1.0, "low": 3.0, "moderate": 6.0, "high": 10.0, "extreme": 15.0}


def rates_frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """An easy regression table: the risk word sets the rate (plus a little noise); amount is noise."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        level = rng.choice(list(LEVELS))
        rows.append(
            {
                "id": i,
                "risk": level,
                "amount": rng.randint(1, 50) * 1000,
                "rate": round(LEVELS[level] + rng.gauss(0, 0.3), 2),
            }
        )
    return pd.DataFrame(rows)


def table_task(path: Path, *extra: str) -> list[str]:
    return [
        "task=table_classification",
        "task.problem=regression",
        f"data.path={path}",
        "task.label_column=rate",
        "task.exclude_columns=[id]",
        "task.monitor=auto",
        *extra,
    ]


@pytest.fixture
def rates_csv(tmp_path: Path) -> Path:
    path = tmp_path / "rates.csv"
    rates_frame().to_csv(path, index=False)
    return path


def test_regression_learns_and_reports_its_metrics(make_cfg, rates_csv, tmp_path):
    cfg = make_cfg(
        *table_task(rates_csv), "trainer.max_epochs=6", "optimizer.lr=3e-3", "data.batch_size=16", "analysis=default"
    )
    metrics = train(cfg)
    assert metrics["monitor"] == "val/rmse"
    # the regression trust report: errors, residuals, error by target decile (no classification sections)
    report = (Path(cfg.paths.output_dir) / "report.md").read_text()
    assert "## Error by target decile" in report and "Calibration" not in report
    assert (Path(cfg.paths.output_dir) / "residuals.png").is_file() and "test/worst_decile_mae" in metrics
    assert {"test/mae", "test/rmse", "test/r2", "val/rmse", "train/rmse"} <= set(metrics)
    test_rates = pd.read_csv(rates_csv)["rate"]  # the mean predictor's RMSE is the target's standard deviation
    assert metrics["test/rmse"] < 0.5 * test_rates.std(ddof=0), metrics
    assert metrics["test/r2"] > 0.6

    new_file = tmp_path / "new_loans.csv"  # finexp-eval on a file: the training statistics travel in the checkpoint
    rates_frame(40, seed=1).to_csv(new_file, index=False)
    eval_cfg = make_cfg(
        f"ckpt_path={metrics['best_checkpoint']}",
        f"data_path={new_file}",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        config_name="eval",
        fast=False,
    )
    evaluated = evaluate(eval_cfg)
    assert evaluated["rows"] == 40 and evaluated["test/rmse"] < 0.5 * test_rates.std(ddof=0)
    predictions = pd.read_csv(Path(eval_cfg.paths.output_dir) / "predictions.csv")
    assert list(predictions.columns) == ["text", "rate", "predicted", "error"] and len(predictions) == 40


def test_splits_cover_the_target_range_and_stay_floats(make_cfg, rates_csv):
    cfg = make_cfg(*table_task(rates_csv))
    dm = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    dm.prepare()
    assert dm.label_names == ["rate"] and dm.num_labels == 1
    assert dm.datasets["train"].labels.dtype == torch.float32
    rates = {name: frame["rate"] for name, frame in dm.splits.items()}
    assert [len(r) for r in rates.values()] == [168, 24, 48]
    for split in ("val", "test"):  # decile-stratified: each split spans low and high rates
        assert rates[split].min() < 2 and rates[split].max() > 13
    assert "rate" not in dm.texts["train"][0] and "risk: " in dm.texts["train"][0]
    mean, std = dm.target_statistics()
    assert mean == pytest.approx(rates["train"].mean(), rel=1e-5) and std > 4


def test_huber_loss_is_selectable(make_cfg, rates_csv):
    cfg = make_cfg(*table_task(rates_csv, "task.loss=huber", "task.huber_delta=0.5"))
    dm = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    dm.prepare()
    recipe.settle(cfg, dm)  # as finexp-train does: the null lr becomes the adapter's
    module = build.module_from(cfg, build.model_from(cfg, dm.num_labels, build.tokenizer_from(cfg)), dm)
    assert isinstance(module.loss_fn, torch.nn.HuberLoss) and module.loss_fn.delta == 0.5
    assert module.model.head.out_features == 1


def test_non_numeric_target_names_the_column(make_cfg, tmp_path):
    frame = rates_frame(60).astype({"rate": object})
    frame.loc[3, "rate"] = "unknown rate"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    cfg = make_cfg(*table_task(tmp_path / "bad.csv"))
    with pytest.raises(DataError, match=r"task.label_column='rate' must hold numbers .*e.g. \['unknown rate'\]"):
        build.datamodule_from(cfg, build.tokenizer_from(cfg)).prepare()


def test_missing_target_column_is_named(make_cfg, rates_csv):
    cfg = make_cfg(*table_task(rates_csv), "task.label_column=apr")
    with pytest.raises(DataError, match="apr"):
        build.datamodule_from(cfg, build.tokenizer_from(cfg)).prepare()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task.loss=l1", r"task.loss='l1' is not allowed: choose mse or huber"),
        ("task.huber_delta=0", r"task.huber_delta=0.0 is not allowed"),
        ("privacy=label_dp", r"task.problem=regression does not support privacy=label_dp \(supported: none\)"),
        ("model=gbm", r"task.problem=regression does not support model.kind=baseline \(supported: transformer\)"),
        ("data.k_shot=4", r"does not support data.k_shot=4"),
        ("task.class_weights=balanced", r"does not support task.class_weights=balanced"),
    ],
)
def test_regression_config_errors(make_cfg, rates_csv, override, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(make_cfg(*table_task(rates_csv), override))


def test_interest_rate_runs_on_a_subsample(make_cfg):
    metrics = train(
        make_cfg(
            "task=interest_rate",
            "data.max_rows=400",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
        )
    )
    assert metrics["monitor"] == "val/rmse" and {"test/mae", "test/rmse", "test/r2"} <= set(metrics)


def test_interest_rate_leaves_leaky_columns_out(make_cfg):
    cfg = make_cfg("task=interest_rate", "data.max_rows=400")
    dm = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    dm.prepare()
    leaky = {"grade", "sub_grade", "installment", "loan_status", "balance", "paid_total", "paid_interest"}
    assert not leaky & set(dm.serialized_columns) and "interest_rate" not in dm.serialized_columns
    assert dm.texts["train"][0].startswith("job title: ")
