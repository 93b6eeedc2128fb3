"""DDP on 2 CPU processes (gloo), end to end: one run directory, one metrics.json, metrics synced across ranks,
length-grouped training batches on each rank."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch.distributed as dist

from conftest import text_task
from finexp import build
from finexp.train import train


class PadProbe(pl.Callback):
    """Each rank's training batches (row indices) and their real / padded token counts, written at the end of fit
    to ``out_dir/rank<r>.json`` (the spawned ranks' callbacks do not come back to the test process)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.batches: list[list[int]] = []
        self.real = self.total = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.batches.append(batch["index"].tolist())
        self.real += int(batch["attention_mask"].sum())
        self.total += batch["attention_mask"].numel()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {"batches": self.batches, "real": self.real, "total": self.total}
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def test_ddp_on_two_cpu_processes_writes_one_run_and_synced_metrics(make_cfg, sentiment_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("FINEXP_TRUSTED_TARGETS", "test_ddp.PadProbe")  # the spawned ranks inherit it
    cfg = make_cfg(
        *text_task(sentiment_csv),
        "trainer=ddp_cpu",
        "trainer.enable_progress_bar=false",
        "trainer.max_epochs=1",
        "data.batch_size=8",
        "optimizer.lr=1e-3",
        "logger=wandb",
        "callbacks.progress_bar=null",
        "+callbacks.pad_probe._target_=test_ddp.PadProbe",
        f"+callbacks.pad_probe.out_dir={tmp_path}",
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

    # length grouping survives DDP: disjoint rank batches covering the train split once, as many on each rank
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    datamodule = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    datamodule.prepare()
    lengths = datamodule.datasets["train"].lengths
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == len(lengths) // 16
    rows = [[i for batch in rank["batches"] for i in batch] for rank in ranks]
    assert not set(rows[0]) & set(rows[1]) and sorted(rows[0] + rows[1]) == list(range(len(lengths)))
    # the 112 rows fit in one sorting window: every batch is a run of the length-sorted rows (ranges never overlap)
    spans = sorted((min(lengths[b]), max(lengths[b])) for rank in ranks for b in rank["batches"])
    assert all(high <= following_low for (_, high), (following_low, _) in pairwise(spans))
    # padding: as little as one process wastes on the same rows (its loader, no Trainer: one process, epoch 0)
    real = total = 0
    for batch in datamodule.train_dataloader():
        real += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
    ddp_pad = 1 - sum(r["real"] for r in ranks) / sum(r["total"] for r in ranks)
    assert abs(ddp_pad - (1 - real / total)) <= 0.02
