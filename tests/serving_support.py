"""A tiny trained table checkpoint for the prediction, rules and serving tests (trained once per test module)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from conftest import FAST, applicants_frame
from finexp.config import config_dir
from finexp.train import train

TABLE_TASK = [
    "task=table_classification",
    "task.label_column=default",
    "task.positive_label=yes",
    "task.exclude_columns=[customer_id]",
]


def compose_in(root: Path, *overrides: str, config_name: str = "train", fast: bool = True) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` like the CLI, writing under ``root`` (a module-scoped make_cfg)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=[*(FAST if fast else []), *overrides])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.log_dir = str(root / "outputs")
        cfg.paths.output_dir = str(root)
        cfg.paths.cache_dir = str(root.parent / "cache")
    return cfg


_TRAINED: dict[tuple[int, int], str] = {}  # one checkpoint per (seed, epochs) for the whole session


def train_table_checkpoint(root: Path, seed: int = 42, epochs: int = 3) -> str:
    """Train tiny_bert on the generated applicants table (once per session and settings); returns the best
    checkpoint's path. Tests only read the checkpoint and its run directory."""
    if (seed, epochs) in _TRAINED and Path(_TRAINED[seed, epochs]).is_file():
        return _TRAINED[seed, epochs]
    data = root.parent / "applicants.csv"
    if not data.exists():
        applicants_frame(200).to_csv(data, index=False)
    cfg = compose_in(
        root, *TABLE_TASK, f"data.path={data}", f"seed={seed}", f"trainer.max_epochs={epochs}", "optimizer.lr=3e-3"
    )
    _TRAINED[seed, epochs] = train(cfg)["best_checkpoint"]
    return _TRAINED[seed, epochs]
