"""CoNLL-style entity data: reading (IOB1 or IOB2), sentence splits, sub-word label alignment, batching.

A CoNLL file has one token per line, the token in the first whitespace-separated column and its tag in the last
(CoNLL-2003 has POS and chunk columns in between), a blank line between sentences, and ``-DOCSTART-`` lines that
are skipped. Tags are ``O``, ``B-<TYPE>`` or ``I-<TYPE>``; IOB1 files (``I-`` opens an entity, ``B-`` only separates
two adjacent entities of one type) are converted to IOB2 when read, so everything after the reader sees IOB2.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from finexp.data.batching import Batching, SplitLoaders
from finexp.data.datamodule import DataSource
from finexp.data.sources import DataError
from finexp.data.splits import fingerprint

log = logging.getLogger("finexp")

IGNORE = -100  # label of special tokens and of every sub-token but a word's first (cross-entropy skips it)
SCHEMES = ("IOB1", "IOB2")
_TAG = re.compile(r"^(O|[BI]-\S+)$")


@dataclass
class Sentence:
    """One sentence of a CoNLL file: its words, their IOB2 tags, and the file line of each word (for errors)."""

    tokens: list[str]
    tags: list[str]
    lines: list[int]
    origin: str


def to_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    """IOB2 tags: every entity starts with ``B-``.

    IOB1: an ``I-X`` that does not continue an ``X`` entity starts one (becomes ``B-X``); ``B-X`` stays. IOB2 tags
    are returned as they are (:func:`read_conll` rejects an ``I-X`` that continues nothing).
    """
    if scheme == "IOB2":
        return list(tags)
    out: list[str] = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        out.append(tag)
        previous = tag
    return out


def read_conll(path: str | Path, scheme: str = "IOB2") -> list[Sentence]:
    """Read a CoNLL file into sentences with IOB2 tags.

    Raises:
        DataError: naming the file and line of a line without a tag, a tag that is not ``O``/``B-X``/``I-X``, or
            (``scheme="IOB2"``) an ``I-X`` that continues no ``X`` entity.
    """
    if scheme not in SCHEMES:
        raise DataError(f"task.scheme={scheme!r} is not allowed: choose one of {', '.join(SCHEMES)}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []

    def close() -> None:
        if tokens:
            if scheme == "IOB2":
                _check_iob2(tags, lines, path)
            sentences.append(Sentence(list(tokens), to_iob2(tags, scheme), list(lines), str(path)))
            for part in (tokens, tags, lines):
                part.clear()

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:  # a Parquet or spreadsheet file where a CoNLL text file belongs
        raise DataError(
            f"{path}: not a UTF-8 text file ({err.reason}); token classification reads CoNLL files"
        ) from err
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            close()
            continue
        columns = line.split()
        if columns[0] == "-DOCSTART-":
            close()
            continue
        if len(columns) < 2:
            raise DataError(
                f"{path}:{number}: expected a token and a tag separated by whitespace, got {line!r}; a CoNLL file "
                "has one 'token tag' per line and a blank line between sentences"
            )
        tag = columns[-1]
        if not _TAG.match(tag):
            raise DataError(f"{path}:{number}: unknown tag {tag!r}; tags are O, B-<TYPE> or I-<TYPE>")
        tokens.append(columns[0])
        tags.append(tag)
        lines.append(number)
    close()
    if not sentences:
        raise DataError(f"{path}: has no sentences (one 'token tag' per line, a blank line between sentences)")
    return sentences


def _check_iob2(tags: Sequence[str], lines: Sequence[int], path: Path) -> None:
    previous = "O"
    for tag, number in zip(tags, lines, strict=True):
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            raise DataError(
                f"{path}:{number}: {tag} follows {previous}, which IOB2 does not allow (an entity starts with B-); "
                "if the file is IOB1, set task.scheme=IOB1"
            )
        previous = tag


def entity_labels(sentences: Sequence[Sentence]) -> list[str]:
    """``O`` then ``B-T``, ``I-T`` for every entity type ``T`` (sorted) that the sentences tag."""
    types = sorted({tag[2:] for s in sentences for tag in s.tags if tag != "O"})
    return ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]


def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int]) -> list[int]:
    """Sub-token labels: a word's first sub-token gets the word's label, later sub-tokens and special tokens -100."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE if word is None or word == previous else word_labels[word])
        previous = word
    return labels


class TokenDataset(Dataset):
    """Token ids and aligned labels per sentence."""

    def __init__(self, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> None:
        self.input_ids = [torch.tensor(row, dtype=torch.long) for row in input_ids]
        self.labels = [torch.tensor(row, dtype=torch.long) for row in labels]

    @property
    def lengths(self) -> list[int]:
        return [len(row) for row in self.input_ids]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index], "index": index}


class TokenPadCollator:
    """Right-pad ids with the pad token and labels with -100."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        longest = max((len(r["input_ids"]) for r in rows), default=1)
        input_ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n], labels[i, :n], attention_mask[i, :n] = row["input_ids"], row["labels"], 1
        index = torch.tensor([int(r["index"]) for r in rows], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "index": index}


class TokenClassificationDataModule(SplitLoaders):
    """CoNLL sentences -> sub-word tokens with one label per word (on its first sub-token).

    Args:
        tokenizer: a fast Hugging Face tokenizer (``word_ids()`` maps sub-tokens to words).
        source: one file (split into sentences ``1 - val_size - test_size`` / ``val_size`` / ``test_size``, shuffled
            with ``split_seed``) or given split files.
        scheme: ``IOB1`` or ``IOB2``, the files' tagging scheme.
        val_size: share of sentences for validation when finexp splits.
        test_size: share of sentences for test when finexp splits.
        split_seed: seed of that split.
        max_length: sub-tokens per sentence; words cut off are neither trained on nor scored (counted in
            ``truncated_words``).
        batching: batch sizes, length grouping, the training order's seed, loader workers.
        label_names: a fixed tag order (a trained model's).
    """

    def __init__(
        self,
        tokenizer: object,
        source: DataSource,
        scheme: str = "IOB2",
        val_size: float = 0.1,
        test_size: float = 0.2,
        split_seed: int = 42,
        max_length: int = 128,
        batching: Batching | None = None,
        label_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not getattr(tokenizer, "is_fast", False):
            raise DataError("token classification needs a fast tokenizer (word_ids() aligns sub-tokens to words)")
        self.tokenizer = tokenizer
        self.source = source
        self.scheme = scheme
        self.val_size, self.test_size, self.split_seed = val_size, test_size, split_seed
        self.max_length = max_length
        self.batching = batching or Batching()
        self.label_names: list[str] = list(label_names or [])
        self.sentences: dict[str, list[Sentence]] = {}
        self.datasets: dict[str, TokenDataset] = {}
        self.fingerprints: dict[str, str] = {}
        self.truncated_words: dict[str, int] = {}

    def _split(self) -> dict[str, list[Sentence]]:
        src = self.source
        if src.rdataset:
            raise DataError("token classification reads CoNLL files: set data.path or data.train_path, not rdataset")
        if src.test_path and not (src.train_path or src.path):  # evaluation of a given file
            return {"train": [], "val": [], "test": read_conll(src.test_path, self.scheme)}
        if src.path:
            sentences = read_conll(src.path, self.scheme)
            rest, test = self._carve(sentences, self.test_size, "test")
            train, val = self._carve(rest, self.val_size / (1 - self.test_size), "val")
            return {"train": train, "val": val, "test": test}
        train = read_conll(src.train_path, self.scheme)
        test = read_conll(src.test_path, self.scheme) if src.test_path else None
        if test is None:
            train, test = self._carve(train, self.test_size, "test")
        val = read_conll(src.val_path, self.scheme) if src.val_path else None
        if val is None:
            train, val = self._carve(train, self.val_size, "val")
        return {"train": train, "val": val, "test": test}

    def _carve(self, sentences: list[Sentence], fraction: float, what: str) -> tuple[list[Sentence], list[Sentence]]:
        n = round(len(sentences) * fraction)
        if n < 1 or n >= len(sentences):
            raise DataError(
                f"cannot split {len(sentences)} sentences for the {what} split ({fraction:.0%}); "
                "use more sentences or give the split files"
            )
        rest, part = train_test_split(sentences, test_size=n, random_state=self.split_seed)
        return list(rest), list(part)

    def prepare(self) -> None:
        """Read, check, split and tokenize (idempotent)."""
        if self.datasets:
            return
        splits = self._split()
        if not self.label_names:
            self.label_names = entity_labels(splits["train"])
            if len(self.label_names) == 1:
                raise DataError("the train split tags no entity (only O); a tagger needs at least one entity type")
        index = {tag: i for i, tag in enumerate(self.label_names)}
        for name, sentences in splits.items():
            for sentence in sentences:
                for tag, line in zip(sentence.tags, sentence.lines, strict=True):
                    if tag not in index:
                        raise DataError(
                            f"{sentence.origin}:{line}: tag {tag!r} never occurs in the train split "
                            f"(the {name} split); known tags: {', '.join(self.label_names)}"
                        )
            self.sentences[name] = sentences
            self.datasets[name] = self._tokenize(name, sentences, index)
            texts = [" ".join(s.tokens) for s in sentences]
            self.fingerprints[name] = fingerprint(texts, [" ".join(s.tags) for s in sentences])

    def _tokenize(self, name: str, sentences: list[Sentence], index: dict[str, int]) -> TokenDataset:
        if not sentences:
            return TokenDataset([], [])
        encoded = self.tokenizer(
            [s.tokens for s in sentences], is_split_into_words=True, truncation=True, max_length=self.max_length
        )
        labels, cut = [], 0
        for i, sentence in enumerate(sentences):
            word_ids = encoded.word_ids(i)
            kept = {w for w in word_ids if w is not None}
            cut += len(sentence.tokens) - len(kept)
            labels.append(align_labels(word_ids, [index[t] for t in sentence.tags]))
        self.truncated_words[name] = cut
        if cut:
            log.warning(
                "%s split: %d word(s) beyond data.max_length=%d sub-tokens are neither trained on nor scored; "
                "raise data.max_length to keep them",
                name,
                cut,
                self.max_length,
            )
        return TokenDataset(encoded["input_ids"], labels)

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def texts(self) -> dict[str, list[str]]:
        """Each split's sentences as text: their words joined by one space (a CoNLL word holds no whitespace, so
        ``text.split(" ")`` gives the words back)."""
        return {name: [" ".join(s.tokens) for s in sentences] for name, sentences in self.sentences.items()}

    @property
    def entity_types(self) -> list[str]:
        return [tag[2:] for tag in self.label_names if tag.startswith("B-")]

    def collate(self, name: str) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        return TokenPadCollator(self.tokenizer.pad_token_id)
