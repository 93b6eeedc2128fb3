"""One institution's local training: the run's LightningModule fitted with Lightning on the node's own rows.

Each call of :meth:`LocalNode.train` is one local round: load the global trainable parameters into the module, fit
it with a fresh Lightning ``Trainer`` for the round's local epochs on the node's rows, and return the trainable
parameters (optionally clipped and noised: client-side DP). Only trainable parameters travel, so a LoRA node sends
the adapter and the head, never the frozen encoder. The Flower ``ClientApp`` (:mod:`finexp.federated.app`) is the
thin Message-API layer around it; nothing here knows about messages.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from flwr.supercore.differential_privacy import clip_inputs_inplace
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from finexp import FinexpError
from finexp.data.batching import LengthGroupedSampler, PadCollator, TokenizedDataset
from finexp.privacy.sampling import PoissonBatchSampler
from finexp.problems.common import class_weights

log = logging.getLogger("finexp")

TrainerFactory = Callable[..., pl.Trainer]
# Rényi orders the accountant tries: Opacus' defaults stop at 63, which a few un-subsampled rounds with little noise
# outgrow (the bound is then loose, and Opacus warns); more orders cost nothing here.
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [2**k for k in range(6, 13)]


def node_seed(seed: int, name: str) -> int:
    """The seed of a node's batches, dropout and noise: the run's ``seed`` and the node's name.

    A node is the same node wherever it runs: the in-process node holding institution ``bank_a``'s rows and the
    SuperNode started on ``bank_a.csv`` draw the same batches in every round (the name, not Flower's random node id).
    """
    return seed + zlib.crc32(name.encode()) % 100_003


def trainable_names(module: torch.nn.Module) -> list[str]:
    """Names of the parameters that train, in a fixed order: the ones a client exchanges with the server."""
    return [name for name, param in module.named_parameters() if param.requires_grad]


def get_arrays(module: torch.nn.Module, names: Sequence[str]) -> list[np.ndarray]:
    """The named parameters as NumPy arrays (copies)."""
    params = dict(module.named_parameters())
    return [params[n].detach().cpu().numpy().copy() for n in names]


def set_arrays(module: torch.nn.Module, names: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
    """Load arrays into the named parameters (shapes must match)."""
    if len(arrays) != len(names):
        raise FinexpError(f"got {len(arrays)} arrays for {len(names)} trainable parameters")
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, array in zip(names, arrays, strict=True):
            param = params[name]
            if tuple(array.shape) != tuple(param.shape):
                raise FinexpError(f"parameter {name}: got shape {array.shape}, expected {tuple(param.shape)}")
            param.copy_(torch.from_numpy(np.asarray(array)).to(param.device, param.dtype))


class ProximalTerm(pl.Callback):
    """FedProx on the client: adds the gradient of ``mu/2 * ||w - w_global||^2`` to every trainable parameter.

    Adding ``mu * (w - w_global)`` after backward is the same as adding the term to the loss, and leaves the
    LightningModule (and its logged loss) as it is. Gradient clipping and the optimizer see the sum.

    Args:
        mu: the proximal weight Flower's ``FedProx`` strategy sends (``proximal_mu``).
        anchor: the global parameters of this round, by parameter name.
    """

    def __init__(self, mu: float, anchor: dict[str, torch.Tensor]) -> None:
        self.mu = mu
        self.anchor = anchor

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scale = self.mu / max(1, trainer.accumulate_grad_batches)  # Lightning divides the loss the same way
        for name, param in pl_module.named_parameters():
            if param.grad is not None and name in self.anchor:
                param.grad.add_(param.detach() - self.anchor[name], alpha=scale)


class RoundSchedule:
    """A client's learning-rate schedule spanning all its rounds: round ``r`` starts where round ``r - 1`` stopped.

    Wraps the run's per-step schedule factory ``(optimizer, num_training_steps) -> LambdaLR``; Lightning passes this
    round's steps, and the schedule is built for ``rounds`` times as many and moved to this round's first step.
    """

    def __init__(self, base: Callable[..., LambdaLR], rounds: int, server_round: int) -> None:
        self.base = base
        self.rounds = rounds
        self.server_round = server_round

    def __call__(self, optimizer: torch.optim.Optimizer, num_training_steps: int) -> LambdaLR:
        scheduler = self.base(optimizer, num_training_steps=num_training_steps * self.rounds)
        if not isinstance(scheduler, LambdaLR):
            raise FinexpError("federated.schedule=global needs a LambdaLR schedule; use federated.schedule=round")
        offset = num_training_steps * (self.server_round - 1)
        scheduler.last_epoch = offset
        lrs = [base * fn(offset) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        scheduler._last_lr = lrs  # what get_last_lr() (and Lightning's LearningRateMonitor) reads
        return scheduler


@dataclass
class ClientDP:
    """Client-side differential privacy of each update (DP-FedAvg's clip and noise, done by the client itself).

    The update ``w_local - w_global`` is clipped to L2 norm ``clipping_norm`` and Gaussian noise of standard deviation
    ``noise_multiplier * clipping_norm`` is added to every coordinate, with Flower's own helpers. Whatever the
    client's rows, what it sends is then a Gaussian mechanism of sensitivity ``clipping_norm``.
    """

    clipping_norm: float
    noise_multiplier: float

    def apply(self, new: list[np.ndarray], old: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """The privatized parameters ``old + noise(clip(new - old))`` and the update's norm before clipping."""
        update = [np.subtract(n, o) for n, o in zip(new, old, strict=True)]
        norm = math.sqrt(sum(float(np.square(u, dtype=np.float64).sum()) for u in update))
        clip_inputs_inplace(update, self.clipping_norm)
        if self.noise_multiplier > 0:
            # Fresh OS entropy, not the node's seeded generators: the seed is in the run config the coordinator
            # holds, and noise it can replay it can also subtract.
            rng = np.random.default_rng()
            std = self.noise_multiplier * self.clipping_norm
            update = [u + rng.normal(0.0, std, np.shape(u)).astype(u.dtype) for u in update]
        return [o + u for o, u in zip(old, update, strict=True)], norm

    @classmethod
    def for_epsilon(cls, clipping_norm: float, epsilon: float, delta: float, rounds: int) -> ClientDP:
        """The noise that spends ``epsilon`` (at ``delta``) over ``rounds`` updates of one client."""
        noise = get_noise_multiplier(
            target_epsilon=epsilon, target_delta=delta, sample_rate=1.0, steps=rounds, alphas=RDP_ORDERS
        )
        return cls(clipping_norm, float(noise))

    def epsilon(self, delta: float, rounds: int) -> float:
        """ε one client spends over ``rounds`` updates (Rényi DP accountant of Opacus).

        Every update a client sends is one Gaussian mechanism on all of its rows, and the server knows who took part,
        so no amplification by sampling is claimed (sample rate 1, one step per round the client trained in).
        """
        if rounds == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        accountant = RDPAccountant()
        accountant.history = [(self.noise_multiplier, 1.0, rounds)]
        return float(accountant.get_epsilon(delta=delta, alphas=RDP_ORDERS))


class _UnseededNoise(pl.Callback):
    """DP-SGD's noise from fresh OS entropy: a node's dropout and batches are seeded by (run seed, name, round), which
    the coordinator knows from the run config; noise it could replay would protect nothing. Runs after
    :class:`~finexp.privacy.dp_sgd.DPSGD` wrapped the optimizer (Opacus' ``secure_mode`` already draws its own)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from opacus.optimizers import DPOptimizer

        for optimizer in trainer.strategy.optimizers:
            if isinstance(optimizer, DPOptimizer) and not optimizer.secure_mode:
                device = next(p.device for group in optimizer.param_groups for p in group["params"])
                optimizer.generator = torch.Generator(device=device).manual_seed(secrets.randbits(63))


@dataclass
class NodeDPSGD:
    """DP-SGD inside every node's local rounds: the run's ``privacy=dp_sgd`` (Opacus, the same
    :class:`~finexp.privacy.dp_sgd.DPSGD` callback as a central run) on the node's own rows.

    The budget spans the whole federation: with ``epsilon``, the noise is solved once for all the node's steps
    (``rounds x local_epochs x`` Poisson batches per epoch), and the accountant's history is carried from round to
    round (in the node's Flower ``Context.state``), so the ε a node reports after round ``r`` covers every step it
    took. The guarantee is record-level, for the node's rows, against everyone who sees its updates (the
    coordinator included); the aggregate is post-processing.
    """

    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    epsilon: float | None = None
    delta: float | None = None  # None: 1 / the node's rows
    accountant: str = "rdp"
    secure_mode: bool = False

    def callback(self, rows: int, sample_rate: float, steps: int, history: Sequence[tuple]) -> Any:
        """This round's DPSGD callback, its accountant holding the node's earlier rounds."""
        from finexp.privacy.dp_sgd import DPSGD

        delta = self.delta if self.delta is not None else 1.0 / rows
        noise = self.noise_multiplier
        if noise is None:
            assert self.epsilon is not None
            noise = 0.0 if math.isinf(self.epsilon) else self._solve(delta, sample_rate, steps)
        dpsgd = DPSGD(self.max_grad_norm, noise_multiplier=noise, delta=delta, accountant=self.accountant)
        dpsgd.secure_mode = self.secure_mode
        dpsgd.accountant.history = [tuple(entry) for entry in history]
        return dpsgd

    def _solve(self, delta: float, sample_rate: float, steps: int) -> float:
        try:
            return float(
                get_noise_multiplier(
                    target_epsilon=self.epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=self.accountant,
                    epsilon_tolerance=0.01,
                )
            )
        except ValueError as err:
            raise FinexpError(
                f"privacy.epsilon={self.epsilon} cannot be reached on a node at δ={delta:.3g} over {steps} steps "
                f"at sample rate {sample_rate:.4f}: {err}"
            ) from err


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's and NumPy's global generators seeded with ``seed`` inside, restored after.

    A node's round is then a function of (global parameters, round, node) alone: dropout masks and DP noise do not
    depend on what ran before in this process, so a federation resumed at round r+1 repeats the uninterrupted one.
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        np.random.set_state(state)


class LocalNode:
    """One institution: its rows, and the run's LightningModule trained on them with Lightning.

    The nodes of an in-process federation share ``module`` (they train in turn, and every round starts by loading
    the global parameters), so N nodes cost the memory of one model.

    Args:
        name: the node's name in the run's records (a partition index, or a deployment node's own name).
        module: the run's LightningModule (its optimizer and schedule factories are used as they are).
        names: the trainable parameters exchanged (:func:`trainable_names`).
        loader: ``(server_round) -> DataLoader`` over this node's training rows (a new order every round).
        make_trainer: ``(**overrides) -> pl.Trainer`` for the local rounds (no logger, no checkpoints).
        local_epochs: epochs over its rows per round.
        local_steps: optimizer steps per round instead of epochs (a round's batches are a fresh draw; more steps than
            one epoch's batches go on into the next epoch); None: ``local_epochs``.
        rounds: rounds in the whole run (for a schedule spanning all rounds).
        schedule: ``global`` (one schedule across rounds) or ``round`` (the schedule restarts every round).
        dp: client-side DP of the update; None: none.
        seed: seeds the node's batches and dropout in each round (with the round number); never DP noise.
        dp_sgd: DP-SGD in the local rounds (``loader`` must then give Poisson-sampled batches); None: none.
        class_weights: ``balanced``: the node weighs its cross-entropy by its own label counts in its local rounds
            (:func:`local_class_weights`); None: the run's loss as it is.

    Attributes:
        dp_history: DP-SGD's accountant history (``(noise, sample rate, steps)`` entries) of the node's rounds so far;
            the ClientApp loads it from and saves it to the node's ``Context.state``.
    """

    def __init__(
        self,
        name: str,
        module: pl.LightningModule,
        names: Sequence[str],
        loader: Callable[[int], DataLoader],
        make_trainer: TrainerFactory,
        local_epochs: int = 1,
        local_steps: int | None = None,
        rounds: int = 1,
        schedule: str = "global",
        dp: ClientDP | None = None,
        seed: int = 0,
        dp_sgd: NodeDPSGD | None = None,
        class_weights: str | None = None,
    ) -> None:
        self.name = name
        self.module = module
        self.names = list(names)
        self.loader = loader
        self.make_trainer = make_trainer
        self.local_epochs = local_epochs
        self.local_steps = local_steps
        self.rounds = rounds
        self.schedule = schedule
        self.dp = dp
        self.seed = seed
        self.dp_sgd = dp_sgd
        self.class_weights = class_weights
        self.dp_history: list[tuple] = []

    def train(
        self, arrays: Mapping[str, np.ndarray], config: Mapping[str, Any]
    ) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
        """One local round from the global trainable parameters ``arrays`` (by parameter name).

        ``config`` carries ``server-round`` and, from Flower's ``FedProx``, ``proximal-mu``.

        Returns:
            The new trainable parameters (by name), the number of training rows, and the metrics
            (``train_loss``, ``train_steps``; with DP, ``update_norm`` before clipping).
        """
        missing = sorted(set(self.names) - set(arrays))
        unknown = sorted(set(arrays) - set(self.names))
        if missing or unknown:
            raise FinexpError(
                f"node {self.name}: the global model does not match this node's trainable parameters "
                f"(missing {missing[:3]}, unknown {unknown[:3]}); both sides must compose the same model and adapter"
            )
        server_round = int(config.get("server-round", 1))
        old = [np.asarray(arrays[n]) for n in self.names]
        set_arrays(self.module, self.names, old)
        callbacks: list[pl.Callback] = []
        mu = float(config.get("proximal-mu", 0.0))
        if mu > 0:
            params = dict(self.module.named_parameters())
            callbacks.append(ProximalTerm(mu, {n: params[n].detach().clone() for n in self.names}))
        loader = self.loader(server_round)
        dpsgd = None
        if self.dp_sgd is not None:
            sampler = loader.batch_sampler
            steps = self.rounds * (self.local_steps or self.local_epochs * len(sampler))  # type: ignore[arg-type]
            dpsgd = self.dp_sgd.callback(len(loader.dataset), sampler.sample_rate, steps, self.dp_history)  # type: ignore[union-attr]
            callbacks += [dpsgd, _UnseededNoise()]
        budget = {"max_epochs": self.local_epochs}
        if self.local_steps:  # a bound in optimizer steps: the round goes on across epochs until it is reached
            budget = {"max_epochs": -1, "max_steps": self.local_steps}
        trainer = self.make_trainer(**budget, callbacks=callbacks, limit_val_batches=0)
        base = self.module.scheduler_factory
        if base is not None and self.schedule == "global":
            self.module.scheduler_factory = RoundSchedule(base, self.rounds, server_round)
        weighing = (
            local_class_weights(self.module, loader.dataset.labels)  # type: ignore[attr-defined]
            if self.class_weights == "balanced"
            else contextlib.nullcontext()
        )
        with seeded(self.seed + 7919 * server_round), weighing:
            try:
                trainer.fit(self.module, train_dataloaders=loader)
            finally:
                self.module.scheduler_factory = base
            new = get_arrays(self.module, self.names)
            metrics = {
                "train_loss": float(trainer.callback_metrics.get("train/loss_epoch", float("nan"))),
                "train_steps": float(trainer.global_step),
            }
            if self.dp is not None:
                new, norm = self.dp.apply(new, old)
                metrics["update_norm"] = norm
        if dpsgd is not None:
            self.dp_history = [tuple(entry) for entry in dpsgd.accountant.history]
            metrics |= {
                "privacy-epsilon": dpsgd.epsilon(),
                "privacy-delta": dpsgd.target_delta,
                "privacy-noise-multiplier": float(dpsgd.noise_multiplier),
                "privacy-sample-rate": float(dpsgd.sample_rate),
                "privacy-steps": dpsgd.steps,
            }
        return dict(zip(self.names, new, strict=True)), len(loader.dataset), metrics


@contextlib.contextmanager
def local_class_weights(module: pl.LightningModule, labels: torch.Tensor) -> Iterator[None]:
    """The node's cross-entropy weighed by its own label counts (``n / (k * n_c)``) for one local round; the run's
    weight (``task.class_weights``, or none) is back afterwards, so the global checkpoint never holds a node's.

    Under label skew (Dirichlet partitions) the clients' plain losses pull the shared model towards their own label
    mix; with each one balanced, every node estimates the same class-balanced objective (the rows of one class look
    alike across nodes), which is what FedAvg's average assumes. A class a node lacks gets weight 0 there.

    Raises:
        FinexpError: the run's loss is not a cross-entropy over class labels (regression, multi-label, a model with
            its own loss, label smoothing through another loss module).
    """
    loss = getattr(module, "loss_fn", None)
    names = getattr(module, "label_names", [])
    if not isinstance(loss, torch.nn.CrossEntropyLoss) or callable(getattr(module.model, "loss", None)):
        raise FinexpError(
            "federated.class_weights=balanced weighs the nodes' cross-entropy over class labels, but this run "
            f"trains with {type(loss).__name__}: set federated.class_weights=null"
        )
    counts = torch.bincount(labels.long(), minlength=len(names)).tolist()
    weights = [w if c > 0 else 0.0 for w, c in zip(class_weights("balanced", counts) or [], counts, strict=True)]
    before = loss.weight
    loss.weight = torch.tensor(weights, dtype=torch.float, device=module.device)
    try:
        yield
    finally:
        loss.weight = before


def client_loader(
    dataset: TokenizedDataset,
    rows: Sequence[int],
    batch_size: int,
    collate: PadCollator,
    seed: int,
    group_by_length: bool = True,
    poisson: bool = False,
) -> Callable[[int], DataLoader]:
    """``server_round -> DataLoader`` over a node's rows: length-grouped (``poisson``: Poisson-sampled batches, what
    DP-SGD's accounting assumes), a new draw every round."""
    starts, ends = dataset.offsets[:-1], dataset.offsets[1:]
    ids = [dataset.ids[starts[i] : ends[i]].tolist() for i in rows]
    subset = TokenizedDataset(ids, dataset.labels[list(rows)].tolist())

    def loader(server_round: int) -> DataLoader:
        if poisson:
            # DP-SGD's amplification by sampling holds only if no one can tell which rows a batch drew: the draw
            # comes from fresh OS entropy, not from the seed in the run config the coordinator holds (44 bits: the
            # sampler's seed x 100_003 + epoch stays a 64-bit torch seed).
            batches = PoissonBatchSampler(len(subset), batch_size, seed=secrets.randbits(44))
            return DataLoader(subset, batch_sampler=batches, collate_fn=collate)
        sampler = LengthGroupedSampler(
            subset.lengths, batch_size, seed=seed + 7919 * server_round, window_batches=50 if group_by_length else 0
        )
        return DataLoader(subset, batch_size=batch_size, sampler=sampler, collate_fn=collate)

    return loader
