"""The first five training losses of a seeded tiny-BERT run, pinned: any change to the data split, tokenization, batch
order, initialisation, loss or optimizer step of the default classification path shows up here as a number.

To regenerate after an intended change (or a torch upgrade that changes CPU kernels), run
``python tests/test_pinned_losses.py`` and paste the printed list into ``EXPECTED``, saying in the commit why.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from conftest import FAST, sentiment_frame, text_task
from finexp.config import config_dir
from finexp.train import train

# finexp-train on conftest's sentiment_frame(160, seed=0): tiny BERT (2 layers, hidden 32, random init), AdamW at
# lr 1e-3 with the default linear warmup, batches of 16, one loss logged per step, CPU, deterministic algorithms.
OVERRIDES = [
    "seed=5",
    "optimizer.lr=1e-3",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",
    "trainer.log_every_n_steps=1",
    "trainer.deterministic=true",
    "test=false",
]
# Measured with torch 2.13.0+cpu on x86-64; the tolerance allows for other CPUs' summation order, not for
# a behaviour change (a different init, batch order or learning rate moves these by 1e-2 or more).
EXPECTED = [1.1196292638778687, 0.7489438056945801, 0.7480046153068542, 0.6658389568328857, 0.6433860063552856]


def pinned_config(root: Path) -> DictConfig:
    """The pinned run's config, reading and writing under ``root``."""
    data = root / "headlines.csv"
    sentiment_frame().to_csv(data, index=False)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*FAST, *text_task(data), *OVERRIDES])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.log_dir, cfg.paths.output_dir, cfg.paths.cache_dir = (str(root / d) for d in ("out", "run", "cache"))
    return cfg


def first_losses(cfg: DictConfig, n: int = 5) -> list[float]:
    """Train, then read the per-step ``train/loss`` the CSV logger wrote."""
    train(cfg)
    history = pd.read_csv(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")
    return history["train/loss_step"].dropna().tolist()[:n]


def test_first_five_training_losses_are_pinned(tmp_path):
    losses = first_losses(pinned_config(tmp_path))
    assert len(losses) == 5
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(EXPECTED), rtol=1e-4, atol=1e-6)


if __name__ == "__main__":  # regenerate EXPECTED: python tests/test_pinned_losses.py
    with tempfile.TemporaryDirectory() as tmp:
        print(first_losses(pinned_config(Path(tmp))))
