"""K-fold cross-validation over the rows that are not held out for testing.

The test split never changes between folds, so every fold is scored on the same rows; the train and val splits of
one run are pooled and fold ``fold`` of ``folds`` becomes the val split. Without a time column the folds are
stratified and seeded (:class:`sklearn.model_selection.StratifiedKFold`); with one they chain forward in time
(fold i trains on the first i + 1 of folds + 1 time-ordered blocks and validates on the next), so a model is never
validated on rows older than some of its training rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from finexp.data.sources import DataError
from finexp.data.splits import Splits


def cross_validation_fold(
    splits: Splits, label_column: str, folds: int, fold: int, seed: int, time_column: str | None = None
) -> Splits:
    """Re-split ``splits.train + splits.val`` into fold ``fold`` of ``folds``; ``splits.test`` is kept as it is.

    Args:
        splits: the run's splits (with a time column: train before val in time, as ``time_ordered_split`` makes).
        label_column: stratify on this column.
        folds: number of folds (>= 2).
        fold: the fold that validates, ``0 <= fold < folds``.
        seed: shuffles rows before they are dealt to stratified folds.
        time_column: forward-chaining folds over rows ordered by this column instead of stratified ones.

    Raises:
        DataError: when a fold would be empty or a class has fewer rows than there are folds.
    """
    if not 0 <= fold < folds:
        raise DataError(f"data.cv.fold={fold} is not a fold of data.cv.folds={folds}")
    pool = pd.concat([splits.train, splits.val], ignore_index=True)
    if time_column is not None:
        pool = pool.sort_values(time_column, kind="stable").reset_index(drop=True)
        blocks = np.array_split(np.arange(len(pool)), folds + 1)
        if min(len(b) for b in blocks) == 0:
            raise DataError(f"{len(pool)} train+val rows cannot make {folds} forward-chaining folds")
        train_idx, val_idx = np.concatenate(blocks[: fold + 1]), blocks[fold + 1]
    else:
        counts = pool[label_column].value_counts()
        if counts.min() < folds:
            raise DataError(
                f"data.cv.folds={folds}: class {counts.idxmin()!r} has only {counts.min()} train+val rows, "
                f"fewer than the folds; use fewer folds or more data"
            )
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        train_idx, val_idx = list(splitter.split(np.zeros(len(pool)), pool[label_column]))[fold]
    return Splits(pool.iloc[train_idx].reset_index(drop=True), pool.iloc[val_idx].reset_index(drop=True), splits.test)
