"""Group fairness of a binary classifier (fairlearn), and group-specific thresholds for equal opportunity.

Every figure is stated for the **favorable** outcome (approval, no denial): the selection rate is the share of a group
that the model approves, TPR is the approval rate among people whose true outcome is favorable (equal opportunity),
FPR the approval rate among the others. When the task's positive class is the adverse outcome (default, denial) the
favorable class is the negative one; scores are flipped so that a higher score means "more favorable".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import roc_auc_score

FOUR_FIFTHS = 0.8  # the US EEOC rule of thumb: a group selected at < 80% of the most-selected group's rate


def _auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y_true, score)) if len(np.unique(y_true)) == 2 else float("nan")


def _favorable(labels: np.ndarray, predicted: np.ndarray, score: np.ndarray, favorable: int) -> tuple:
    labels, predicted = np.asarray(labels).astype(int), np.asarray(predicted).astype(int)
    score = np.asarray(score, dtype=np.float64)
    if favorable == 1:
        return labels, predicted, score
    return 1 - labels, 1 - predicted, 1 - score


def fairness_report(
    labels: np.ndarray,
    predicted: np.ndarray,
    score: np.ndarray,
    groups: np.ndarray,
    favorable: int = 0,
) -> dict[str, Any]:
    """Per-group and between-group fairness of binary predictions.

    Args:
        labels: true label ids (1 = the task's positive class).
        predicted: predicted label ids.
        score: the positive class probability.
        groups: the sensitive attribute of each row.
        favorable: which label id is the favorable outcome for the person scored.

    Returns:
        ``by_group`` ({group: {count, selection_rate, tpr, fpr, auroc, impact_ratio, four_fifths_flag}}),
        ``demographic_parity_difference``, ``equal_opportunity_difference``, ``equalized_odds_difference``,
        ``disparate_impact_ratio`` and ``four_fifths_violated``.
    """
    y, yhat, s = _favorable(labels, predicted, score, favorable)
    groups = np.asarray(groups).astype(str)
    frame = MetricFrame(
        metrics={
            "count": count,
            "selection_rate": selection_rate,
            "tpr": true_positive_rate,
            "fpr": false_positive_rate,
        },
        y_true=y,
        y_pred=yhat,
        sensitive_features=groups,
    )
    by_group = frame.by_group.to_dict(orient="index")
    top_rate = max(v["selection_rate"] for v in by_group.values())
    for name, row in by_group.items():
        mask = groups == name
        row["count"] = int(row["count"])
        row["auroc"] = _auroc(y[mask], s[mask])
        row["impact_ratio"] = row["selection_rate"] / top_rate if top_rate > 0 else float("nan")
        row["four_fifths_flag"] = bool(row["impact_ratio"] < FOUR_FIFTHS)
    ratio = float(demographic_parity_ratio(y, yhat, sensitive_features=groups))
    return {
        "by_group": {
            str(k): {m: (v if isinstance(v, bool | int) else float(v)) for m, v in row.items()}
            for k, row in sorted(by_group.items())
        },
        "demographic_parity_difference": float(demographic_parity_difference(y, yhat, sensitive_features=groups)),
        "equal_opportunity_difference": float(equal_opportunity_difference(y, yhat, sensitive_features=groups)),
        "equalized_odds_difference": float(equalized_odds_difference(y, yhat, sensitive_features=groups)),
        "disparate_impact_ratio": ratio,
        "four_fifths_violated": bool(ratio < FOUR_FIFTHS),
    }


def equal_opportunity_thresholds(
    score: np.ndarray, labels: np.ndarray, groups: np.ndarray, threshold: float, favorable: int = 0
) -> dict[str, float]:
    """A score threshold per group such that each group's favorable-outcome TPR on these (validation) rows is as
    close as possible to the TPR of all rows at ``threshold``.

    Returns:
        {group: threshold}; a row is predicted positive when ``score >= threshold of its group``.
    """
    score, labels = np.asarray(score, dtype=np.float64), np.asarray(labels).astype(int)
    groups = np.asarray(groups).astype(str)
    deserving = labels == favorable

    def tpr(mask: np.ndarray, t: float) -> float:
        approved = (score[mask] >= t) if favorable == 1 else (score[mask] < t)
        return float(approved.mean()) if mask.any() else float("nan")

    target = tpr(deserving, threshold)
    chosen = {}
    for group in sorted(set(groups.tolist())):
        mask = deserving & (groups == group)
        if not mask.any():  # nobody deserving in this group on val: keep the common threshold
            chosen[group] = float(threshold)
            continue
        candidates = np.unique(np.concatenate([score[mask], np.nextafter(score[mask], np.inf), [threshold]]))
        gaps = np.array([abs(tpr(mask, t) - target) for t in candidates])
        best = np.flatnonzero(gaps <= gaps.min() + 1e-12)
        chosen[group] = float(candidates[best[np.abs(candidates[best] - threshold).argmin()]])
    return chosen


def predict_with_group_thresholds(
    score: np.ndarray, groups: np.ndarray, thresholds: dict[str, float], default: float
) -> np.ndarray:
    """Positive-class predictions with each group's own threshold (``default`` for a group not seen on val)."""
    groups = np.asarray(groups).astype(str)
    cut = np.array([thresholds.get(g, default) for g in groups])
    return (np.asarray(score) >= cut).astype(int)
