"""Tokenized datasets, length-grouped sampling and dynamic padding.

Rows are tokenized once (and cached on disk); batches are padded only to their own longest row, and rows of similar
length are batched together, so little compute is spent on pad tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from finexp.progress import chunks


class TokenizedDataset(Dataset):
    """Token ids of every row, stored flat (one tensor plus offsets), with one target per row.

    Targets are class ids (int), or floats (a regression target; a 0/1 vector per row for multi-label), kept as
    given. ``features``: optional numeric columns ``(rows, k)`` served as ``row["features"]`` (fusion models).
    """

    def __init__(
        self,
        input_ids: Sequence[Sequence[int]],
        labels: Sequence[int] | Sequence[float] | Sequence[Sequence[float]],
        features: torch.Tensor | None = None,
    ) -> None:
        if len(input_ids) != len(labels):
            raise ValueError(f"{len(input_ids)} token rows but {len(labels)} labels")
        if features is not None and len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        lengths = torch.tensor([len(row) for row in input_ids], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        self.ids = torch.tensor([t for row in input_ids for t in row], dtype=torch.long)
        targets = torch.as_tensor(list(labels))
        floating = targets.is_floating_point() and targets.numel() > 0  # a regression target or a multi-hot row
        self.labels = targets.float() if floating else targets.long()
        self.features = features

    @property
    def lengths(self) -> list[int]:
        return (self.offsets[1:] - self.offsets[:-1]).tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        start, end = self.offsets[index], self.offsets[index + 1]
        row = {"input_ids": self.ids[start:end], "label": self.labels[index], "index": index}
        if self.features is not None:
            row["features"] = self.features[index]
        return row


def tokenize_cached(
    tokenizer: object, texts: Sequence[str], max_length: int, cache_dir: str | Path | None
) -> list[list[int]]:
    """Tokenize ``texts`` (truncated to ``max_length``), reusing a cached result for the same texts and tokenizer."""
    if not texts:
        return []
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256()
        digest.update(f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|{len(tokenizer)}|{max_length}".encode())
        for text in texts:
            digest.update(text.encode())
            digest.update(b"\x1e")
        path = Path(cache_dir) / f"tokens-{digest.hexdigest()[:24]}.pt"
        if path.is_file():
            # weights_only: the cache holds tensors only, and loading must never run pickled code.
            cached = torch.load(path, weights_only=True)
            ids, offsets = cached["ids"], cached["offsets"].tolist()
            return [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]
    rows = [  # in slices, for a rows/s bar on large splits (fast tokenizers batch each slice the same way)
        ids
        for piece in chunks(list(texts), 2048, desc="tokenizing")
        for ids in tokenizer(list(piece), truncation=True, max_length=max_length)["input_ids"]
    ]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        tmp = path.with_suffix(".tmp")
        torch.save({"ids": torch.tensor([t for r in rows for t in r], dtype=torch.long), "offsets": offsets}, tmp)
        tmp.replace(path)  # atomic: parallel sweep jobs never read a half-written cache file
    return rows


class LengthGroupedSampler(Sampler[int]):
    """Shuffle rows, then sort each window of ``window_batches`` batches by length.

    Consecutive ``batch_size`` indices have similar lengths, so dynamic padding wastes little, while the order still
    changes every epoch. Under DDP, Lightning interleaves these indices across ranks, which keeps them grouped.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, window_batches: int = 50) -> None:
        self.lengths = torch.as_tensor(list(lengths))
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
            by_length = torch.argsort(self.lengths[window], descending=True, stable=True)
            yield from window[by_length].tolist()


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
    """The dataloaders of a datamodule that holds its splits in ``self.datasets`` (name -> dataset with ``lengths``).

    The train split comes in length-grouped, reshuffled batches (``group_by_length=False``: plainly shuffled);
    val and test in dataset order. A subclass says how its rows are padded (:meth:`collate`) and sets
    ``datasets``, ``batch_size``, ``eval_batch_size``, ``group_by_length``, ``seed`` and ``num_workers``.
    """

    datasets: dict[str, Any]
    batch_size: int
    eval_batch_size: int
    group_by_length: bool
    seed: int
    num_workers: int

    def collate(self, name: str) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        """The collator of split ``name``."""
        raise NotImplementedError

    def _loader(self, name: str, batch_size: int, train: bool) -> DataLoader:
        dataset = self.datasets[name]
        if train:
            window = 50 if self.group_by_length else 0
            sampler = LengthGroupedSampler(dataset.lengths, batch_size, seed=self.seed, window_batches=window)
        else:
            sampler = SequentialSampler(dataset)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=self.collate(name),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, train=False)
