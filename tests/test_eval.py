"""finexp-eval: reproduces the training run's test metrics, evaluates new files, refuses unsafe checkpoints."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import sentiment_frame, text_task
from finexp import FinexpError
from finexp.evaluate import evaluate
from finexp.train import train


@pytest.fixture
def trained(make_cfg, sentiment_csv):
    cfg = make_cfg(*text_task(sentiment_csv), "trainer.max_epochs=3", "optimizer.lr=3e-3")
    metrics = train(cfg)
    return cfg, metrics


def eval_cfg(make_cfg, tmp_path, *overrides):
    cfg = make_cfg(
        *overrides,
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        config_name="eval",
        fast=False,
    )
    cfg.paths.output_dir = str(tmp_path / "eval")
    return cfg


def test_eval_reproduces_training_test_metrics(make_cfg, trained, tmp_path):
    _, train_metrics = trained
    cfg = eval_cfg(make_cfg, tmp_path, f"ckpt_path={train_metrics['best_checkpoint']}")
    metrics = evaluate(cfg)
    assert metrics["same_test_split_as_training"] is True
    for key in ("test/auroc", "test/accuracy", "test/f1_macro", "test/ks"):
        assert metrics[key] == pytest.approx(train_metrics[key], abs=1e-6), key
    out = Path(cfg.paths.output_dir)
    report = json.loads((out / "per_class_report.json").read_text())
    assert set(report) >= {"bearish", "bullish", "macro avg", "confusion_matrix"}
    assert sum(map(sum, report["confusion_matrix"])) == metrics["rows"] == 32
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns) == ["text", "label", "predicted", "prob_bearish", "prob_bullish"]
    assert (predictions["label"] == predictions["predicted"]).mean() == pytest.approx(metrics["test/accuracy"])


def test_eval_on_a_new_file(make_cfg, trained, tmp_path):
    path = tmp_path / "new.jsonl"
    sentiment_frame(24, seed=5).to_json(path, orient="records", lines=True)
    cfg = eval_cfg(make_cfg, tmp_path, f"ckpt_path={trained[1]['best_checkpoint']}", f"data_path={path}")
    metrics = evaluate(cfg)
    assert metrics["rows"] == 24 and metrics["same_test_split_as_training"] is False
    assert metrics["test/accuracy"] > 0.7


def test_eval_refuses_pickled_code(make_cfg, trained, tmp_path):
    ckpt = Path(trained[1]["best_checkpoint"])
    evil = ckpt.parent / "evil.ckpt"
    payload = torch.load(ckpt, weights_only=True)
    payload["finexp"]["hook"] = Path("x")  # any non-allowlisted class needs unpickling code to load
    with open(evil, "wb") as handle:
        pickle.dump(payload, handle)  # torch.load reads plain pickles too
    cfg = eval_cfg(make_cfg, tmp_path, f"ckpt_path={evil}")
    with pytest.raises(FinexpError, match=r"not a loadable finexp checkpoint .*Unpickl"):
        evaluate(cfg)


def test_eval_cli_errors(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "finexp.evaluate", f"ckpt_path={tmp_path}/none.ckpt"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "finexp-eval: error: checkpoint not found" in result.stderr
