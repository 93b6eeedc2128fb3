"""Turn a composed config into objects: the only place, beside the entry points, that reads a DictConfig."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from finexp.data.datamodule import ClassificationDataModule, Columns, DataSource, SplitPolicy
from finexp.models.backbone import build_encoder, build_tokenizer
from finexp.models.classifier import SequenceClassifier
from finexp.tasks.classification import SequenceClassificationModule


def _plain(node: Any) -> Any:
    """OmegaConf containers -> Python containers (peft/transformers treat ListConfig differently from list)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def tokenizer_from(cfg: DictConfig) -> PreTrainedTokenizerBase:
    m = cfg.model
    return build_tokenizer(m.tokenizer or m.name_or_path, local_files_only=m.local_files_only)


def datamodule_from(
    cfg: DictConfig,
    tokenizer: PreTrainedTokenizerBase,
    source: DataSource | None = None,
    label_names: list[str] | None = None,
) -> ClassificationDataModule:
    task, data = cfg.task, cfg.data
    serialization = _plain(task.serialization)
    phrases = serialization.pop("columns")
    return ClassificationDataModule(
        tokenizer,
        source=source or DataSource(data.rdataset, data.path, data.train_path, data.val_path, data.test_path),
        columns=Columns(
            label=task.label_column,
            text=task.text_column,
            features=_plain(task.feature_columns),
            exclude=_plain(task.exclude_columns),
            sensitive=task.sensitive_column,
            phrases=phrases,
            serializer_options=serialization,
        ),
        split=SplitPolicy(
            data.val_size, data.test_size, data.split_seed, data.max_rows, data.time_column, data.test_from
        ),
        positive_label=task.positive_label,
        max_length=data.max_length,
        batch_size=data.batch_size,
        eval_batch_size=data.eval_batch_size,
        group_by_length=data.group_by_length,
        num_workers=data.num_workers,
        cache_dir=data.cache_dir,
        seed=cfg.get("seed", 0),
        label_names=label_names,
    )


def model_from(cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase) -> SequenceClassifier:
    """The classifier with the adapter applied (what trains is decided here)."""
    m = cfg.model
    encoder = build_encoder(m.name_or_path, _plain(m.architecture), len(tokenizer), m.local_files_only)
    model = SequenceClassifier(encoder, num_labels, pooling=m.pooling, dropout=m.dropout)
    model.train()  # from_pretrained returns eval mode; Lightning keeps modes as it finds them (dropout would be off)
    apply_adapter = instantiate(cfg.adapter, _convert_="all")
    return apply_adapter(model)


def class_weights(mode: str | None, counts: list[int]) -> list[float] | None:
    """``balanced``: weight_c = n / (k * n_c), as scikit-learn defines it."""
    if mode is None:
        return None
    total, k = sum(counts), len(counts)
    return [total / (k * max(1, c)) for c in counts]


def module_from(cfg: DictConfig, model: SequenceClassifier, datamodule: ClassificationDataModule) -> pl.LightningModule:
    return SequenceClassificationModule(
        model,
        datamodule.label_names,
        optimizer=instantiate(cfg.optimizer, _convert_="all"),
        scheduler=instantiate(cfg.scheduler, _convert_="all"),
        class_weights=class_weights(cfg.task.class_weights, datamodule.class_counts()),
    )


def resolve_monitor(cfg: DictConfig, num_labels: int) -> str:
    """``task.monitor=auto`` becomes ``val/auroc`` for binary tasks and ``val/f1_macro`` otherwise."""
    if cfg.task.monitor == "auto":
        cfg.task.monitor = "val/auroc" if num_labels == 2 else "val/f1_macro"
    return cfg.task.monitor


def _instantiate_group(node: DictConfig | None) -> list[Any]:
    if not node:
        return []
    return [instantiate(entry, _convert_="all") for entry in node.values() if entry is not None and "_target_" in entry]


def callbacks_from(cfg: DictConfig) -> list[pl.Callback]:
    return _instantiate_group(cfg.get("callbacks"))


def loggers_from(cfg: DictConfig) -> list[Any]:
    return _instantiate_group(cfg.get("logger"))


def trainer_from(cfg: DictConfig, callbacks: list[pl.Callback], loggers: list[Any]) -> pl.Trainer:
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all")
