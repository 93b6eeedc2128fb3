"""Hybrids for tables: gradient boosting's cross-fitted score, the starting point of the fusion model.

``task.hybrid.gbm_score=true`` (with ``model.fusion=concat``): before the encoder reads a table, histogram gradient
boosting (:class:`finexp.baselines.GradientBoosting`) scores every row on the raw columns, and the score (the
log-odds of the positive class) becomes one more numeric column. The score of a train row comes from the model
fitted on the *other* folds (cross-fitting, ``task.hybrid.folds``), so the model never learns to trust an in-sample
(overfitted) score; val and test rows are scored by the model fitted on all of train, as scikit-learn's
``StackingClassifier`` does.

The classifier adds the score to the positive logit around a zero-initialised head
(:class:`finexp.models.classifier.SequenceClassifier`, ``score_feature``): untrained, the hybrid *is* boosting, and
training fits what the text and the numbers add to boosting's log-odds (the residual).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from finexp.baselines import BaselineError, GradientBoosting

EPS = 1e-4  # probabilities are clipped to [EPS, 1 - EPS] before the log-odds: |score| <= 9.2


def log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def out_of_fold_scores(
    fit: Callable[[pd.DataFrame, np.ndarray], Any],
    x: pd.DataFrame,
    y: np.ndarray,
    folds: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitted probabilities of class 1: row ``i`` is scored by the model fitted on the folds without it.

    Args:
        fit: ``(x, y) -> model`` with ``predict_proba``.
        x: the train rows.
        y: their labels (0/1).
        folds: stratified folds (seeded by ``seed``).

    Returns:
        ``(scores, fold)``: each row's probability and the index of the fold it was held out in.
    """
    scores = np.full(len(x), np.nan)
    fold_of = np.full(len(x), -1)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (fit_rows, held_out) in enumerate(splitter.split(np.zeros(len(y)), y)):
        model = fit(x.iloc[fit_rows], y[fit_rows])
        scores[held_out] = model.predict_proba(x.iloc[held_out])[:, 1]
        fold_of[held_out] = k
    return scores, fold_of


class GbmScore:
    """The ``stacking`` hook of the datamodule: adds ``column`` (boosting's log-odds of the positive class).

    Args:
        folds: cross-fitting folds on the train split (>= 2).
        column: the added column's name (fused, and added to the positive logit; never serialized).
        seed: seeds the folds and the boosting's internal validation split.
        gbm: :class:`finexp.baselines.GradientBoosting` arguments (``task.hybrid.gbm``); its defaults otherwise.
    """

    def __init__(self, folds: int = 5, column: str = "gbm_score", seed: int = 0, gbm: Mapping[str, Any] | None = None):
        self.folds = folds
        self.column = column
        self.seed = seed
        self.gbm = {"seed": seed, **dict(gbm or {})}
        self.columns = [column]
        self.record: dict[str, Any] = {}

    def _fit(self, x: pd.DataFrame, y: np.ndarray) -> GradientBoosting:
        return GradientBoosting(**self.gbm).fit(x, y)

    def __call__(self, splits: Any, features: Sequence[str], label: str, label_names: Sequence[str]) -> Any:
        """``splits`` (a :class:`finexp.data.splits.Splits`) with ``column`` added to each split."""
        if len(label_names) != 2:
            raise BaselineError(
                f"task.hybrid.gbm_score stacks one score, the positive class's: binary tasks only (this task has "
                f"{len(label_names)} labels); set task.hybrid.gbm_score=false"
            )
        if splits.train.empty:
            raise BaselineError(
                "task.hybrid.gbm_score: the boosting score is fitted on the train split, and this datamodule has "
                "none (finexp-eval data_path=... of a hybrid run); evaluate on the run's own test split instead"
            )
        features = [c for c in features if c != self.column]
        index = {name: i for i, name in enumerate(label_names)}
        y = splits.train[label].map(index).to_numpy()
        x = splits.train[features].reset_index(drop=True)
        with threadpool_limits(limits=1, user_api="openmp"):  # see finexp.baselines.run_baseline
            train_p, _ = out_of_fold_scores(self._fit, x, y, self.folds, self.seed)
            full = self._fit(x, y)
            probs = {"train": train_p}
            for name in ("val", "test"):
                frame = getattr(splits, name)
                probs[name] = full.predict_proba(frame[features].reset_index(drop=True))[:, 1] if len(frame) else []
        added = []
        for name, frame in splits.items():
            frame = frame.copy()
            frame[self.column] = log_odds(np.asarray(probs[name], dtype=float)) if len(frame) else []
            added.append(frame)
        self.record = {
            "stacked": f"{self.column}: log-odds of {label_names[1]!r} by gradient boosting on the raw columns, "
            "added to the positive logit around the zero-initialised fusion head (and fused as a number)",
            "features": list(features),
            "folds": self.folds,
            "train": f"out-of-fold: each train row scored by the model fitted on the other {self.folds - 1} folds",
            "val_test": f"scored by the model fitted on all {len(x)} train rows",
            "gbm": dict(self.gbm),
            **{f"gbm_auroc/{name}": _auroc(splits, name, label, label_names, probs) for name in ("train", "val")},
        }
        return type(splits)(*added)


def _auroc(splits: Any, name: str, label: str, label_names: Sequence[str], probs: dict) -> float | None:
    truth = (getattr(splits, name)[label] == label_names[1]).to_numpy()
    if len(set(truth.tolist())) < 2:
        return None
    return float(roc_auc_score(truth, probs[name]))


def gbm_score_from(hybrid: Mapping[str, Any] | None) -> GbmScore | None:
    """The datamodule hook of ``task.hybrid`` (as a plain mapping): a :class:`GbmScore`, or None when it is off."""
    if not hybrid or not hybrid.get("gbm_score"):
        return None
    return GbmScore(hybrid["folds"], hybrid["column"], hybrid["seed"], hybrid.get("gbm"))
