"""Regression targets (``task.problem=regression``): one number per row (an interest rate, a loss amount).

The data pipeline is the classification one (:class:`~finexp.data.datamodule.ClassificationDataModule`) with a float
target instead of a class id: :class:`RegressionDataModule` overrides only what a label is.
"""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from finexp.data.datamodule import ClassificationDataModule
from finexp.data.sources import DataError
from finexp.data.splits import Splits


class RegressionDataModule(ClassificationDataModule):
    """Rows -> one float target each (``task.label_column`` must hold numbers).

    Splits are stratified on deciles of the target (fewer bins on small data), so every split covers the range;
    ``label_names`` is ``[label column]`` and ``num_labels`` 1. Arguments are those of
    :class:`~finexp.data.datamodule.ClassificationDataModule` (``positive_label`` and the label-DP hook do not apply).
    """

    max_bins = 10  # target quantile bins the splits are stratified on

    def _read_labels(self, frame: pd.DataFrame, origin: str) -> pd.DataFrame:
        column = self.columns.label
        self._check_missing(frame, column, origin, "label")
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            examples = frame.loc[bad, column].astype(str).unique()[:3].tolist()
            raise DataError(
                f"{origin}: task.label_column={column!r} must hold numbers for task.problem=regression, but "
                f"{int(bad.sum())} row(s) do not (e.g. {examples}); choose a numeric column or "
                "task.problem=classification"
            )
        frame[column] = values.astype(float)
        return frame

    def _split_off(self, frame: pd.DataFrame, fraction: float, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        n_split = round(len(frame) * fraction)
        if n_split < 1 or len(frame) - n_split < 1:
            raise DataError(f"cannot make the {what} split: {len(frame)} rows leave {n_split} for it")
        bins = min(self.max_bins, n_split, len(frame) - n_split, len(frame) // 2)
        strata = None
        if bins >= 2:  # rank first: ties (many equal rates) would otherwise merge bins
            strata = pd.qcut(frame[self.columns.label].rank(method="first"), bins, labels=False)
        rest, split = train_test_split(frame, test_size=n_split, random_state=self.split.seed, stratify=strata)
        return rest.reset_index(drop=True), split.reset_index(drop=True)

    def _label_order(self, train_labels: pd.Series) -> list[str]:
        if train_labels.nunique() < 2:
            raise DataError(f"the train split's target {self.columns.label!r} is constant; nothing to regress")
        return [self.columns.label]

    def _check_labels(self, splits: Splits) -> None:
        """Numbers were checked when read; any value is a valid target."""

    def _targets(self, frame: pd.DataFrame) -> list[float]:
        return frame[self.columns.label].astype(float).tolist()

    def target_statistics(self) -> tuple[float, float]:
        """Mean and standard deviation of the train split's target (what the module standardizes with)."""
        targets = self.datasets["train"].labels
        if targets.numel() < 2:
            raise DataError("the train split needs at least two rows to standardize the target")
        return float(targets.mean()), float(targets.std(unbiased=False).clamp(min=1e-12))
