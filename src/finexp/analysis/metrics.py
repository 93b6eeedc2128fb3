"""Classification, calibration and threshold metrics on plain arrays of probabilities and label ids.

Conventions: ``probs`` is ``(n, k)`` class probabilities (rows sum to 1), ``labels`` ``(n,)`` label ids; binary tasks
have the positive class at index 1, so ``probs[:, 1]`` is the score.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(int)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs must be (n, k) and labels (n,); got {probs.shape} and {labels.shape}")
    return probs, labels


def classification_summary(probs: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """Per-class precision/recall/F1 and the confusion matrix at the arg-max; AUROC, AUPRC, KS, Gini for binary.

    Returns:
        ``{"per_class": {name: {precision, recall, f1-score, support}}, "accuracy", "confusion_matrix",
        "auroc", "auprc", "ks", "gini"}`` (the last four for binary tasks with both classes present).
    """
    probs, labels = _check(probs, labels)
    ids = list(range(len(label_names)))
    predicted = probs.argmax(1)
    report = classification_report(
        labels, predicted, labels=ids, target_names=label_names, output_dict=True, zero_division=0
    )
    for row in report.values():
        if isinstance(row, dict):
            row["support"] = int(row["support"])
    summary: dict[str, Any] = {
        "per_class": {name: report[name] for name in label_names},
        "macro avg": report["macro avg"],
        "weighted avg": report["weighted avg"],
        "accuracy": float((predicted == labels).mean()) if len(labels) else float("nan"),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=ids).tolist(),
    }
    if len(label_names) == 2 and len(np.unique(labels)) == 2:
        score = probs[:, 1]
        fpr, tpr, _ = roc_curve(labels, score)
        auroc = float(roc_auc_score(labels, score))
        summary |= {
            "auroc": auroc,
            "auprc": float(average_precision_score(labels, score)),
            "ks": float((tpr - fpr).max()),  # Kolmogorov-Smirnov: the largest TPR - FPR gap
            "gini": 2 * auroc - 1,  # the credit industry's name for the rescaled AUROC
        }
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------------------------
def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label confidence in ``n_bins`` equal-width bins over [0, 1]: the first bin is ``[0, 1/n]``, the others
    ``(lo, hi]``.

    Returns:
        ``count``, ``confidence`` (mean top-label probability) and ``accuracy`` per bin (NaN for empty bins).
    """
    probs, labels = _check(probs, labels)
    confidence = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(which, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE = sum over bins of (rows in bin / n) * |accuracy - mean confidence|, on the top-label confidence in
    ``n_bins`` equal-width bins (see :func:`reliability_bins`)."""
    bins = reliability_bins(probs, labels, n_bins)
    filled = bins["count"] > 0
    gap = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float((bins["count"][filled] / bins["count"].sum() * gap).sum())


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Binary: mean of (p_positive - y)^2 (the usual credit-scoring Brier score, in [0, 1]).
    Multi-class: mean over rows of sum_k (p_k - onehot_k)^2 (in [0, 2])."""
    probs, labels = _check(probs, labels)
    if probs.shape[1] == 2:
        return float(((probs[:, 1] - labels) ** 2).mean())
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(1).mean())


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    probs, labels = _check(probs, labels)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def calibration_summary(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    return {
        "ece": expected_calibration_error(probs, labels, n_bins),
        "brier": brier_score(probs, labels),
        "nll": negative_log_likelihood(probs, labels),
    }


def fit_temperature(probs: np.ndarray, labels: np.ndarray, max_iter: int = 50) -> float:
    """The temperature T minimising the NLL of ``softmax(log(probs) / T)`` (Guo et al., 2017), fitted by L-BFGS.

    ``log(probs)`` equals the logits up to a per-row constant, which softmax ignores, so probabilities suffice.
    """
    probs, labels = _check(probs, labels)
    logits = torch.log(torch.as_tensor(probs).clamp(min=1e-12))
    target = torch.as_tensor(labels)
    log_t = torch.zeros(1, dtype=logits.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp().item())


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)) / temperature
    logits -= logits.max(1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------------
# Thresholds (binary)
# ----------------------------------------------------------------------------------------------------------------
def metrics_at_threshold(score: np.ndarray, labels: np.ndarray, threshold: float, favorable: int = 0) -> dict:
    """Precision, recall, F1 (of the positive class), accuracy and approval rate when ``score >= threshold`` is
    predicted positive. ``favorable`` is the class that is good for the person scored (approved)."""
    score, labels = np.asarray(score, dtype=np.float64), np.asarray(labels).astype(int)
    predicted = (score >= threshold).astype(int)
    tp = int(((predicted == 1) & (labels == 1)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": float((predicted == labels).mean()),
        "approval_rate": float((predicted == favorable).mean()),
    }


def f1_optimal_threshold(score: np.ndarray, labels: np.ndarray) -> float:
    """The score threshold that maximises the positive class's F1 (ties: the lowest such threshold)."""
    precision, recall, thresholds = precision_recall_curve(labels, score)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    return float(thresholds[int(f1.argmax())])


def approval_rate_threshold(score: np.ndarray, approval_rate: float, favorable: int = 0) -> float:
    """The threshold at which ``approval_rate`` of the rows get the favorable prediction.

    ``favorable=0`` (the positive class is the adverse outcome, e.g. default): the rows with the lowest scores are
    approved; ``favorable=1``: the rows with the highest scores.
    """
    score = np.sort(np.asarray(score, dtype=np.float64))
    n = len(score)
    if favorable == 0:  # approve = score < t: t just above the k-th lowest score
        k = round(approval_rate * n)
        return float(np.nextafter(score[k - 1], np.inf)) if k > 0 else float(score[0])
    k = round(approval_rate * n)  # approve = score >= t: t = the k-th highest score
    return float(score[n - k]) if k > 0 else float(np.nextafter(score[-1], np.inf))


def threshold_table(
    test_score: np.ndarray,
    test_labels: np.ndarray,
    val_score: np.ndarray | None,
    val_labels: np.ndarray | None,
    approval_rate: float,
    favorable: int = 0,
) -> dict[str, dict]:
    """Test metrics at 0.5, at the F1-maximising threshold of val and at the val threshold giving ``approval_rate``.

    Thresholds are chosen on validation (none when no val split is given) and applied unchanged to test.
    """
    table = {"default_0.5": metrics_at_threshold(test_score, test_labels, 0.5, favorable)}
    if val_score is not None and len(val_score) and len(np.unique(val_labels)) == 2:
        best = f1_optimal_threshold(val_score, val_labels)
        table["val_f1_max"] = metrics_at_threshold(test_score, test_labels, best, favorable)
    if val_score is not None and len(val_score):
        cut = approval_rate_threshold(val_score, approval_rate, favorable)
        table[f"approval_rate_{approval_rate:g}"] = metrics_at_threshold(test_score, test_labels, cut, favorable)
    return table


def curves(score: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """ROC (fpr, tpr) and precision-recall curves of a binary score."""
    fpr, tpr, _ = roc_curve(labels, score)
    precision, recall, _ = precision_recall_curve(labels, score)
    return {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall}
