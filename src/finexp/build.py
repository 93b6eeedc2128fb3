"""Turn a composed config into objects: the only place, beside the entry points, that reads a DictConfig."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import PreTrainedTokenizerBase

from finexp import FinexpError
from finexp.data.datamodule import ClassificationDataModule, Columns, DataSource, SplitPolicy
from finexp.adapters.checkpoint import TrainableOnlyCheckpoint
from finexp.data.few_shot import SamplingPolicy
from finexp.methods.setfit import SetFit
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
) -> Any:
    """The datamodule of the run's problem type; ``privacy`` (training) adds label DP and Poisson sampling.

    ``source`` replaces the config's data (``finexp-eval data_path=...``); ``label_names`` fixes the label order of a
    trained model.
    """
    return problem_of(cfg).datamodule(cfg, tokenizer, source, label_names, privacy)


def classification_datamodule(
    cfg: DictConfig,
    tokenizer: PreTrainedTokenizerBase,
    source: DataSource | None = None,
    label_names: list[str] | None = None,
    privacy: PrivacyPlan | None = None,
) -> ClassificationDataModule:
    """Rows (a text column, or table rows serialized to text) -> one label each; PII masking applies always."""
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
        sampling=sampling_from(cfg),
    )


def sampling_from(cfg: DictConfig) -> SamplingPolicy:
    """The few-shot / reduced-data policy (``data.k_shot``, ``train_fraction``, ``train_size``, ``k_shot_seed``)."""
    data = cfg.data
    return SamplingPolicy(  # select: absent in configs saved before few-shot sampling existed
        k_shot=OmegaConf.select(data, "k_shot"),
        train_fraction=OmegaConf.select(data, "train_fraction"),
        train_size=OmegaConf.select(data, "train_size"),
        seed=OmegaConf.select(data, "k_shot_seed", default=cfg.get("seed", 0)),
    )


def privacy_from(cfg: DictConfig) -> PrivacyPlan:
    """The run's privacy pieces (``conf/privacy``): PII masker, label randomizer, DP-SGD callback."""
    return build_privacy(seed=cfg.get("seed", 0), label_column=cfg.task.label_column, **_plain(cfg.privacy))


def model_from(cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
    """The problem type's model with the adapter applied (what trains is decided here)."""
    return problem_of(cfg).model(cfg, num_labels, tokenizer)


def classification_model(cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase) -> SequenceClassifier:
    """Encoder + pooling + linear head over ``num_labels`` outputs, with the adapter applied."""
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


def module_from(cfg: DictConfig, model: nn.Module, datamodule: Any) -> pl.LightningModule:
    """The problem type's LightningModule: loss, metrics, optimizer and schedule around ``model``."""
    if OmegaConf.select(cfg, "distill.teacher"):
        return distillation_module(cfg, model, datamodule)
    return problem_of(cfg).module(cfg, model, datamodule)


def distillation_module(
    cfg: DictConfig, model: SequenceClassifier, datamodule: ClassificationDataModule
) -> pl.LightningModule:
    """``distill.teacher=CKPT``: the student trains on the teacher's soft targets and the hard labels.

    The teacher (rebuilt from its run's config, like ``finexp-eval`` does) labels the train split once, here, before
    training; with ``distill.cache`` the logits go to ``<run dir>/teacher_logits.pt``, keyed by the teacher file and
    the train split's fingerprint, and a resumed run reads them back instead of loading the teacher.
    """
    from finexp.evaluate import find_run_dir
    from finexp.export import load_classifier  # finexp.export builds its models through this module
    from finexp.tasks.distillation import DistillationModule, cached_teacher_logits, compute_teacher_logits

    distill, labels = cfg.distill, datamodule.label_names
    ckpt = Path(distill.teacher).expanduser().resolve()
    if not ckpt.is_file():
        raise FinexpError(f"distill.teacher={distill.teacher}: checkpoint not found ({ckpt})")
    stat = ckpt.stat()
    key = {
        "teacher": f"{ckpt}:{stat.st_size}:{stat.st_mtime_ns}",
        "train_fingerprint": datamodule.fingerprints["train"],
        "labels": ",".join(labels),
    }

    def label_train_split() -> torch.Tensor:
        teacher, tokenizer, teacher_labels, _ = load_classifier(ckpt)
        if sorted(teacher_labels) != sorted(labels):
            raise FinexpError(
                f"distill.teacher={distill.teacher} predicts {teacher_labels}, but this task's labels are {labels}"
            )
        max_length = OmegaConf.load(find_run_dir(ckpt) / "config.yaml").data.max_length
        texts = datamodule.texts["train"]
        started = time.perf_counter()
        logits = compute_teacher_logits(teacher, tokenizer, texts, max_length, distill.teacher_batch_size)
        log.info("distillation: the teacher labelled %d train rows in %.1fs", len(texts), time.perf_counter() - started)
        return logits[:, [teacher_labels.index(name) for name in labels]]  # columns in the student's label order

    cache = Path(cfg.paths.output_dir) / "teacher_logits.pt" if distill.cache else None
    return DistillationModule(
        model,
        labels,
        cached_teacher_logits(cache, key, label_train_split),
        temperature=distill.temperature,
        alpha=distill.alpha,
        optimizer=instantiate(cfg.optimizer, _convert_="all"),
        scheduler=instantiate(cfg.scheduler, _convert_="all"),
        class_weights=class_weights(cfg.task.class_weights, datamodule.class_counts()),
    )


def classification_module(
    cfg: DictConfig, model: SequenceClassifier, datamodule: ClassificationDataModule
) -> pl.LightningModule:
    return SequenceClassificationModule(
        model,
        datamodule.label_names,
        optimizer=instantiate(cfg.optimizer, _convert_="all"),
        scheduler=instantiate(cfg.scheduler, _convert_="all"),
        class_weights=class_weights(cfg.task.class_weights, datamodule.class_counts()),
    )


def resolve_monitor(cfg: DictConfig, num_labels: int) -> str:
    """``task.monitor=auto`` becomes the problem type's primary validation metric (classification: ``val/auroc``
    for binary tasks, ``val/f1_macro`` otherwise)."""
    if cfg.task.monitor == "auto":
        cfg.task.monitor = problem_of(cfg).monitor(num_labels)
    return cfg.task.monitor


def _instantiate_group(node: DictConfig | None) -> list[Any]:
    if not node:
        return []
    return [instantiate(entry, _convert_="all") for entry in node.values() if entry is not None and "_target_" in entry]


def callbacks_from(cfg: DictConfig) -> list[pl.Callback]:
    callbacks = _instantiate_group(cfg.get("callbacks"))
    if OmegaConf.select(cfg, "method.name") == "setfit":
        for callback in callbacks:
            if isinstance(callback, TrainableOnlyCheckpoint) and callback.enabled:
                # stage 1 changed the (then frozen) encoder: its weights exist in no file, so checkpoints keep them
                log.info("method=setfit: full checkpoints (the contrastively tuned encoder is part of the model)")
                callback.enabled = False
    return callbacks


def method_from(cfg: DictConfig) -> SetFit | None:
    """The few-shot method of ``conf/method`` (None: plain fine-tuning)."""
    method = _plain(cfg.get("method")) or {"name": "finetune"}
    if method.pop("name") != "setfit":
        return None
    return SetFit(**method)


def stage_trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``Trainer`` arguments for an extra, single-device training stage (SetFit's stage 1), taken from ``trainer``."""
    t = cfg.trainer
    return {
        "accelerator": t.get("accelerator", "auto"),
        "devices": 1,
        "precision": t.get("precision", "32-true"),
        "deterministic": t.get("deterministic", False),
        "gradient_clip_val": t.get("gradient_clip_val"),
        "enable_progress_bar": t.get("enable_progress_bar", True),
        "default_root_dir": t.get("default_root_dir"),
    }


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


# --------------------------------------------------------------------------------------------------------------
# Problem types: ``task.problem`` picks how data, model and LightningModule are built. A new problem type is one
# module under finexp/tasks (its LightningModule, and its datamodule if the classification one does not fit) plus
# an entry here; a new task of an existing type is only a conf/task/*.yaml.
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """How one problem type builds a run.

    Attributes:
        datamodule: ``(cfg, tokenizer, source, label_names, privacy) -> datamodule``; the datamodule has ``prepare()``,
            ``label_names``, ``num_labels``, ``datasets`` (split -> dataset) and ``fingerprints``.
        model: ``(cfg, num_labels, tokenizer) -> nn.Module`` with the adapter applied.
        module: ``(cfg, model, datamodule) -> LightningModule``.
        monitor: ``num_labels -> metric`` that ``task.monitor=auto`` resolves to.
        trust_report: whether the classification analysis (calibration, thresholds, fairness, ...) applies.
    """

    datamodule: Callable[..., Any]
    model: Callable[[DictConfig, int, PreTrainedTokenizerBase], nn.Module]
    module: Callable[[DictConfig, nn.Module, Any], pl.LightningModule]
    monitor: Callable[[int], str]
    trust_report: bool = False


PROBLEMS: dict[str, Problem] = {
    "classification": Problem(
        datamodule=classification_datamodule,
        model=classification_model,
        module=classification_module,
        monitor=lambda num_labels: "val/auroc" if num_labels == 2 else "val/f1_macro",
        trust_report=True,
    ),
}


def problem_of(cfg: DictConfig) -> Problem:
    problem = OmegaConf.select(cfg, "task.problem", default="classification")
    if problem not in PROBLEMS:
        raise FinexpError(f"task.problem={problem!r}: unknown problem type; allowed: {', '.join(sorted(PROBLEMS))}")
    return PROBLEMS[problem]
