"""Tracking services: logger=mlflow logs what W&B gets (config, metrics, costs, report figures) to a local store that
mlflow.search_runs reads back; logger.wandb.log_model=true keeps the best checkpoint as an offline W&B artifact."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import text_task
from finexp.train import train

QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=2"]


def test_mlflow_run_is_found_by_search_runs_with_params_metrics_costs_and_figures(make_cfg, sentiment_csv, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg(*text_task(sentiment_csv), *QUICK, "logger=mlflow", "analysis=default", "seed=7")
    metrics = train(cfg)
    store = Path(cfg.paths.output_dir) / "mlruns"
    assert (store / "mlflow.db").is_file() and (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").is_file()

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["finexp"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == cfg.run_name and run.info.status == "FINISHED"
    params, logged = run.data.params, run.data.metrics
    assert params["seed"] == "7" and params["task/name"] == "text_classification"
    assert params["model/name"] == "tiny_bert" and params["adapter/_target_"] == "finexp.adapters.train_everything"
    assert run.data.tags["task"] == "text_classification" and run.data.tags["model"] == "tiny_bert"
    for key in ("test/auroc", "test/accuracy", "val/auroc", "params/trainable", "time/epoch_s", "memory/peak_mb"):
        assert key in logged, key
    assert logged["test/auroc"] == pytest.approx(metrics["test/auroc"])
    assert logged["params/total"] == metrics["params/total"]

    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "analysis")}
    assert "analysis/report.md" in artifacts and "analysis/reliability_diagram.png" in artifacts
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(store / "artifacts")


def test_wandb_log_model_keeps_the_best_checkpoint_as_an_offline_artifact(make_cfg, sentiment_csv):
    cfg = make_cfg(*text_task(sentiment_csv), *QUICK, "logger=wandb", "logger.wandb.log_model=true")
    metrics = train(cfg)
    offline = sorted((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    run_id = (Path(cfg.paths.output_dir) / "wandb_id.txt").read_text().strip()
    record, deadline = b"", time.monotonic() + 60
    while f"model-{run_id}".encode() not in record and time.monotonic() < deadline:
        time.sleep(0.5)  # W&B's service process writes the offline record after wandb.finish() returns
        record = next(offline[0].glob("run-*.wandb")).read_bytes()
    assert f"model-{run_id}".encode() in record  # the model artifact, kept for `wandb sync`
    assert Path(metrics["best_checkpoint"]).name.encode() in record  # ... holding the best checkpoint
