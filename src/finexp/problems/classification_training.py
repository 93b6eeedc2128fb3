"""What ``task.problem=classification`` trains for: cross-entropy over one label per row, and its metrics.

Metrics are named ``{stage}/{metric}`` (``val/auroc``, ``test/f1_macro``): accuracy and macro-F1 always; binary
tasks add AUROC, AUPRC and KS, multi-class ones weighted F1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryROC,
    MulticlassAccuracy,
    MulticlassF1Score,
)
from torchmetrics.wrappers import LambdaInputTransformer

from finexp.problems.training_module import Batch, Objective, OptimizerFactory, SchedulerFactory, TrainingModule


class KSStatistic(BinaryROC):
    """Kolmogorov-Smirnov statistic: the largest gap between the score distributions of the two classes.

    Equal to ``max(TPR - FPR)`` over thresholds; a standard credit-scoring separation measure.
    """

    def compute(self) -> torch.Tensor:
        fpr, tpr, _ = super().compute()
        return (tpr - fpr).max()


def _positive_probability(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(-1)[:, 1]


def _on_positive_probability(metric: Metric) -> Metric:
    """Binary metrics see the positive class probability while the collection is updated with logits."""
    return LambdaInputTransformer(metric, transform_pred=_positive_probability)


def build_classification_metrics(num_labels: int) -> MetricCollection:
    """Accuracy and macro-F1 always; binary adds AUROC, AUPRC and KS; multi-class adds weighted F1.

    Every metric is updated with ``(logits, target)``.
    """
    # validate_args=False: inputs come from our own module (well-formed logits and label ids), and the checks
    # cost more per training step than the metric itself on small models.
    quiet = {"validate_args": False}
    metrics: dict[str, Metric] = {
        "accuracy": MulticlassAccuracy(num_labels, average="micro", **quiet),
        "f1_macro": MulticlassF1Score(num_labels, average="macro", **quiet),
    }
    if num_labels == 2:
        metrics |= {
            "auroc": _on_positive_probability(BinaryAUROC(**quiet)),
            "auprc": _on_positive_probability(BinaryAveragePrecision(**quiet)),
            "ks": _on_positive_probability(KSStatistic(**quiet)),
        }
    else:
        metrics["f1_weighted"] = MulticlassF1Score(num_labels, average="weighted", **quiet)
    return MetricCollection(metrics)


class ClassificationObjective(Objective):
    """Cross-entropy over ``label_names`` (binary: index 1 is the positive class); metrics see the logits.

    A model with a ``loss(logits, labels)`` method (``method=generative``: the LM loss) is trained with that instead.

    Args:
        label_names: class names, index = label id.
        class_weights: optional cross-entropy weight per class (checkpointed as ``loss_fn.weight``).
        loss_fn: another loss of ``(logits, labels)`` (label smoothing ...); None: cross-entropy with
            ``class_weights``.
    """

    track_padding = True

    def __init__(
        self,
        label_names: Sequence[str],
        class_weights: Sequence[float] | None = None,
        loss_fn: nn.Module | None = None,
    ) -> None:
        super().__init__(label_names)
        if loss_fn is not None and class_weights is not None:
            raise ValueError("give class_weights or loss_fn, not both (weigh the classes in the loss given)")
        self.class_weights = list(class_weights) if class_weights is not None else None
        self.loss_fn = loss_fn

    def attach(self, module: TrainingModule) -> None:
        weight = torch.tensor(self.class_weights, dtype=torch.float) if self.class_weights is not None else None
        module.loss_fn = self.loss_fn if self.loss_fn is not None else nn.CrossEntropyLoss(weight=weight)

    def metrics(self) -> MetricCollection:
        return build_classification_metrics(len(self.label_names))

    def loss(self, module: TrainingModule, raw: torch.Tensor, batch: Batch) -> torch.Tensor:
        own = getattr(module.model, "loss", None)  # a model with its own loss (method=generative: the LM loss)
        return (own if callable(own) else module.loss_fn)(raw, batch["labels"])

    def predict(self, module: TrainingModule, raw: torch.Tensor, batch: Batch) -> dict[str, Any]:
        return {"index": batch["index"], "probs": raw.softmax(-1), "labels": batch["labels"]}


def classification_module(
    model: nn.Module,
    label_names: Sequence[str],
    optimizer: OptimizerFactory | None = None,
    scheduler: SchedulerFactory | None = None,
    class_weights: Sequence[float] | None = None,
) -> TrainingModule:
    """A :class:`TrainingModule` training ``model`` (``(input_ids, attention_mask[, features])`` -> logits) with
    cross-entropy; ``optimizer=None`` for a module that only evaluates."""
    return TrainingModule(model, ClassificationObjective(label_names, class_weights), optimizer, scheduler)
