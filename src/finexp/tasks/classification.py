"""Sequence classification (binary and multi-class) as a LightningModule."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from finexp.optim import parameter_groups
from finexp.tasks.metrics import build_classification_metrics

OptimizerFactory = Callable[[list[dict]], Optimizer]
SchedulerFactory = Callable[..., LRScheduler]


class SequenceClassificationModule(pl.LightningModule):
    """Trains a :class:`~finexp.models.classifier.SequenceClassifier` with cross-entropy.

    Args:
        model: maps ``(input_ids, attention_mask)`` to logits.
        label_names: class names, index = label id (binary: index 1 is the positive class).
        optimizer: builds the optimizer from parameter groups (e.g. ``functools.partial(torch.optim.AdamW, lr=...)``);
            None for a module that only evaluates.
        scheduler: builds a per-step LR schedule from ``(optimizer, num_training_steps=...)``; None for none.
        class_weights: optional cross-entropy weight per class.

    A model with a ``loss(logits, labels)`` method is trained with that instead of cross-entropy.
    """

    def __init__(
        self,
        model: nn.Module,
        label_names: list[str],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.label_names = list(label_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        weight = torch.tensor(class_weights, dtype=torch.float) if class_weights is not None else None
        self.loss_fn = nn.CrossEntropyLoss(weight=weight)
        metrics = build_classification_metrics(len(label_names))
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # Token bookkeeping for the pad-fraction and throughput figures.
        self.register_buffer("_tokens", torch.zeros(2, dtype=torch.long), persistent=False)  # [real, padded]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        if features is None:  # text only (adapters/explanations may wrap a model that takes no `features`)
            return self.model(input_ids=input_ids, attention_mask=attention_mask)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, features=features)

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"], batch.get("features"))
        loss = getattr(self.model, "loss", None)  # a model with its own loss (method=generative: the LM loss)
        loss_fn = loss if callable(loss) else self.loss_fn
        return loss_fn(logits, batch["labels"]), logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        if batch["labels"].numel() == 0:  # an empty Poisson-sampled batch (DP-SGD): no loss; the noisy step still runs
            return None
        loss, logits = self._step(batch)
        mask = batch["attention_mask"]
        self._tokens += torch.stack([mask.sum(), torch.tensor(mask.numel(), device=mask.device)])
        self.train_metrics.update(logits.detach(), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(logits))
        return loss

    def on_train_epoch_start(self) -> None:
        self._tokens.zero_()

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute(), sync_dist=True)
        self.train_metrics.reset()
        tokens = self.all_gather(self._tokens)
        tokens = tokens.reshape(-1, 2).sum(0) if tokens.ndim > 1 else tokens
        self.log("train/pad_fraction", 1.0 - tokens[0].float() / tokens[1].clamp(min=1).float(), sync_dist=False)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._step(batch)
        self.val_metrics.update(logits, batch["labels"])
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(logits))

    def on_validation_epoch_end(self) -> None:
        # compute() already syncs the metric states across DDP ranks; sync_dist only averages equal values (and
        # tells Lightning they are global)
        self.log_dict(self.val_metrics.compute(), prog_bar=False, sync_dist=True)
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._step(batch)
        self.test_metrics.update(logits, batch["labels"])
        self.log("test/loss", loss, sync_dist=True, batch_size=len(logits))

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_metrics.reset()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"], batch.get("features"))
        return {"index": batch["index"], "probs": logits.softmax(-1), "labels": batch["labels"]}

    def configure_optimizers(self) -> dict:
        if self.optimizer_factory is None:
            raise RuntimeError("this module was built for evaluation only (no optimizer factory)")
        optimizer = self.optimizer_factory(parameter_groups(self.model))
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        steps = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, num_training_steps=max(1, steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Plain strings only, so the checkpoint still loads with torch.load(weights_only=True).
        checkpoint["finexp"] = {"label_names": list(self.label_names)}
