"""``task.problem=long_document``: documents longer than the model, read as overlapping windows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from finexp import FinexpError
from finexp.problems import classification
from finexp.problems.capabilities import Capabilities, require
from finexp.problems.common import batching_from, class_weights, optimization
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
    """Documents read, split and labelled as for classification (untruncated), served as overlapping windows."""
    from finexp.data.windows import NO_TRUNCATION, LongDocumentDataModule

    documents = classification.datamodule(cfg, tokenizer, source, label_names, privacy=None)
    documents.max_length = NO_TRUNCATION  # windows, not truncation, bound what the model sees
    window = cfg.task.window
    return LongDocumentDataModule(
        documents,
        size=window.size,
        stride=window.stride,
        max_windows=window.max_windows,
        batching=batching_from(cfg),
    )


def model(
    cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase, initial: InitialWeights | None = None
) -> nn.Module:
    """The classifier (encoder + pooling + head) that scores each window."""
    classifier = classification.model(cfg, num_labels, tokenizer, initial)
    config = classifier.encoder.config
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions is not None and cfg.task.window.size > positions:
        raise FinexpError(f"task.window.size={cfg.task.window.size} exceeds the model's {positions} positions")
    return classifier


def module(cfg: DictConfig, model: nn.Module, datamodule: Any) -> pl.LightningModule:
    """The classification loss per window; document logits aggregated over windows (``task.window.aggregate``)."""
    from finexp.problems.long_document_training import LongDocumentModule

    return LongDocumentModule(
        model,
        datamodule.label_names,
        aggregate=cfg.task.window.aggregate,
        **optimization(cfg),
        class_weights=class_weights(cfg.task.class_weights, datamodule.class_counts()),
    )


def check(cfg: DictConfig) -> None:
    """``task.window``: window size, stride, aggregation."""
    window = cfg.task.window
    require(window.size >= 8, "task.window.size", window.size, "must be >= 8 tokens")
    require(1 <= window.stride <= window.size, "task.window.stride", window.stride, "must be in [1, size]")
    require(window.aggregate in ("mean", "max"), "task.window.aggregate", window.aggregate, "choose mean or max")
    limit = window.max_windows
    require(limit is None or limit >= 1, "task.window.max_windows", limit, "must be >= 1 or null")


PROBLEM = register(
    "long_document",
    Problem(
        datamodule=datamodule,
        model=model,
        module=module,
        monitor=classification.class_monitor,
        supports=Capabilities(cross_validation=True, class_weights=True, init_from=True, export=True),
        check=check,
    ),
)
