"""Flower rounds in one process: a Flower ``Strategy`` configures and aggregates, finexp clients train with Lightning.

Flower's simulation engine runs clients as Ray actors, which costs a Ray cluster and a Python process with torch and
the model per client. Here the clients are :class:`~finexp.federated.client.FinexpClient` objects reached through
Flower's ``ClientProxy`` interface in this process, and :class:`Federation` is the server loop (what Flower's
``Server.fit`` does, without its thread pool, so clients train in a fixed order and a failing client stops the run):

1. ``strategy.configure_fit`` picks the round's clients and their instructions (parameters, ``server_round``,
   FedProx's ``proximal_mu``);
2. each client trains and answers with its trainable parameters and row count (serialized like on the wire: the
   bytes up and down are counted);
3. ``strategy.aggregate_fit`` aggregates (FedAvg: the row-weighted mean);
4. ``strategy.evaluate`` scores the new global model on the val split (Flower's server-side ``evaluate_fn``); the
   round's metrics go to the run's loggers and the best round (on the run's monitor) is kept.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from flwr.common import Code, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.strategy import Strategy
from torch.utils.data import DataLoader

from finexp import FinexpError
from finexp.data.batching import LengthGroupedSampler, PadCollator, TokenizedDataset
from finexp.federated.client import (
    ClientDP,
    FinexpClient,
    InProcessClientProxy,
    TrainerFactory,
    get_arrays,
    set_arrays,
    trainable_names,
)
from finexp.federated.partition import label_skew

log = logging.getLogger("finexp")

StrategyFactory = Callable[..., Strategy]


@dataclass
class RoundRecord:
    """What one round did: the global model's val metrics after it, and the bytes it moved."""

    round: int
    metrics: dict[str, float]
    bytes_down: int = 0
    bytes_up: int = 0
    clients: list[str] = field(default_factory=list)
    train_loss: float | None = None
    seconds: float = 0.0


@dataclass
class FederationResult:
    """The outcome of a federation: per-round records, the best and the last global trainable parameters."""

    names: list[str]
    rounds: list[RoundRecord]
    best_round: int
    best: list[np.ndarray]
    last: list[np.ndarray]
    clients: list[dict[str, Any]]
    label_skew: float
    dp: ClientDP | None = None
    dp_delta: float | None = None
    best_checkpoint: str | None = None

    def epsilon(self) -> float | None:
        """ε each client spent (every client trains in every round with ``fraction_fit=1``; a bound otherwise)."""
        if self.dp is None or self.dp_delta is None:
            return None
        return self.dp.epsilon(self.dp_delta, len(self.rounds) - 1)

    def report(self) -> dict[str, Any]:
        """``federated/*`` (and with client DP ``privacy/*``) entries for ``metrics.json``."""
        trained = [r for r in self.rounds if r.round > 0]
        up = [r.bytes_up for r in trained]
        down = [r.bytes_down for r in trained]
        out: dict[str, Any] = {
            "federated/rounds": len(trained),
            "federated/num_clients": len(self.clients),
            "federated/best_round": self.best_round,
            "federated/label_skew": self.label_skew,
            "federated/exchanged_parameters": int(sum(a.size for a in self.last)),
            "federated/bytes_up_per_round": float(np.mean(up)) if up else 0.0,
            "federated/bytes_down_per_round": float(np.mean(down)) if down else 0.0,
            "federated/bytes_per_round": float(np.mean(np.add(up, down))) if up else 0.0,
            "federated/bytes_total": int(sum(up) + sum(down)),
            "federated/round_s": float(np.mean([r.seconds for r in trained])) if trained else 0.0,
        }
        if self.best_checkpoint is not None and Path(self.best_checkpoint).is_file():
            out["checkpoint/size_mb"] = Path(self.best_checkpoint).stat().st_size / 2**20
        if self.dp is not None:
            out |= {
                "privacy/epsilon": self.epsilon(),
                "privacy/delta": self.dp_delta,
                "privacy/noise_multiplier": self.dp.noise_multiplier,
                "privacy/clipping_norm": self.dp.clipping_norm,
                "privacy/mechanism": "client-side DP-FedAvg (clip + Gaussian noise per update)",
            }
        return out

    def write(self, path: str | Path) -> None:
        """``federation.json``: the clients (rows, labels, column values) and every round's metrics and bytes."""
        record = {
            "clients": self.clients,
            "label_skew": self.label_skew,
            "best_round": self.best_round,
            "exchanged": self.names,
            "rounds": [asdict(r) for r in self.rounds],
            **({"epsilon": self.epsilon(), "delta": self.dp_delta} if self.dp is not None else {}),
        }
        Path(path).write_text(json.dumps(record, indent=2, default=float))


def client_loader(
    dataset: TokenizedDataset,
    rows: Sequence[int],
    batch_size: int,
    collate: PadCollator,
    seed: int,
    group_by_length: bool = True,
) -> Callable[[int], DataLoader]:
    """``server_round -> DataLoader`` over a client's rows: length-grouped, a new order every round."""
    starts, ends = dataset.offsets[:-1], dataset.offsets[1:]
    ids = [dataset.ids[starts[i] : ends[i]].tolist() for i in rows]
    subset = TokenizedDataset(ids, dataset.labels[list(rows)].tolist())

    def loader(server_round: int) -> DataLoader:
        sampler = LengthGroupedSampler(
            subset.lengths, batch_size, seed=seed + 7919 * server_round, window_batches=50 if group_by_length else 0
        )
        return DataLoader(subset, batch_size=batch_size, sampler=sampler, collate_fn=collate)

    return loader


def _weighted_mean(results: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    """Flower's ``fit_metrics_aggregation_fn``: the clients' metrics weighted by their rows."""
    total = sum(n for n, _ in results) or 1
    keys = {k for _, m in results for k, v in m.items() if isinstance(v, int | float)}
    return {k: float(sum(n * float(m.get(k, 0.0)) for n, m in results) / total) for k in sorted(keys)}


class Federation:
    """Federated training of one LightningModule over simulated clients, rounds driven by a Flower strategy.

    Args:
        module: the run's LightningModule; its trainable parameters are what clients exchange.
        partitions: row indices of the training set per client.
        train_set: the training split (token ids and labels).
        val_loader: the val split, on which the server scores every global model.
        strategy: ``(**kwargs) -> flwr Strategy``, e.g. ``functools.partial(flwr.server.strategy.FedAvg, ...)``;
            finexp adds ``initial_parameters``, ``evaluate_fn``, ``on_fit_config_fn``, client counts.
        make_trainer: ``(**overrides) -> pl.Trainer`` without logger or checkpoints (local rounds, evaluation).
        rounds: communication rounds.
        local_epochs: epochs each client trains per round.
        batch_size: training batch size of every client.
        pad_token_id: the tokenizer's pad id.
        monitor: val metric that picks the best round (e.g. ``val/auroc``), and ``mode`` (``max``/``min``).
        loggers: the run's loggers; each round's metrics are logged at ``step=round``.
        seed: seed of the clients' batch orders.
        schedule: ``global`` or ``round`` (see :class:`~finexp.federated.client.RoundSchedule`).
        dp: client-side DP of each update; ``dp_delta`` is the δ its ε is stated at.
        client_names: optional names (e.g. the column values each client holds) for ``federation.json``.
        group_by_length: batch rows of similar length together on the clients.
    """

    def __init__(
        self,
        module: pl.LightningModule,
        partitions: Sequence[np.ndarray],
        train_set: TokenizedDataset,
        val_loader: DataLoader,
        strategy: StrategyFactory,
        make_trainer: TrainerFactory,
        rounds: int,
        local_epochs: int = 1,
        batch_size: int = 32,
        pad_token_id: int = 0,
        monitor: str = "val/loss",
        mode: str = "min",
        loggers: Sequence[Any] = (),
        seed: int = 0,
        schedule: str = "global",
        dp: ClientDP | None = None,
        dp_delta: float | None = None,
        client_names: Sequence[Sequence[str]] | None = None,
        group_by_length: bool = True,
    ) -> None:
        if mode not in ("min", "max"):
            raise FinexpError(f"mode={mode!r}: choose min or max")
        self.module = module
        self.partitions = [np.asarray(p) for p in partitions]
        self.val_loader = val_loader
        self.make_trainer = make_trainer
        self.rounds = rounds
        self.monitor, self.mode = monitor, mode
        self.loggers = list(loggers)
        self.dp, self.dp_delta = dp, dp_delta
        self.names = trainable_names(module)
        if not self.names:
            raise FinexpError("the model has no trainable parameters: there is nothing for clients to exchange")
        collate = PadCollator(pad_token_id)
        self.clients = [
            FinexpClient(
                str(i),
                module,
                self.names,
                client_loader(train_set, rows, batch_size, collate, seed + 1000 * i, group_by_length),
                make_trainer,
                local_epochs=local_epochs,
                rounds=rounds,
                schedule=schedule,
                dp=dp,
            )
            for i, rows in enumerate(self.partitions)
        ]
        self.proxies = [InProcessClientProxy(c.cid, c) for c in self.clients]
        self.manager = SimpleClientManager()
        for proxy in self.proxies:
            self.manager.register(proxy)
        labels = train_set.labels.numpy()
        num_labels = int(labels.max()) + 1 if len(labels) else 0
        self.label_skew = label_skew(labels, self.partitions, num_labels)
        self.client_info = [
            {
                "cid": c.cid,
                "rows": len(rows),
                "label_counts": np.bincount(labels[rows], minlength=num_labels).tolist(),
                **({"values": list(client_names[i])} if client_names else {}),
            }
            for i, (c, rows) in enumerate(zip(self.clients, self.partitions, strict=True))
        ]
        self.strategy = strategy(
            min_fit_clients=1,
            min_available_clients=len(self.clients),
            fraction_evaluate=0.0,
            min_evaluate_clients=0,
            initial_parameters=ndarrays_to_parameters(get_arrays(module, self.names)),
            evaluate_fn=self._evaluate,
            on_fit_config_fn=lambda server_round: {"server_round": server_round},
            fit_metrics_aggregation_fn=_weighted_mean,
            accept_failures=False,
        )
        self._evaluator: pl.Trainer | None = None
        self.last_results: list[tuple[InProcessClientProxy, FitRes]] = []  # the latest round's client answers

    def _evaluate(self, server_round: int, arrays: list[np.ndarray], config: dict) -> tuple[float, dict[str, Scalar]]:
        """Flower's server-side ``evaluate_fn``: the global model's metrics on the val split."""
        set_arrays(self.module, self.names, arrays)
        if self._evaluator is None:
            self._evaluator = self.make_trainer(callbacks=[])
        results = self._evaluator.validate(self.module, dataloaders=self.val_loader, verbose=False)
        metrics = {k: float(v) for k, v in results[0].items()}
        return metrics.get("val/loss", math.nan), metrics

    def _better(self, value: float, best: float | None) -> bool:
        if math.isnan(value):
            return False
        return best is None or (value > best if self.mode == "max" else value < best)

    def _log(self, record: RoundRecord) -> None:
        values = {**record.metrics, "federated/round": record.round}
        if record.round > 0:
            values |= {
                "federated/bytes_up": record.bytes_up,
                "federated/bytes_down": record.bytes_down,
                "federated/clients": len(record.clients),
            }
            if record.train_loss is not None:
                values["federated/train_loss"] = record.train_loss
        for logger in self.loggers:
            logger.log_metrics(values, step=record.round)
            logger.save()  # rounds are minutes apart: the CSV shows progress while the run goes on
        shown = record.metrics.get(self.monitor, math.nan)
        log.info(
            "federated round %d: %s %.4f, %d bytes down, %d bytes up, %d clients",
            record.round,
            self.monitor,
            shown,
            record.bytes_down,
            record.bytes_up,
            len(record.clients),
        )

    def fit_round(self, server_round: int, parameters: Parameters) -> tuple[Parameters, RoundRecord]:
        """One round: configure, train every chosen client in turn, aggregate. Returns the new global parameters."""
        started = time.perf_counter()
        instructions = self.strategy.configure_fit(server_round, parameters, self.manager)
        if not instructions:
            raise FinexpError(f"round {server_round}: the strategy chose no clients")
        record = RoundRecord(server_round, {})
        results: list[tuple[InProcessClientProxy, FitRes]] = []
        for proxy, ins in sorted(instructions, key=lambda pair: int(pair[0].cid)):
            down, up = proxy.bytes_down, proxy.bytes_up
            res = proxy.fit(ins, timeout=None, group_id=server_round)
            if res.status.code != Code.OK:
                raise FinexpError(f"round {server_round}: client {proxy.cid} failed: {res.status.message}")
            record.bytes_down += proxy.bytes_down - down
            record.bytes_up += proxy.bytes_up - up
            record.clients.append(proxy.cid)
            results.append((proxy, res))
        self.last_results = results
        aggregated, fit_metrics = self.strategy.aggregate_fit(server_round, list(results), [])
        if aggregated is None:
            raise FinexpError(f"round {server_round}: the strategy returned no parameters")
        if "train_loss" in fit_metrics:
            record.train_loss = float(fit_metrics["train_loss"])
        record.seconds = time.perf_counter() - started
        return aggregated, record

    def run(self) -> FederationResult:
        """All rounds; the module ends holding the best round's global parameters."""
        # Every local round builds a Trainer, and each would print the same setup lines (GPU available, ...);
        # this run logs one line per round instead. Warnings still show.
        lightning = logging.getLogger("pytorch_lightning")
        level = lightning.level
        lightning.setLevel(max(level, logging.WARNING))
        try:
            return self._run()
        finally:
            lightning.setLevel(level)

    def _run(self) -> FederationResult:
        parameters = self.strategy.initialize_parameters(self.manager)
        if parameters is None:
            raise FinexpError("the strategy gave no initial parameters")
        history: list[RoundRecord] = []
        best_value: float | None = None
        best_round, best = 0, parameters_to_ndarrays(parameters)
        for server_round in range(0, self.rounds + 1):
            if server_round == 0:
                record = RoundRecord(0, {})
            else:
                parameters, record = self.fit_round(server_round, parameters)
            evaluated = self.strategy.evaluate(server_round, parameters)
            if evaluated is None:
                raise FinexpError("the strategy did not evaluate the global model (it needs finexp's evaluate_fn)")
            record.metrics = {k: float(v) for k, v in evaluated[1].items()}
            history.append(record)
            self._log(record)
            value = record.metrics.get(self.monitor, math.nan)
            if self._better(value, best_value):
                best_value, best_round, best = value, server_round, parameters_to_ndarrays(parameters)
        last = parameters_to_ndarrays(parameters)
        set_arrays(self.module, self.names, best)
        return FederationResult(
            self.names, history, best_round, best, last, self.client_info, self.label_skew, self.dp, self.dp_delta
        )


def save_checkpoints(
    trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule, result: FederationResult
) -> str:
    """Write ``checkpoints/best.ckpt`` and ``last.ckpt`` with the run's own trainer, like a central run's.

    The trainer's callbacks shape them as usual (parameter-efficient runs keep only what trains, RNG states); the
    global model is validated once so Lightning has it attached. Returns the best checkpoint's path.
    """
    callback = trainer.checkpoint_callback
    directory = Path(getattr(callback, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints")
    directory.mkdir(parents=True, exist_ok=True)
    set_arrays(module, result.names, result.last)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    trainer.save_checkpoint(directory / "last.ckpt")
    set_arrays(module, result.names, result.best)
    best = directory / "best.ckpt"
    trainer.save_checkpoint(best)
    result.best_checkpoint = str(best)
    return str(best)
