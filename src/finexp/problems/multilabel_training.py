"""What ``task.problem=multilabel`` trains for: one sigmoid output per label, binary cross-entropy, per-label and
micro/macro F1 (the label sets are read by :class:`finexp.data.multilabel.MultiLabelDataModule`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelExactMatch, MultilabelF1Score

from finexp.problems.training_module import Batch, Objective, TrainingModule


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


class MultiLabelObjective(Objective):
    """Binary cross-entropy over one logit per label; the metrics see the probabilities.

    Args:
        label_names: the labels, index = output.
        threshold: a label is predicted when its probability is at least this (F1 and predictions).
    """

    def __init__(self, label_names: Sequence[str], threshold: float = 0.5) -> None:
        super().__init__(label_names)
        self.threshold = threshold

    def attach(self, module: TrainingModule) -> None:
        module.loss_fn = nn.BCEWithLogitsLoss()

    def metrics(self) -> MetricCollection:
        return build_multilabel_metrics(self.label_names, self.threshold)

    def loss(self, module: TrainingModule, raw: torch.Tensor, batch: Batch) -> torch.Tensor:
        return module.loss_fn(raw.float(), batch["labels"].float())

    def scores(self, module: TrainingModule, raw: torch.Tensor) -> torch.Tensor:
        return raw.detach().float().sigmoid()

    def target(self, batch: Batch) -> torch.Tensor:
        return batch["labels"].long()

    def predict(self, module: TrainingModule, raw: torch.Tensor, batch: Batch) -> dict[str, Any]:
        return {"index": batch["index"], "probs": raw.float().sigmoid(), "labels": batch["labels"]}

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
