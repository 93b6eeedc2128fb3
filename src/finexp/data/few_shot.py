"""Few-shot and reduced-data training sets: K rows per class, a fraction or a number of rows, seeded.

Applied after the train/val/test split, so the test split of a few-shot run is the test split of a full run (same
rows, same fingerprint) and learning curves compare like with like. In a K-shot run the validation split is capped
at K rows per class as well: model selection on a large labelled validation set would not be few-shot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from finexp.data.sources import DataError


@dataclass
class SamplingPolicy:
    """How much of the training split a run uses (at most one of the three; none: all of it).

    Attributes:
        k_shot: exactly this many training rows per class; validation capped at this many per class.
        train_fraction: keep this share of the training rows (stratified by label when ``stratify``).
        train_size: keep this many training rows (stratified by label when ``stratify``).
        seed: seed of the sample (one seed per sample: sweeping it gives different rows).
        by_class: the label column holds one class per row (classification); False for regression targets or label
            sets: K-shot does not apply and fraction/size samples are not stratified.
    """

    k_shot: int | None = None
    train_fraction: float | None = None
    train_size: int | None = None
    seed: int = 0
    by_class: bool = True

    def __post_init__(self) -> None:
        given = [k for k in ("k_shot", "train_fraction", "train_size") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of data.k_shot, data.train_fraction, data.train_size (got {given})")
        if self.k_shot is not None and self.k_shot < 1:
            raise ValueError(f"data.k_shot={self.k_shot} must be >= 1")
        if self.train_fraction is not None and not 0 < self.train_fraction <= 1:
            raise ValueError(f"data.train_fraction={self.train_fraction} must be in (0, 1]")
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"data.train_size={self.train_size} must be >= 1")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.k_shot, self.train_fraction, self.train_size))


def k_per_class(frame: pd.DataFrame, label_column: str, k: int, seed: int, split: str = "train") -> pd.DataFrame:
    """Exactly ``k`` rows of every class, drawn without replacement and kept in the frame's order.

    Raises:
        DataError: a class has fewer than ``k`` rows (naming the class and its count).
    """
    counts = frame[label_column].value_counts()
    short = counts[counts < k]
    if len(short):
        listed = ", ".join(f"{label!r} has {int(n)}" for label, n in sorted(short.items(), key=lambda kv: str(kv[0])))
        raise DataError(
            f"data.k_shot={k}: the {split} split has fewer than {k} rows of some class ({listed}); "
            f"lower data.k_shot or add rows"
        )
    return cap_per_class(frame, label_column, k, seed)


def cap_per_class(frame: pd.DataFrame, label_column: str, k: int, seed: int) -> pd.DataFrame:
    """At most ``k`` rows of every class (classes with fewer keep all of theirs), in the frame's order.

    Each class draws from its own generator seeded by ``(seed, class)``, so a class's sample does not depend on which
    other classes exist or on their sizes.
    """
    keep: list[int] = []
    labels = frame[label_column].to_numpy()
    for label in sorted(pd.unique(labels), key=str):
        rows = np.flatnonzero(labels == label)
        if len(rows) > k:
            rng = np.random.default_rng([seed, _stable_hash(str(label))])
            rows = np.sort(rng.choice(rows, size=k, replace=False))
        keep.extend(rows.tolist())
    return frame.iloc[sorted(keep)].reset_index(drop=True)


def subsample(
    frame: pd.DataFrame, n_rows: int, seed: int, label_column: str | None = None, split: str = "train"
) -> pd.DataFrame:
    """``n_rows`` rows; stratified by ``label_column`` when given (every class keeps at least one row).

    Raises:
        DataError: ``n_rows`` exceeds the split, or is smaller than the number of classes of a stratified sample.
    """
    if n_rows > len(frame):
        raise DataError(f"the {split} split has {len(frame)} rows; cannot keep {n_rows} (data.train_size)")
    if n_rows == len(frame):
        return frame.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    if label_column is None:
        return frame.iloc[np.sort(rng.choice(len(frame), size=n_rows, replace=False))].reset_index(drop=True)
    counts = frame[label_column].value_counts().sort_index(key=lambda s: s.astype(str))
    if n_rows < len(counts):
        raise DataError(
            f"a stratified sample of {n_rows} row(s) cannot hold all {len(counts)} classes of the {split} split; "
            f"keep at least {len(counts)} rows"
        )
    quota = _largest_remainder(counts.to_numpy(), n_rows)
    labels = frame[label_column].to_numpy()
    keep: list[int] = []
    for (label, _), n in zip(counts.items(), quota, strict=True):
        rows = np.flatnonzero(labels == label)
        keep.extend(rng.choice(rows, size=int(n), replace=False).tolist())
    return frame.iloc[sorted(keep)].reset_index(drop=True)


def _largest_remainder(counts: np.ndarray, total: int) -> np.ndarray:
    """Integer quotas proportional to ``counts`` summing to ``total``, each at least 1 and at most its count."""
    share = counts / counts.sum() * total
    quota = np.clip(np.floor(share).astype(int), 1, counts)
    order = np.argsort(-(share - np.floor(share)))
    i = 0
    while quota.sum() < total:
        j = order[i % len(order)]
        if quota[j] < counts[j]:
            quota[j] += 1
        i += 1
    while quota.sum() > total:  # the minimum of 1 per class can overshoot: take from the largest quotas
        j = int(np.argmax(quota))
        quota[j] -= 1
    return quota


def _stable_hash(text: str) -> int:
    """A hash of a class name that, unlike ``hash()``, is the same in every process."""
    value = 0
    for char in text.encode():
        value = (value * 131 + char) % (2**31 - 1)
    return value


def per_class(frame: pd.DataFrame, label_column: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(frame[label_column].value_counts().items(), key=lambda kv: str(kv[0]))}


def apply_sampling(
    train: pd.DataFrame, val: pd.DataFrame, policy: SamplingPolicy, label_column: str | None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Sample the training split (and cap validation in a K-shot run) as ``policy`` says.

    Args:
        train: the training split.
        val: the validation split.
        policy: what to keep.
        label_column: the class column (None: the task has no classes, e.g. regression; K-shot then does not apply
            and fraction/size samples are not stratified).

    Returns:
        The new train and val splits, and a record of what was kept (for ``run_info.json``).
    """
    record: dict[str, Any] = {"seed": policy.seed, "train_rows_before": len(train), "val_rows_before": len(val)}
    if policy.k_shot is not None:
        if label_column is None:
            raise DataError("data.k_shot needs a task with classes; use data.train_fraction or data.train_size")
        record["k_shot"] = policy.k_shot
        train = k_per_class(train, label_column, policy.k_shot, policy.seed, "train")
        val = cap_per_class(val, label_column, policy.k_shot, policy.seed + 1)  # not the train draw's stream
    elif policy.train_fraction is not None or policy.train_size is not None:
        n_rows = policy.train_size
        if policy.train_fraction is not None:
            record["train_fraction"] = policy.train_fraction
            n_rows = max(1, round(len(train) * policy.train_fraction))
        else:
            record["train_size"] = policy.train_size
        train = subsample(train, n_rows, policy.seed, label_column, "train")
    record["train_rows"], record["val_rows"] = len(train), len(val)
    if label_column is not None:
        record["train_per_class"] = per_class(train, label_column)
        record["val_per_class"] = per_class(val, label_column)
    return train, val, record
