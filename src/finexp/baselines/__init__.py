"""Classic baselines in finexp's harness: what a bank uses today, on the same splits and with the same metrics.

``model=tfidf_logreg`` (text, or a table's serialized rows: word and character n-gram TF-IDF, logistic regression),
``model=logreg`` (tables: logistic regression on the raw columns, one-hot categories and standardized numbers) and
``model=gbm`` (tables: gradient boosting on the raw columns, before serialization). ``finexp-train`` dispatches on
``model.kind: baseline`` to :func:`run_baseline`, which fits on the datamodule's train split and reports
``val/...`` and ``test/...`` under the names the fine-tuned models use.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import joblib
import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline, make_union
from sklearn.utils.class_weight import compute_sample_weight
from threadpoolctl import threadpool_limits

from finexp import FinexpError
from finexp.callbacks import PeakRssSampler
from finexp.problems.classification_training import build_classification_metrics


class BaselineError(FinexpError):
    """A baseline that cannot run on this task."""


class TfidfLogReg:
    """Word and character n-gram TF-IDF features, then L2-regularised logistic regression.

    Args:
        word_ngrams: (min, max) word n-gram lengths.
        char_ngrams: (min, max) character n-gram lengths (within word boundaries).
        max_features: vocabulary cap per analyzer (most frequent first).
        C: inverse regularisation strength.
        max_iter: solver iterations.
    """

    input: ClassVar[str] = "text"

    def __init__(
        self,
        word_ngrams: Sequence[int] = (1, 2),
        char_ngrams: Sequence[int] = (2, 5),
        max_features: int | None = 50_000,
        C: float = 1.0,  # scikit-learn's name for it
        max_iter: int = 1000,
    ) -> None:
        features = make_union(
            TfidfVectorizer(ngram_range=tuple(word_ngrams), max_features=max_features, sublinear_tf=True),
            TfidfVectorizer(
                analyzer="char_wb", ngram_range=tuple(char_ngrams), max_features=max_features, sublinear_tf=True
            ),
        )
        self.pipeline = make_pipeline(features, LogisticRegression(C=C, max_iter=max_iter))

    def fit(self, x: list[str], y: np.ndarray, sample_weight: np.ndarray | None = None) -> TfidfLogReg:
        self.pipeline.fit(x, y, logisticregression__sample_weight=sample_weight)
        return self

    def predict_proba(self, x: list[str]) -> np.ndarray:
        return self.pipeline.predict_proba(x)

    def num_parameters(self) -> int:
        model = self.pipeline[-1]
        return int(model.coef_.size + model.intercept_.size)


class ColumnLogReg:
    """L2-regularised logistic regression on the raw table columns: the scorecard-style baseline.

    Numeric columns are median-imputed (with a missing-value indicator) and standardized; text columns become
    one-hot categories (missing is a category of its own; a value unseen in training gets no column).

    Args:
        C: inverse regularisation strength.
        max_iter: solver iterations.
        min_frequency: categories rarer than this in the train split share one "infrequent" column.
    """

    input: ClassVar[str] = "table"

    def __init__(self, C: float = 1.0, max_iter: int = 2000, min_frequency: int = 1) -> None:
        self.C, self.max_iter, self.min_frequency = C, max_iter, min_frequency
        self.pipeline: Any = None
        self.text_columns: list[str] = []

    def fit(self, x: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None = None) -> ColumnLogReg:
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        numeric = [c for c in x.columns if pd.api.types.is_numeric_dtype(x[c])]
        text = self.text_columns = [c for c in x.columns if c not in numeric]
        columns = ColumnTransformer(
            [
                (
                    "numbers",
                    make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()),
                    numeric,
                ),
                (
                    "categories",
                    make_pipeline(
                        SimpleImputer(strategy="constant", fill_value="(missing)"),
                        OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=self.min_frequency),
                    ),
                    text,
                ),
            ]
        )
        self.pipeline = make_pipeline(columns, LogisticRegression(C=self.C, max_iter=self.max_iter))
        self.pipeline.fit(self._text(x, text), y, logisticregression__sample_weight=sample_weight)
        return self

    @staticmethod
    def _text(x: pd.DataFrame, text: list[str]) -> pd.DataFrame:
        """Text columns as strings (one dtype per column for the encoder); a missing value stays NaN (imputed)."""
        frame = x.copy()
        for c in text:
            frame[c] = [str(v) if pd.notna(v) else np.nan for v in frame[c]]
        return frame

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        if self.pipeline is None:
            raise BaselineError("ColumnLogReg.predict_proba before fit")
        return self.pipeline.predict_proba(self._text(x, self.text_columns))

    def num_parameters(self) -> int:
        model = self.pipeline[-1]
        return int(model.coef_.size + model.intercept_.size)


class GradientBoosting:
    """Histogram gradient boosting on the raw table columns (text columns become categories).

    Args:
        max_iter: boosting rounds (trees per class).
        learning_rate: shrinkage per tree.
        max_leaf_nodes: leaves per tree.
        min_samples_leaf: rows per leaf at least.
        l2_regularization: L2 penalty on leaf values.
        early_stopping: stop when an internal 10% validation split stops improving.
        seed: random state of the internal split.
    """

    input: ClassVar[str] = "table"

    def __init__(
        self,
        max_iter: int = 300,
        learning_rate: float = 0.05,
        max_leaf_nodes: int = 31,
        min_samples_leaf: int = 20,
        l2_regularization: float = 0.0,
        early_stopping: bool = True,
        seed: int = 0,
    ) -> None:
        self.model = HistGradientBoostingClassifier(
            max_iter=max_iter,
            learning_rate=learning_rate,
            max_leaf_nodes=max_leaf_nodes,
            min_samples_leaf=min_samples_leaf,
            l2_regularization=l2_regularization,
            early_stopping=early_stopping,
            categorical_features="from_dtype",
            random_state=seed,
        )
        self.categories: dict[str, list[Any]] = {}

    def _encode(self, frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        for column, categories in self.categories.items():  # unseen values become missing, not an error
            frame[column] = pd.Categorical(frame[column], categories=categories)
        return frame

    def fit(self, x: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None = None) -> GradientBoosting:
        text = [c for c in x.columns if not pd.api.types.is_numeric_dtype(x[c])]
        self.categories = {c: sorted(x[c].dropna().astype(str).unique().tolist()) for c in text}
        frame = x.copy()
        for c in text:
            frame[c] = frame[c].astype("string")
        self.model.fit(self._encode(frame), y, sample_weight=sample_weight)
        return self

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        frame = x.copy()
        for c in self.categories:
            frame[c] = frame[c].astype("string")
        return self.model.predict_proba(self._encode(frame))

    def num_parameters(self) -> int:
        """Tree nodes (a split or a leaf value each)."""
        return int(sum(len(tree.nodes) for trees in self.model._predictors for tree in trees))


def _inputs(baseline: Any, datamodule: Any, split: str) -> Any:
    if baseline.input == "text":
        return datamodule.texts[split]
    columns = datamodule.serialized_columns
    if not columns:
        raise BaselineError(
            f"{type(baseline).__name__} learns from table columns, and this task reads a text column; "
            "use model=tfidf_logreg for text"
        )
    return getattr(datamodule.splits, split)[columns].reset_index(drop=True)


def _metrics(probs: np.ndarray, labels: torch.Tensor, num_labels: int, stage: str) -> dict[str, float]:
    logits = torch.log(torch.as_tensor(probs, dtype=torch.float32).clamp_min(1e-12))  # softmax(log p) = p
    metrics = build_classification_metrics(num_labels).clone(prefix=f"{stage}/")
    metrics.update(logits, labels)
    out = {k: float(v) for k, v in metrics.compute().items()}
    out[f"{stage}/loss"] = float(torch.nn.functional.nll_loss(logits, labels))
    return out


def run_baseline(
    baseline: Any,
    datamodule: Any,
    output_dir: str | Path,
    class_weights: str | None = None,
    test: bool = True,
) -> dict[str, float]:
    """Fit ``baseline`` on the train split; the val/test metrics and the run's costs, as finexp names them.

    Args:
        baseline: a :class:`TfidfLogReg`, :class:`GradientBoosting` or anything with ``input`` ("text" or "table"),
            ``fit(x, y, sample_weight)``, ``predict_proba(x)`` and ``num_parameters()``.
        datamodule: a prepared :class:`~finexp.data.datamodule.ClassificationDataModule` (same splits as the
            fine-tuned models).
        output_dir: the run directory; the fitted model is saved to ``model.joblib`` (a pickle: load only your own).
        class_weights: ``balanced`` weighs rows by inverse class frequency, as ``task.class_weights``.
        test: also score the test split.
    """
    num_labels = datamodule.num_labels
    y_train = datamodule.datasets["train"].labels.numpy()
    weights = compute_sample_weight("balanced", y_train) if class_weights == "balanced" else None
    x_train = _inputs(baseline, datamodule, "train")
    sampler = PeakRssSampler(0.02)
    sampler.start()
    started = time.perf_counter()
    # scikit-learn's OpenMP pool and torch's (already spun up by earlier runs in this process) oversubscribe the
    # cores and slow boosting ~10x; one scikit-learn thread is faster on small tables.
    with threadpool_limits(limits=1, user_api="openmp"):
        try:
            baseline.fit(x_train, y_train, sample_weight=weights)
        finally:
            fit_s = time.perf_counter() - started
            peak = sampler.stop()
        metrics: dict[str, float] = {}
        for stage in ("val", "test") if test else ("val",):
            probs = baseline.predict_proba(_inputs(baseline, datamodule, stage))
            metrics |= _metrics(probs, datamodule.datasets[stage].labels, num_labels, stage)
    path = Path(output_dir) / "model.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(baseline, path)
    n = baseline.num_parameters()
    return {
        "time/fit_s": fit_s,
        "time/epoch_s": fit_s,
        "throughput/train_samples_per_s": len(y_train) / max(fit_s, 1e-9),
        "memory/peak_mb": peak / 2**20,
        "checkpoint/size_mb": path.stat().st_size / 2**20,
        "params/total": n,
        "params/trainable": n,
        "params/trainable_pct": 100.0,
        **dict(sorted(metrics.items())),
    }
