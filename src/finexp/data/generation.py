"""Prompt -> response pairs for fine-tuning a decoder: the loss sees response tokens only.

Each row becomes ``[bos] prompt response [eos]`` (bos/eos: the tokenizer's, or its CLS/SEP for WordPiece
vocabularies); the labels are -100 on ``[bos] prompt`` so only the response (and the end-of-answer token, which
teaches the model to stop) is learned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from finexp.data.batching import Batching, SplitLoaders
from finexp.data.datamodule import ClassificationDataModule, DataSource
from finexp.data.ner import IGNORE, TokenPadCollator
from finexp.data.packing import PackedCollator, PackedDataset
from finexp.data.sources import DataError, read_table, require_columns
from finexp.data.splits import fingerprint

log = logging.getLogger("finexp")


def special_ids(tokenizer: object) -> tuple[int | None, int]:
    """The ids that open a sequence (None: nothing) and end an answer.

    GPT-style vocabularies have ``bos``/``eos``; WordPiece ones (BERT, MiniLM) have ``[CLS]``/``[SEP]`` instead.
    """
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise DataError("the tokenizer has no end-of-sequence token (eos or sep): generation cannot learn to stop")
    return bos, eos


def build_example(
    prompt: Sequence[int], response: Sequence[int], bos: int | None, eos: int, max_length: int
) -> tuple[list[int], list[int], int, bool]:
    """``(input_ids, labels, prompt_length, truncated)`` of one pair, at most ``max_length`` tokens.

    A row that does not fit loses the start of its prompt first (down to half of ``max_length``), then the end of
    its response.
    """
    head = [bos] if bos is not None else []
    answer = [*response, eos]
    prompt = list(prompt)
    truncated = len(head) + len(prompt) + len(answer) > max_length
    if truncated:
        keep = max(max_length // 2 - len(head), max_length - len(head) - len(answer))
        prompt = prompt[len(prompt) - keep :] if keep > 0 else []
        answer = answer[: max_length - len(head) - len(prompt)]
    context = head + prompt
    return context + answer, [IGNORE] * len(context) + answer, len(context), truncated


class PromptResponseDataset(Dataset):
    """Token ids, labels (-100 on the prompt) and the prompt length of every row."""

    def __init__(self, rows: Sequence[tuple[list[int], list[int], int]]) -> None:
        self.input_ids = [torch.tensor(ids, dtype=torch.long) for ids, _, _ in rows]
        self.labels = [torch.tensor(labels, dtype=torch.long) for _, labels, _ in rows]
        self.prompt_lengths = [n for _, _, n in rows]

    @property
    def lengths(self) -> list[int]:
        return [len(row) for row in self.input_ids]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index], "index": index}


class PromptCollator(TokenPadCollator):
    """Right-padded ids and labels (as for tagging), plus each row's prompt length."""

    def __init__(self, pad_token_id: int, prompt_lengths: Sequence[int]) -> None:
        super().__init__(pad_token_id)
        self.prompt_lengths = list(prompt_lengths)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = super().__call__(rows)
        batch["prompt_length"] = torch.tensor([self.prompt_lengths[int(r["index"])] for r in rows], dtype=torch.long)
        return batch


class GenerationDataModule(SplitLoaders):
    """Reads prompt/response pairs (CSV, TSV, JSONL, Parquet), splits them, tokenizes them once.

    Args:
        tokenizer: a Hugging Face tokenizer.
        source: one file (shuffled with ``split_seed``, then split) or given split files.
        prompt_column: the column holding the prompt (instruction, customer question).
        response_column: the column holding the reference answer.
        val_size: share of rows for validation when finexp splits.
        test_size: share of rows for test when finexp splits.
        split_seed: seed of that split.
        max_length: tokens per row, prompt and answer together.
        batching: batch sizes, length grouping, the training order's seed, loader workers.
        packing: pack several train rows into each sequence of ``max_length`` tokens (:mod:`finexp.data.packing`);
            val and test stay one row per sequence.
    """

    def __init__(
        self,
        tokenizer: object,
        source: DataSource,
        prompt_column: str = "prompt",
        response_column: str = "response",
        val_size: float = 0.1,
        test_size: float = 0.2,
        split_seed: int = 42,
        max_length: int = 256,
        batching: Batching | None = None,
        packing: bool = False,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.source = source
        self.prompt_column, self.response_column = prompt_column, response_column
        self.val_size, self.test_size, self.split_seed = val_size, test_size, split_seed
        self.max_length = max_length
        self.batching = batching or Batching()
        self.packing = packing
        self.run_records: dict[str, Any] = {}  # what run_info.json adds (finexp.run_records.RunRecords): packing
        self.bos, self.eos = special_ids(tokenizer)
        self.label_names: list[str] = []  # no classes: the "labels" are the responses
        self.frames: dict[str, pd.DataFrame] = {}
        self.datasets: dict[str, PromptResponseDataset | PackedDataset] = {}
        self.fingerprints: dict[str, str] = {}

    def _read(self, path: str) -> pd.DataFrame:
        frame = read_table(path)
        columns = {"task.text_column": self.prompt_column, "task.label_column": self.response_column}
        require_columns(frame, columns, str(path))
        for column, what in ((self.prompt_column, "prompt"), (self.response_column, "response")):
            ClassificationDataModule._check_missing(frame, column, str(path), what)
        return frame.reset_index(drop=True)

    def _carve(self, frame: pd.DataFrame, fraction: float, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        n = round(len(frame) * fraction)
        if n < 1 or n >= len(frame):
            raise DataError(f"cannot split {len(frame)} rows for the {what} split ({fraction:.0%}); use more rows")
        rest, part = train_test_split(frame, test_size=n, random_state=self.split_seed)
        return rest.reset_index(drop=True), part.reset_index(drop=True)

    def _split(self) -> dict[str, pd.DataFrame]:
        src = self.source
        if src.rdataset:
            raise DataError("generation reads prompt/response files: set data.path or data.train_path, not rdataset")
        if src.test_path and not (src.train_path or src.path):  # evaluation of a given file
            test = self._read(src.test_path)
            return {"train": test.iloc[:0], "val": test.iloc[:0], "test": test}
        if src.path:
            rest, test = self._carve(self._read(src.path), self.test_size, "test")
            train, val = self._carve(rest, self.val_size / (1 - self.test_size), "val")
            return {"train": train, "val": val, "test": test}
        train = self._read(src.train_path)
        if src.test_path:
            test = self._read(src.test_path)
        else:
            train, test = self._carve(train, self.test_size, "test")
        if src.val_path:
            val = self._read(src.val_path)
        else:
            train, val = self._carve(train, self.val_size, "val")
        return {"train": train, "val": val, "test": test}

    def prepare(self) -> None:
        """Read, check, split and tokenize (idempotent)."""
        if self.datasets:
            return
        for name, frame in self._split().items():
            prompts = frame[self.prompt_column].astype(str).tolist()
            responses = frame[self.response_column].astype(str).tolist()
            rows, cut = [], 0
            if prompts:
                encode = self.tokenizer(prompts + responses, add_special_tokens=False)["input_ids"]
                for prompt, response in zip(encode[: len(prompts)], encode[len(prompts) :], strict=True):
                    ids, labels, n_prompt, truncated = build_example(
                        prompt, response, self.bos, self.eos, self.max_length
                    )
                    rows.append((ids, labels, n_prompt))
                    cut += truncated
            if cut:
                log.warning("%s split: %d row(s) longer than data.max_length=%d were cut", name, cut, self.max_length)
            self.frames[name] = frame
            self.datasets[name] = PromptResponseDataset(rows)
            if self.packing and name == "train" and rows:
                packed = PackedDataset(self.datasets[name], self.max_length)
                self.datasets[name], self.run_records["packing"] = packed, packed.statistics()
                log.info("data.packing: %d train rows in %d sequences", len(rows), len(packed))
            self.fingerprints[name] = fingerprint(prompts, responses)

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    @property
    def num_labels(self) -> int:
        return 0

    @property
    def texts(self) -> dict[str, list[str]]:
        """Each split's prompts, as the files hold them."""
        return {name: frame[self.prompt_column].astype(str).tolist() for name, frame in self.frames.items()}

    def collate(self, name: str) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        if isinstance(self.datasets[name], PackedDataset):
            return PackedCollator(self.tokenizer.pad_token_id)
        return PromptCollator(self.tokenizer.pad_token_id, self.datasets[name].prompt_lengths)
