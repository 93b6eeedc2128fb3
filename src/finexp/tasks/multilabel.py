"""Multi-label classification (``task.problem=multilabel``): any number of labels per row (a complaint about both
"fees" and "fraud"), one sigmoid output per label, binary cross-entropy, per-label and micro/macro F1.

Labels are read either from one column holding several labels separated by ``task.label_separator``
(``"fees|fraud"``; an empty cell means no label), or from one 0/1 column per label (``task.label_columns``). The rest
of the pipeline (reading, serializing, tokenizing, batching) is the classification one:
:class:`MultiLabelDataModule` overrides only what a label is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelExactMatch, MultilabelF1Score

from finexp.data.datamodule import ClassificationDataModule
from finexp.data.sources import DataError
from finexp.data.splits import Splits
from finexp.tasks.optimization import OptimizerFactory, SchedulerFactory
from finexp.tasks.rows import RowTargetModule

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


def metric_name(label: str) -> str:
    """A label as a metric-key suffix: ``"late fees"`` -> ``late_fees`` (``test/f1_late_fees``)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", label).strip("_") or "label"


class PerLabelF1(MultilabelF1Score):
    """F1 of every label, returned as ``{f1_<label>: value}`` (a MetricCollection flattens the dict into keys)."""

    def __init__(self, label_names: Sequence[str], threshold: float = 0.5) -> None:
        super().__init__(len(label_names), threshold=threshold, average="none", validate_args=False)
        self.keys = [f"f1_{metric_name(n)}" for n in label_names]
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"labels {list(label_names)} collide as metric names {self.keys}")

    def compute(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.keys, super().compute(), strict=True))


def build_multilabel_metrics(label_names: Sequence[str], threshold: float = 0.5) -> MetricCollection:
    """Micro- and macro-F1, exact match (every label of the row right) and F1 per label; updated with
    ``(probabilities, multi-hot target)``."""
    k, quiet = len(label_names), {"threshold": threshold, "validate_args": False}
    return MetricCollection(
        {
            "f1_micro": MultilabelF1Score(k, average="micro", **quiet),
            "f1_macro": MultilabelF1Score(k, average="macro", **quiet),
            "exact_match": MultilabelExactMatch(k, **quiet),
            "per_label": PerLabelF1(label_names, threshold),
        }
    )


class MultiLabelModule(RowTargetModule):
    """Trains a :class:`~finexp.models.classifier.SequenceClassifier` with one logit per label and BCE.

    Args:
        model: maps ``(input_ids, attention_mask[, features])`` to ``(batch, labels)`` logits.
        label_names: the labels, index = output.
        optimizer: builds the optimizer from parameter groups; None for a module that only evaluates.
        scheduler: builds a per-step LR schedule from ``(optimizer, num_training_steps=...)``; None for none.
        threshold: a label is predicted when its probability is at least this (F1 and predictions).
    """

    def __init__(
        self,
        model: nn.Module,
        label_names: Sequence[str],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        threshold: float = 0.5,
    ) -> None:
        metrics = build_multilabel_metrics(list(label_names), threshold)
        super().__init__(model, list(label_names), metrics, optimizer, scheduler)
        self.threshold = threshold
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        kwargs = {} if features is None else {"features": features}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"], batch.get("features"))
        return self.loss_fn(logits.float(), batch["labels"].float()), logits.detach().float().sigmoid()

    def _metric_target(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["labels"].long()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"], batch.get("features"))
        return {"index": batch["index"], "probs": logits.float().sigmoid(), "labels": batch["labels"]}

    def predictions_table(self, outputs: list[dict[str, torch.Tensor]], texts: list[str]) -> pd.DataFrame:
        """``predict`` outputs as rows in dataset order: text, true and predicted label sets, one probability per
        label (finexp-eval)."""
        order = torch.cat([o["index"] for o in outputs]).argsort()
        probs = torch.cat([o["probs"] for o in outputs])[order]
        truth = torch.cat([o["labels"] for o in outputs])[order]

        def joined(rows: torch.Tensor) -> list[str]:
            return ["|".join(n for n, on in zip(self.label_names, row.tolist(), strict=True) if on) for row in rows]

        frame = pd.DataFrame(
            {"text": texts, "labels": joined(truth > 0.5), "predicted": joined(probs >= self.threshold)}
        )
        for i, name in enumerate(self.label_names):
            frame[f"prob_{name}"] = probs[:, i].numpy()
        return frame
