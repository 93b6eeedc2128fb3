"""``federated.runtime=deployment``: the run on a real Flower federation (a SuperLink and one SuperNode per
institution), with the same ServerApp/ClientApp code as the in-process runtime.

- Each institution runs ``finexp-federate node --data <its file>``: a SuperNode whose node config names its data;
  its ClientApp (:data:`client_app`) builds the run's model from the run config and trains on that file only.
- The coordinator runs ``finexp-federate serve`` (a SuperLink) and ``finexp-train federated.runtime=deployment
  federated.superlink=host:port`` on the same machine: finexp-train writes a Flower app into the run directory and
  submits it with ``flwr run``; the SuperLink starts the ServerApp (:data:`server_app`), which builds the model and
  the coordinator's val split, drives the strategy over the SuperLink's grid (:class:`~finexp.federated.server.
  Federation`, the same rounds as in-process) and writes ``federation_state/`` into the run directory; finexp-train
  waits for it and saves the global model as the run's checkpoints.

The resolved run config travels in the Flower run config. Every side treats it as untrusted data: its ``_target_``s
are checked against finexp's allow-list (:mod:`finexp.targets`) before anything is built from it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf, open_dict

from finexp import FinexpError
from finexp.federated.app import make_client_app
from finexp.federated.client import LocalNode, client_loader, node_seed, trainable_names
from finexp.federated.nodes import build_run
from finexp.federated.submit import OUTCOME

log = logging.getLogger("finexp")

SOURCE = "the run config received through the SuperLink"


def _config_from(run_config: Any) -> DictConfig:
    """The run's resolved config out of a Flower run config, every ``_target_`` checked against the allow-list."""
    from finexp.targets import check_targets

    text = run_config.get("finexp-config") if run_config else None
    if not isinstance(text, str) or not text:
        raise FinexpError("the Flower run config carries no finexp-config: submit runs with finexp-train")
    plain = json.loads(text)
    check_targets(plain, SOURCE)
    return OmegaConf.create(plain)


# --- the SuperNode side --------------------------------------------------------------------------------------------
_NODES: dict[int, LocalNode] = {}


def _deployed_node(context: Context) -> LocalNode:
    """This SuperNode's node for the run: built once per run from the run config and the node's own data file."""
    if context.run_id in _NODES:
        return _NODES[context.run_id]
    from finexp.data.batching import PadCollator
    from finexp.federated.nodes import client_dp_from, node_dp_sgd_from, trainer_factory

    data = context.node_config.get("data")
    if not isinstance(data, str) or not Path(data).is_file():
        raise FinexpError(f"node config data={data!r} is not a file: start the node with finexp-federate node --data")
    cfg = _config_from(context.run_config)
    name = str(context.node_config.get("name") or Path(data).stem)
    # Flower starts a new ClientApp process for every message: the node's directory (its tokenized rows) is kept
    # per run and node, so later rounds read the cache instead of tokenizing again.
    work = Path(tempfile.gettempdir()) / f"finexp-node-{context.run_id}-{context.node_id}"
    with open_dict(cfg):
        for source in ("rdataset", "train_path", "val_path", "test_path", "hf_dataset"):
            cfg.data[source] = None  # the coordinator's data sources name files of its machine, not this node's
        cfg.data.path = data  # this node's rows, and no one else's: split as the run splits a file, trains on train
        cfg.paths.output_dir = str(work)
        cfg.paths.cache_dir = str(work / "cache")
    module, datamodule = build_run(cfg)
    fed = cfg.federated
    batching = PadCollator(datamodule.tokenizer.pad_token_id)
    train_set = datamodule.datasets["train"]
    rows = np.arange(len(train_set))
    seed = node_seed(cfg.seed, name)  # the in-process node of this institution draws the same batches
    node = LocalNode(
        name,
        module,
        trainable_names(module),
        client_loader(
            train_set, rows, cfg.data.batch_size, batching, seed, cfg.data.group_by_length, cfg.privacy.name == "dp_sgd"
        ),
        trainer_factory(cfg),
        local_epochs=fed.local_epochs,
        local_steps=fed.local_steps,
        rounds=fed.rounds,
        schedule=fed.schedule,
        dp=client_dp_from(cfg),
        seed=seed,
        dp_sgd=node_dp_sgd_from(cfg),
        class_weights=fed.class_weights,
    )
    _NODES[context.run_id] = node
    return node


client_app = make_client_app(_deployed_node)
server_app = ServerApp()


# --- the SuperLink side --------------------------------------------------------------------------------------------
@server_app.main()
def _serve(grid: Grid, context: Context) -> None:
    """The ServerApp: the coordinator's model and val split, the rounds over the SuperLink's grid."""
    from finexp.federated.setup import coordinator_from

    run_dir = Path(str(context.run_config.get("finexp-run-dir", "")))
    if not run_dir.is_dir():
        raise FinexpError(f"finexp-run-dir={run_dir} is not a directory on the SuperLink's machine")
    try:
        cfg = _config_from(context.run_config)
        module, datamodule = build_run(cfg)
        federation = coordinator_from(cfg, module, datamodule, loggers=[], grid=grid)
        federation.run()
        outcome: dict[str, Any] = {"status": "completed"}
    except Exception as err:
        outcome = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        raise
    finally:
        (run_dir / OUTCOME).write_text(json.dumps(outcome))
