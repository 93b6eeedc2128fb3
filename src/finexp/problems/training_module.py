"""The one LightningModule every problem type trains with, and the :class:`Objective` strategy it takes.

:class:`TrainingModule` owns the loop: the training, validation, test and predict steps, the per-stage metric
collections (logged as ``{stage}/{metric}``), the optimizer and its per-step schedule, and the checkpoint's label
names. What differs between problem types (the loss, what the metrics are updated with, what ``predict`` returns)
is an :class:`Objective`, a small object the module calls: ``ClassificationObjective``, ``RegressionObjective``,
``MultiLabelObjective``, ``TokenObjective``, ``LanguageModelObjective``, ``DistillationObjective``, each beside the
problem type that owns it (``finexp.problems.<type>_training``). Long documents (scored per document) and generation
(scored by decoding) evaluate differently, and specialise only their evaluation.

An objective holds settings, never tensors: what a run learns or must checkpoint (a class-weighted loss, a target's
mean) it registers on the module in :meth:`Objective.attach`, under the module's own names (``loss_fn.weight``,
``target_mean``), so checkpoints keep the keys they always had and device moves reach everything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MetricCollection

from finexp.optim import parameter_groups

OptimizerFactory = Callable[[list[dict]], Optimizer]
SchedulerFactory = Callable[..., LRScheduler]
Batch = dict[str, torch.Tensor]

STAGES = ("train", "val", "test")


def configure_optimizers(
    module: pl.LightningModule,
    model: nn.Module,
    optimizer: OptimizerFactory | None,
    scheduler: SchedulerFactory | None,
) -> dict:
    """``configure_optimizers`` of a module training ``model``: parameter groups, optimizer, per-step schedule.

    Raises:
        RuntimeError: the module was built for evaluation only (no optimizer factory), or nothing trains.
    """
    if optimizer is None:
        raise RuntimeError("this module was built for evaluation only (no optimizer factory)")
    groups = parameter_groups(model)
    if not groups:
        raise RuntimeError("no parameter of the model trains; check the adapter (what trains is decided there)")
    opt = optimizer(groups)
    if scheduler is None:
        return {"optimizer": opt}
    steps = int(module.trainer.estimated_stepping_batches)
    return {
        "optimizer": opt,
        "lr_scheduler": {"scheduler": scheduler(opt, num_training_steps=max(1, steps)), "interval": "step"},
    }


class Objective:
    """What a problem type trains for: its loss, what its metrics see, what ``predict`` returns.

    The defaults fit a model mapping ``(input_ids, attention_mask[, features])`` to one output per row; a problem
    type overrides what differs. Every method gets the :class:`TrainingModule` it serves (``module.model``,
    ``module.loss_fn`` and the buffers :meth:`attach` registered).

    Attributes:
        label_names: saved in checkpoints (regression: the target column; generation: none).
        metric_stages: the stages whose metric collection is updated (``train`` too, or only ``val`` and ``test``).
        track_padding: count real and padded tokens in training and log ``train/pad_fraction`` each epoch.
    """

    metric_stages: ClassVar[tuple[str, ...]] = STAGES
    track_padding: ClassVar[bool] = False

    def __init__(self, label_names: Sequence[str]) -> None:
        self.label_names = list(label_names)

    def attach(self, module: TrainingModule) -> None:
        """Register the objective's state on ``module`` (its loss as ``loss_fn``, buffers), once, when it is built."""

    def metrics(self) -> MetricCollection | None:
        """The metric collection, cloned per stage with the prefixes ``train/``, ``val/``, ``test/``."""
        return None

    def forward(self, module: TrainingModule, batch: Batch) -> torch.Tensor:
        """The model's raw output for ``batch`` (what :meth:`loss` takes)."""
        kwargs = {} if batch.get("features") is None else {"features": batch["features"]}
        return module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)

    def output(self, module: TrainingModule, raw: torch.Tensor) -> torch.Tensor:
        """What ``module(input_ids, attention_mask)`` returns for the raw output (logits; a regression's target)."""
        return raw

    def loss(self, module: TrainingModule, raw: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The loss of a batch (validation and test; training too unless :meth:`training_loss` differs)."""
        raise NotImplementedError

    def training_loss(
        self, module: TrainingModule, raw: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss, and any of its parts to log per epoch (``{"train/soft_loss": ...}``)."""
        return self.loss(module, raw, batch), {}

    def scores(self, module: TrainingModule, raw: torch.Tensor) -> torch.Tensor:
        """What the metric collections are updated with (logits; probabilities; predictions on the target's scale)."""
        return raw.detach()

    def target(self, batch: Batch) -> torch.Tensor:
        """The batch's labels as the metric collections take them."""
        return batch["labels"]

    def predict(self, module: TrainingModule, raw: torch.Tensor, batch: Batch) -> dict[str, Any]:
        """One batch of ``predict`` output (``finexp-eval`` and ``finexp-predict`` read it)."""
        raise NotImplementedError

    def tested(self, module: TrainingModule, metrics: MetricCollection) -> None:
        """Called with the test metrics once they are computed, before they are reset (reports beside the run)."""


class TrainingModule(pl.LightningModule):
    """Trains ``model`` for ``objective``: the steps, metrics, optimizer and checkpoint every problem type shares.

    Args:
        model: the network being trained (adapter applied).
        objective: the loss, metric inputs and predictions of the problem type (:class:`Objective`).
        optimizer: builds the optimizer from parameter groups (e.g. ``functools.partial(torch.optim.AdamW,
            lr=...)``); None for a module that only evaluates.
        scheduler: builds a per-step LR schedule from ``(optimizer, num_training_steps=...)``; None for none.

    A module whose objective tabulates its predictions (every problem type but classification) has
    ``predictions_table(predict_outputs, texts) -> DataFrame``: finexp-eval's predictions.csv.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.label_names = list(objective.label_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        objective.attach(self)
        metrics = objective.metrics()
        for stage in STAGES:
            wanted = metrics is not None and stage in objective.metric_stages
            setattr(self, f"{stage}_metrics", metrics.clone(prefix=f"{stage}/") if wanted else None)
        if objective.track_padding:  # token bookkeeping for the pad-fraction and throughput figures
            self.register_buffer("_tokens", torch.zeros(2, dtype=torch.long), persistent=False)  # [real, padded]
        table = getattr(objective, "predictions_table", None)
        if table is not None:  # finexp-eval tells the problem types apart by this method (classification has none)
            self.predictions_table = table

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        features: torch.Tensor | None = None,
        raw: bool = False,
    ) -> torch.Tensor:
        """The objective's output (logits; a regression's prediction on the target's scale); ``raw``: the model's
        own output, what the loss takes (the steps run the model through here, so hooks on the module fire)."""
        # text only when `features` is None (adapters/explanations may wrap a model that takes no `features`)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "features": features}
        out = self.objective.forward(self, batch)
        return out if raw else self.objective.output(self, out)

    def model_output(self, batch: Batch) -> torch.Tensor:
        """The model's raw output for a batch, through :meth:`forward` (DP-SGD hooks the module's forward)."""
        return self(batch["input_ids"], batch["attention_mask"], batch.get("features"), raw=True)

    # ----------------------------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        if batch["labels"].numel() == 0:  # an empty Poisson-sampled batch (DP-SGD): no loss; the noisy step still runs
            return None
        raw = self.model_output(batch)
        loss, parts = self.objective.training_loss(self, raw, batch)
        if self.objective.track_padding:
            mask = batch["attention_mask"]
            self._tokens += torch.stack([mask.sum(), torch.tensor(mask.numel(), device=mask.device)])
        if self.train_metrics is not None:
            self.train_metrics.update(self.objective.scores(self, raw), self.objective.target(batch))
        n = len(raw)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        if parts:
            self.log_dict(parts, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def on_train_epoch_start(self) -> None:
        if self.objective.track_padding:
            self._tokens.zero_()

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")
        if self.objective.track_padding:
            tokens = self.all_gather(self._tokens)
            tokens = tokens.reshape(-1, 2).sum(0) if tokens.ndim > 1 else tokens
            self.log("train/pad_fraction", 1.0 - tokens[0].float() / tokens[1].clamp(min=1).float(), sync_dist=False)

    def configure_optimizers(self) -> dict:
        return configure_optimizers(self, self.model, self.optimizer_factory, self.scheduler_factory)

    # ----------------------------------------------------------------------------------------------------------
    # Validation, test, predict
    # ----------------------------------------------------------------------------------------------------------
    def _evaluate(self, stage: str, batch: Batch) -> None:
        raw = self.model_output(batch)
        loss = self.objective.loss(self, raw, batch)
        metrics = getattr(self, f"{stage}_metrics")
        if metrics is not None:
            metrics.update(self.objective.scores(self, raw), self.objective.target(batch))
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True, batch_size=len(raw))

    def _log_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        if metrics is None:
            return
        # compute() already syncs the metric states across DDP ranks; sync_dist only averages equal values (and tells
        # Lightning they are global)
        self.log_dict(metrics.compute(), sync_dist=True)
        if stage == "test":
            self.objective.tested(self, metrics)
        metrics.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        return self.objective.predict(self, self.model_output(batch), batch)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.label_names:  # plain strings only, so the checkpoint still loads with torch.load(weights_only=True)
            checkpoint["finexp"] = {"label_names": list(self.label_names)}
