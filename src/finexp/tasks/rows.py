"""The training, validation and test steps shared by modules that predict one target per row (regression,
multi-label): a loss per batch, one metric collection per stage, the optimizer built by ``configure_optimizers``."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MetricCollection

from finexp.tasks.optimization import OptimizerFactory, SchedulerFactory, configure_optimizers


class RowTargetModule(pl.LightningModule):
    """A subclass defines :meth:`_step` (loss and what the metrics take) and :meth:`_metric_target`.

    Args:
        model: the network being trained.
        label_names: saved in checkpoints (regression: the target column).
        metrics: cloned per stage with the prefixes ``train/``, ``val/``, ``test/``.
        optimizer: builds the optimizer from parameter groups; None for a module that only evaluates.
        scheduler: builds a per-step LR schedule from ``(optimizer, num_training_steps=...)``; None for none.
    """

    def __init__(
        self,
        model: nn.Module,
        label_names: list[str],
        metrics: MetricCollection,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.label_names = list(label_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, predictions)``; predictions are what the metric collections are updated with."""
        raise NotImplementedError

    def _metric_target(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's labels as the metric collections take them."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        if batch["labels"].numel() == 0:  # an empty Poisson-sampled batch
            return None
        loss, predictions = self._step(batch)
        self.train_metrics.update(predictions, self._metric_target(batch))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(predictions))
        return loss

    def _evaluate(self, stage: str, batch: dict[str, torch.Tensor]) -> None:
        loss, predictions = self._step(batch)
        getattr(self, f"{stage}_metrics").update(predictions, self._metric_target(batch))
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True, batch_size=len(predictions))

    def _log_epoch(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        self.log_dict(metrics.compute(), sync_dist=True)
        metrics.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> dict:
        return configure_optimizers(self, self.model, self.optimizer_factory, self.scheduler_factory)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Plain strings only, so the checkpoint still loads with torch.load(weights_only=True).
        checkpoint["finexp"] = {"label_names": list(self.label_names)}
