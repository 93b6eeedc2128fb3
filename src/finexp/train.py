"""``finexp-train``: compose a run from ``conf/train.yaml`` and fine-tune with Lightning.

finexp-train                                   # credit scoring, all-MiniLM-L6-v2, full fine-tuning
finexp-train model=tiny_bert trainer.max_epochs=1
finexp-train -m seed=1,2,3 adapter=full,freeze  # a sweep
finexp-train --help                            # every group and option, and what each task.problem combines with

This module loads only Hydra, OmegaConf and :mod:`finexp.config` (its capability table included): ``--help``,
``--cfg job`` and a config that validation rejects answer without importing torch, Lightning or transformers. The
run itself (:mod:`finexp.training`) is imported by :func:`train` once the config has been validated.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from finexp import FinexpError, recipe
from finexp.config import ConfigError, config_dir, trainer_setting, validate_config
from finexp.multirun import failed_jobs
from finexp.records import failure_record, write_json

log = logging.getLogger("finexp")

# Names of finexp.training that callers have imported from here since before the split; loaded on first use.
_FROM_TRAINING = ("REPORTS", "estimate_run_memory")


def __getattr__(name: str) -> Any:
    if name in _FROM_TRAINING:
        return getattr(importlib.import_module("finexp.training"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def train(
    cfg: DictConfig, *, callbacks: Sequence[Any] = (), records: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Run one experiment: fit, pick the best checkpoint, validate and test it, write the run records.

    The config is validated first, with only the config system loaded (a config error costs a second, not the
    import of torch); the heavy stack loads afterwards. A run into a directory that already holds this config's
    run (a rerun of a sweep) returns its ``metrics.json`` if it completed and continues from its ``last.ckpt``
    otherwise (``resume=false``: start afresh); ``ckpt_path`` always continues from the checkpoint given (``last``:
    the run directory's own). The run's W&B run is closed when it returns or raises, so the next run in the same
    process (a multirun job, a test) starts its own. With ``search=budgeted`` it is a search instead
    (:func:`finexp.search.search`): trials on the validation split, then the best setting trained and tested once.

    Args:
        cfg: the composed config.
        callbacks: more Lightning callbacks for this fit (a search trial's pruning).
        records: entries added to ``metrics.json`` and logged (a search's ``search/*`` summary).

    Returns:
        The final metrics (also written to ``<output_dir>/metrics.json``).
    """
    validate_config(cfg)
    _check_compile(cfg)
    recipe.check(cfg)
    if cfg.search:  # search=budgeted: each trial, and the final run, comes back here with the search off
        from finexp.search import search

        return search(cfg, train)
    try:
        from finexp.training import run

        metrics = run(cfg, callbacks=callbacks, records=records)
    except BaseException:
        _finish_tracking(exit_code=1)
        raise
    _finish_tracking(exit_code=0)
    return metrics


def _check_compile(cfg: DictConfig) -> None:
    """``trainer.compile=true`` against what it cannot combine with, before anything heavy loads."""
    if not trainer_setting(cfg.trainer, "compile"):
        return
    if cfg.model.kind != "transformer":
        raise ConfigError(
            f"trainer.compile=true compiles a transformer encoder; model={cfg.model.name} is a "
            f"{cfg.model.kind} model: use trainer.compile=false"
        )
    if cfg.privacy.name == "dp_sgd":
        raise ConfigError(
            "trainer.compile=true with privacy=dp_sgd: Opacus' per-sample gradient hooks do not trace under "
            "torch.compile; use trainer.compile=false"
        )


def _write_error(cfg: DictConfig, err: BaseException) -> None:
    """The team contract for a failed run: ``error.json`` in its directory, and no ``metrics.json``."""
    try:
        write_json(Path(cfg.paths.output_dir) / "error.json", failure_record(err))
    except Exception:  # reporting the failure must never hide it
        log.exception("could not write error.json")


def _finish_tracking(exit_code: int) -> None:
    """Close the W&B run: flushes the offline files for `wandb sync`, and the next job of a multirun (same process)
    starts its own run instead of logging into this one."""
    wandb = sys.modules.get("wandb")  # not imported: no W&B run to close
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except Exception as err:
        _write_error(cfg, err)
        if _is_multirun():  # one failed job must not end the sweep: record it, let the launcher go on
            log.error("job failed (recorded in %s/error.json): %s: %s", cfg.paths.output_dir, type(err).__name__, err)
            return None  # a sweeper counts it as a failed trial (hparams_search: max_failure_rate)
        if isinstance(err, FinexpError):
            log.error("%s", err)
            print(f"finexp-train: error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)
        raise
    value = metrics.get(metrics["monitor"])
    return float(value) if value is not None else None  # what a sweeper (e.g. Optuna) optimizes


def main() -> None:
    """Console-script entry point (``finexp-train``)."""
    _hydra_main()
    failed = failed_jobs()  # a multirun: its summary line is printed; a failed job fails the command
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
