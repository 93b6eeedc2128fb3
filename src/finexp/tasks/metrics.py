"""Classification metrics, named ``{stage}/{metric}`` (``val/auroc``, ``test/f1_macro``)."""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryROC,
    MulticlassAccuracy,
    MulticlassF1Score,
)
from torchmetrics.wrappers import LambdaInputTransformer


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
