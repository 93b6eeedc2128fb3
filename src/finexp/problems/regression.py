"""``task.problem=regression``: a float target per row through the classification pipeline; MSE or Huber loss."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from finexp.problems import classification
from finexp.problems.capabilities import Capabilities, require
from finexp.problems.common import optimization
from finexp.problems.registry import Problem, register

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from finexp.data.datamodule import DataSource
    from finexp.models.init_from import InitialWeights
    from finexp.privacy import PrivacyPlan


def datamodule(
    cfg: DictConfig,
    tokenizer: PreTrainedTokenizerBase,
    source: DataSource | None = None,
    label_names: list[str] | None = None,
    privacy: PrivacyPlan | None = None,
) -> Any:
    """The classification pipeline with a float target (finexp.data.regression.RegressionDataModule)."""
    from finexp.data.regression import RegressionDataModule

    return classification.datamodule(cfg, tokenizer, source, label_names, privacy, RegressionDataModule)


def model(
    cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase, initial: InitialWeights | None = None
) -> nn.Module:
    """Encoder + pooling + a one-output head (``num_labels`` is 1: the target), with the adapter applied."""
    return classification.model(cfg, 1, tokenizer, initial)


def module(cfg: DictConfig, model: nn.Module, datamodule: Any) -> pl.LightningModule:
    """MSE/Huber loss on the target standardized with the train split's statistics (``task.loss``)."""
    from finexp.problems.regression_training import RegressionObjective
    from finexp.problems.training_module import TrainingModule

    mean, std = datamodule.target_statistics() if len(datamodule.datasets.get("train", ())) else (0.0, 1.0)
    objective = RegressionObjective(
        datamodule.label_names[0], cfg.task.loss, cfg.task.huber_delta, target_mean=mean, target_std=std
    )
    return TrainingModule(model, objective, **optimization(cfg))


def check(cfg: DictConfig) -> None:
    """``task.loss`` and ``task.huber_delta``."""
    task = cfg.task
    require(task.loss in ("mse", "huber"), "task.loss", task.loss, "choose mse or huber")
    require(task.huber_delta > 0, "task.huber_delta", task.huber_delta, "must be > 0")


PROBLEM = register(
    "regression",
    Problem(
        datamodule=datamodule,
        model=model,
        module=module,
        monitor=lambda num_labels: "val/rmse",
        report="regression",
        supports=Capabilities(mask_pii=True, fusion=True, init_from=True),
        check=check,
    ),
)
