"""Turn a composed config into objects: the only place, beside the entry points, that reads a DictConfig."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from finexp.data.datamodule import ClassificationDataModule, Columns, DataSource, SplitPolicy
from finexp.models.backbone import build_encoder, build_tokenizer
from finexp.models.classifier import SequenceClassifier
from finexp.privacy import PrivacyPlan, build_privacy
from finexp.tasks.classification import SequenceClassificationModule

log = logging.getLogger("finexp")


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
    privacy: PrivacyPlan | None = None,
) -> ClassificationDataModule:
    """The datamodule; ``privacy`` (training) adds label DP and Poisson sampling, PII masking applies always."""
    task, data = cfg.task, cfg.data
    mask_pii = OmegaConf.select(cfg, "privacy.mask_pii", default=False)  # absent in configs saved before masking
    masking = (privacy or privacy_from(cfg)).mask if mask_pii else None
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
            data.val_size,
            data.test_size,
            data.split_seed,
            data.max_rows,
            data.time_column,
            data.test_from,
            cv_folds=OmegaConf.select(data, "cv.folds"),  # absent in configs saved before cross-validation
            cv_fold=OmegaConf.select(data, "cv.fold", default=0),
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
        preprocess=masking,
        train_label_transform=privacy.labels if privacy is not None else None,
        train_batch_sampler=privacy.dp_sgd.batch_sampler if privacy is not None and privacy.dp_sgd else None,
    )


def privacy_from(cfg: DictConfig) -> PrivacyPlan:
    """The run's privacy pieces (``conf/privacy``): PII masker, label randomizer, DP-SGD callback."""
    return build_privacy(seed=cfg.get("seed", 0), label_column=cfg.task.label_column, **_plain(cfg.privacy))


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
    if cfg.privacy.name == "dp_sgd" and cfg.trainer.get("gradient_clip_val"):
        log.warning(
            "privacy=dp_sgd: trainer.gradient_clip_val=%s turned off; DP-SGD clips each row's gradient to "
            "privacy.max_grad_norm=%s instead",
            cfg.trainer.gradient_clip_val,
            cfg.privacy.max_grad_norm,
        )
        cfg.trainer.gradient_clip_val = None  # the saved config.yaml shows what ran
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all")
