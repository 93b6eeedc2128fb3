"""DDP on 2 CPU processes (gloo), end to end: one run directory, one metrics.json, metrics synced across ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch.distributed as dist

from conftest import text_task
from finexp.train import train


def test_ddp_on_two_cpu_processes_writes_one_run_and_synced_metrics(make_cfg, sentiment_csv):
    cfg = make_cfg(
        *text_task(sentiment_csv),
        "trainer=ddp_cpu",
        "trainer.enable_progress_bar=false",
        "trainer.max_epochs=1",
        "data.batch_size=8",
        "optimizer.lr=1e-3",
        "logger=wandb",
        "callbacks.progress_bar=null",
    )
    metrics = train(cfg)
    assert not dist.is_initialized()  # the spawned ranks' process group is gone with them
    run = Path(cfg.paths.output_dir)
    written = json.loads((run / "metrics.json").read_text())
    assert written["status"] == "completed"
    assert written["val/auroc"] == metrics["val/auroc"] and 0 <= written["val/accuracy"] <= 1
    # what the spawned ranks measured comes back to the main process's record
    assert written["epochs"] == 1 and written["throughput/train_samples_per_s"] > 0 and written["memory/peak_mb"] > 0
    # logged once (rank 0), by processes that each wrote the same CSV in turn (fit, then validate)
    csv = pd.read_csv(run / "csv" / "metrics.csv")
    assert csv["val/auroc"].notna().sum() == 2  # the epoch's validation + the final validation of the best model
    assert csv["train/loss_epoch"].notna().sum() == 1
    # synced: the final val accuracy is over all 16 val rows (a rank alone sees 8: its accuracy is a multiple of 1/8)
    assert round(written["val/accuracy"] * 16) == written["val/accuracy"] * 16
    assert not list(run.parent.glob("run-*"))  # no second run directory from the other rank
