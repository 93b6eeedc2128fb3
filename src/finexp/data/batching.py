"""Tokenized datasets, length-grouped sampling (single device and DDP) and dynamic padding.

Rows are tokenized once (and cached on disk, memory-mapped); batches are padded only to their own longest row, and
rows of similar length are batched together, so little compute is spent on pad tokens. :class:`Batching` holds
every setting of the loaders.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler

from finexp.data.sources import DataError
from finexp.data.tokens import TokenArrays, tokenize

log = logging.getLogger("finexp")


@dataclass(frozen=True)
class Batching:
    """How a datamodule batches its splits (``data.batch_size``, ``data.num_workers``, ...).

    Args:
        batch_size: training rows per step (per process under DDP).
        eval_batch_size: rows per validation/test step.
        group_by_length: batch training rows of similar length together (less padding); False: plain shuffling.
        seed: seed of the training order (reshuffled every epoch).
        num_workers: DataLoader worker processes (0: batches are built in the training process).
        pin_memory: page-locked host batches, so copies to a GPU overlap compute (CUDA only).
        persistent_workers: keep workers alive between epochs (with ``num_workers > 0``).
        prefetch_factor: batches each worker prepares ahead (None: PyTorch's default, 2).
        window_batches: length grouping sorts windows of this many batches by length; larger: less padding, less
            randomness in which rows share a batch.
    """

    batch_size: int = 32
    eval_batch_size: int = 64
    group_by_length: bool = True
    seed: int = 0
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = True
    prefetch_factor: int | None = None
    window_batches: int = 50

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise DataError(f"data.{name}={getattr(self, name)} is not allowed: must be >= 1")
        if self.num_workers < 0:
            raise DataError(f"data.num_workers={self.num_workers} is not allowed: must be >= 0 or auto")

    def loader_options(self) -> dict[str, Any]:
        """The ``DataLoader`` keyword arguments besides the dataset, sampler and collator."""
        options: dict[str, Any] = {"num_workers": self.num_workers, "pin_memory": self.pin_memory}
        if self.num_workers > 0:
            options["persistent_workers"] = self.persistent_workers
            if self.prefetch_factor is not None:
                options["prefetch_factor"] = self.prefetch_factor
        return options


def uses_cuda(accelerator: str) -> bool:
    """Whether a Trainer with ``accelerator`` runs on CUDA (``auto``: when torch sees a CUDA device)."""
    accelerator = str(accelerator).lower()
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def auto_num_workers(cuda: bool, processes_per_node: int = 1) -> int:
    """``data.num_workers=auto``: 0 on CPU (workers would compete with the model for the cores, and tokenized rows
    are padded in microseconds), else up to 4 per training process, within the cores this process may use."""
    if not cuda:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores // max(1, processes_per_node) - 1))


def build_batching(
    batch_size: int,
    eval_batch_size: int,
    group_by_length: bool,
    seed: int,
    num_workers: int | str = "auto",
    pin_memory: bool | str = "auto",
    accelerator: str = "auto",
    processes_per_node: int = 1,
) -> Batching:
    """A :class:`Batching` with ``auto`` settings resolved for the device: workers and pinned memory with CUDA,
    neither on CPU.

    Raises:
        DataError: naming ``data.num_workers`` / ``data.pin_memory`` when they are neither a value nor ``auto``.
    """
    cuda = uses_cuda(accelerator)
    if str(num_workers) == "auto":
        num_workers = auto_num_workers(cuda, processes_per_node)
    elif isinstance(num_workers, bool) or (isinstance(num_workers, str) and not num_workers.isdigit()):
        raise DataError(f"data.num_workers={num_workers!r} is not allowed: use a number >= 0 or auto")
    if str(pin_memory) == "auto":
        pin_memory = cuda
    elif not isinstance(pin_memory, bool):
        raise DataError(f"data.pin_memory={pin_memory!r} is not allowed: use true, false or auto")
    return Batching(batch_size, eval_batch_size, bool(group_by_length), seed, int(num_workers), bool(pin_memory))


class TokenizedDataset(Dataset):
    """Token ids of every row, stored flat (:class:`~finexp.data.tokens.TokenArrays`: int32 ids plus offsets, from
    the memory-mapped cache when there is one), with one target per row.

    Targets are class ids (int), or floats (a regression target; a 0/1 vector per row for multi-label), kept as
    given. ``features``: optional numeric columns ``(rows, k)`` served as ``row["features"]`` (fusion models).
    """

    def __init__(
        self,
        input_ids: TokenArrays | Sequence[Sequence[int]],
        labels: Sequence[int] | Sequence[float] | Sequence[Sequence[float]],
        features: torch.Tensor | None = None,
    ) -> None:
        tokens = input_ids if isinstance(input_ids, TokenArrays) else TokenArrays.from_rows(input_ids)
        if len(tokens) != len(labels):
            raise ValueError(f"{len(tokens)} token rows but {len(labels)} labels")
        if features is not None and len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        self.tokens = tokens
        targets = torch.as_tensor(labels if isinstance(labels, list | np.ndarray | torch.Tensor) else list(labels))
        floating = targets.is_floating_point() and targets.numel() > 0  # a regression target or a multi-hot row
        self.labels = targets.float() if floating else targets.long()
        self.features = features

    @property
    def ids(self) -> np.ndarray:
        return self.tokens.ids

    @property
    def offsets(self) -> np.ndarray:
        return self.tokens.offsets

    @property
    def lengths(self) -> np.ndarray:
        return self.tokens.lengths

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        ids = torch.from_numpy(self.tokens.row(index).astype(np.int64))  # a copy: the cache is mapped read-only
        row = {"input_ids": ids, "label": self.labels[index], "index": index}
        if self.features is not None:
            row["features"] = self.features[index]
        return row


def tokenize_cached(
    tokenizer: object, texts: Sequence[str], max_length: int, cache_dir: str | Path | None, workers: int = 1
) -> list[list[int]]:
    """Rows of token ids of ``texts`` (truncated to ``max_length``), through the cache of
    :func:`finexp.data.tokens.tokenize` (which the datamodules call directly, keeping the flat arrays)."""
    return tokenize(tokenizer, texts, max_length, cache_dir, workers).to_lists()


class LengthGroupedSampler(Sampler[int]):
    """Shuffle rows, sort each window of ``window_batches`` batches by length, then shuffle the window's batches.

    Consecutive ``batch_size`` indices have similar lengths, so dynamic padding wastes little, while the order still
    changes every epoch. The batches of a window come in random order, not longest first: a run that stops inside an
    epoch (``federated.local_steps``, ``trainer.max_steps``, ``limit_train_batches``) would otherwise always train on
    the longest rows of its first window (a short round of a federated node: the same 8 rows every round).
    One process only: under DDP the datamodules use :class:`LengthGroupedBatchSampler` (a
    ``DistributedSampler`` wrapped around this one would reshuffle its indices and lose the grouping).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, window_batches: int = 50) -> None:
        self.lengths = torch.as_tensor(np.asarray(lengths, dtype=np.int64))
        self.batch_size = batch_size
        self.window = batch_size * window_batches
        self.seed = seed
        self.epoch: int | None = None
        self._iterations = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch if self.epoch is not None else self._iterations
        self._iterations += 1
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        if self.window <= 0:  # plain shuffling
            yield from order.tolist()
            return
        for window in order.split(self.window):
            by_length = window[torch.argsort(self.lengths[window], descending=True, stable=True)]
            batches = list(by_length.split(self.batch_size))
            whole = len(batches) - (1 if len(batches[-1]) < self.batch_size else 0)  # a short one stays last
            for i in torch.randperm(whole, generator=generator).tolist() + list(range(whole, len(batches))):
                yield from batches[i].tolist()


class _EpochHook:
    """What Lightning calls ``set_epoch`` on (it looks at ``batch_sampler.sampler``, not the batch sampler)."""

    def __init__(self, owner: LengthGroupedBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Length-grouped training batches for one of ``num_replicas`` processes (DDP ranks).

    Every rank computes the same plan for the epoch from ``seed + epoch``: rows are shuffled, windows of
    ``window_batches * num_replicas`` batches are sorted by length and cut into batches of ``batch_size``; each
    *step* is ``num_replicas`` consecutive batches (rows of similar length, so no rank waits long for another), the
    steps are shuffled, and rank ``r`` takes batch ``r`` of every step. So the ranks' batches are disjoint,
    length-grouped, together cover every row once, and every rank gets the same number of batches (the rows
    left over from whole steps form one last step of smaller, near-equal batches; only when fewer rows than ranks
    are left over are some rows repeated to give every rank one).

    Args:
        lengths: each row's length in tokens.
        batch_size: rows per batch (per rank).
        num_replicas: processes (the Trainer's ``world_size``).
        rank: this process (``global_rank``).
        seed: seed of the order; the epoch is added (:meth:`set_epoch`, else the count of iterations).
        window_batches: batches per rank in a sorting window; 0: no length grouping (plain shuffled batches).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        window_batches: int = 50,
    ) -> None:
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < num_replicas, got {batch_size=} {rank=}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.seed, self.window_batches = seed, window_batches
        self.epoch: int | None = None
        self._iterations = 0
        self.sampler = _EpochHook(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        step_rows = self.batch_size * self.num_replicas
        full, rest = divmod(len(self.lengths), step_rows)
        return full + (1 if rest else 0)

    def steps(self, epoch: int) -> list[list[np.ndarray]]:
        """The epoch's plan: steps, each a list of ``num_replicas`` batches (index arrays), the same on every rank."""
        n, step_rows = len(self.lengths), self.batch_size * self.num_replicas
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n)
        full = (n // step_rows) * step_rows
        grouped = self.window_batches > 0
        if grouped:  # sort each window by length, longest first (stable: ties keep the shuffled order)
            window_of = np.arange(n) // (step_rows * self.window_batches)
            window_of[full:] = n  # the rows left over from whole steps are sorted as a window of their own
            order = order[np.lexsort((-self.lengths[order], window_of))]
        steps = [list(order[s : s + step_rows].reshape(self.num_replicas, -1)) for s in range(0, full, step_rows)]
        rest = order[full:]
        if len(rest):
            if len(rest) < self.num_replicas:  # too few rows for one each: repeat some (as DistributedSampler pads)
                rest = np.concatenate([rest, order[: self.num_replicas - len(rest)]])
            steps.append(np.array_split(rest, self.num_replicas))
        shuffled = rng.permutation(len(steps))
        return [steps[i] for i in shuffled]

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch if self.epoch is not None else self._iterations
        self._iterations += 1
        for step in self.steps(epoch):
            yield step[self.rank].tolist()


class PadCollator:
    """Pad a list of rows to the longest one in the batch."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        longest = max((len(r["input_ids"]) for r in rows), default=1)  # Poisson-sampled batches may be empty
        input_ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = row["input_ids"]
            attention_mask[i, :n] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.stack([torch.as_tensor(r["label"]) for r in rows])
            if rows
            else torch.zeros(0, dtype=torch.long),
            "index": torch.tensor([int(r["index"]) for r in rows], dtype=torch.long),
        }
        if rows and "features" in rows[0]:
            batch["features"] = torch.stack([r["features"] for r in rows])
        return batch


class SplitLoaders(pl.LightningDataModule):
    """The dataloaders of a datamodule that holds its splits in ``self.datasets`` (name -> dataset with ``lengths``)
    and its loader settings in ``self.batching`` (:class:`Batching`).

    The train split comes in length-grouped, reshuffled batches (``group_by_length=False``: plainly shuffled);
    val and test in dataset order. Under DDP (a Trainer with ``world_size > 1`` and ``use_distributed_sampler=False``,
    as ``conf/trainer`` sets it) each rank gets its own share: :class:`LengthGroupedBatchSampler` for training, a
    ``DistributedSampler`` without shuffling for val/test. A subclass says how its rows are padded (:meth:`collate`).
    """

    datasets: dict[str, Any]
    batching: Batching

    def collate(self, name: str) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        """The collator of split ``name``."""
        raise NotImplementedError

    def replicas(self) -> tuple[int, int]:
        """``(world size, rank)`` this datamodule shards its loaders for; ``(1, 0)`` outside DDP, and where Lightning
        shards them itself (``trainer.use_distributed_sampler=true``)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size <= 1:
            return 1, 0
        if getattr(getattr(trainer, "_accelerator_connector", None), "use_distributed_sampler", False):
            log.warning(
                "trainer.use_distributed_sampler=true: Lightning reshuffles the training rows across ranks and "
                "loses length grouping; set trainer.use_distributed_sampler=false (conf/trainer does)"
            )
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, name: str, batch_size: int, train: bool) -> DataLoader:
        dataset, b = self.datasets[name], self.batching
        world, rank = self.replicas()
        window = b.window_batches if b.group_by_length else 0
        if train and world > 1:
            batches = LengthGroupedBatchSampler(dataset.lengths, batch_size, world, rank, b.seed, window)
            return self._batched(name, dataset, batches)
        if train:
            sampler: Sampler[int] = LengthGroupedSampler(dataset.lengths, batch_size, b.seed, window)
        elif world > 1:
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        else:
            sampler = SequentialSampler(dataset)
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, collate_fn=self.collate(name), **b.loader_options()
        )

    def _batched(self, name: str, dataset: Dataset, batch_sampler: Sampler[list[int]]) -> DataLoader:
        """A loader of ``batch_sampler``'s batches of split ``name``."""
        return DataLoader(
            dataset, batch_sampler=batch_sampler, collate_fn=self.collate(name), **self.batching.loader_options()
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batching.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.batching.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.batching.eval_batch_size, train=False)
