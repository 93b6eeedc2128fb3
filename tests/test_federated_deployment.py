"""federated.runtime=deployment end to end: a SuperLink and two SuperNodes as separate processes on 127.0.0.1, each
node on its own generated CSV; finexp-train submits a 2-round tiny_bert run and finexp-eval reproduces its test
metric from the global checkpoint. Every process is stopped by the test (its process group, by PID)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import sentiment_frame, text_task
from finexp.evaluate import evaluate
from finexp.train import train

pytest.importorskip("flwr")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {seconds} s: {log.read_text()[-2000:]}")


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "finexp.federated.cli", *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group: the ServerApp/ClientApp children stop with it
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    else:  # the Flower process ended; its children may not have
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def test_superlink_and_two_supernodes_train_a_model_finexp_eval_reproduces(make_cfg, sentiment_csv, tmp_path):
    serverappio, fleet, control, app_a, app_b = _free_ports(5)
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr_home")}
    banks = []
    for i, name in enumerate(("bank_a", "bank_b")):
        path = tmp_path / f"{name}.csv"
        sentiment_frame(n=80, seed=10 + i).to_csv(path, index=False)  # each node's own rows
        banks.append(path)
    processes: list[subprocess.Popen] = []
    try:
        link_log = tmp_path / "superlink.log"
        processes.append(
            _start(
                ["serve", f"--serverappio-port={serverappio}", f"--fleet-port={fleet}", f"--control-port={control}"],
                link_log,
                env,
            )
        )
        for port in (fleet, control):
            _wait_for_port(port, processes[0], link_log)
        for bank, port in zip(banks, (app_a, app_b), strict=True):
            node_log = tmp_path / f"{bank.stem}.log"
            args = [
                "node",
                f"--data={bank}",
                f"--superlink=127.0.0.1:{fleet}",
                f"--clientappio-address=127.0.0.1:{port}",
            ]
            processes.append(_start(args, node_log, env))
            _wait_for_port(port, processes[-1], node_log)

        cfg = make_cfg(
            *text_task(sentiment_csv),  # the coordinator's own file: its val split scores, its test split tests
            "federated=fedavg",
            "federated.num_clients=2",
            "federated.rounds=2",
            "federated.local_epochs=2",
            "optimizer.lr=3e-3",
            "federated.runtime=deployment",
            f"federated.superlink=127.0.0.1:{control}",
            "federated.timeout=300",
        )
        metrics = train(cfg)
    finally:
        for process in processes:
            _stop(process)

    run = Path(cfg.paths.output_dir)
    assert metrics["federated/runtime"] == "deployment" and metrics["federated/rounds"] == 2
    assert metrics["federated/bytes_per_round"] == 2 * metrics["federated/bytes_up_per_round"] > 0
    assert metrics["test/auroc"] > 0.8  # learned from the two banks' rows, none of which the coordinator holds
    record = json.loads((run / "federation.json").read_text())
    assert [r["round"] for r in record["rounds"]] == [0, 1, 2]
    assert sorted(record["rounds"][1]["clients"]) == ["bank_a", "bank_b"]

    eval_cfg = make_cfg(
        f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        config_name="eval",
        fast=False,
    )
    eval_cfg.analysis.enabled = False
    assert evaluate(eval_cfg)["test/auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-6)
