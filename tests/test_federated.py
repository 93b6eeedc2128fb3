"""Federated fine-tuning with Flower: partitions, FedAvg's aggregate, bytes, client DP, finexp-train end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from conftest import text_task
from finexp import build, recipe
from finexp.config import ConfigError, validate_config
from finexp.evaluate import evaluate
from finexp.federated import (
    PartitionError,
    column_partition,
    dirichlet_partition,
    iid_partition,
    label_distributions,
    label_skew,
)
from finexp.train import train

flwr = pytest.importorskip("flwr")  # the `federated` extra (pulled by `dev`)
from flwr.app import ConfigRecord  # noqa: E402

from finexp import FinexpError  # noqa: E402
from finexp.federated.arrays import ordered, record_bytes  # noqa: E402
from finexp.federated.client import ClientDP, ProximalTerm, local_class_weights  # noqa: E402
from finexp.federated.server import STATE_DIR  # noqa: E402
from finexp.federated.setup import check_runtime, federation_from  # noqa: E402

FED = ["federated=fedavg", "federated.num_clients=3", "federated.rounds=2"]


def _labels(n: int = 600, classes: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


def _every_row_once(parts: list[np.ndarray], n: int) -> None:
    rows = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(rows, np.arange(n))


def test_dirichlet_partition_is_label_skewed_and_iid_is_not():
    labels = _labels()
    skewed = dirichlet_partition(labels, 5, alpha=0.3, seed=1, min_rows=10)
    iid = iid_partition(labels, 5, seed=1)
    _every_row_once(skewed, len(labels))
    _every_row_once(iid, len(labels))
    assert min(len(p) for p in skewed) >= 10

    dist = label_distributions(labels, skewed, 3)
    pairwise_tv = [0.5 * np.abs(dist[i] - dist[j]).sum() for i in range(5) for j in range(i + 1, 5)]
    assert max(pairwise_tv) > 0.4  # some clients see very different label mixes
    assert label_skew(labels, skewed, 3) > 0.15
    assert label_skew(labels, iid, 3) < 0.02  # stratified: every client sees the overall mix
    assert max(len(p) for p in iid) - min(len(p) for p in iid) <= 1
    # seeded: the same draw again, another seed another draw
    assert all(np.array_equal(a, b) for a, b in zip(skewed, dirichlet_partition(labels, 5, 0.3, 1), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(skewed, dirichlet_partition(labels, 5, 0.3, 2), strict=True))
    # higher alpha: closer to IID
    assert label_skew(labels, dirichlet_partition(labels, 5, 100.0, 1), 3) < label_skew(labels, skewed, 3)
    with pytest.raises(PartitionError, match="min_rows"):
        dirichlet_partition(labels[:40], 5, alpha=0.05, seed=0, min_rows=10)


def test_column_partition_keeps_each_institution_together():
    groups = ["north"] * 50 + ["south"] * 30 + ["east"] * 15 + ["west"] * 5
    parts = column_partition(groups, 3, column="region")
    _every_row_once(parts, len(groups))
    held = [{groups[i] for i in p} for p in parts]
    assert sorted(map(len, held)) == [1, 1, 2]  # the two smallest values share the least loaded client
    assert all(len(set.intersection(a, b)) == 0 for a in held for b in held if a is not b)
    with pytest.raises(PartitionError, match=r"region.*4 value"):
        column_partition(groups, 5, column="region")


def test_client_dp_clips_the_update_and_accounts_epsilon():
    old = [np.zeros((4, 4), np.float32), np.zeros(3, np.float32)]
    new = [np.full((4, 4), 2.0, np.float32), np.full(3, 2.0, np.float32)]
    sent, norm = ClientDP(clipping_norm=1.0, noise_multiplier=0.0).apply(new, old)
    assert norm == pytest.approx(2.0 * np.sqrt(19))
    assert np.sqrt(sum((a**2).sum() for a in sent)) == pytest.approx(1.0, rel=1e-5)  # clipped to the bound
    noisy, _ = ClientDP(clipping_norm=1.0, noise_multiplier=1.0).apply(new, old)
    assert not np.allclose(noisy[0], sent[0])
    dp = ClientDP.for_epsilon(1.0, epsilon=8.0, delta=1e-5, rounds=3)
    assert dp.epsilon(1e-5, 3) == pytest.approx(8.0, rel=0.02)
    assert ClientDP(1.0, 2 * dp.noise_multiplier).epsilon(1e-5, 3) < 8.0 < dp.epsilon(1e-5, 10)


def test_proximal_term_pulls_toward_the_global_model():
    layer = torch.nn.Linear(3, 1)
    anchor = {n: torch.zeros_like(p) for n, p in layer.named_parameters()}
    for p in layer.parameters():
        p.grad = torch.zeros_like(p)

    class Trainer:
        accumulate_grad_batches = 1

    ProximalTerm(0.5, anchor).on_after_backward(Trainer(), layer)
    torch.testing.assert_close(layer.weight.grad, 0.5 * layer.weight.detach())


def _federation(make_cfg, sentiment_csv, *overrides, output_dir=None):
    cfg = make_cfg(*text_task(sentiment_csv), *FED, *overrides)
    if output_dir is not None:  # a rerun into an earlier run's directory
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    validate_config(cfg)
    pl.seed_everything(cfg.seed)  # what finexp-train does: the same config builds the same initial model
    tokenizer = build.tokenizer_from(cfg)
    datamodule = build.datamodule_from(cfg, tokenizer)
    datamodule.prepare()
    build.resolve_monitor(cfg, datamodule.num_labels)
    recipe.settle(cfg, datamodule)
    model = build.model_from(cfg, datamodule.num_labels, tokenizer)
    module = build.module_from(cfg, model, datamodule)
    return federation_from(cfg, module, datamodule, loggers=[])


def test_fedavg_aggregate_is_the_row_weighted_mean_of_client_parameters(make_cfg, sentiment_csv):
    federation = _federation(
        make_cfg, sentiment_csv, "federated.partition=dirichlet", "federated.alpha=1.0", "optimizer.lr=3e-3"
    )
    aggregated, record = federation.fit_round(1, federation.initial_arrays())

    names = federation.names
    answers = [
        (r.content["metrics"]["num-examples"], ordered(r.content["arrays"], names)) for r in federation.last_replies
    ]
    sizes = [n for n, _ in answers]
    assert sizes == [c["rows"] for c in federation.clients] and len(set(sizes)) > 1
    assert not np.allclose(answers[0][1][-2], answers[1][1][-2])  # the clients really trained apart
    expected = [sum(n * arrays[i] for n, arrays in answers) / sum(sizes) for i in range(len(names))]
    for got, want in zip(ordered(aggregated, names), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert record.clients == ["0", "1", "2"] and record.bytes_up == record.bytes_down > 0 and not record.failures


def test_balanced_nodes_weigh_their_own_label_counts_and_leave_the_runs_loss_as_it_was(make_cfg, sentiment_csv):
    skewed = ["federated.partition=dirichlet", "federated.alpha=0.3", "optimizer.lr=3e-3"]
    plain = _federation(make_cfg, sentiment_csv, *skewed)
    balanced = _federation(make_cfg, sentiment_csv, *skewed, "federated.class_weights=balanced")
    module = balanced.module
    assert module.loss_fn.weight is None  # the run's own loss: unweighted
    labels = torch.tensor([0, 0, 0, 2, 2, 0])  # 4 x class 0, none of class 1, 2 x class 2 (sentiment: 3 labels)
    with local_class_weights(module, labels):
        torch.testing.assert_close(module.loss_fn.weight, torch.tensor([6 / (3 * 4), 0.0, 6 / (3 * 2)]))
    assert module.loss_fn.weight is None

    start = plain.initial_arrays()
    got = {
        name: ordered(federation.fit_round(1, start)[0], federation.names)
        for name, federation in (("plain", plain), ("balanced", balanced))
    }
    assert module.loss_fn.weight is None  # no node's weight stays behind in the global model's checkpoint
    assert not np.allclose(got["plain"][-2], got["balanced"][-2])  # the head learnt differently: the weight applied


def test_local_steps_bound_each_nodes_round_in_optimizer_steps_across_epochs(make_cfg, sentiment_csv):
    epoch = _federation(make_cfg, sentiment_csv, "data.batch_size=4")
    start = epoch.initial_arrays()
    epoch.fit_round(1, start)
    batches = [math.ceil(c["rows"] / 4) for c in epoch.clients]
    assert [r.content["metrics"]["train_steps"] for r in epoch.last_replies] == batches  # local_epochs=1: an epoch
    more = max(batches) + 3  # more steps than any node's epoch has batches: the round goes on into a second epoch
    for steps in (2, more):
        federation = _federation(make_cfg, sentiment_csv, f"federated.local_steps={steps}", "data.batch_size=4")
        federation.fit_round(1, start)
        replies = [r.content["metrics"] for r in federation.last_replies]
        assert [m["train_steps"] for m in replies] == [steps] * len(federation.clients)


def test_a_federation_stopped_after_round_one_continues_at_round_two_with_the_same_result(make_cfg, sentiment_csv):
    # FedAdam: the resumed coordinator must also restore the server optimizer's moments, not only the global model
    args = ("federated=fedadam", "federated.rounds=2", "optimizer.lr=3e-3", "federated.strategy.eta=0.05")
    full = _federation(make_cfg, sentiment_csv, *args).run()

    stopped = _federation(make_cfg, sentiment_csv, *args)
    run_dir = stopped.state_dir.parent
    fit_round = stopped.fit_round

    def killed_in_round_two(server_round, arrays):
        if server_round == 2:
            raise KeyboardInterrupt  # the coordinator is stopped during round 2
        return fit_round(server_round, arrays)

    stopped.fit_round = killed_in_round_two
    with pytest.raises(KeyboardInterrupt):
        stopped.run()
    assert json.loads((run_dir / STATE_DIR / "state.json").read_text())["round"] == 1

    resumed = _federation(make_cfg, sentiment_csv, *args, output_dir=run_dir).run()
    assert resumed.resumed_from == 1 and [r.round for r in resumed.rounds] == [0, 1, 2]
    assert full.resumed_from is None and resumed.best_round == full.best_round
    for got, want in zip(resumed.last, full.last, strict=True):
        torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want))
    assert not np.allclose(full.last[-1], stopped.initial[-1])  # two rounds did move the model
    for a, b in zip(resumed.rounds, full.rounds, strict=True):
        assert a.metrics == pytest.approx(b.metrics, rel=1e-5)


def test_a_node_crashing_mid_round_is_recorded_and_the_round_completes_with_the_others(make_cfg, sentiment_csv):
    def crash_node_1(federation):
        app = federation.grid.grid.app  # the ClientApp the in-process grid delivers to

        def flaky(message, context):
            if context.node_id == 2:  # partition "1"
                raise RuntimeError("node 1 lost its disk")
            return app(message, context)

        federation.grid.grid.app = flaky
        return federation

    strict = crash_node_1(_federation(make_cfg, sentiment_csv, "federated.rounds=1"))
    with pytest.raises(FinexpError, match=r"node 1 failed: RuntimeError: node 1 lost its disk.*accept_failures"):
        strict.run()

    tolerant = crash_node_1(
        _federation(make_cfg, sentiment_csv, "federated.rounds=1", "federated.accept_failures=true")
    )
    result = tolerant.run()
    (round_one,) = [r for r in result.rounds if r.round == 1]
    assert round_one.clients == ["0", "2"]
    assert round_one.failures == [{"node": "1", "reason": "RuntimeError: node 1 lost its disk"}]
    assert result.report()["federated/failures"] == 1
    answers = [
        (r.content["metrics"]["num-examples"], ordered(r.content["arrays"], result.names))
        for r in tolerant.last_replies
    ]
    total = sum(n for n, _ in answers)
    for i, got in enumerate(result.last):  # the two answers, averaged by their rows: nothing of theirs was lost
        np.testing.assert_allclose(got, sum(n * a[i] for n, a in answers) / total, rtol=1e-5, atol=1e-6)


def test_legacy_strategies_and_unknown_runtimes_are_refused(make_cfg, sentiment_csv):
    legacy = ("federated.strategy._target_=flwr.server.strategy.FedAvg", "~federated.strategy.fraction_train")
    with pytest.raises(
        FinexpError, match=r"_target_=flwr.server.strategy.fedavg.FedAvg is not a Flower Message-API strategy"
    ):
        _federation(make_cfg, sentiment_csv, *legacy)
    with pytest.raises(FinexpError, match=r"central_dp needs a strategy that averages.*Krum selects or trims"):
        _federation(make_cfg, sentiment_csv, "federated=krum", "federated.central_dp.enabled=true")
    with pytest.raises(FinexpError, match=r"federated.runtime='grid'.*inprocess, simulation, deployment"):
        check_runtime(make_cfg("federated=fedavg", "federated.runtime=grid").federated)
    with pytest.raises(FinexpError, match=r"federated.superlink=host:port"):
        check_runtime(make_cfg("federated=fedavg", "federated.runtime=deployment").federated)


def test_lora_clients_exchange_far_fewer_bytes_than_full(make_cfg, sentiment_csv):
    sent = {}
    for adapter in ("full", "lora"):
        federation = _federation(make_cfg, sentiment_csv, f"adapter={adapter}")
        messages = list(
            federation.strategy.configure_train(1, federation.initial_arrays(), ConfigRecord(), federation.grid)
        )
        sent[adapter] = sum(record_bytes(m.content) for m in messages)  # what goes down (= comes up)
        exchanged = sum(p.numel() for p in federation.module.parameters() if p.requires_grad)
        assert len(messages) == 3
        assert 3 * 4 * exchanged <= sent[adapter] <= 3 * (4 * exchanged + 200 * len(federation.names))  # float32
    assert sent["lora"] * 50 < sent["full"]


def test_three_clients_two_rounds_end_to_end_then_finexp_eval(make_cfg, sentiment_csv, tmp_path):
    cfg = make_cfg(*text_task(sentiment_csv), *FED, "federated.local_epochs=2", "optimizer.lr=3e-3", "analysis=default")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)

    assert metrics["federated/rounds"] == 2 and metrics["federated/num_clients"] == 3
    assert metrics["federated/bytes_per_round"] == 2 * metrics["federated/bytes_up_per_round"] > 0
    assert metrics["test/auroc"] > 0.8  # an easy task: the federation learned it
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["best_checkpoint"] == str(run / "checkpoints" / "best.ckpt")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    record = json.loads((run / "federation.json").read_text())
    assert [r["round"] for r in record["rounds"]] == [0, 1, 2]
    assert sum(c["rows"] for c in record["clients"]) == 112  # every training row, once
    history = pd.read_csv(run / "csv" / "metrics.csv")
    rounds = history.dropna(subset=["federated/bytes_up"])
    assert rounds["step"].tolist() == [1, 2] and rounds["val/auroc"].notna().all()
    report = (run / "report.md").read_text()  # the report's curve is per round, the same values as the log
    section = report.split("## Federated rounds", 1)[1].split("\n## ", 1)[0]
    per_round = history.dropna(subset=["federated/round"]).groupby("federated/round")["val/auroc"].last()
    assert per_round.index.tolist() == [0, 1, 2]
    for r, value in per_round.items():
        assert f"| {int(r)} | {value:.4f} |" in section
    assert (run / "training_curve.png").is_file()
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["finexp"]["label_names"] == ["bearish", "bullish"]

    eval_cfg = make_cfg(
        f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        config_name="eval",
        fast=False,
    )
    eval_cfg.analysis.enabled = False
    evaluated = evaluate(eval_cfg)
    assert evaluated["test/auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-6)


def test_column_partition_fedprox_and_client_dp_end_to_end(make_cfg, applicants_csv):
    cfg = make_cfg(
        "task=table_classification",
        f"data.path={applicants_csv}",
        "task.label_column=default",
        "task.positive_label=yes",
        "task.exclude_columns=[customer_id]",
        "adapter=lora",
        "federated=fedprox",
        "federated.rounds=1",
        "federated.partition=column",
        "federated.partition_column=purpose",
        "federated.num_clients=3",
        "federated.dp.enabled=true",
        "federated.dp.epsilon=4",
        "federated.central_dp.enabled=true",  # composes with client DP: the coordinator clips and noises again
        "federated.central_dp.epsilon=6",
    )
    metrics = train(cfg)
    assert metrics["privacy/epsilon"] == pytest.approx(4.0, rel=0.02)
    assert metrics["privacy/central_epsilon"] == pytest.approx(6.0, rel=0.02)
    record = json.loads((Path(cfg.paths.output_dir) / "federation.json").read_text())
    assert sorted(v for c in record["clients"] for v in c["values"]) == ["car", "education", "home"]
    assert [c["name"] for c in record["clients"]] == ["+".join(c["values"]) for c in record["clients"]]
    assert record["central_dp"]["clipping"] == "fixed"
    assert record["central_dp"]["epsilon"] == pytest.approx(6.0, rel=0.02)
    assert record["strategy"] == "FedProx + central DP (fixed clipping)"


def _updates(federation, replies, start):
    names = federation.names
    return [[a - b for a, b in zip(ordered(r.content["arrays"], names), start, strict=True)] for r in replies]


def _norm(arrays) -> float:
    return float(np.sqrt(sum(np.square(a, dtype=np.float64).sum() for a in arrays)))


def test_central_dp_clips_every_update_and_averages_them_unweighted(make_cfg, sentiment_csv):
    federation = _federation(
        make_cfg,
        sentiment_csv,
        "federated.partition=dirichlet",  # unequal row counts: a row-weighted mean would differ
        "federated.alpha=1.0",
        "optimizer.lr=3e-3",
        "federated.central_dp.enabled=true",
        "federated.central_dp.epsilon=null",
        "federated.central_dp.noise_multiplier=0",
        "federated.central_dp.clipping_norm=0.05",
    )
    start = ordered(federation.initial_arrays(), federation.names)
    aggregated, record = federation.fit_round(1, federation.initial_arrays())
    updates = _updates(federation, federation.last_replies, start)  # the replies as clipped by the coordinator
    assert [_norm(u) for u in updates] == pytest.approx([0.05] * 3, rel=1e-4)  # each one was longer, now clipped
    assert len({c["rows"] for c in federation.clients}) > 1 and record.clipping_norm == 0.05
    for got, old, *per_node in zip(ordered(aggregated, federation.names), start, *updates, strict=True):
        np.testing.assert_allclose(got, old + sum(per_node) / 3, rtol=1e-5, atol=1e-7)


def test_central_dp_adaptive_noise_follows_the_bound_that_clipped_the_round(make_cfg, sentiment_csv):
    federation = _federation(
        make_cfg,
        sentiment_csv,
        "optimizer.lr=3e-3",
        "federated.central_dp.enabled=true",
        "federated.central_dp.clipping=adaptive",
        "federated.central_dp.epsilon=null",
        "federated.central_dp.noise_multiplier=1.0",
        "federated.central_dp.clipping_norm=0.05",
        "federated.central_dp.clipped_count_stddev=1.0",  # Flower's default (nodes / 20) is too small for 3 nodes
    )
    start = ordered(federation.initial_arrays(), federation.names)
    aggregated, record = federation.fit_round(1, federation.initial_arrays())
    wrapper = federation.strategy
    assert record.clipping_norm == 0.05 and wrapper.clipping_norm != 0.05  # the bound moved for round 2
    updates = _updates(federation, federation.last_replies, start)
    mean = [old + sum(per_node) / 3 for old, *per_node in zip(start, *updates, strict=True)]
    noise = np.concatenate([(g - m).ravel() for g, m in zip(ordered(aggregated, federation.names), mean, strict=True)])
    # ~1M coordinates: the noise's std is pinned to well under 1 %, and it is z * (the bound used) / n
    assert noise.std() == pytest.approx(wrapper.noise_multiplier * 0.05 / 3, rel=0.01)
    assert abs(noise.mean()) < 1e-4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["federated.num_clients=1"], "federated.num_clients"),
        (["federated.partition=column"], "partition_column"),
        (["federated.partition=by_bank"], "federated.partition"),
        (["privacy=dp_sgd", "federated.dp.enabled=true"], "two guarantees"),
        (["federated.central_dp.enabled=true", "federated.central_dp.noise_multiplier=1.0"], "exactly one"),
        (["federated.central_dp.enabled=true", "federated.central_dp.clipping=median"], "central_dp.clipping"),
        (["federated.dp.enabled=true", "federated.dp.noise_multiplier=1.0"], "exactly one"),
        (["trainer=ddp_cpu"], "trainer.devices"),
        (["federated.secure_aggregation=true", "federated.central_dp.enabled=true"], "hides every update"),
        (["federated.class_weights=inverse"], "federated.class_weights"),
        (["federated.local_steps=0"], "federated.local_steps"),
        (["task=interest_rate", "federated.class_weights=balanced"], "task.problem=classification"),
    ],
)
def test_bad_federated_configs_are_rejected(make_cfg, overrides, message):
    cfg = make_cfg("federated=fedavg", *overrides)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_dp_sgd_inside_every_node_spends_its_budget_over_all_rounds(make_cfg, sentiment_csv):
    cfg = make_cfg(
        *text_task(sentiment_csv),
        *FED,
        "federated.num_clients=2",
        "privacy=dp_sgd",
        "privacy.epsilon=8",
        "adapter=lora",
        "data.batch_size=8",
    )
    metrics = train(cfg)
    record = json.loads((Path(cfg.paths.output_dir) / "federation.json").read_text())
    nodes = record["node_privacy"]
    assert sorted(nodes) == ["0", "1"]
    for client in record["clients"]:
        node = nodes[client["name"]]
        # Poisson batches of expected size 8: round(rows / 8) steps per epoch; the accountant went through the
        # node's Context.state from round 1 to round 2, so round 2's ε covers both rounds' steps
        assert node["steps"] == 2 * round(client["rows"] / 8)
        assert node["sample_rate"] == pytest.approx(8 / client["rows"])
        assert node["epsilon"] == pytest.approx(8.0, rel=0.05)  # the noise was solved for the whole federation
        assert node["noise_multiplier"] > 0.3 and node["delta"] == pytest.approx(1 / client["rows"])
    assert metrics["privacy/epsilon"] == max(n["epsilon"] for n in nodes.values())
    assert metrics["privacy/mechanism"].startswith("DP-SGD on every node")


def test_simulation_runtime_trains_in_ray_workers_what_the_in_process_runtime_trains(make_cfg, sentiment_csv):
    pytest.importorskip("ray", reason="federated.runtime=simulation needs finexp[federated-sim] (pulled by dev)")
    args = ("federated.num_clients=2", "optimizer.lr=3e-3", "federated.client_resources.num_cpus=1")
    local = _federation(make_cfg, sentiment_csv, *args).run()
    simulated = _federation(make_cfg, sentiment_csv, *args, "federated.runtime=simulation")
    assert simulated.backend_config()["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    result = simulated.run()  # a Ray worker per node builds the run's model and its partition from the config
    assert result.runtime == "simulation" and [r.round for r in result.rounds] == [0, 1, 2]
    assert all(sorted(r.clients) == ["0", "1"] for r in result.rounds[1:])  # each reply names its partition
    for got, want in zip(result.last, local.last, strict=True):  # the same rows, seeds and rounds: the same model
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(result.last[-1], simulated.federation.initial[-1])  # and the rounds did train


def test_secure_aggregation_gives_fedavgs_aggregate_and_the_coordinator_no_single_update(make_cfg, sentiment_csv):
    args = ("federated.partition=dirichlet", "federated.alpha=1.0", "optimizer.lr=3e-3")
    plain = _federation(make_cfg, sentiment_csv, *args)
    expected, plain_record = plain.fit_round(1, plain.initial_arrays())
    secure = _federation(make_cfg, sentiment_csv, *args, "federated.secure_aggregation=true")
    grid = secure.grid.grid  # the in-process grid: record every reply that reaches the coordinator
    pulled, pull = [], grid.pull_messages
    grid.pull_messages = lambda ids: [pulled.append(m) or m for m in pull(ids)]
    got, record = secure.fit_round(1, secure.initial_arrays())

    # SecAgg+ quantizes each node's parameters x rows / secure_max_rows (1000) in steps of 2 * 8 / 2**22: the mean
    # is off by at most nodes x step / (total rows / 1000); a mean weighted otherwise would be off by far more
    rows = [c["rows"] for c in secure.clients]
    bound = 3 * (2 * 8.0 / 2**22) / (sum(rows) / 1000)
    unweighted = plain.last_replies
    for i, (g, e) in enumerate(zip(ordered(got, secure.names), ordered(expected, plain.names), strict=True)):
        np.testing.assert_allclose(g, e, rtol=0, atol=1.2 * bound)
        if i == len(secure.names) - 2:  # the head's weight: the unweighted mean is > 10 bounds away
            mean = sum(ordered(r.content["arrays"], plain.names)[i] for r in unweighted) / 3
            assert np.abs(mean - e).max() > 10 * bound
    assert record.clients == ["0", "1", "2"] and not record.failures
    assert len(pulled) == 4 * 3  # four SecAgg+ stages (keys, key shares, masked vectors, unmasking) x three nodes
    assert all(len(a) == 0 for m in pulled for a in m.content.array_records.values())  # no parameters in the clear
    assert record.bytes_up > plain_record.bytes_up  # masked vectors (64-bit integers), keys and shares
    # down: the float32 model once per node (SecAgg+ dequantizes to float64; the global model keeps float32) + keys
    assert plain_record.bytes_down < record.bytes_down < 1.01 * plain_record.bytes_down
    assert {a.dtype for a in ordered(got, secure.names)} == {np.dtype(np.float32)}
    assert secure._strategy_name() == "FedAvg + SecAgg+"
