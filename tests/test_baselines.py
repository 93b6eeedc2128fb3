"""Classic baselines run through finexp-train: same splits, same metric names, same records as fine-tuned models."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from conftest import text_task
from finexp.baselines import BaselineError
from finexp.config import ConfigError, validate_config
from finexp.train import train

TABLE = ["task=table_classification", "task.label_column=default", "task.positive_label=yes",
         "task.exclude_columns=[customer_id]"]  # fmt: skip


def _records(cfg) -> tuple[dict, dict]:
    run = Path(cfg.paths.output_dir)
    return json.loads((run / "metrics.json").read_text()), json.loads((run / "run_info.json").read_text())


def test_tfidf_logreg_learns_text_with_the_transformers_splits_and_names(make_cfg, sentiment_csv):
    lm_cfg = make_cfg(*text_task(sentiment_csv), "debug=fast_dev_run")
    lm = train(lm_cfg)
    cfg = make_cfg(*text_task(sentiment_csv), "model=tfidf_logreg")
    metrics = train(cfg)
    saved, info = _records(cfg)
    assert metrics["test/auroc"] > 0.95 and saved["status"] == "completed" and saved["monitor"] == "val/auroc"
    names = {
        f"{stage}/{m}" for stage in ("val", "test") for m in ("loss", "accuracy", "f1_macro", "auroc", "auprc", "ks")
    }
    assert names <= set(saved) and names <= set(lm)  # the metric names of a fine-tuning run
    assert info["data_fingerprint"] == _records(lm_cfg)[1]["data_fingerprint"]  # the very same rows per split
    assert info["choices"] == {} or info["choices"]["model"] == "tfidf_logreg"
    for key in ("params/trainable", "time/epoch_s", "throughput/train_samples_per_s", "memory/peak_mb",
                "checkpoint/size_mb"):  # fmt: skip
        assert saved[key] > 0, key
    assert Path(saved["best_checkpoint"]).is_file()


def test_gbm_learns_the_raw_table(make_cfg, applicants_csv):
    cfg = make_cfg(*TABLE, f"data.path={applicants_csv}", "model=gbm", "task.class_weights=balanced")
    metrics = train(cfg)
    assert metrics["test/auroc"] > 0.8 and "test/ks" in metrics  # the rule is debt/income > 0.8 or arrears
    assert _records(cfg)[1]["serialized_columns"] == ["income", "debt", "arrears", "purpose"]


def test_logreg_learns_the_raw_table_and_scores_unseen_categories(make_cfg, applicants_csv, tmp_path):
    cfg = make_cfg(*TABLE, f"data.path={applicants_csv}", "model=logreg")
    metrics = train(cfg)
    assert metrics["test/auroc"] > 0.8 and metrics["val/auroc"] > 0.8  # arrears and debt/income: nearly linear
    model = joblib.load(Path(cfg.paths.output_dir) / "model.joblib")  # the run's own file, just written
    frame = pd.read_csv(applicants_csv).drop(columns=["customer_id", "default"]).head(4)
    frame.loc[0, "purpose"], frame.loc[1, "purpose"] = "a purpose never seen", None
    probs = model.predict_proba(frame)
    assert probs.shape == (4, 2) and np.isfinite(probs).all()


@pytest.mark.parametrize("model", ["gbm", "logreg"])
def test_table_baselines_on_a_text_task_say_what_to_use(make_cfg, sentiment_csv, model):
    with pytest.raises(BaselineError, match="use model=tfidf_logreg for text"):
        train(make_cfg(*text_task(sentiment_csv), f"model={model}"))


def test_baseline_config_checks(make_cfg, sentiment_csv):
    cfg = make_cfg(*text_task(sentiment_csv), "model=tfidf_logreg", "model.estimator=null")
    with pytest.raises(ConfigError, match=r"model\.estimator needs a _target_"):
        validate_config(cfg)
