"""``task.problem=token_classification``: a tag per word (NER on CoNLL files, IOB1/IOB2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from finexp.problems.capabilities import Capabilities, require
from finexp.problems.common import data_source, encoder, no_initial, optimization, splits_and_batches, with_adapter
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
    """CoNLL files -> sentences of sub-word tokens, each word's tag on its first sub-token (privacy: none)."""
    from finexp.data.ner import TokenClassificationDataModule

    return TokenClassificationDataModule(
        tokenizer,
        data_source(cfg, source),
        scheme=cfg.task.scheme,
        **splits_and_batches(cfg),
        label_names=label_names,
    )


def model(
    cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase, initial: InitialWeights | None = None
) -> nn.Module:
    """Encoder + a linear head on every token, with the adapter applied."""
    from finexp.models.token_classifier import TokenClassifier

    no_initial(initial, "token_classification")
    return with_adapter(cfg, TokenClassifier(encoder(cfg, tokenizer), num_labels, dropout=cfg.model.dropout))


def module(cfg: DictConfig, model: nn.Module, datamodule: Any) -> pl.LightningModule:
    """Token cross-entropy; entity-level precision/recall/F1 (seqeval), a per-entity report in the run directory."""
    from finexp.problems.token_classification_training import TokenObjective
    from finexp.problems.training_module import TrainingModule

    objective = TokenObjective(datamodule.label_names, report_dir=cfg.paths.output_dir)
    return TrainingModule(model, objective, **optimization(cfg))


def check(cfg: DictConfig) -> None:
    """``task.scheme``: the files' tagging scheme."""
    require(cfg.task.scheme in ("IOB1", "IOB2"), "task.scheme", cfg.task.scheme, "choose IOB1 or IOB2")


PROBLEM = register(
    "token_classification",
    Problem(
        datamodule=datamodule,
        model=model,
        module=module,
        monitor=lambda num_labels: "val/f1",
        supports=Capabilities(export=True),
        check=check,
    ),
)
