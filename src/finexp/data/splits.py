"""Train/val/test splits: stratified and seeded, with clear errors when a split cannot be made."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from sklearn.model_selection import train_test_split

from finexp.data.sources import DataError


@dataclass
class Splits:
    """The three splits as rows of (text, label)."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        return [("train", self.train), ("val", self.val), ("test", self.test)]


def _check_stratifiable(labels: pd.Series, fraction: float, what: str) -> None:
    counts = labels.value_counts()
    rare = counts[counts < 2]
    if len(rare):
        raise DataError(
            f"cannot stratify the {what} split: class(es) {', '.join(map(repr, rare.index.tolist()))} "
            f"have fewer than 2 rows; add rows or drop those classes"
        )
    n_split = round(len(labels) * fraction)
    if n_split < len(counts) or len(labels) - n_split < len(counts):
        raise DataError(
            f"cannot stratify the {what} split: {len(labels)} rows and {len(counts)} classes leave "
            f"{n_split} rows for it, fewer than one per class; use more data or a larger fraction"
        )


def stratified_split(
    frame: pd.DataFrame, label_column: str, fraction: float, seed: int, what: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off ``fraction`` of the rows, keeping class proportions; returns (rest, split)."""
    labels = frame[label_column]
    _check_stratifiable(labels, fraction, what)
    rest, split = train_test_split(frame, test_size=fraction, random_state=seed, stratify=labels)
    return rest.reset_index(drop=True), split.reset_index(drop=True)


def time_ordered_split(
    frame: pd.DataFrame, time_column: str, val_size: float, test_size: float, test_from: object = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train, val and test in time order: no row of an earlier split is later than a row of a later split.

    Rows are sorted by ``time_column`` (stably, so rows sharing a time keep their file order). The test split is
    every row at or after ``test_from`` if given, else the last ``test_size`` share; val is the last ``val_size``
    share (of all rows) before the test split.
    """
    ordered = frame.sort_values(time_column, kind="stable").reset_index(drop=True)
    if test_from is not None:
        n_test = int((ordered[time_column] >= test_from).sum())
        if n_test == 0 or n_test == len(ordered):
            raise DataError(
                f"data.test_from={test_from!r} leaves an empty split; {time_column!r} runs from "
                f"{ordered[time_column].iloc[0]} to {ordered[time_column].iloc[-1]}"
            )
    else:
        n_test = round(len(ordered) * test_size)
    n_val = round(len(ordered) * val_size)
    n_train = len(ordered) - n_test - n_val
    if n_train < 1 or n_val < 1:
        raise DataError(f"time-ordered split of {len(ordered)} rows leaves {n_train} train and {n_val} val rows")
    split = [ordered.iloc[:n_train], ordered.iloc[n_train : n_train + n_val], ordered.iloc[n_train + n_val :]]
    return tuple(part.reset_index(drop=True) for part in split)


def stratified_subsample(frame: pd.DataFrame, label_column: str, n_rows: int, seed: int) -> pd.DataFrame:
    """Keep ``n_rows`` rows with the class proportions of ``frame`` (for smoke runs on big tables)."""
    if n_rows >= len(frame):
        return frame
    _, kept = stratified_split(frame, label_column, n_rows / len(frame), seed, "data.max_rows subsample")
    return kept


def fingerprint(texts: Sequence[str], labels: Sequence[object]) -> str:
    """A short hash of a split's rows, stored with every run so results can be tied to the exact data."""
    digest = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        digest.update(text.encode())
        digest.update(b"\x1f")
        digest.update(str(label).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()[:16]
