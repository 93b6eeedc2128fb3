"""Federated runs from a config: ``federated=...`` -> the nodes, the strategy, the grid of ``federated.runtime``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from finexp import FinexpError
from finexp.targets import instantiate

RUNTIMES = ("inprocess", "simulation", "deployment")


def check_runtime(fed: DictConfig) -> None:
    """``federated.runtime`` and what it needs, before any node is built."""
    runtime = fed.get("runtime", "inprocess")
    if runtime not in RUNTIMES:
        raise FinexpError(f"federated.runtime={runtime!r} is not allowed: choose one of {', '.join(RUNTIMES)}")
    if runtime == "simulation":
        if importlib.util.find_spec("ray") is None:
            raise FinexpError(
                "federated.runtime=simulation needs Ray (Flower's simulation backend): "
                "pip install 'finexp[federated-sim]', or use federated.runtime=inprocess"
            )
        resources = dict(fed.get("client_resources") or {})
        unknown = sorted(set(resources) - {"num_cpus", "num_gpus"})
        if unknown or any(float(v) < 0 for v in resources.values()):
            raise FinexpError(
                f"federated.client_resources={resources}: give num_cpus and num_gpus (>= 0; fractions of a GPU "
                "share it), e.g. {num_cpus: 1, num_gpus: 0.25}"
            )
    if runtime == "deployment" and not fed.get("superlink"):
        raise FinexpError(
            "federated.runtime=deployment needs federated.superlink=host:port (the SuperLink's Control API, "
            "e.g. 127.0.0.1:9093; start one with `finexp-federate serve`)"
        )


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


def secure_aggregation_from(cfg: DictConfig) -> Any:
    """``federated.secure_aggregation=true``: SecAgg+ between the coordinator and the nodes (None: off)."""
    if not cfg.federated.secure_aggregation:
        return None
    from finexp.federated.secure_aggregation import SecureAggregation

    return SecureAggregation(max_weight=float(cfg.federated.secure_max_rows), timeout=cfg.federated.timeout)


def central_dp_from(cfg: DictConfig) -> Any:
    """``federated.central_dp``: the coordinator's clipping and noise (None: off)."""
    from finexp.federated.client import ClientDP
    from finexp.federated.server import CentralDP

    dp = cfg.federated.central_dp
    if not dp.enabled:
        return None
    noise = dp.noise_multiplier
    if noise is None:  # the same accounting as CentralDP.epsilon: one Gaussian mechanism per round, sample rate 1
        noise = ClientDP.for_epsilon(dp.clipping_norm, dp.epsilon, dp.delta, cfg.federated.rounds).noise_multiplier
    return CentralDP(
        clipping_norm=dp.clipping_norm,
        noise_multiplier=float(noise),
        delta=dp.delta,
        clipping=dp.clipping,
        target_clipped_quantile=dp.target_clipped_quantile,
        clip_norm_lr=dp.clip_norm_lr,
        clipped_count_stddev=dp.clipped_count_stddev,
    )


def federation_from(cfg: DictConfig, module: pl.LightningModule, datamodule: Any, loggers: list[Any]) -> Any:
    """``federated=...``: the federation of a run, on the runtime ``federated.runtime`` names.

    Returns an object whose ``run()`` gives a :class:`finexp.federated.server.FederationResult` (Flower is
    imported only here, when asked for): the in-process :class:`~finexp.federated.server.Federation` itself, or a
    runner that first reaches Flower's simulation engine or a SuperLink.
    """
    fed = cfg.federated
    check_runtime(fed)
    runtime = fed.get("runtime", "inprocess")
    if runtime == "deployment":
        from finexp.federated.deployment import deployment_from

        return deployment_from(cfg, module, datamodule, loggers)
    federation, nodes = _local_federation(cfg, module, datamodule, loggers)
    if runtime == "simulation":
        from finexp.federated.simulation_runtime import SimulationRun

        return SimulationRun(cfg, federation, len(nodes))
    return federation


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
            rounds=fed.rounds,
            schedule=fed.schedule,
            dp=dp,
            seed=seed,
            dp_sgd=dp_sgd,
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


def _local_federation(cfg: DictConfig, module: pl.LightningModule, datamodule: Any, loggers: list[Any]) -> Any:
    """The coordinator and its nodes over partitions of this run's train split (in-process and simulation)."""
    from flwr.app import Context, RecordDict

    from finexp.config import monitor_mode
    from finexp.federated.app import make_client_app
    from finexp.federated.client import trainable_names
    from finexp.federated.grid import InProcessGrid
    from finexp.federated.partition import label_skew
    from finexp.federated.server import STATE_DIR, Federation

    fed = cfg.federated
    dp = client_dp_from(cfg)
    make_trainer = trainer_factory(cfg)
    names = trainable_names(module)
    nodes, (clients, partitions, labels, num_labels) = partition_nodes(cfg, module, datamodule)
    app = make_client_app(lambda context: nodes[context.node_id])
    contexts = {i: Context(run_id=1, node_id=i, node_config={}, state=RecordDict(), run_config={}) for i in nodes}
    federation = Federation(
        module,
        names,
        instantiate(fed.strategy),
        rounds=fed.rounds,
        val_loader=datamodule.val_dataloader(),
        make_trainer=make_trainer,
        num_nodes=fed.get("min_available_nodes") or len(nodes),
        grid=InProcessGrid(app, contexts),
        monitor=cfg.task.monitor,
        mode=monitor_mode(cfg.task.monitor),
        loggers=loggers,
        clients=clients,
        node_names={i: node.name for i, node in nodes.items()},
        label_skew=label_skew(labels, partitions, num_labels),
        dp=dp,
        dp_delta=fed.dp.delta if dp is not None else None,
        central_dp=central_dp_from(cfg),
        secure=secure_aggregation_from(cfg),
        seed=cfg.seed,
        timeout=fed.get("timeout", 3600.0),
        accept_failures=fed.get("accept_failures", False),
        state_dir=Path(cfg.paths.output_dir) / STATE_DIR,
        config=_plain_config(cfg),
        resume=bool(cfg.get("resume", True)),
        runtime=fed.get("runtime", "inprocess"),
    )
    return federation, nodes


def _plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config a saved federation state is compared against (``paths`` and ``hydra`` left out: a rerun
    into the same directory is the same run)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    return {k: v for k, v in plain.items() if k not in ("paths", "hydra", "resume")}


def coordinator_from(
    cfg: DictConfig, module: pl.LightningModule, datamodule: Any, loggers: list[Any], grid: Any
) -> Any:
    """The coordinator of a deployment (in the ServerApp the SuperLink starts): the strategy over the SuperLink's
    ``grid``, the global model scored on this machine's val split, the state written into the run directory."""
    from finexp.config import monitor_mode
    from finexp.federated.client import trainable_names
    from finexp.federated.server import STATE_DIR, Federation

    fed = cfg.federated
    dp = client_dp_from(cfg)
    return Federation(
        module,
        trainable_names(module),
        instantiate(fed.strategy, source="the run config received through the SuperLink"),
        rounds=fed.rounds,
        val_loader=datamodule.val_dataloader(),
        make_trainer=trainer_factory(cfg),
        num_nodes=fed.get("min_available_nodes") or fed.num_clients,
        grid=grid,
        monitor=cfg.task.monitor,
        mode=monitor_mode(cfg.task.monitor),
        loggers=loggers,
        dp=dp,
        dp_delta=fed.dp.delta if dp is not None else None,
        central_dp=central_dp_from(cfg),
        secure=secure_aggregation_from(cfg),
        seed=cfg.seed,
        timeout=fed.timeout,
        accept_failures=fed.accept_failures,
        state_dir=Path(cfg.paths.output_dir) / STATE_DIR,
        config=_plain_config(cfg),
        resume=bool(cfg.get("resume", True)),
        runtime="deployment",
    )
