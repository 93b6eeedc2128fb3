"""``federated.runtime=deployment``, the submitting side: finexp-train writes the Flower app into the run
directory, submits it to the SuperLink with ``flwr run``, waits for the ServerApp of :mod:`.deployment` and reads the
federation it wrote (kept apart from the apps so that :mod:`.setup` reaches it without importing them).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from finexp import FinexpError
from finexp.federated.central_dp import CentralDP
from finexp.federated.client import ClientDP, set_arrays, trainable_names
from finexp.federated.records import FederationResult, RoundRecord
from finexp.federated.server import STATE_DIR

log = logging.getLogger("finexp")

APP_DIR = "flower_app"
OUTCOME = "federation_outcome.json"  # written by the ServerApp: completed, or the error it stopped on


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
    return DeploymentRun(cfg, module, loggers, fed.superlink, fed.root_certificates, fed.timeout)
