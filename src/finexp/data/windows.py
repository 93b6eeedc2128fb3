"""Long documents as overlapping token windows, each carrying its document's id and label.

Documents are read, checked, split and labelled exactly as for classification (a
:class:`~finexp.data.datamodule.ClassificationDataModule` does it, tokenizing without truncation); each document's
tokens are then cut into windows of ``size`` tokens (special tokens included) whose starts are ``stride`` tokens
apart. Training sees every window with its document's label; validation and test aggregate the windows' logits
back to one prediction per document (:mod:`finexp.problems.long_document_training`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from finexp.data.batching import Batching, PadCollator, SplitLoaders, TokenizedDataset
from finexp.data.datamodule import ClassificationDataModule
from finexp.data.sources import DataError

NO_TRUNCATION = 10**9  # max_length handed to the document reader: documents are tokenized whole


def special_tokens(tokenizer: object) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one sequence (BERT: ``[CLS]``, ``[SEP]``)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    wrapped = tokenizer("a")["input_ids"]
    for at in range(len(wrapped) - len(plain) + 1):
        if wrapped[at : at + len(plain)] == plain:
            return list(wrapped[:at]), list(wrapped[at + len(plain) :])
    raise DataError(f"cannot tell where {type(tokenizer).__name__} puts its special tokens")


def split_windows(
    tokens: Sequence[int],
    size: int,
    stride: int,
    prefix: Sequence[int] = (),
    suffix: Sequence[int] = (),
    max_windows: int | None = None,
) -> list[list[int]]:
    """Cut ``tokens`` into windows of at most ``size`` ids each, ``prefix`` and ``suffix`` included.

    Windows start every ``stride`` tokens (at most every ``size - len(prefix) - len(suffix)``: no token is skipped),
    the last one ends at the document's end, and an empty document gives one window of special tokens only.
    """
    content = size - len(prefix) - len(suffix)
    if content < 1:
        raise DataError(
            f"task.window.size={size} leaves no room for text beside {len(prefix) + len(suffix)} special tokens"
        )
    step = min(stride, content)
    starts = list(range(0, max(1, len(tokens) - content + step), step))
    if max_windows is not None:
        starts = starts[:max_windows]
    return [[*prefix, *tokens[s : s + content], *suffix] for s in starts]


class WindowDataset(TokenizedDataset):
    """Windows' token ids and labels (their document's), with the document index of each window."""

    def __init__(self, windows: Sequence[Sequence[int]], labels: Sequence[int], docs: Sequence[int]) -> None:
        super().__init__(windows, labels)
        self.docs = torch.as_tensor(list(docs), dtype=torch.long)


class WindowCollator(PadCollator):
    """Padded windows plus ``doc``, the document index of each window in its split."""

    def __init__(self, pad_token_id: int, docs: torch.Tensor) -> None:
        super().__init__(pad_token_id)
        self.docs = docs

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = super().__call__(rows)
        batch["doc"] = self.docs[batch["index"]]
        return batch


class LongDocumentDataModule(SplitLoaders):
    """Documents (read and split by ``documents``) served as overlapping windows.

    Args:
        documents: reads, checks, splits and labels the documents; its ``max_length`` must not truncate
            (:data:`NO_TRUNCATION`).
        size: tokens per window, special tokens included.
        stride: tokens between the starts of consecutive windows.
        max_windows: keep a document's first ``max_windows`` windows only (None: all).
        batching: batch sizes, length grouping, the training order's seed, loader workers.
    """

    def __init__(
        self,
        documents: ClassificationDataModule,
        size: int = 256,
        stride: int = 192,
        max_windows: int | None = None,
        batching: Batching | None = None,
    ) -> None:
        super().__init__()
        self.documents = documents
        self.tokenizer = documents.tokenizer
        self.size, self.stride, self.max_windows = size, stride, max_windows
        self.batching = batching or Batching()
        self.datasets: dict[str, WindowDataset] = {}

    def prepare(self) -> None:
        """Read, split and tokenize the documents, then cut them into windows (idempotent)."""
        if self.datasets:
            return
        docs = self.documents
        docs.prepare()
        prefix, suffix = special_tokens(self.tokenizer)
        for name, dataset in docs.datasets.items():
            windows, labels, owners = [], [], []
            for i in range(len(dataset)):
                row = dataset[i]["input_ids"].tolist()
                body = row[len(prefix) : len(row) - len(suffix)]  # the reader added the specials around it
                cut = split_windows(body, self.size, self.stride, prefix, suffix, self.max_windows)
                windows += cut
                labels += [int(dataset.labels[i])] * len(cut)
                owners += [i] * len(cut)
            self.datasets[name] = WindowDataset(windows, labels, owners)

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    # The documents' records: label order, split fingerprints, texts.
    @property
    def label_names(self) -> list[str]:
        return self.documents.label_names

    @property
    def num_labels(self) -> int:
        return self.documents.num_labels

    @property
    def fingerprints(self) -> dict[str, str]:
        return self.documents.fingerprints

    @property
    def texts(self) -> dict[str, list[str]]:
        return self.documents.texts

    @property
    def document_counts(self) -> dict[str, int]:
        return {name: len(dataset) for name, dataset in self.documents.datasets.items()}

    def class_counts(self) -> list[int]:
        """Documents per class in the train split (class weights count documents, not windows)."""
        return self.documents.class_counts()

    def collate(self, name: str) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        return WindowCollator(self.tokenizer.pad_token_id, self.datasets[name].docs)
