"""``task.problem=multilabel``: a set of labels per row (one cell with a separator, or 0/1 columns); BCE loss."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from finexp.problems import classification
from finexp.problems.capabilities import Capabilities, ConfigError
from finexp.problems.common import optimization, plain
from finexp.problems.registry import Problem, register

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from finexp.data.datamodule import DataSource
    from finexp.privacy import PrivacyPlan


def datamodule(
    cfg: DictConfig,
    tokenizer: PreTrainedTokenizerBase,
    source: DataSource | None = None,
    label_names: list[str] | None = None,
    privacy: PrivacyPlan | None = None,
) -> Any:
    """The classification pipeline with label sets (``task.label_separator`` or ``task.label_columns``)."""
    from finexp.data.multilabel import MultiLabelDataModule

    make = functools.partial(
        MultiLabelDataModule, separator=cfg.task.label_separator, label_columns=plain(cfg.task.label_columns)
    )
    return classification.datamodule(cfg, tokenizer, source, label_names, privacy, make)


def module(cfg: DictConfig, model: nn.Module, datamodule: Any) -> pl.LightningModule:
    """One sigmoid output per label, binary cross-entropy; per-label and micro/macro F1."""
    from finexp.problems.multilabel_training import MultiLabelObjective
    from finexp.problems.training_module import TrainingModule

    return TrainingModule(model, MultiLabelObjective(datamodule.label_names), **optimization(cfg))


def check(cfg: DictConfig) -> None:
    """Exactly one way of reading the label sets."""
    given = [key for key in ("label_separator", "label_columns") if cfg.task[key]]
    if len(given) != 1:
        raise ConfigError(
            "task.problem=multilabel needs exactly one of task.label_separator (several labels in one cell, "
            f"e.g. '|') and task.label_columns (one 0/1 column per label); given: {given or 'neither'}"
        )


PROBLEM = register(
    "multilabel",
    Problem(
        datamodule=datamodule,
        model=classification.model,
        module=module,
        monitor=lambda num_labels: "val/f1_macro",
        supports=Capabilities(mask_pii=True, fusion=True, init_from=True),
        check=check,
    ),
)
