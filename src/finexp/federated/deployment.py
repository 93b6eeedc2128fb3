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
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf, open_dict

from finexp import FinexpError
from finexp.federated.app import make_client_app
from finexp.federated.client import ClientDP, LocalNode, client_loader, node_seed, set_arrays, trainable_names
from finexp.federated.server import STATE_DIR, CentralDP, FederationResult, RoundRecord

log = logging.getLogger("finexp")

APP_DIR = "flower_app"
OUTCOME = "federation_outcome.json"  # written by the ServerApp: completed, or the error it stopped on
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


def _build(cfg: DictConfig) -> tuple[Any, Any]:
    """Tokenizer, data and module of a run, in finexp-train's order (so the same config builds the same model)."""
    from finexp import build

    pl.seed_everything(cfg.seed, workers=True)
    tokenizer = build.tokenizer_from(cfg)
    datamodule = build.datamodule_from(cfg, tokenizer, privacy=build.privacy_from(cfg))
    datamodule.prepare()
    build.resolve_monitor(cfg, datamodule.num_labels)
    model = build.model_from(cfg, datamodule.num_labels, tokenizer)
    return build.module_from(cfg, model, datamodule), datamodule


# --- the SuperNode side --------------------------------------------------------------------------------------------
_NODES: dict[int, LocalNode] = {}


def _deployed_node(context: Context) -> LocalNode:
    """This SuperNode's node for the run: built once per run from the run config and the node's own data file."""
    if context.run_id in _NODES:
        return _NODES[context.run_id]
    from finexp.data.batching import PadCollator
    from finexp.federated.setup import client_dp_from, node_dp_sgd_from, trainer_factory

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
    module, datamodule = _build(cfg)
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
        rounds=fed.rounds,
        schedule=fed.schedule,
        dp=client_dp_from(cfg),
        seed=seed,
        dp_sgd=node_dp_sgd_from(cfg),
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
        module, datamodule = _build(cfg)
        federation = coordinator_from(cfg, module, datamodule, loggers=[], grid=grid)
        federation.run()
        outcome: dict[str, Any] = {"status": "completed"}
    except Exception as err:
        outcome = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        raise
    finally:
        (run_dir / OUTCOME).write_text(json.dumps(outcome))


# --- the submitting side (finexp-train) ----------------------------------------------------------------------------
PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "finexp-federation"
version = "1.0.0"
description = "finexp's federated run (ServerApp and ClientApp live in the installed finexp package)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "finexp"

[tool.flwr.app.components]
serverapp = "finexp.federated.deployment:server_app"
clientapp = "finexp.federated.deployment:client_app"

[tool.flwr.app.config]
finexp-config = ""
finexp-run-dir = ""
"""


class DeploymentRun:
    """Submit the run to a SuperLink with ``flwr run``, wait for its ServerApp, read the federation it wrote.

    Args:
        cfg: the run's resolved config (sent as the Flower run config).
        module: finexp-train's module; it ends holding the best global model.
        loggers: finexp-train's loggers (each round is logged once the federation is done).
        superlink: host:port of the SuperLink's Control API (``flwr run`` submits there).
        root_certificates: the SuperLink's CA certificate (PEM) for TLS; None: insecure.
        timeout: seconds to wait for the whole federation.
    """

    def __init__(
        self,
        cfg: DictConfig,
        module: pl.LightningModule,
        loggers: list[Any],
        superlink: str,
        root_certificates: str | None,
        timeout: float,
    ) -> None:
        self.cfg = cfg
        self.module = module
        self.loggers = loggers
        self.superlink = superlink
        self.root_certificates = root_certificates
        self.timeout = timeout
        self.run_dir = Path(cfg.paths.output_dir).resolve()

    def _submit(self) -> str:
        import tomli_w

        app = self.run_dir / APP_DIR
        app.mkdir(parents=True, exist_ok=True)
        (app / "pyproject.toml").write_text(PYPROJECT)
        home = self.run_dir / "flower_home"  # flwr's config: the SuperLink connection of this run only
        home.mkdir(exist_ok=True)
        connection: dict[str, Any] = {"address": self.superlink}
        if self.root_certificates:
            connection["root-certificates"] = str(Path(self.root_certificates).resolve())
        else:
            connection["insecure"] = True
        (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": "finexp", "finexp": connection}}))
        plain = OmegaConf.to_container(self.cfg, resolve=True)
        overrides = self.run_dir / "flower_run_config.toml"
        overrides.write_text(tomli_w.dumps({"finexp-config": json.dumps(plain), "finexp-run-dir": str(self.run_dir)}))
        flwr = shutil.which("flwr")
        if flwr is None:
            raise FinexpError(
                "federated.runtime=deployment needs Flower's `flwr` command: pip install 'finexp[federated]'"
            )
        (self.run_dir / OUTCOME).unlink(missing_ok=True)
        done = subprocess.run(
            [flwr, "run", str(app), "finexp", "--run-config", str(overrides), "--format", "json"],
            env={**os.environ, "FLWR_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise FinexpError(
                f"flwr run could not submit to federated.superlink={self.superlink}: "
                f"{(done.stdout + done.stderr).strip()[-800:]}"
            )
        return done.stdout.strip()

    def run(self) -> FederationResult:
        """Submit, wait (``federated.timeout``), and return the federation the ServerApp recorded."""
        submitted = self._submit()
        log.info("federation submitted to %s: %s", self.superlink, submitted[-200:])
        outcome_path = self.run_dir / OUTCOME
        deadline = time.monotonic() + self.timeout
        while not outcome_path.is_file():
            if time.monotonic() > deadline:
                raise FinexpError(
                    f"the federation on {self.superlink} did not finish within federated.timeout={self.timeout} s "
                    f"(is finexp-train on the SuperLink's machine, and are {self.cfg.federated.num_clients} nodes up?)"
                )
            time.sleep(0.1)
        outcome = json.loads(outcome_path.read_text())
        self._wait_finished(submitted)
        if outcome.get("status") != "completed":
            raise FinexpError(f"the federation's ServerApp failed: {outcome.get('error')}")
        return self._result()

    def _wait_finished(self, submitted: str, seconds: float = 60.0) -> None:
        """Wait until the SuperLink reports the run finished (``flwr ls``).

        The ServerApp writes its outcome before its process has told the SuperLink it is done; a SuperLink stopped
        in between leaves that ``flwr-serverapp`` process retrying for ever. Waiting here means whoever stops the
        SuperLink after finexp-train returns leaves nothing behind.
        """
        try:
            run_id = str(json.loads(submitted)["run-id"])
        except (ValueError, KeyError, TypeError):
            log.warning("flwr run gave no run id (%s); not waiting for the SuperLink to finish it", submitted[-200:])
            return
        flwr = shutil.which("flwr")
        home = self.run_dir / "flower_home"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            done = subprocess.run(
                [str(flwr), "ls", "finexp", "--run-id", run_id, "--format", "json"],
                env={**os.environ, "FLWR_HOME": str(home)},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            try:
                runs = json.loads(done.stdout).get("runs") or []
            except ValueError:
                runs = []
            if runs and str(runs[0].get("status", "")).startswith("finished"):
                return
            time.sleep(0.2)
        log.warning("the SuperLink did not report run %s finished within %.0f s", run_id, seconds)

    def _result(self) -> FederationResult:
        state_dir = self.run_dir / STATE_DIR
        state = json.loads((state_dir / "state.json").read_text())
        names = trainable_names(self.module)
        if state["names"] != names:
            raise FinexpError(f"{state_dir}: the federation trained other parameters than this run's model")

        def arrays(file: str) -> list[np.ndarray]:
            with np.load(state_dir / file, allow_pickle=False) as data:
                return [data[f"p{i}"] for i in range(len(names))]

        history = [RoundRecord(**r) for r in state["history"]]
        for record in history:
            values = {**record.metrics, "federated/round": record.round}
            if record.round > 0:
                values |= {"federated/bytes_up": record.bytes_up, "federated/bytes_down": record.bytes_down}
            for logger in self.loggers:
                logger.log_metrics(values, step=record.round)
        best = arrays("best.npz")
        set_arrays(self.module, names, best)
        clients = sorted({c for r in history for c in r.clients})
        client_dp = dict(state.get("client_dp") or {})
        delta = client_dp.pop("delta", None)
        central = state.get("central_dp")
        return FederationResult(
            names,
            history,
            int(state["best_round"]),
            best,
            arrays("global.npz"),
            [{"cid": c, "name": c} for c in clients],
            None,  # the coordinator never sees the nodes' labels
            dp=ClientDP(**client_dp) if client_dp else None,
            dp_delta=delta,
            runtime="deployment",
            strategy=state["strategy"],
            central_dp=CentralDP(**central) if central else None,
            node_privacy=state.get("node_privacy") or {},
        )


def deployment_from(cfg: DictConfig, module: pl.LightningModule, datamodule: Any, loggers: list[Any]) -> Any:
    """``federated.runtime=deployment``: the :class:`DeploymentRun` of this run."""
    fed = cfg.federated
    return DeploymentRun(cfg, module, loggers, fed.superlink, fed.get("root_certificates"), fed.timeout)
