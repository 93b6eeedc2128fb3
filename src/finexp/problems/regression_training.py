"""What ``task.problem=regression`` trains for: one number per row, learnt on the standardized scale.

:class:`RegressionObjective` standardizes the target with the train split's mean and standard deviation (buffers
saved in every checkpoint), trains on the standardized value with MSE or Huber loss, and reports MAE, RMSE and R² on
the original scale. The model is the classification encoder + pooling + head with one output.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score

from finexp.problems.training_module import Batch, Objective, TrainingModule

LOSSES = ("mse", "huber")


def build_regression_metrics() -> MetricCollection:
    """MAE, RMSE and R², each updated with ``(prediction, target)`` on the target's original scale."""
    return MetricCollection({"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False), "r2": R2Score()})


class RegressionObjective(Objective):
    """MSE or Huber loss on the standardized target; ``module(...)`` and the metrics see the original scale.

    Args:
        target_name: the target column (saved in checkpoints as the run's single "label name").
        loss: ``mse``, or ``huber`` (less pulled by outliers: quadratic within ``huber_delta`` standard deviations
            of the target, linear beyond).
        huber_delta: the Huber threshold, in standard deviations of the target.
        target_mean: the train split's target mean; with ``target_std`` the model learns ``(y - mean) / std``.
            Registered as the module's buffers ``target_mean``/``target_std``, so an evaluation uses the training
            statistics (a checkpoint's, once loaded).
        target_std: the train split's target standard deviation.
    """

    def __init__(
        self,
        target_name: str,
        loss: str = "mse",
        huber_delta: float = 1.0,
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ) -> None:
        super().__init__([target_name])
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}: choose one of {', '.join(LOSSES)}")
        if target_std <= 0:
            raise ValueError(f"target_std must be > 0, got {target_std}")
        self.loss_name, self.huber_delta = loss, huber_delta
        self.target_mean, self.target_std = float(target_mean), float(target_std)

    def attach(self, module: TrainingModule) -> None:
        module.loss_fn = nn.MSELoss() if self.loss_name == "mse" else nn.HuberLoss(delta=self.huber_delta)
        module.register_buffer("target_mean", torch.tensor(self.target_mean))
        module.register_buffer("target_std", torch.tensor(self.target_std))

    def metrics(self) -> MetricCollection:
        return build_regression_metrics()

    def forward(self, module: TrainingModule, batch: Batch) -> torch.Tensor:
        """The model's output on the standardized scale, shape ``(batch,)``."""
        return super().forward(module, batch).squeeze(-1)

    def output(self, module: TrainingModule, raw: torch.Tensor) -> torch.Tensor:
        """Predictions on the target's original scale."""
        return raw.float() * module.target_std + module.target_mean

    def loss(self, module: TrainingModule, raw: torch.Tensor, batch: Batch) -> torch.Tensor:
        target = (batch["labels"].float() - module.target_mean) / module.target_std
        return module.loss_fn(raw.float(), target)

    def scores(self, module: TrainingModule, raw: torch.Tensor) -> torch.Tensor:
        return self.output(module, raw.detach())

    def target(self, batch: Batch) -> torch.Tensor:
        return batch["labels"].float()

    def predict(self, module: TrainingModule, raw: torch.Tensor, batch: Batch) -> dict[str, Any]:
        return {"index": batch["index"], "prediction": self.output(module, raw), "labels": batch["labels"]}

    def predictions_table(self, outputs: list[dict[str, torch.Tensor]], texts: list[str]) -> pd.DataFrame:
        """``predict`` outputs as rows in dataset order: text, target, prediction, error (finexp-eval)."""
        index = torch.cat([o["index"] for o in outputs])
        order = index.argsort()
        prediction = torch.cat([o["prediction"] for o in outputs])[order].numpy()
        target = torch.cat([o["labels"] for o in outputs])[order].float().numpy()
        name = self.label_names[0]
        return pd.DataFrame({"text": texts, name: target, "predicted": prediction, "error": prediction - target})
