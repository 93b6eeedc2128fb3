"""Federated runs from a config: ``federated=...`` -> the nodes, the strategy, the grid of ``federated.runtime``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from finexp import FinexpError
from finexp.federated.nodes import client_dp_from, partition_nodes, trainer_factory
from finexp.targets import instantiate

RUNTIMES = ("inprocess", "simulation", "deployment")


def check_runtime(fed: DictConfig) -> None:
    """``federated.runtime`` and what it needs, before any node is built."""
    runtime = fed.runtime
    if runtime not in RUNTIMES:
        raise FinexpError(f"federated.runtime={runtime!r} is not allowed: choose one of {', '.join(RUNTIMES)}")
    if runtime == "simulation":
        if importlib.util.find_spec("ray") is None:
            raise FinexpError(
                "federated.runtime=simulation needs Ray (Flower's simulation backend): "
                "pip install 'finexp[federated-sim]', or use federated.runtime=inprocess"
            )
        resources = dict(fed.client_resources or {})
        unknown = sorted(set(resources) - {"num_cpus", "num_gpus"})
        if unknown or any(float(v) < 0 for v in resources.values()):
            raise FinexpError(
                f"federated.client_resources={resources}: give num_cpus and num_gpus (>= 0; fractions of a GPU "
                "share it), e.g. {num_cpus: 1, num_gpus: 0.25}"
            )
    if runtime == "deployment" and not fed.superlink:
        raise FinexpError(
            "federated.runtime=deployment needs federated.superlink=host:port (the SuperLink's Control API, "
            "e.g. 127.0.0.1:9093; start one with `finexp-federate serve`)"
        )


def secure_aggregation_from(cfg: DictConfig) -> Any:
    """``federated.secure_aggregation=true``: SecAgg+ between the coordinator and the nodes (None: off)."""
    if not cfg.federated.secure_aggregation:
        return None
    from finexp.federated.secure_aggregation import SecureAggregation

    return SecureAggregation(max_weight=float(cfg.federated.secure_max_rows), timeout=cfg.federated.timeout)


def central_dp_from(cfg: DictConfig) -> Any:
    """``federated.central_dp``: the coordinator's clipping and noise (None: off)."""
    from finexp.federated.central_dp import CentralDP
    from finexp.federated.client import ClientDP

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

    Returns an object whose ``run()`` gives a :class:`finexp.federated.records.FederationResult` (Flower is
    imported only here, when asked for): the in-process :class:`~finexp.federated.server.Federation` itself, or a
    runner that first reaches Flower's simulation engine or a SuperLink.
    """
    fed = cfg.federated
    check_runtime(fed)
    runtime = fed.runtime
    if runtime == "deployment":
        from finexp.federated.submit import deployment_from

        return deployment_from(cfg, module, datamodule, loggers)
    federation, nodes = _local_federation(cfg, module, datamodule, loggers)
    if runtime == "simulation":
        from finexp.federated.simulation_runtime import SimulationRun

        return SimulationRun(cfg, federation, len(nodes))
    return federation


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
        num_nodes=fed.min_available_nodes or len(nodes),
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
        timeout=fed.timeout,
        accept_failures=fed.accept_failures,
        state_dir=Path(cfg.paths.output_dir) / STATE_DIR,
        config=_plain_config(cfg),
        resume=bool(cfg.resume),
        runtime=fed.runtime,
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
        num_nodes=fed.min_available_nodes or fed.num_clients,
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
        resume=bool(cfg.resume),
        runtime="deployment",
    )
