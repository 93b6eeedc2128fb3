"""What every node's local training is built from (the run's config): its module and data, trainer, client DP,
DP-SGD.

Used by the in-process and simulated nodes (:mod:`.setup`) and by a SuperNode (:mod:`.deployment`), below both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig

from finexp import FinexpError
from finexp.targets import instantiate


def trainer_factory(cfg: DictConfig) -> Any:
    """``(**overrides) -> pl.Trainer`` for local rounds and the coordinator's scoring: the run's ``trainer`` config
    without logger, checkpoints, summaries or progress bars."""
    base = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": cfg.paths.output_dir,
    }

    if cfg.privacy.name == "dp_sgd":
        base["gradient_clip_val"] = None  # DP-SGD clips each row's gradient instead (as finexp-train's trainer)

    def make_trainer(**overrides: Any) -> pl.Trainer:
        return instantiate(cfg.trainer, **{**base, **overrides})

    return make_trainer


def node_dp_sgd_from(cfg: DictConfig) -> Any:
    """``privacy=dp_sgd`` with ``federated=...``: DP-SGD in every node's local rounds (None: off)."""
    from finexp.federated.client import NodeDPSGD

    privacy = cfg.privacy
    if privacy.name != "dp_sgd":
        return None
    return NodeDPSGD(
        max_grad_norm=privacy.max_grad_norm,
        noise_multiplier=privacy.noise_multiplier,
        epsilon=privacy.epsilon,
        delta=privacy.delta,
        accountant=privacy.accountant,
        secure_mode=privacy.secure_mode,
    )


def client_dp_from(cfg: DictConfig) -> Any:
    """``federated.dp``: the client-side clip and noise of every update (None: off)."""
    from finexp.federated.client import ClientDP

    fed = cfg.federated
    if not fed.dp.enabled:
        return None
    if fed.dp.noise_multiplier is not None:
        return ClientDP(fed.dp.clipping_norm, fed.dp.noise_multiplier)
    return ClientDP.for_epsilon(fed.dp.clipping_norm, fed.dp.epsilon, fed.dp.delta, fed.rounds)


def build_run(cfg: DictConfig) -> tuple[Any, Any]:
    """The module and datamodule of a run (tokenizer, data, model), in finexp-train's order, so the same config
    builds the same model."""
    from finexp import build, recipe

    pl.seed_everything(cfg.seed, workers=True)
    tokenizer = build.tokenizer_from(cfg)
    datamodule = build.datamodule_from(cfg, tokenizer, privacy=build.privacy_from(cfg))
    datamodule.prepare()
    build.resolve_monitor(cfg, datamodule.num_labels)
    recipe.settle(cfg, datamodule)  # the submitted config is settled already; a node's own config may not be
    model = build.model_from(cfg, datamodule.num_labels, tokenizer)
    return build.module_from(cfg, model, datamodule), datamodule


def partition_nodes(cfg: DictConfig, module: pl.LightningModule, datamodule: Any) -> tuple[dict[int, Any], Any]:
    """The nodes of a federation over partitions of this run's train split, by node id (1, 2, ...), sharing
    ``module``; and what ``federation.json`` says about them (``clients``, ``partitions``, label counts).

    Deterministic in the config: Flower's simulation runtime builds the same nodes again in each of its workers.
    """
    from finexp.data.batching import PadCollator
    from finexp.federated import partition_rows
    from finexp.federated.client import LocalNode, client_loader, node_seed, trainable_names
    from finexp.federated.partition import client_values

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
    dp = client_dp_from(cfg)
    dp_sgd = node_dp_sgd_from(cfg)
    make_trainer = trainer_factory(cfg)
    names = trainable_names(module)
    collate = PadCollator(datamodule.tokenizer.pad_token_id)
    names_of = client_values(groups, partitions) if groups is not None else None
    # A node of a column partition is named for its institution(s), as a SuperNode is for its file (bank_a.csv:
    # bank_a), so both draw the same batches (node_seed); otherwise for its partition's index.
    node_names = ["+".join(v) for v in names_of] if names_of else [str(i) for i in range(len(partitions))]
    nodes = {}
    for i, (rows, name) in enumerate(zip(partitions, node_names, strict=True)):
        seed = node_seed(cfg.seed, name)
        nodes[i + 1] = LocalNode(  # node ids start at 1 (Flower's SuperLink is node 0)
            name,
            module,
            names,
            client_loader(
                train_set, rows, cfg.data.batch_size, collate, seed, cfg.data.group_by_length, dp_sgd is not None
            ),
            make_trainer,
            local_epochs=fed.local_epochs,
            local_steps=fed.local_steps,
            rounds=fed.rounds,
            schedule=fed.schedule,
            dp=dp,
            seed=seed,
            dp_sgd=dp_sgd,
            class_weights=fed.class_weights,
        )
    labels = train_set.labels.numpy()
    num_labels = int(labels.max()) + 1 if len(labels) else 0
    records = [
        {
            "cid": str(i),
            "name": node_names[i],
            "rows": len(rows),
            "label_counts": np.bincount(labels[rows], minlength=num_labels).tolist(),
            **({"values": list(names_of[i])} if names_of else {}),
        }
        for i, rows in enumerate(partitions)
    ]
    return nodes, (records, partitions, labels, num_labels)
