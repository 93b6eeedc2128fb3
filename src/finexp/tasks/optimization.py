"""The optimizer and per-step schedule every finexp LightningModule builds the same way."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from finexp.optim import parameter_groups

OptimizerFactory = Callable[[list[dict]], Optimizer]
SchedulerFactory = Callable[..., LRScheduler]


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
