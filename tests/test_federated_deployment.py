"""federated.runtime=deployment end to end: a SuperLink and two SuperNodes as separate processes on 127.0.0.1, each
node on its own generated CSV; finexp-train submits a 2-round tiny_bert run, finexp-eval reproduces its test metric
from the global checkpoint, and the in-process runtime, given the same rows per node, gives the same global model.
Every process is stopped by the test (its process group, by PID)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import sentiment_frame, text_task
from finexp import build
from finexp.evaluate import evaluate
from finexp.testing.loopback import free_ports, stop_process_group, wait_for_port
from finexp.train import train

pytest.importorskip("flwr")

# What both runtimes run: 2 nodes, 2 rounds of 1 local epoch in batches of 8 (a few steps per node and round).
FEDERATION = [
    "federated=fedavg",
    "federated.num_clients=2",
    "federated.rounds=2",
    "federated.local_epochs=1",
    "data.batch_size=8",
    "optimizer.lr=5e-3",
]


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "finexp.federated.cli", *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group: the ServerApp/ClientApp children stop with it
    )


def _splits(make_cfg, path: Path) -> object:
    """The train/val/test splits finexp makes of ``path`` under this run's split settings (what a node reads)."""
    cfg = make_cfg(*text_task(path), *FEDERATION)
    datamodule = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    datamodule.prepare()
    return datamodule.splits


def _in_process_twin(make_cfg, coordinator: Path, banks: list[Path], tmp_path: Path) -> tuple[dict, Path]:
    """The same federation on the in-process runtime, fed exactly the rows each runtime's nodes train on.

    A SuperNode splits its own file as the run splits any file and trains on that train split; the coordinator
    scores on its own file's val split and tests on its test split. So the twin's train file is the two banks'
    train splits, in their order, tagged with a ``bank`` column it is partitioned by (federated.partition=column):
    its node ``bank_a`` holds exactly the SuperNode ``bank_a``'s rows, in the same order, under the same name, hence
    the same seed (finexp.federated.client.node_seed), batches and dropout. Its val and test files are the
    coordinator's splits. What is left to differ is the runtime: processes, messages, the SuperLink.
    """
    trains = [_splits(make_cfg, bank).train.assign(bank=bank.stem) for bank in banks]
    own = _splits(make_cfg, coordinator)
    files = {}
    for name, frame in (("train", pd.concat(trains)), ("val", own.val), ("test", own.test)):
        files[name] = tmp_path / f"twin_{name}.csv"
        frame.to_csv(files[name], index=False)
    cfg = make_cfg(
        "task=text_classification",
        f"data.train_path={files['train']}",
        f"data.val_path={files['val']}",
        f"data.test_path={files['test']}",
        "task.text_column=headline",
        "task.label_column=sentiment",
        *FEDERATION,
        "federated.partition=column",
        "federated.partition_column=bank",
    )
    return train(cfg), Path(cfg.paths.output_dir)


def _global(run: Path) -> list[np.ndarray]:
    with np.load(run / "federation_state" / "global.npz", allow_pickle=False) as data:
        return [data[f"p{i}"] for i in range(len(data.files))]


def test_superlink_and_two_supernodes_train_what_the_in_process_runtime_trains(make_cfg, tmp_path):
    serverappio, fleet, control, app_a, app_b = free_ports(5)
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr_home")}
    banks = []
    for i, name in enumerate(("bank_a", "bank_b")):
        path = tmp_path / f"{name}.csv"
        sentiment_frame(n=48, seed=10 + i).to_csv(path, index=False)  # each node's own rows
        banks.append(path)
    coordinator = tmp_path / "coordinator.csv"  # its val split scores each round, its test split tests
    sentiment_frame(n=100, seed=3).to_csv(coordinator, index=False)
    processes: list[subprocess.Popen] = []
    try:
        link_log = tmp_path / "superlink.log"
        ports = [f"--serverappio-port={serverappio}", f"--fleet-port={fleet}", f"--control-port={control}"]
        processes.append(_start(["serve", *ports], link_log, env))
        for bank, port in zip(banks, (app_a, app_b), strict=True):
            args = ["node", f"--data={bank}", f"--superlink=127.0.0.1:{fleet}"]
            args.append(f"--clientappio-address=127.0.0.1:{port}")
            processes.append(_start(args, tmp_path / f"{bank.stem}.log", env))
        # The in-process twin runs while the Flower processes start (a SuperNode retries until the SuperLink is up).
        twin, twin_run = _in_process_twin(make_cfg, coordinator, banks, tmp_path)
        for port in (fleet, control):
            wait_for_port(port, processes[0], link_log)
        for process, bank, port in zip(processes[1:], banks, (app_a, app_b), strict=True):
            wait_for_port(port, process, tmp_path / f"{bank.stem}.log")

        cfg = make_cfg(
            *text_task(coordinator),  # the coordinator's own file: none of the banks' rows
            *FEDERATION,
            "federated.runtime=deployment",
            f"federated.superlink=127.0.0.1:{control}",
            "federated.timeout=300",
        )
        metrics = train(cfg)
    finally:
        for process in processes:
            stop_process_group(process)

    run = Path(cfg.paths.output_dir)
    assert metrics["federated/runtime"] == "deployment" and metrics["federated/rounds"] == 2
    assert metrics["federated/bytes_per_round"] == 2 * metrics["federated/bytes_up_per_round"] > 0
    assert metrics["test/auroc"] > 0.8  # learned from the two banks' rows, none of which the coordinator holds
    record = json.loads((run / "federation.json").read_text())
    assert [r["round"] for r in record["rounds"]] == [0, 1, 2]
    assert sorted(record["rounds"][1]["clients"]) == ["bank_a", "bank_b"]

    # The in-process runtime is a faithful stand-in: the same global model after every round (float tolerance: the
    # replies are summed in another order, and each node trains in its own process)
    twin_record = json.loads((twin_run / "federation.json").read_text())
    assert [c["name"] for c in twin_record["clients"]] == ["bank_a", "bank_b"]
    for deployed, local in zip(record["rounds"], twin_record["rounds"], strict=True):
        assert deployed["metrics"] == pytest.approx(local["metrics"], rel=1e-4, abs=1e-5)
    for deployed, local in zip(_global(run), _global(twin_run), strict=True):
        np.testing.assert_allclose(deployed, local, rtol=1e-4, atol=1e-5)
    assert metrics["test/auroc"] == pytest.approx(twin["test/auroc"], abs=1e-4)
    assert record["best_round"] == twin_record["best_round"]

    eval_cfg = make_cfg(
        f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        config_name="eval",
        fast=False,
    )
    eval_cfg.analysis.enabled = False
    assert evaluate(eval_cfg)["test/auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-6)
