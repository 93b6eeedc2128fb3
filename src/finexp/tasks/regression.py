"""Regression (``task.problem=regression``): one number per row (an interest rate, a loss amount).

The data pipeline is the classification one (:class:`~finexp.data.datamodule.ClassificationDataModule`) with a float
target instead of a class id: :class:`RegressionDataModule` overrides only what a label is. The model is the same
encoder + pooling + head with one output. :class:`RegressionModule` standardizes the target with the train split's
mean and standard deviation (buffers saved in every checkpoint), trains on the standardized value with MSE or Huber
loss, and reports MAE, RMSE and R² on the original scale.
"""

from __future__ import annotations

import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score

from finexp.data.datamodule import ClassificationDataModule
from finexp.data.sources import DataError
from finexp.data.splits import Splits
from finexp.tasks.optimization import OptimizerFactory, SchedulerFactory
from finexp.tasks.rows import RowTargetModule

LOSSES = ("mse", "huber")


class RegressionDataModule(ClassificationDataModule):
    """Rows -> one float target each (``task.label_column`` must hold numbers).

    Splits are stratified on deciles of the target (fewer bins on small data), so every split covers the range;
    ``label_names`` is ``[label column]`` and ``num_labels`` 1. Arguments are those of
    :class:`~finexp.data.datamodule.ClassificationDataModule` (``positive_label`` and the label-DP hook do not apply).
    """

    max_bins = 10  # target quantile bins the splits are stratified on

    def _read_labels(self, frame: pd.DataFrame, origin: str) -> pd.DataFrame:
        column = self.columns.label
        self._check_missing(frame, column, origin, "label")
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            examples = frame.loc[bad, column].astype(str).unique()[:3].tolist()
            raise DataError(
                f"{origin}: task.label_column={column!r} must hold numbers for task.problem=regression, but "
                f"{int(bad.sum())} row(s) do not (e.g. {examples}); choose a numeric column or "
                "task.problem=classification"
            )
        frame[column] = values.astype(float)
        return frame

    def _split_off(self, frame: pd.DataFrame, fraction: float, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        n_split = round(len(frame) * fraction)
        if n_split < 1 or len(frame) - n_split < 1:
            raise DataError(f"cannot make the {what} split: {len(frame)} rows leave {n_split} for it")
        bins = min(self.max_bins, n_split, len(frame) - n_split, len(frame) // 2)
        strata = None
        if bins >= 2:  # rank first: ties (many equal rates) would otherwise merge bins
            strata = pd.qcut(frame[self.columns.label].rank(method="first"), bins, labels=False)
        rest, split = train_test_split(frame, test_size=n_split, random_state=self.split.seed, stratify=strata)
        return rest.reset_index(drop=True), split.reset_index(drop=True)

    def _label_order(self, train_labels: pd.Series) -> list[str]:
        if train_labels.nunique() < 2:
            raise DataError(f"the train split's target {self.columns.label!r} is constant; nothing to regress")
        return [self.columns.label]

    def _check_labels(self, splits: Splits) -> None:
        """Numbers were checked when read; any value is a valid target."""

    def _targets(self, frame: pd.DataFrame) -> list[float]:
        return frame[self.columns.label].astype(float).tolist()

    def target_statistics(self) -> tuple[float, float]:
        """Mean and standard deviation of the train split's target (what the module standardizes with)."""
        targets = self.datasets["train"].labels
        if targets.numel() < 2:
            raise DataError("the train split needs at least two rows to standardize the target")
        return float(targets.mean()), float(targets.std(unbiased=False).clamp(min=1e-12))


def build_regression_metrics() -> MetricCollection:
    """MAE, RMSE and R², each updated with ``(prediction, target)`` on the target's original scale."""
    return MetricCollection({"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False), "r2": R2Score()})


class RegressionModule(RowTargetModule):
    """Trains a one-output :class:`~finexp.models.classifier.SequenceClassifier` on a standardized target.

    Args:
        model: maps ``(input_ids, attention_mask[, features])`` to ``(batch, 1)`` outputs.
        target_name: the target column (saved in checkpoints as the run's single "label name").
        optimizer: builds the optimizer from parameter groups; None for a module that only evaluates.
        scheduler: builds a per-step LR schedule from ``(optimizer, num_training_steps=...)``; None for none.
        loss: ``mse``, or ``huber`` (less pulled by outliers: quadratic within ``huber_delta`` standard deviations
            of the target, linear beyond).
        huber_delta: the Huber threshold, in standard deviations of the target.
        target_mean: the train split's target mean; with ``target_std`` the model learns
            ``(y - mean) / std``. Saved as buffers, so an evaluation uses the training statistics.
        target_std: the train split's target standard deviation.
    """

    def __init__(
        self,
        model: nn.Module,
        target_name: str,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        loss: str = "mse",
        huber_delta: float = 1.0,
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ) -> None:
        super().__init__(model, [target_name], build_regression_metrics(), optimizer, scheduler)
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}: choose one of {', '.join(LOSSES)}")
        if target_std <= 0:
            raise ValueError(f"target_std must be > 0, got {target_std}")
        self.loss_fn = nn.MSELoss() if loss == "mse" else nn.HuberLoss(delta=huber_delta)
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predictions on the target's original scale, shape ``(batch,)``."""
        return self._destandardize(self._raw(input_ids, attention_mask, features))

    def _raw(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor | None
    ) -> torch.Tensor:
        kwargs = {} if features is None else {"features": features}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).squeeze(-1)

    def _destandardize(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.float() * self.target_std + self.target_mean

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self._raw(batch["input_ids"], batch["attention_mask"], batch.get("features"))
        target = (batch["labels"].float() - self.target_mean) / self.target_std
        return self.loss_fn(raw.float(), target), self._destandardize(raw.detach())

    def _metric_target(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["labels"].float()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        prediction = self(batch["input_ids"], batch["attention_mask"], batch.get("features"))
        return {"index": batch["index"], "prediction": prediction, "labels": batch["labels"]}

    def predictions_table(self, outputs: list[dict[str, torch.Tensor]], texts: list[str]) -> pd.DataFrame:
        """``predict`` outputs as rows in dataset order: text, target, prediction, error (finexp-eval)."""
        index = torch.cat([o["index"] for o in outputs])
        order = index.argsort()
        prediction = torch.cat([o["prediction"] for o in outputs])[order].numpy()
        target = torch.cat([o["labels"] for o in outputs])[order].float().numpy()
        name = self.label_names[0]
        return pd.DataFrame({"text": texts, name: target, "predicted": prediction, "error": prediction - target})
