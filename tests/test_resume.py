"""Resuming a single run: interrupted after an epoch and resumed, it ends where an uninterrupted run ends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from conftest import text_task
from finexp import build
from finexp.train import train


class Interrupt(RuntimeError):
    pass


class _StopAfterFirstEpoch(pl.Callback):
    """Stands in for a crash or a preemption: the process dies once epoch 0 is checkpointed."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            raise Interrupt("killed after epoch 0")


def _overrides(csv: Path) -> list[str]:
    return [
        *text_task(csv),
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        "data.batch_size=16",
        "optimizer.lr=1e-3",
        "callbacks.early_stopping=null",
    ]


def test_killed_run_resumed_from_last_checkpoint_matches_an_uninterrupted_run(make_cfg, sentiment_csv, monkeypatch):
    whole = train(make_cfg(*_overrides(sentiment_csv)))

    interrupted_cfg = make_cfg(*_overrides(sentiment_csv))
    run_dir = Path(interrupted_cfg.paths.output_dir)
    real_callbacks = build.callbacks_from
    with monkeypatch.context() as patch:
        patch.setattr(build, "callbacks_from", lambda cfg: [*real_callbacks(cfg), _StopAfterFirstEpoch()])
        with pytest.raises(Interrupt):
            train(interrupted_cfg)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "metrics.json").exists()
    assert (run_dir / "run_info.json").is_file()  # finexp-report lists it as unfinished

    resumed_cfg = make_cfg(*_overrides(sentiment_csv), "ckpt_path=last")
    with open_dict(resumed_cfg):
        resumed_cfg.paths.output_dir = str(run_dir)  # what hydra.run.dir=<run dir> does on the command line
    resumed = train(resumed_cfg)

    assert resumed["epochs"] == whole["epochs"] == 2
    for key in ("val/loss", "val/auroc", "test/loss", "test/accuracy", "train/loss_epoch"):
        torch.testing.assert_close(resumed[key], whole[key], rtol=1e-5, atol=1e-6, msg=key)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    with open_dict(resumed_cfg):  # a rerun into the finished run returns its metrics without training again
        resumed_cfg.ckpt_path = None
    before = (run_dir / "metrics.json").stat().st_mtime_ns
    assert train(resumed_cfg)["val/auroc"] == resumed["val/auroc"]
    assert (run_dir / "metrics.json").stat().st_mtime_ns == before


def test_last_checkpoint_is_the_last_epoch_even_when_the_monitor_never_improves(make_cfg, sentiment_csv):
    """Lightning 2.6 writes last.ckpt only beside a new best one; finexp's checkpoint writes it every epoch, so a
    resumed run continues after the last epoch it finished, not after the best."""
    cfg = make_cfg(
        *_overrides(sentiment_csv),
        "trainer.max_epochs=3",
        "callbacks.model_checkpoint.monitor=val/loss",
        "callbacks.model_checkpoint.mode=max",  # the loss falls: after epoch 0 no epoch is a new "best"
    )
    train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    best = torch.load(checkpoints / "best.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and best["epoch"] < 2


def test_resume_keeps_the_run_directory_and_the_wandb_run(make_cfg):
    from finexp.config import run_dir_of
    from finexp.training import _tracking

    ckpt = "/runs/credit/2026-11-29/06-48-05/checkpoints/last.ckpt"  # hydra.run.dir follows an explicit checkpoint
    assert run_dir_of(ckpt, "new") == "/runs/credit/2026-11-29/06-48-05"
    assert run_dir_of(None, "new") == "new" and run_dir_of("last", "new") == "new"

    cfg = make_cfg("logger=wandb", "adapter=lora", "tags=[baseline]")
    run = Path(cfg.paths.output_dir)
    _tracking(cfg, run)
    wandb = cfg.logger.wandb
    assert wandb.id == (run / "wandb_id.txt").read_text().strip() and wandb.resume == "allow"
    assert wandb.group == cfg.task.name  # a single run; the jobs of a multirun share <task>/<sweep dir>
    assert list(wandb.tags) == [
        "baseline",
        "task:credit_scoring",
        "model:tiny_bert",
        "adapter:build_lora",
        "privacy:none",
    ]
    again = make_cfg("logger=wandb")
    _tracking(again, run)  # the same run directory (a resumed run): the same W&B run
    assert again.logger.wandb.id == wandb.id
