"""Hybrids for tables: a classic model's cross-fitted score, the starting point of the fusion model.

``task.hybrid.gbm_score=true`` (with ``model.fusion=concat``): before the encoder reads a table, a classic model on
the raw columns scores every row, and the score (the log-odds of the positive class) becomes one more numeric
column. ``task.hybrid.stack`` picks the model: ``gbm`` (histogram gradient boosting,
:class:`finexp.baselines.GradientBoosting`), ``logreg`` (:class:`finexp.baselines.ColumnLogReg`), ``mean`` (the
mean of both models' log-odds: an equal-weight ensemble, no weight fitted), or ``best``: both are cross-fitted on the
train split and the one whose out-of-fold scores rank the train rows better (AUROC) is stacked; val and test take no
part in the choice. The score of a train row comes from the model fitted on the
*other* folds (cross-fitting, ``task.hybrid.folds``), so the model never learns to trust an in-sample (overfitted)
score; val and test rows are scored by the model fitted on all of train, as scikit-learn's ``StackingClassifier``
does.

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

from finexp.baselines import BaselineError, ColumnLogReg, GradientBoosting

STACKS = ("gbm", "logreg", "mean", "best")  # task.hybrid.stack
MODELS = {"gbm": "gradient boosting", "logreg": "logistic regression"}
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
    """The ``stacking`` hook of the datamodule: adds ``column`` (a classic model's log-odds of the positive class).

    Args:
        folds: cross-fitting folds on the train split (>= 2).
        column: the added column's name (fused, and added to the positive logit; never serialized).
        seed: seeds the folds and the boosting's internal validation split.
        gbm: :class:`finexp.baselines.GradientBoosting` arguments (``task.hybrid.gbm``); its defaults otherwise.
        stack: ``gbm``, ``logreg`` (:class:`finexp.baselines.ColumnLogReg`, defaults), ``mean`` (the mean of
            both log-odds, each cross-fitted as above) or ``best`` (the one with the higher out-of-fold AUROC on
            train).
    """

    def __init__(
        self,
        folds: int = 5,
        column: str = "gbm_score",
        seed: int = 0,
        gbm: Mapping[str, Any] | None = None,
        stack: str = "gbm",
    ) -> None:
        if stack not in STACKS:
            raise BaselineError(f"task.hybrid.stack={stack!r} is not one of {', '.join(STACKS)}")
        self.folds = folds
        self.column = column
        self.seed = seed
        self.gbm = {"seed": seed, **dict(gbm or {})}
        self.stack = stack
        self.columns = [column]
        self.record: dict[str, Any] = {}

    def _fitter(self, name: str) -> Callable[[pd.DataFrame, np.ndarray], Any]:
        if name == "gbm":
            return lambda x, y: GradientBoosting(**self.gbm).fit(x, y)
        return lambda x, y: ColumnLogReg().fit(x, y)

    def __call__(self, splits: Any, features: Sequence[str], label: str, label_names: Sequence[str]) -> Any:
        """``splits`` (a :class:`finexp.data.splits.Splits`) with ``column`` added to each split."""
        if len(label_names) != 2:
            raise BaselineError(
                f"task.hybrid.gbm_score stacks one score, the positive class's: binary tasks only (this task has "
                f"{len(label_names)} labels); set task.hybrid.gbm_score=false"
            )
        if splits.train.empty:
            raise BaselineError(
                "task.hybrid.gbm_score: the stacked score is fitted on the train split, and this datamodule has "
                "none (finexp-eval data_path=... of a hybrid run); evaluate on the run's own test split instead"
            )
        features = [c for c in features if c != self.column]
        index = {name: i for i, name in enumerate(label_names)}
        y = splits.train[label].map(index).to_numpy()
        x = splits.train[features].reset_index(drop=True)
        candidates = ("gbm", "logreg") if self.stack in ("best", "mean") else (self.stack,)
        with threadpool_limits(limits=1, user_api="openmp"):  # see finexp.baselines.run_baseline
            out_of_fold = {
                name: log_odds(out_of_fold_scores(self._fitter(name), x, y, self.folds, self.seed)[0])
                for name in candidates
            }
            if self.stack == "mean":
                out_of_fold["mean"] = np.mean([out_of_fold[name] for name in candidates], axis=0)
            oof_auroc = {name: float(roc_auc_score(y, scores)) for name, scores in out_of_fold.items()}
            chosen = "mean" if self.stack == "mean" else max(candidates, key=lambda name: oof_auroc[name])  # ties: gbm
            members = candidates if chosen == "mean" else (chosen,)
            fitted = [self._fitter(name)(x, y) for name in members]
            scores = {"train": out_of_fold[chosen]}
            for name in ("val", "test"):
                rows = getattr(splits, name)[features].reset_index(drop=True)
                each = [log_odds(model.predict_proba(rows)[:, 1]) for model in fitted] if len(rows) else [[]]
                scores[name] = np.mean(each, axis=0)
        added = []
        for name, frame in splits.items():
            frame = frame.copy()
            frame[self.column] = np.asarray(scores[name], dtype=float) if len(frame) else []
            added.append(frame)
        model = " and ".join(MODELS[name] for name in members)
        model = f"the mean of {model}" if chosen == "mean" else model
        self.record = {
            "stacked": f"{self.column}: log-odds of {label_names[1]!r} by {model} on the raw columns, "
            "added to the positive logit around the zero-initialised fusion head (and fused as a number)",
            "stack": chosen,
            "features": list(features),
            "folds": self.folds,
            "train": f"out-of-fold: each train row scored by the model fitted on the other {self.folds - 1} folds",
            "val_test": f"scored by the model fitted on all {len(x)} train rows",
            **({"gbm": dict(self.gbm)} if "gbm" in members else {}),
            **{f"out_of_fold_auroc/{name}": value for name, value in oof_auroc.items()},
            **{f"stack_auroc/{name}": _auroc(splits, name, label, label_names, scores) for name in ("train", "val")},
        }
        return type(splits)(*added)


def _auroc(splits: Any, name: str, label: str, label_names: Sequence[str], scores: dict) -> float | None:
    truth = (getattr(splits, name)[label] == label_names[1]).to_numpy()
    if len(set(truth.tolist())) < 2:
        return None
    return float(roc_auc_score(truth, scores[name]))


def gbm_score_from(hybrid: Mapping[str, Any] | None) -> GbmScore | None:
    """The datamodule hook of ``task.hybrid`` (as a plain mapping): a :class:`GbmScore`, or None when it is off."""
    if not hybrid or not hybrid.get("gbm_score"):
        return None
    return GbmScore(hybrid["folds"], hybrid["column"], hybrid["seed"], hybrid.get("gbm"), hybrid.get("stack", "gbm"))
