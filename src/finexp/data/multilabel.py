"""Multi-label classification (``task.problem=multilabel``): any number of labels per row (a complaint about both
"fees" and "fraud"), one sigmoid output per label, binary cross-entropy, per-label and micro/macro F1.

Labels are read either from one column holding several labels separated by ``task.label_separator``
(``"fees|fraud"``; an empty cell means no label), or from one 0/1 column per label (``task.label_columns``). The rest
of the pipeline (reading, serializing, tokenizing, batching) is the classification one:
:class:`MultiLabelDataModule` overrides only what a label is (the loss and metrics:
:mod:`finexp.problems.multilabel_training`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from sklearn.model_selection import train_test_split

from finexp.data.datamodule import ClassificationDataModule
from finexp.data.sources import DataError
from finexp.data.splits import Splits

TRUE_VALUES = {"1", "1.0", "true", "yes", "y", "t"}
FALSE_VALUES = {"0", "0.0", "false", "no", "n", "f", ""}


class MultiLabelDataModule(ClassificationDataModule):
    """Rows -> a set of labels each, served as a multi-hot float vector over ``label_names`` (sorted).

    Args:
        *args: those of :class:`~finexp.data.datamodule.ClassificationDataModule`; ``columns.label`` names the
            column of label sets (with ``label_columns``: the name given to the sets built from them).
        separator: labels within one cell are separated by this (``"|"``); whitespace around each is dropped.
        label_columns: instead, one 0/1 (or yes/no, true/false) column per label, named by the label; these
            columns are never serialized into the text.
        **kwargs: those of :class:`~finexp.data.datamodule.ClassificationDataModule`.

    Splits are random and seeded (``data.split_seed``), not stratified: label sets are too many to stratify on.
    """

    def __init__(
        self, *args: object, separator: str | None = None, label_columns: Sequence[str] | None = None, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)
        if (separator is None) == (not label_columns):
            raise ValueError("give exactly one of separator and label_columns")
        self.separator = separator
        self.label_columns = list(label_columns or [])

    def _label_sources(self) -> dict[str, str]:
        if self.label_columns:
            return {f"task.label_columns[{i}]": c for i, c in enumerate(self.label_columns)}
        return super()._label_sources()

    def _read_labels(self, frame: pd.DataFrame, origin: str) -> pd.DataFrame:
        label = self.columns.label
        if not self.label_columns:
            cells = frame[label].fillna("").astype(str)
            frame[label] = [_label_set(cell.split(self.separator)) for cell in cells]
            return frame
        if label in frame.columns:
            raise DataError(
                f"{origin}: task.label_column={label!r} already exists; with task.label_columns it names the label "
                "sets built from them: choose another name"
            )
        flags = {}
        for column in self.label_columns:
            values = frame[column].map(lambda v: str(v).strip().lower() if pd.notna(v) else "")
            unknown = sorted(set(values) - TRUE_VALUES - FALSE_VALUES)
            if unknown:
                raise DataError(
                    f"{origin}: task.label_columns: column {column!r} must hold 0/1 (or yes/no, true/false), "
                    f"found {unknown[:3]}"
                )
            flags[column] = values.isin(TRUE_VALUES)
        frame[label] = [_label_set(c for c in self.label_columns if flags[c].iloc[i]) for i in range(len(frame))]
        return frame.drop(columns=self.label_columns)

    def _split_off(self, frame: pd.DataFrame, fraction: float, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        n_split = round(len(frame) * fraction)
        if n_split < 1 or len(frame) - n_split < 1:
            raise DataError(f"cannot make the {what} split: {len(frame)} rows leave {n_split} for it")
        rest, split = train_test_split(frame, test_size=n_split, random_state=self.split.seed)
        return rest.reset_index(drop=True), split.reset_index(drop=True)

    def _label_order(self, train_labels: pd.Series) -> list[str]:
        names = sorted({name for labels in train_labels for name in labels})
        if len(names) < 2:
            raise DataError(
                f"the train split has {len(names)} label(s) ({names}) in {self.columns.label!r}; multi-label needs "
                f"at least two{'' if self.label_columns else f' (labels separated by {self.separator!r})'}"
            )
        return names

    def _check_labels(self, splits: Splits) -> None:
        known = set(self.label_names)
        for name, frame in splits.items():
            unseen = sorted({n for labels in frame[self.columns.label] for n in labels} - known)
            if unseen:
                raise DataError(
                    f"the {name} split has label(s) never seen in training: {', '.join(map(repr, unseen))}; "
                    f"known labels: {', '.join(self.label_names)}"
                )

    def _targets(self, frame: pd.DataFrame) -> list[list[float]]:
        index = {name: i for i, name in enumerate(self.label_names)}
        rows = []
        for labels in frame[self.columns.label]:
            row = [0.0] * len(index)
            for name in labels:
                row[index[name]] = 1.0
            rows.append(row)
        return rows

    def label_counts(self) -> list[int]:
        """Train rows carrying each label."""
        return self.datasets["train"].labels.sum(0).long().tolist()


def _label_set(names: object) -> tuple[str, ...]:
    return tuple(sorted({str(n).strip() for n in names} - {""}))
