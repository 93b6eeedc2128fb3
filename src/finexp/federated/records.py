"""What a federation leaves behind: a record per round, the :class:`FederationResult` (``federation.json``, the
``federated/*`` and ``privacy/*`` metrics) and the global model saved as the run's checkpoints.

Written by the coordinator (:mod:`.server`) and read back by the submitting side of a deployment (:mod:`.submit`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl

from finexp.federated.central_dp import CentralDP
from finexp.federated.client import ClientDP, set_arrays


@dataclass
class RoundRecord:
    """What one round did: the global model's val metrics after it, the bytes it moved, its nodes and failures."""

    round: int
    metrics: dict[str, float]
    bytes_down: int = 0
    bytes_up: int = 0
    clients: list[str] = field(default_factory=list)
    train_loss: float | None = None
    seconds: float = 0.0  # wall time of the round: configure, deliver, train, reply, aggregate
    eval_seconds: float = 0.0  # scoring the global model on the coordinator's val split
    failures: list[dict[str, Any]] = field(default_factory=list)
    clipping_norm: float | None = None  # central DP: the bound this round's updates were clipped to


@dataclass
class FederationResult:
    """The outcome of a federation: per-round records, the best and the last global trainable parameters."""

    names: list[str]
    rounds: list[RoundRecord]
    best_round: int
    best: list[np.ndarray]
    last: list[np.ndarray]
    clients: list[dict[str, Any]]
    label_skew: float | None
    dp: ClientDP | None = None
    dp_delta: float | None = None
    best_checkpoint: str | None = None
    runtime: str = "inprocess"
    strategy: str = ""
    resumed_from: int | None = None  # the round a resumed federation found done
    central_dp: CentralDP | None = None
    node_privacy: dict[str, dict[str, Any]] = field(default_factory=dict)  # DP-SGD on each node: its ε, δ, noise

    def epsilon(self) -> float | None:
        """ε each client spent (every client trains in every round with ``fraction_train=1``; a bound otherwise)."""
        if self.dp is None or self.dp_delta is None:
            return None
        return self.dp.epsilon(self.dp_delta, len(self.rounds) - 1)

    def report(self) -> dict[str, Any]:
        """``federated/*`` (and with client DP ``privacy/*``) entries for ``metrics.json``."""
        trained = [r for r in self.rounds if r.round > 0]
        up = [r.bytes_up for r in trained]
        down = [r.bytes_down for r in trained]
        out: dict[str, Any] = {
            "federated/runtime": self.runtime,
            "federated/strategy": self.strategy,
            "federated/rounds": len(trained),
            "federated/num_clients": len(self.clients),
            "federated/best_round": self.best_round,
            "federated/exchanged_parameters": int(sum(a.size for a in self.last)),
            "federated/bytes_up_per_round": float(np.mean(up)) if up else 0.0,
            "federated/bytes_down_per_round": float(np.mean(down)) if down else 0.0,
            "federated/bytes_per_round": float(np.mean(np.add(up, down))) if up else 0.0,
            "federated/bytes_total": int(sum(up) + sum(down)),
            "federated/round_s": float(np.mean([r.seconds for r in trained])) if trained else 0.0,
            "federated/failures": int(sum(len(r.failures) for r in trained)),
        }
        if self.label_skew is not None:
            out["federated/label_skew"] = self.label_skew
        if self.resumed_from is not None:
            out["federated/resumed_from_round"] = self.resumed_from
        if self.best_checkpoint is not None and Path(self.best_checkpoint).is_file():
            out["checkpoint/size_mb"] = Path(self.best_checkpoint).stat().st_size / 2**20
        if self.central_dp is not None:
            out |= {
                "privacy/central_epsilon": self.central_dp.epsilon(len(trained)),
                "privacy/central_delta": self.central_dp.delta,
                "privacy/central_noise_multiplier": self.central_dp.noise_multiplier,
                "privacy/central_clipping_norm": trained[-1].clipping_norm if trained else None,
                "privacy/central_mechanism": f"central DP-FedAvg ({self.central_dp.clipping} clipping on the "
                "coordinator, Gaussian noise on the unweighted mean)",
            }
        if self.node_privacy:
            epsilons = [p["epsilon"] for p in self.node_privacy.values()]
            out |= {
                "privacy/epsilon": max(epsilons),  # the guarantee every node's rows have
                "privacy/delta": max(p["delta"] for p in self.node_privacy.values()),
                "privacy/mechanism": "DP-SGD on every node (record-level; the largest ε of any node)",
            }
        if self.dp is not None:
            out |= {
                "privacy/epsilon": self.epsilon(),
                "privacy/delta": self.dp_delta,
                "privacy/noise_multiplier": self.dp.noise_multiplier,
                "privacy/clipping_norm": self.dp.clipping_norm,
                "privacy/mechanism": "client-side DP-FedAvg (clip + Gaussian noise per update)",
            }
        return out

    def central_record(self) -> dict[str, Any]:
        """Central DP's settings and the ε it spent (``federation.json``)."""
        assert self.central_dp is not None
        trained = [r for r in self.rounds if r.round > 0]
        return {**asdict(self.central_dp), "epsilon": self.central_dp.epsilon(len(trained))}

    def write(self, path: str | Path) -> None:
        """``federation.json``: the clients (rows, labels, column values) and every round's metrics and bytes."""
        record = {
            "runtime": self.runtime,
            "strategy": self.strategy,
            "clients": self.clients,
            "label_skew": self.label_skew,
            "best_round": self.best_round,
            "exchanged": self.names,
            "rounds": [asdict(r) for r in self.rounds],
            **({"resumed_from_round": self.resumed_from} if self.resumed_from is not None else {}),
            **({"epsilon": self.epsilon(), "delta": self.dp_delta} if self.dp is not None else {}),
            **({"central_dp": self.central_record()} if self.central_dp is not None else {}),
            **({"node_privacy": self.node_privacy} if self.node_privacy else {}),
        }
        Path(path).write_text(json.dumps(record, indent=2, default=float))


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
