"""``federated.runtime=simulation``: the run on Flower's Simulation Runtime (``flwr.simulation.run_simulation``, Ray
backend), for many nodes on one machine, each ClientApp run in a Ray worker with ``federated.client_resources``.

The coordinator is the same :class:`~finexp.federated.server.Federation` as in-process, driven from a ``ServerApp``
over the simulation's grid. The ClientApp is the same too; what differs is where a node lives: each Ray worker
builds the run's model and data once from the resolved config and keeps the nodes of the partitions it is sent
(:func:`~finexp.federated.nodes.partition_nodes`, deterministic in the config, so a worker's node ``i`` holds the
rows the coordinator recorded for client ``i``). Needs ``pip install 'finexp[federated-sim]'`` (Ray).
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from finexp import FinexpError
from finexp.federated.client import LocalNode
from finexp.federated.records import FederationResult
from finexp.federated.server import Federation

log = logging.getLogger("finexp")

# Nodes a Ray worker built, by run id and node id; one model per worker, shared by its nodes (they train in turn).
_WORKER_MODELS: dict[int, dict[int, LocalNode]] = {}


def _worker_node(config: dict[str, Any], run_id: int, partition: int) -> LocalNode:
    """The node of ``partition`` in this worker process (built from the resolved run config on first use)."""
    if run_id not in _WORKER_MODELS:
        from finexp.federated.nodes import build_run, partition_nodes
        from finexp.targets import check_targets

        check_targets(config, "the run config of a simulation worker")
        cfg = OmegaConf.create(config)
        work = Path(tempfile.mkdtemp(prefix=f"finexp-sim-{run_id}-"))
        with open_dict(cfg):
            cfg.paths.output_dir = str(work)  # the worker's own directory; the tokenized rows are read from cache_dir
        module, datamodule = build_run(cfg)
        _WORKER_MODELS[run_id] = partition_nodes(cfg, module, datamodule)[0]
    return _WORKER_MODELS[run_id][partition + 1]


@dataclass
class SimulatedNodes:
    """``context -> LocalNode`` for the simulation's ClientApp: picklable (Ray ships it to its workers), holding
    only the resolved config; the node is looked up by the SuperNode's ``partition-id``."""

    config: dict[str, Any]

    def __call__(self, context: Any) -> LocalNode:
        return _worker_node(self.config, int(context.run_id), int(context.node_config["partition-id"]))


class SimulationRun:
    """Run a :class:`Federation` on Flower's Simulation Runtime and return its result.

    Args:
        cfg: the run's resolved config (each worker builds its nodes from it).
        federation: the coordinator (its grid is the simulation's).
        num_nodes: virtual SuperNodes (``federated.num_clients``).
    """

    def __init__(self, cfg: DictConfig, federation: Federation, num_nodes: int) -> None:
        self.cfg = cfg
        self.federation = federation
        self.num_nodes = num_nodes
        federation.node_names = {}  # the simulation numbers its nodes itself; each reply names its node

    def backend_config(self) -> dict[str, Any]:
        """Flower's ``backend_config``: per-node resources (``federated.client_resources``) and Ray's start."""
        resources = {k: float(v) for k, v in dict(self.cfg.federated.client_resources).items()}
        return {"client_resources": resources, "init_args": {"include_dashboard": False}}

    def run(self) -> FederationResult:
        if importlib.util.find_spec("ray") is None:
            raise FinexpError(
                "federated.runtime=simulation needs Ray (Flower's simulation backend): "
                "pip install 'finexp[federated-sim]', or use federated.runtime=inprocess"
            )
        from flwr.serverapp import ServerApp
        from flwr.simulation import run_simulation

        from finexp.federated.app import make_client_app

        outcome: dict[str, Any] = {}
        server_app = ServerApp()

        @server_app.main()
        def _coordinate(grid: Any, context: Any) -> None:
            try:
                outcome["result"] = self.federation.run(grid)
            except BaseException as err:  # re-raised in this thread below: Flower only logs a ServerApp's error
                outcome["error"] = err
                raise

        plain = OmegaConf.to_container(self.cfg, resolve=True)
        client_app = make_client_app(SimulatedNodes(plain))  # type: ignore[arg-type]
        run_simulation(server_app, client_app, self.num_nodes, backend_config=self.backend_config())
        if "error" in outcome:
            raise outcome["error"]
        if "result" not in outcome:
            raise FinexpError("Flower's simulation ended without the federation finishing (see Flower's log above)")
        return outcome["result"]
