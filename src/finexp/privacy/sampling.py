"""Poisson sampling of training batches, the sampling DP-SGD's privacy accounting assumes."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class PoissonBatchSampler(Sampler[list[int]]):
    """Each row joins each batch independently with probability ``sample_rate`` (batches vary in size, may be empty).

    An epoch is ``round(1 / sample_rate)`` batches, so every row is expected once per epoch, as with shuffling. The
    draws are seeded by ``seed`` and the epoch (Lightning calls :meth:`set_epoch`), so reruns see the same batches.

    Args:
        num_rows: rows in the training set.
        batch_size: the expected batch size; ``sample_rate = batch_size / num_rows``.
        seed: seed of the draws.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int = 0) -> None:
        if num_rows < 1 or batch_size < 1:
            raise ValueError(f"Poisson sampling needs rows and a batch size >= 1, got {num_rows=} {batch_size=}")
        self.num_rows = num_rows
        self.batch_size = min(batch_size, num_rows)
        self.sample_rate = self.batch_size / num_rows
        self.num_batches = max(1, round(1 / self.sample_rate))
        self.seed = seed
        self.epoch: int | None = None
        self._iterations = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch if self.epoch is not None else self._iterations
        self._iterations += 1
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        for _ in range(self.num_batches):
            mask = torch.rand(self.num_rows, generator=generator) < self.sample_rate
            yield mask.nonzero().flatten().tolist()
