"""Federated runs from a config: ``federated=...`` -> the clients' partitions, the strategy and the trainers."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from finexp import FinexpError
from finexp.targets import instantiate


def federation_from(cfg: DictConfig, module: pl.LightningModule, datamodule: Any, loggers: list[Any]) -> Any:
    """``federated=...``: the clients' partitions, the Flower strategy and the trainers of a federated run.

    Returns a :class:`finexp.federated.simulation.Federation` (Flower is imported only here, when asked for).
    """
    from finexp.config import monitor_mode
    from finexp.federated import partition_rows
    from finexp.federated.client import ClientDP
    from finexp.federated.partition import client_values
    from finexp.federated.simulation import Federation

    fed = cfg.federated
    train_set = datamodule.datasets["train"]
    groups = None
    if fed.partition == "column":
        frame = datamodule.splits.train
        if fed.partition_column not in frame.columns:
            raise FinexpError(
                f"federated.partition_column={fed.partition_column!r} is not a column of the train split; "
                f"columns: {', '.join(map(str, frame.columns))}"
            )
        groups = frame[fed.partition_column].tolist()
        if len(groups) != len(train_set):
            raise FinexpError(
                f"federated.partition=column: {len(groups)} rows in the train frame but {len(train_set)} tokenized"
            )
    seed = fed.partition_seed if fed.partition_seed is not None else cfg.data.split_seed
    partitions = partition_rows(
        train_set.labels.tolist(),
        fed.num_clients,
        fed.partition,
        seed=seed,
        alpha=fed.alpha,
        groups=groups,
        column=fed.partition_column,
        min_rows=fed.min_rows,
    )
    dp = None
    if fed.dp.enabled:
        if fed.dp.noise_multiplier is not None:
            dp = ClientDP(fed.dp.clipping_norm, fed.dp.noise_multiplier)
        else:
            dp = ClientDP.for_epsilon(fed.dp.clipping_norm, fed.dp.epsilon, fed.dp.delta, fed.rounds)
    base = {  # local rounds and server-side evaluation: no logger, checkpoints, summaries or progress bars
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": cfg.paths.output_dir,
    }

    def make_trainer(**overrides: Any) -> pl.Trainer:
        return instantiate(cfg.trainer, **{**base, **overrides})

    monitor = cfg.task.monitor
    return Federation(
        module,
        partitions,
        train_set,
        datamodule.val_dataloader(),
        strategy=instantiate(fed.strategy),
        make_trainer=make_trainer,
        rounds=fed.rounds,
        local_epochs=fed.local_epochs,
        batch_size=cfg.data.batch_size,
        pad_token_id=datamodule.tokenizer.pad_token_id,
        monitor=monitor,
        mode=monitor_mode(monitor),
        loggers=loggers,
        seed=cfg.seed,
        schedule=fed.schedule,
        dp=dp,
        dp_delta=fed.dp.delta if dp is not None else None,
        client_names=client_values(groups, partitions) if groups is not None else None,
        group_by_length=cfg.data.group_by_length,
    )
