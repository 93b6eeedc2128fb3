"""finexp's federated coordinator: a Flower Message-API strategy driven over a ``Grid``, the global model scored on
the coordinator's val split, the best round kept, every round's state saved for resuming.

One implementation of the rounds serves every runtime (the grid is what differs: in-process, Flower's simulation,
a SuperLink). Each round ``r``:

1. ``strategy.configure_train`` samples the nodes and builds their messages (global parameters as an
   ``ArrayRecord``, ``server-round``, FedProx's ``proximal-mu``);
2. the grid delivers them and gathers the replies (:class:`~finexp.federated.grid.MeteredGrid` counts the bytes
   down and up, and records nodes that failed or did not answer);
3. ``strategy.aggregate_train`` aggregates (FedAvg: the row-weighted mean; Krum/Bulyan: robust selection);
4. the coordinator scores the new global model on its val split; the metrics go to the run's loggers, the best
   round (on the run's monitor) is kept, and the round's state is written to ``<run dir>/federation_state/`` so a
   federation stopped after round ``r`` continues at ``r + 1``.

Node sampling is seeded per round and a node's round is seeded by (node, round), so the resumed federation repeats
the uninterrupted one. Central DP's wrapper is in :mod:`.central_dp`; what a federation leaves behind (the round
records, ``federation.json``, the checkpoints) in :mod:`.records`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch.utils.data import DataLoader

from finexp import FinexpError
from finexp.federated.arrays import ordered, to_record
from finexp.federated.central_dp import UNIT_WEIGHT, CentralDP, check_averaging, fresh_noise
from finexp.federated.client import ClientDP, TrainerFactory, get_arrays, set_arrays
from finexp.federated.grid import MeteredGrid
from finexp.federated.records import FederationResult, RoundRecord

log = logging.getLogger("finexp")

STATE_DIR = "federation_state"
# Optimizer state of Flower's adaptive strategies (FedAdam, FedYogi, FedAdagrad: first and second moments), saved
# with each round so a resumed FedAdam continues with the moments it had.
STRATEGY_STATE = ("m_t", "v_t")


@contextmanager
def _seeded_sampling(seed: int) -> Iterator[None]:
    """Python's ``random`` (what Flower's node sampling draws from) seeded inside, restored after."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _fingerprint(arrays: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:16]


class Federation:
    """Federated training of one LightningModule over a Flower ``Grid``, rounds driven by a Message-API strategy.

    Args:
        module: the run's LightningModule; its trainable parameters are what nodes exchange. The coordinator loads
            each global model into it to score it.
        names: the trainable parameters, in order.
        strategy: ``(**kwargs) -> flwr.serverapp.strategy.Strategy``, e.g. ``functools.partial(FedAvg, ...)``;
            finexp adds the node counts and turns off client-side evaluation (the coordinator scores the model).
        rounds: communication rounds.
        val_loader: the coordinator's val split, on which every global model is scored.
        make_trainer: ``(**overrides) -> pl.Trainer`` without logger or checkpoints (for scoring).
        num_nodes: nodes the federation waits for (``min_available_nodes``); ``min_train_nodes`` nodes train.
        grid: the grid of the runtime (None: given to :meth:`run`).
        monitor: val metric that picks the best round (e.g. ``val/auroc``), and ``mode`` (``max``/``min``).
        loggers: the run's loggers; each round's metrics are logged at ``step=round``.
        clients: what ``federation.json`` says about the nodes (rows, label counts, names).
        node_names: names of the nodes by node id (for the round records).
        label_skew: the partitions' label skew (None when the coordinator cannot know it: a deployment).
        dp: client-side DP of each update; ``dp_delta`` is the δ its ε is stated at.
        central_dp: central DP on the coordinator (the strategy inside Flower's server-side clipping wrapper).
        secure: SecAgg+ (:class:`~finexp.federated.secure_aggregation.SecureAggregation`): the coordinator gets
            only the nodes' mean; None: each node's update in the clear.
        seed: seeds node sampling (with the round number).
        timeout: seconds to wait for the nodes' replies in a round.
        accept_failures: a round goes on with the nodes that answered (the failures are recorded); False: any
            failure stops the run.
        state_dir: where each round's state is written (None: nowhere; no resume).
        config: the resolved run config; a saved state of another config is not resumed.
        resume: continue from the state in ``state_dir`` when there is one of this config.
        runtime: the runtime's name, for the records.
    """

    def __init__(
        self,
        module: pl.LightningModule,
        names: Sequence[str],
        strategy: Callable[..., Strategy],
        rounds: int,
        val_loader: DataLoader,
        make_trainer: TrainerFactory,
        num_nodes: int,
        min_train_nodes: int = 1,
        grid: Grid | None = None,
        monitor: str = "val/loss",
        mode: str = "min",
        loggers: Sequence[Any] = (),
        clients: Sequence[dict[str, Any]] = (),
        node_names: dict[int, str] | None = None,
        label_skew: float | None = None,
        dp: ClientDP | None = None,
        dp_delta: float | None = None,
        central_dp: CentralDP | None = None,
        secure: Any = None,
        seed: int = 0,
        timeout: float = 3600.0,
        accept_failures: bool = False,
        state_dir: str | Path | None = None,
        config: dict[str, Any] | None = None,
        resume: bool = True,
        runtime: str = "inprocess",
    ) -> None:
        if mode not in ("min", "max"):
            raise FinexpError(f"mode={mode!r}: choose min or max")
        if not names:
            raise FinexpError("the model has no trainable parameters: there is nothing for nodes to exchange")
        self.module = module
        self.names = list(names)
        self.rounds = rounds
        self.val_loader = val_loader
        self.make_trainer = make_trainer
        self.monitor, self.mode = monitor, mode
        self.loggers = list(loggers)
        self.clients = list(clients)
        self.node_names = dict(node_names or {})
        self.label_skew = label_skew
        self.dp, self.dp_delta = dp, dp_delta
        self.central_dp = central_dp
        self.secure = secure
        self.node_privacy: dict[str, dict[str, Any]] = {}
        self.seed = seed
        self.timeout = timeout
        self.accept_failures = accept_failures
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.config = config
        self.resume = resume
        self.runtime = runtime
        target = getattr(strategy, "func", strategy)  # a functools.partial from `_partial_: true`, or the class
        if isinstance(target, type) and not issubclass(target, Strategy):
            raise FinexpError(
                f"federated.strategy._target_={target.__module__}.{target.__qualname__} is not a Flower Message-API "
                "strategy; use one of flwr.serverapp.strategy (FedAvg, FedProx, FedAdam, FedYogi, Krum, Bulyan, "
                "...): the legacy flwr.server.strategy classes are not supported"
            )
        built = strategy(
            min_train_nodes=min_train_nodes,
            min_available_nodes=num_nodes,
            fraction_evaluate=0.0,
            min_evaluate_nodes=0,
        )
        if not isinstance(built, Strategy):
            raise FinexpError(
                f"federated.strategy built a {type(built).__qualname__}, not a flwr.serverapp.strategy.Strategy"
            )
        self.inner = built  # the aggregation itself (what holds FedAdam's moments)
        self._secure_nodes: list[str] = []
        if secure is not None:
            if central_dp is not None:
                raise FinexpError(
                    "federated.secure_aggregation=true hides every update from the coordinator, which central DP "
                    "(federated.central_dp) must clip one by one; use federated.dp (clipped and noised on each node)"
                )
            check_averaging(built, "federated.secure_aggregation=true")
        self.strategy: Strategy = built
        if central_dp is not None:
            fraction = float(getattr(built, "fraction_train", 1.0))
            self.strategy = central_dp.wrap(built, max(int(num_nodes * fraction), min_train_nodes))
        self.grid = MeteredGrid(grid) if grid is not None else None
        self._evaluator: pl.Trainer | None = None
        self.last_replies: list[Message] = []  # the latest round's node answers (content replies)
        self.initial = get_arrays(module, self.names)

    # --- rounds -------------------------------------------------------------------------------------------------

    def initial_arrays(self) -> ArrayRecord:
        """The global model of round 0 (the module's trainable parameters as built)."""
        return to_record(dict(zip(self.names, self.initial, strict=True)))

    def evaluate(self, arrays: Sequence[np.ndarray]) -> dict[str, float]:
        """The global model's metrics on the coordinator's val split."""
        set_arrays(self.module, self.names, arrays)
        if self._evaluator is None:
            self._evaluator = self.make_trainer(callbacks=[])
        results = self._evaluator.validate(self.module, dataloaders=self.val_loader, verbose=False)
        return {k: float(v) for k, v in results[0].items()}

    def fit_round(self, server_round: int, arrays: ArrayRecord) -> tuple[ArrayRecord, RoundRecord]:
        """One round: configure, deliver, aggregate. Returns the new global parameters and the round's record."""
        if self.grid is None:
            raise FinexpError("this federation has no grid yet: run(grid) gives it one")
        started = time.perf_counter()
        self.grid.reset()
        with _seeded_sampling(self.seed * 100_003 + server_round):
            messages = list(self.strategy.configure_train(server_round, arrays, ConfigRecord(), self.grid))
        if not messages:
            raise FinexpError(f"round {server_round}: the strategy chose no nodes")
        if self.secure is None:
            replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        else:
            replies = [self._secure_mean(server_round, messages)]
        traffic = self.grid.traffic
        record = RoundRecord(server_round, {}, bytes_down=traffic.bytes_down, bytes_up=traffic.bytes_up)
        record.failures = [{"node": self._name(f["node"]), "reason": f["reason"]} for f in traffic.failures]
        for failure in record.failures:
            log.warning("federated round %d: node %s failed: %s", server_round, failure["node"], failure["reason"])
        if record.failures and not self.accept_failures:
            first = record.failures[0]
            raise FinexpError(
                f"round {server_round}: node {first['node']} failed: {first['reason']} "
                "(federated.accept_failures=true goes on with the nodes that answered)"
            )
        answered = [r for r in replies if not r.has_error()]
        if not answered:
            raise FinexpError(f"round {server_round}: no node answered ({len(record.failures)} failed)")
        record.clients = [self._reply_name(r) for r in answered] if self.secure is None else self._secure_nodes
        self.last_replies = answered
        self._node_privacy(answered)
        if self.central_dp is None:
            aggregated, metrics = self.strategy.aggregate_train(server_round, replies)
        else:
            aggregated, metrics = self._aggregate_privately(server_round, answered, record)
        if aggregated is None:
            raise FinexpError(f"round {server_round}: the strategy returned no parameters")
        if metrics is not None and "train_loss" in metrics:
            record.train_loss = float(metrics["train_loss"])  # type: ignore[arg-type]
        record.seconds = time.perf_counter() - started
        return aggregated, record

    def _secure_mean(self, server_round: int, messages: list[Message]) -> Message:
        """SecAgg+ over the round's grid: one reply holding the nodes' row-weighted mean (what the strategy then
        aggregates: FedAvg keeps it, FedAdam takes its server step on it)."""
        from flwr.app import MetricRecord, RecordDict

        mean, metrics, rows = self.secure.mean(self.grid, messages, self.names, server_round)
        self._secure_nodes = [str(m.get("node", node)) for node, m in sorted(metrics.items())]
        for node, values in metrics.items():
            if "privacy-epsilon" in values:
                self.node_privacy[str(values.get("node", node))] = {
                    k.removeprefix("privacy-").replace("-", "_"): float(v)
                    for k, v in values.items()
                    if k.startswith("privacy-")
                }
        arrays = to_record(dict(zip(self.names, mean, strict=True)))
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": rows})})
        return Message(content, dst_node_id=0, message_type="train")

    def _aggregate_privately(self, server_round: int, answered: list[Message], record: RoundRecord) -> tuple[Any, Any]:
        """Central DP's aggregate: every update clipped, the unweighted mean noised (fresh entropy)."""
        expected = int(self.strategy.num_sampled_clients)  # type: ignore[attr-defined]
        if len(answered) < expected:
            raise FinexpError(
                f"round {server_round}: {len(answered)} of {expected} sampled nodes answered; federated.central_dp "
                f"calibrates its noise to the mean of {expected} updates, and a mean of fewer would get too little"
            )
        for reply in answered:  # every node weighs 1, whatever it says its row count is
            for metrics in reply.content.metric_records.values():
                metrics[UNIT_WEIGHT] = 1.0
        record.clipping_norm = float(self.strategy.clipping_norm)  # type: ignore[attr-defined]
        with fresh_noise():
            return self.strategy.aggregate_train(server_round, answered)

    def _node_privacy(self, answered: list[Message]) -> None:
        """DP-SGD's ε each node reports (``privacy-epsilon``, ``privacy-delta``, ...) after its latest round."""
        for reply in answered:
            metrics = reply.content.metric_records.get("metrics")
            if metrics is not None and "privacy-epsilon" in metrics:
                self.node_privacy[self._reply_name(reply)] = {
                    key.removeprefix("privacy-").replace("-", "_"): float(value)  # type: ignore[arg-type]
                    for key, value in metrics.items()
                    if key.startswith("privacy-")
                }

    def _name(self, node_id: int) -> str:
        return self.node_names.get(node_id, str(node_id))

    def _reply_name(self, reply: Message) -> str:
        """The node's own name (finexp's ClientApp says it), else the one finexp gave it, else its node id."""
        node = reply.metadata.src_node_id
        if node not in self.node_names and "node" in reply.content.config_records:
            self.node_names[node] = str(reply.content["node"].get("name", node))
        return self._name(node)

    def _better(self, value: float, best: float | None) -> bool:
        if math.isnan(value):
            return False
        return best is None or (value > best if self.mode == "max" else value < best)

    def _log(self, record: RoundRecord) -> None:
        values: dict[str, float] = {**record.metrics, "federated/round": record.round}
        if record.round > 0:
            values |= {
                "federated/bytes_up": record.bytes_up,
                "federated/bytes_down": record.bytes_down,
                "federated/clients": len(record.clients),
                "federated/round_s": record.seconds,
            }
            if record.train_loss is not None:
                values["federated/train_loss"] = record.train_loss
        for logger in self.loggers:
            logger.log_metrics(values, step=record.round)
            logger.save()  # rounds are minutes apart: the CSV shows progress while the run goes on
        log.info(
            "federated round %d: %s %.4f, %d bytes down, %d bytes up, %d nodes, %.1f s",
            record.round,
            self.monitor,
            record.metrics.get(self.monitor, math.nan),
            record.bytes_down,
            record.bytes_up,
            len(record.clients),
            record.seconds,
        )

    def run(self, grid: Grid | None = None) -> FederationResult:
        """All rounds (from the saved state when there is one); the module ends holding the best global model."""
        if grid is not None:
            self.grid = MeteredGrid(grid)
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
        history: list[RoundRecord] = []
        best_value: float | None = None
        best_round, best = 0, list(self.initial)
        current, start, resumed = list(self.initial), 0, None
        saved = self._load_state()
        if saved is not None:
            history, best_round, best_value, best, current, strategy_state, extra = saved
            resumed = history[-1].round
            start = resumed + 1
            for name, value in strategy_state.items():
                setattr(self.inner, name, value)
            self.node_privacy = extra.get("node_privacy") or {}
            if extra.get("clipping_norm") is not None and self.central_dp is not None:
                self.strategy.clipping_norm = float(extra["clipping_norm"])  # type: ignore[attr-defined]
            log.info("federation: resuming after round %d of %d from %s", resumed, self.rounds, self.state_dir)
            for record in history:
                self._log(record)
        arrays = to_record(dict(zip(self.names, current, strict=True)))
        for server_round in range(start, self.rounds + 1):
            if server_round == 0:
                record = RoundRecord(0, {})
            else:
                arrays, record = self.fit_round(server_round, arrays)
            current = ordered(arrays, self.names)
            scored = time.perf_counter()
            record.metrics = self.evaluate(current)
            record.eval_seconds = time.perf_counter() - scored
            history.append(record)
            self._log(record)
            value = record.metrics.get(self.monitor, math.nan)
            if self._better(value, best_value):
                best_value, best_round, best = value, server_round, current
            self._save_state(history, best_round, best_value, best, current)
        set_arrays(self.module, self.names, best)
        return FederationResult(
            self.names,
            history,
            best_round,
            best,
            current,
            self.clients,
            self.label_skew,
            self.dp,
            self.dp_delta,
            runtime=self.runtime,
            strategy=self._strategy_name(),
            resumed_from=resumed,
            central_dp=self.central_dp,
            node_privacy=self.node_privacy,
        )

    def _strategy_name(self) -> str:
        name = type(self.inner).__name__
        if self.central_dp is not None:
            return f"{name} + central DP ({self.central_dp.clipping} clipping)"
        return f"{name} + SecAgg+" if self.secure is not None else name

    # --- state --------------------------------------------------------------------------------------------------

    def _save_state(
        self,
        history: list[RoundRecord],
        best_round: int,
        best_value: float | None,
        best: list[np.ndarray],
        current: list[np.ndarray],
    ) -> None:
        """``federation_state/``: the global model after the last round, the best one, the strategy's moments and
        the round records; written whole into a new directory and swapped in, so a crash leaves the previous one."""
        if self.state_dir is None:
            return
        tmp = self.state_dir.with_name(self.state_dir.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        np.savez(tmp / "global.npz", **{f"p{i}": a for i, a in enumerate(current)})
        np.savez(tmp / "best.npz", **{f"p{i}": a for i, a in enumerate(best)})
        moments = {}
        for attr in STRATEGY_STATE:
            value = getattr(self.inner, attr, None)
            if isinstance(value, dict):
                moments |= {f"{attr}/{k}": np.asarray(v) for k, v in value.items()}
        np.savez(tmp / "strategy.npz", **moments)
        state = {
            "round": history[-1].round,
            "rounds": self.rounds,
            "best_round": best_round,
            "best_value": best_value,
            "names": self.names,
            "initial": _fingerprint(self.initial),
            "strategy": self._strategy_name(),
            "config": self.config,
            "history": [asdict(r) for r in history],
            "node_privacy": self.node_privacy,
            "clipping_norm": getattr(self.strategy, "clipping_norm", None) if self.central_dp is not None else None,
            "client_dp": {**asdict(self.dp), "delta": self.dp_delta} if self.dp is not None else None,
            "central_dp": asdict(self.central_dp) if self.central_dp is not None else None,
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=2, default=float))
        old = self.state_dir.with_name(self.state_dir.name + ".old")
        if self.state_dir.exists():
            self.state_dir.rename(old)
        tmp.rename(self.state_dir)
        if old.exists():
            for f in old.iterdir():
                f.unlink()
            old.rmdir()

    def _load_state(self) -> tuple[Any, ...] | None:
        """The saved state of this federation, or None (no state, ``resume`` off, or a state of another run)."""
        if self.state_dir is None or not self.resume:
            return None
        path = self.state_dir / "state.json"
        if not path.is_file():
            return None
        from finexp.resume import config_differences

        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise FinexpError(f"{path} is unreadable ({err}); delete {self.state_dir} to start afresh") from err
        changed = config_differences(state.get("config") or {}, self.config or {}) if self.config else []
        if changed or state.get("names") != self.names or state.get("initial") != _fingerprint(self.initial):
            why = f"{', '.join(changed[:5])} differ" if changed else "another model or initialisation"
            log.info("federation: not resuming %s: it holds another run (%s)", self.state_dir, why)
            return None
        if state.get("strategy") != self._strategy_name():
            return None

        def arrays(name: str) -> list[np.ndarray]:
            with np.load(self.state_dir / name, allow_pickle=False) as data:  # type: ignore[operator]
                return [data[f"p{i}"] for i in range(len(self.names))]

        moments: dict[str, dict[str, np.ndarray]] = {}
        with np.load(self.state_dir / "strategy.npz", allow_pickle=False) as data:
            for key in data.files:
                attr, name = key.split("/", 1)
                if attr in STRATEGY_STATE:
                    moments.setdefault(attr, {})[name] = data[key]
        history = [RoundRecord(**r) for r in state["history"]]
        extra = {"node_privacy": state.get("node_privacy"), "clipping_norm": state.get("clipping_norm")}
        best_round, best_value = int(state["best_round"]), state["best_value"]
        return history, best_round, best_value, arrays("best.npz"), arrays("global.npz"), moments, extra
