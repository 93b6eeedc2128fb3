"""``finexp-train``: compose a run from ``conf/train.yaml`` and fine-tune with Lightning.

finexp-train                                   # credit scoring, all-MiniLM-L6-v2, full fine-tuning
finexp-train model=tiny_bert trainer.max_epochs=1
finexp-train -m seed=1,2,3 adapter=full,freeze  # a sweep
finexp-train --help                            # every group and option
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger

from finexp import FinexpError, build
from finexp.adapters import count_parameters
from finexp.config import config_dir, validate_config
from finexp.records import run_info, write_json

log = logging.getLogger("finexp")


def _hydra_choices() -> dict[str, Any]:
    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")}


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.best_model_path:
        return callback.best_model_path
    return None


def _wandb_hint(trainer: pl.Trainer) -> str | None:
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            if getattr(run, "offline", False) or run.settings.mode == "offline":
                return f"W&B (offline): wandb sync {Path(run.dir).parent}"
            return f"W&B: {run.url}"
    return None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment: fit, pick the best checkpoint, validate and test it, write the run records.

    Returns:
        The final metrics (also written to ``<output_dir>/metrics.json``).
    """
    validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    tokenizer = build.tokenizer_from(cfg)
    datamodule = build.datamodule_from(cfg, tokenizer)
    datamodule.prepare()
    monitor = build.resolve_monitor(cfg, datamodule.num_labels)
    model = build.model_from(cfg, datamodule.num_labels, tokenizer)
    module = build.module_from(cfg, model, datamodule)
    params = count_parameters(model)

    loggers = build.loggers_from(cfg)
    trainer = build.trainer_from(cfg, build.callbacks_from(cfg), loggers)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
        info = run_info(
            cfg.seed,
            datamodule.fingerprints,
            {
                "choices": _hydra_choices(),
                "labels": datamodule.label_names,
                "monitor": monitor,
                "serialized_columns": datamodule.serialized_columns,
                "rows": {name: len(ds) for name, ds in datamodule.datasets.items()},
            },
        )
        write_json(output_dir / "run_info.json", info)
    for logger in trainer.loggers:
        logger.log_hyperparams({**resolved, "choices": _hydra_choices(), **params})
        logger.log_metrics(params, step=0)
    log.info(
        "trainable parameters: %d of %d (%.2f%%)",
        params["params/trainable"],
        params["params/total"],
        params["params/trainable_pct"],
    )

    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    fit_seconds = time.perf_counter() - started
    train_metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/")}

    best = _best_checkpoint(trainer)
    metrics: dict[str, Any] = {}
    for result in trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False):
        metrics |= result
    if cfg.test:
        for result in trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False):
            metrics |= result
    metrics = {
        "status": "completed",
        "monitor": monitor,
        "best_checkpoint": best,
        "epochs": trainer.current_epoch,
        "time/fit_s": fit_seconds,
        **{k: float(v) for k, v in train_metrics.items()},
        **params,
        **{k: float(v) for k, v in sorted(metrics.items())},
    }
    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
        _print_summary(metrics, output_dir, _wandb_hint(trainer))
    return metrics


def _print_summary(metrics: dict[str, Any], output_dir: Path, wandb_hint: str | None) -> None:
    rows = [(k, v) for k, v in metrics.items() if k.startswith(("test/", "val/")) and isinstance(v, float)]
    width = max((len(k) for k, _ in rows), default=10)
    lines = ["", "finexp run finished", *(f"  {k:<{width}}  {v:.4f}" for k, v in rows)]
    lines.append(f"  run directory: {output_dir}")
    if wandb_hint:
        lines.append(f"  {wandb_hint}")
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except FinexpError as err:
        log.error("%s", err)
        print(f"finexp-train: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    value = metrics.get(metrics["monitor"])
    return float(value) if value is not None else None  # what a sweeper (e.g. Optuna) optimizes


def main() -> None:
    """Console-script entry point (``finexp-train``)."""
    _hydra_main()


if __name__ == "__main__":
    main()
