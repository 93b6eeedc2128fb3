"""Turn a composed config into objects: the only place, beside the entry points, that reads a DictConfig."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ProgressBar
from torch import nn
from transformers import PreTrainedTokenizerBase

from finexp import FinexpError
from finexp.adapters.checkpoint import TrainableOnlyCheckpoint
from finexp.data.augment import Augmenter, load_synonyms
from finexp.data.datamodule import ClassificationDataModule, Columns, DataSource, SplitPolicy
from finexp.data.few_shot import SamplingPolicy
from finexp.methods.setfit import SetFit
from finexp.models.backbone import build_encoder, build_tokenizer, max_positions
from finexp.models.classifier import SequenceClassifier
from finexp.models.init_from import InitialWeights, load_encoder
from finexp.privacy import PrivacyPlan, build_privacy
from finexp.rules import RuleSet
from finexp.targets import check_arguments, instantiate
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
    datamodule_class: Callable[..., ClassificationDataModule] = ClassificationDataModule,
) -> ClassificationDataModule:
    """Rows (a text column, or table rows serialized to text) -> one label each; PII masking applies always.

    ``datamodule_class``: a subclass for another kind of label (regression, multi-label) reusing this pipeline.
    """
    task, data = cfg.task, cfg.data
    mask_pii = cfg.privacy.mask_pii
    masking = (privacy or privacy_from(cfg)).mask if mask_pii else None
    serialization = _plain(task.serialization)
    phrases = serialization.pop("columns")
    return datamodule_class(
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
            cv_folds=data.cv.folds,
            cv_fold=data.cv.fold,
        ),
        positive_label=task.positive_label,
        max_length=data.max_length,
        batch_size=data.batch_size,
        eval_batch_size=data.eval_batch_size,
        group_by_length=data.group_by_length,
        num_workers=data.num_workers,
        cache_dir=data.cache_dir,
        seed=cfg.seed,
        label_names=label_names,
        preprocess=masking,
        train_label_transform=privacy.labels if privacy is not None else None,
        train_batch_sampler=privacy.dp_sgd.batch_sampler if privacy is not None and privacy.dp_sgd else None,
        sampling=sampling_from(cfg),
        augment=augmenter_from(cfg),
        numeric_columns=fusion_columns(cfg),
    )


def augmenter_from(cfg: DictConfig) -> Augmenter | None:
    """The training-split augmentation of ``data.augment`` (None when ``copies`` is 0 or the key is absent)."""
    augment = cfg.data.augment
    if not augment.copies:
        return None
    return Augmenter(
        copies=augment.copies,
        ops=list(augment.ops),
        probability=augment.probability,
        synonyms=load_synonyms(augment.synonyms),
        jitter_scale=augment.jitter_scale,
        seed=augment.seed,
    )


def sampling_from(cfg: DictConfig) -> SamplingPolicy:
    """The few-shot / reduced-data policy (``data.k_shot``, ``train_fraction``, ``train_size``, ``k_shot_seed``)."""
    data = cfg.data
    return SamplingPolicy(
        k_shot=data.k_shot,
        train_fraction=data.train_fraction,
        train_size=data.train_size,
        seed=data.k_shot_seed,
        by_class=cfg.task.problem == "classification",
    )


def privacy_from(cfg: DictConfig) -> PrivacyPlan:
    """The run's privacy pieces (``conf/privacy``): PII masker, label randomizer, DP-SGD callback."""
    return build_privacy(seed=cfg.seed, label_column=cfg.task.label_column, **_plain(cfg.privacy))


def rules_from(cfg: DictConfig) -> RuleSet | None:
    """The business rules of ``cfg.rules`` (``conf/rules``; finexp-predict, -serve, -eval); None for ``rules=none``."""
    node = cfg.get("rules")
    if node is None or not (node.rules or node.decisions):
        return None
    return RuleSet.from_specs(_plain(node.rules), _plain(node.decisions), _plain(node.counts_as), node.name)


def model_from(
    cfg: DictConfig,
    num_labels: int,
    tokenizer: PreTrainedTokenizerBase,
    label_names: list[str] | None = None,
    initial: InitialWeights | None = None,
) -> nn.Module:
    """The problem type's model with the adapter applied (what trains is decided here).

    ``label_names``: the order of the outputs, for models that name their labels (``method=prompt``'s label words).
    ``initial``: ``model.init_from``'s weights (``finexp.runs.initial_weights``), loaded before the adapter wraps the
    encoder; a model rebuilt to load a checkpoint needs none.
    """
    model = problem_of(cfg).model(cfg, num_labels, tokenizer, initial)
    if label_names is not None and hasattr(model, "bind_labels"):
        model.bind_labels(label_names)
    return model


def classification_model(
    cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase, initial: InitialWeights | None = None
) -> SequenceClassifier:
    """Encoder + pooling + linear head over ``num_labels`` outputs, with the adapter applied (``method=prompt``:
    a masked LM scoring label words instead)."""
    m = cfg.model
    if cfg.method.name == "prompt":
        return _with_adapter(cfg, prompt_model(cfg, num_labels, tokenizer))
    fused = len(fusion_columns(cfg))
    model = SequenceClassifier(
        _encoder(cfg, tokenizer), num_labels, pooling=m.pooling, dropout=m.dropout, numeric_features=fused
    )
    if initial is not None:  # continual fine-tuning: an earlier run's weights, before the adapter
        load_encoder(model, initial)
    return _with_adapter(cfg, model)


def prompt_model(cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
    """``method=prompt`` (PET): the model's masked LM, the pattern ``method.template`` and ``method.verbalizer``."""
    from finexp.models.prompt import PromptClassifier, PromptTemplate, build_masked_lm, verbalizer_ids

    m, method = cfg.model, cfg.method
    words = verbalizer_ids(tokenizer, _plain(method.verbalizer))
    if len(words) != num_labels:
        raise FinexpError(f"method.verbalizer has {len(words)} labels ({', '.join(words)}); the task has {num_labels}")
    lm = build_masked_lm(m.name_or_path, _plain(m.architecture), len(tokenizer), m.local_files_only)
    return PromptClassifier(lm, PromptTemplate(tokenizer, method.template), words)


def _with_adapter(cfg: DictConfig, model: nn.Module) -> nn.Module:
    """``model`` in training mode with ``cfg.adapter`` applied (what trains is decided here)."""
    model.train()  # from_pretrained returns eval mode; Lightning keeps modes as it finds them (dropout would be off)
    return instantiate(cfg.adapter)(model)


def _optimization(cfg: DictConfig) -> dict[str, Any]:
    """A module's ``optimizer`` and ``scheduler`` factories (``conf/optimizer``, ``conf/scheduler``)."""
    return {
        "optimizer": instantiate(cfg.optimizer),
        "scheduler": instantiate(cfg.scheduler),
    }


def class_weights(mode: str | None, counts: list[int]) -> list[float] | None:
    """``balanced``: weight_c = n / (k * n_c), as scikit-learn defines it."""
    if mode is None:
        return None
    total, k = sum(counts), len(counts)
    return [total / (k * max(1, c)) for c in counts]


def module_from(
    cfg: DictConfig, model: nn.Module, datamodule: Any, teacher: Callable[[], Any] | None = None
) -> pl.LightningModule:
    """The problem type's LightningModule: loss, metrics, optimizer and schedule around ``model``.

    ``teacher``: with ``distill.teacher``, a function opening the teacher (``finexp.runs.open_teacher``); called only
    when its logits are not cached.
    """
    fit_fusion_statistics(model, datamodule)
    if cfg.distill.teacher:
        if teacher is None:
            raise FinexpError("distill.teacher is set but no teacher was opened (finexp.runs.open_teacher)")
        return distillation_module(cfg, model, datamodule, teacher)
    return problem_of(cfg).module(cfg, model, datamodule)


def distillation_module(
    cfg: DictConfig, model: SequenceClassifier, datamodule: ClassificationDataModule, open_teacher: Callable[[], Any]
) -> pl.LightningModule:
    """``distill.teacher=CKPT``: the student trains on the teacher's soft targets and the hard labels.

    The teacher (rebuilt from its run's config, like ``finexp-eval`` does) labels the train split once, here, before
    training; with ``distill.cache`` the logits go to ``<run dir>/teacher_logits.pt``, keyed by the teacher file and
    the train split's fingerprint, and a resumed run reads them back instead of loading the teacher.
    """
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
        teacher = open_teacher()
        teacher_labels = teacher.labels
        if sorted(teacher_labels) != sorted(labels):
            raise FinexpError(
                f"distill.teacher={distill.teacher} predicts {teacher_labels}, but this task's labels are {labels}"
            )
        texts = datamodule.texts["train"]
        started = time.perf_counter()
        logits = compute_teacher_logits(
            teacher.model, teacher.tokenizer, texts, teacher.max_length, distill.teacher_batch_size
        )
        log.info("distillation: the teacher labelled %d train rows in %.1fs", len(texts), time.perf_counter() - started)
        return logits[:, [teacher_labels.index(name) for name in labels]]  # columns in the student's label order

    cache = Path(cfg.paths.output_dir) / "teacher_logits.pt" if distill.cache else None
    return DistillationModule(
        model,
        labels,
        cached_teacher_logits(cache, key, label_train_split),
        temperature=distill.temperature,
        alpha=distill.alpha,
        **_optimization(cfg),
        class_weights=class_weights(cfg.task.class_weights, datamodule.class_counts()),
    )


def classification_module(
    cfg: DictConfig, model: SequenceClassifier, datamodule: ClassificationDataModule
) -> pl.LightningModule:
    return SequenceClassificationModule(
        model,
        datamodule.label_names,
        **_optimization(cfg),
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
    return [instantiate(entry) for entry in node.values() if entry is not None and "_target_" in entry]


def check_call_arguments(cfg: DictConfig) -> None:
    """Every configured object's keys against the signature of what builds it (a typo fails before data loads)."""
    groups = {"adapter": cfg.adapter, "optimizer": cfg.optimizer, "scheduler": cfg.scheduler, "trainer": cfg.trainer}
    for group in ("callbacks", "logger"):
        for name, entry in (cfg.get(group) or {}).items():
            groups[f"{group}.{name}"] = entry
    if cfg.get("federated"):
        groups["federated.strategy"] = cfg.federated.strategy
    for key, node in groups.items():
        check_arguments(node, key)


def check_max_length(cfg: DictConfig) -> None:
    """``data.max_length`` within the model's positions (read from its config, before any data or weights load);
    long documents are exempt: their windows (``task.window.size``) are checked against the positions instead."""
    m = cfg.model
    if m.kind != "transformer" or cfg.task.problem == "long_document":
        return
    positions = max_positions(m.name_or_path, _plain(m.architecture), m.local_files_only)
    if positions is not None and cfg.data.max_length > positions:
        raise FinexpError(
            f"data.max_length={cfg.data.max_length} exceeds the {positions} positions of model={m.name}; set "
            f"data.max_length<={positions} (or task.problem=long_document to read longer texts in windows)"
        )


def callbacks_from(cfg: DictConfig) -> list[pl.Callback]:
    callbacks = _instantiate_group(cfg.get("callbacks"))
    if cfg.trainer.get("enable_progress_bar") is False:  # Lightning refuses a progress bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    reason = None
    if cfg.method.name == "setfit":  # stage 1 changed the encoder it then freezes
        reason = "method=setfit: the contrastively tuned encoder"
    elif cfg.model.init_from:
        reason = "model.init_from: the encoder of an earlier run"
    for callback in callbacks:
        if reason and isinstance(callback, TrainableOnlyCheckpoint) and callback.enabled:
            # frozen weights that no pretrained file holds: checkpoints keep them, so they stand on their own
            log.info("full checkpoints (%s is part of the model)", reason)
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
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def _data_source(cfg: DictConfig, source: DataSource | None) -> DataSource:
    data = cfg.data
    return source or DataSource(data.rdataset, data.path, data.train_path, data.val_path, data.test_path)


def _encoder(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
    m = cfg.model
    return build_encoder(m.name_or_path, _plain(m.architecture), len(tokenizer), m.local_files_only)


def _splits_and_batches(cfg: DictConfig) -> dict[str, Any]:
    """The ``data.*`` settings every file-reading datamodule shares: split sizes and seed, truncation, batching."""
    data = cfg.data
    return {
        "val_size": data.val_size,
        "test_size": data.test_size,
        "split_seed": data.split_seed,
        "max_length": data.max_length,
        "batch_size": data.batch_size,
        "eval_batch_size": data.eval_batch_size,
        "group_by_length": data.group_by_length,
        "num_workers": data.num_workers,
        "seed": cfg.seed,
    }


def token_classification_datamodule(
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
        _data_source(cfg, source),
        scheme=cfg.task.scheme,
        **_splits_and_batches(cfg),
        label_names=label_names,
    )


def _no_initial(initial: InitialWeights | None, problem: str) -> None:
    if initial is not None:
        raise FinexpError(f"model.init_from seeds sequence classifiers; task.problem={problem} cannot start from one")


def token_classification_model(
    cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase, initial: InitialWeights | None = None
) -> nn.Module:
    """Encoder + a linear head on every token, with the adapter applied."""
    from finexp.models.token_classifier import TokenClassifier

    _no_initial(initial, "token_classification")

    return _with_adapter(cfg, TokenClassifier(_encoder(cfg, tokenizer), num_labels, dropout=cfg.model.dropout))


def token_classification_module(cfg: DictConfig, model: nn.Module, datamodule: Any) -> pl.LightningModule:
    from finexp.tasks.token_classification import TokenClassificationModule

    return TokenClassificationModule(
        model,
        datamodule.label_names,
        **_optimization(cfg),
        report_dir=cfg.paths.output_dir,
    )


def fusion_columns(cfg: DictConfig) -> list[str]:
    """``model.fusion=concat``: the numeric columns fused with the text (``task.numeric_columns``); else none."""
    if cfg.model.fusion is None:
        return []
    return list(_plain(cfg.task.numeric_columns) or [])


def fit_fusion_statistics(model: nn.Module, datamodule: Any) -> None:
    """Give a fusion model the train split's mean/std of its numeric columns (a checkpoint then carries them)."""
    numeric = getattr(model, "numeric", None)
    if numeric is not None and len(datamodule.datasets.get("train", ())):
        numeric.set_statistics(*datamodule.numeric_statistics())


def regression_datamodule(
    cfg: DictConfig,
    tokenizer: PreTrainedTokenizerBase,
    source: DataSource | None = None,
    label_names: list[str] | None = None,
    privacy: PrivacyPlan | None = None,
) -> Any:
    """The classification pipeline with a float target (finexp.tasks.regression.RegressionDataModule)."""
    from finexp.tasks.regression import RegressionDataModule

    return classification_datamodule(cfg, tokenizer, source, label_names, privacy, RegressionDataModule)


def regression_model(
    cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase, initial: InitialWeights | None = None
) -> nn.Module:
    """Encoder + pooling + a one-output head (``num_labels`` is 1: the target), with the adapter applied."""
    return classification_model(cfg, 1, tokenizer, initial)


def regression_module(cfg: DictConfig, model: nn.Module, datamodule: Any) -> pl.LightningModule:
    """MSE/Huber loss on the target standardized with the train split's statistics (``task.loss``)."""
    from finexp.tasks.regression import RegressionModule

    mean, std = datamodule.target_statistics() if len(datamodule.datasets.get("train", ())) else (0.0, 1.0)
    return RegressionModule(
        model,
        datamodule.label_names[0],
        **_optimization(cfg),
        loss=cfg.task.loss,
        huber_delta=cfg.task.huber_delta,
        target_mean=mean,
        target_std=std,
    )


def generation_datamodule(
    cfg: DictConfig,
    tokenizer: PreTrainedTokenizerBase,
    source: DataSource | None = None,
    label_names: list[str] | None = None,
    privacy: PrivacyPlan | None = None,
) -> Any:
    """Prompt/response rows (``task.text_column``/``task.label_column``) -> ``[bos] prompt response [eos]``."""
    from finexp.data.generation import GenerationDataModule

    return GenerationDataModule(
        tokenizer,
        _data_source(cfg, source),
        prompt_column=cfg.task.text_column,
        response_column=cfg.task.label_column,
        **_splits_and_batches(cfg),
    )


def generation_model(
    cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase, initial: InitialWeights | None = None
) -> nn.Module:
    """A causal LM with the adapter applied to its transformer; its LM head trains with adapter=full, or when
    ``task.generation.train_lm_head``."""
    from finexp.models.causal_lm import CausalLM, build_causal_lm

    _no_initial(initial, "generation")

    m = cfg.model
    lm = build_causal_lm(m.name_or_path, _plain(m.architecture), len(tokenizer), m.local_files_only)
    model = _with_adapter(cfg, CausalLM(lm))
    partial = any(not p.requires_grad for p in model.encoder.parameters())
    if partial and not cfg.task.generation.train_lm_head:
        model.head.requires_grad_(False)  # the adapters always train `head`; for an LM it is the vocabulary
    if not any(p.requires_grad for p in model.parameters()):
        raise FinexpError(
            "nothing trains: this adapter trains only the head, and task.generation.train_lm_head=false keeps the LM "
            "head frozen; set task.generation.train_lm_head=true or choose adapter=lora / full"
        )
    return model


def generation_module(cfg: DictConfig, model: nn.Module, datamodule: Any) -> pl.LightningModule:
    from finexp.tasks.generation import GenerationModule

    gen = cfg.task.generation
    return GenerationModule(
        model,
        datamodule.tokenizer,
        datamodule.eos,
        **_optimization(cfg),
        max_new_tokens=gen.max_new_tokens,
        do_sample=gen.do_sample,
        temperature=gen.temperature,
        top_k=gen.top_k,
        num_examples=gen.num_examples,
        samples_path=Path(cfg.paths.output_dir) / "generations.txt",
        seed=cfg.seed,
    )


def long_document_datamodule(
    cfg: DictConfig,
    tokenizer: PreTrainedTokenizerBase,
    source: DataSource | None = None,
    label_names: list[str] | None = None,
    privacy: PrivacyPlan | None = None,
) -> Any:
    """Documents read, split and labelled as for classification (untruncated), served as overlapping windows."""
    from finexp.data.windows import NO_TRUNCATION, LongDocumentDataModule

    documents = classification_datamodule(cfg, tokenizer, source, label_names, privacy=None)
    documents.max_length = NO_TRUNCATION  # windows, not truncation, bound what the model sees
    window, data = cfg.task.window, cfg.data
    return LongDocumentDataModule(
        documents,
        size=window.size,
        stride=window.stride,
        max_windows=window.max_windows,
        batch_size=data.batch_size,
        eval_batch_size=data.eval_batch_size,
        group_by_length=data.group_by_length,
        num_workers=data.num_workers,
        seed=cfg.seed,
    )


def long_document_model(
    cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase, initial: InitialWeights | None = None
) -> nn.Module:
    """The classifier (encoder + pooling + head) that scores each window."""
    model = classification_model(cfg, num_labels, tokenizer, initial)
    positions = getattr(model.encoder.config, "max_position_embeddings", None) or getattr(
        model.encoder.config, "n_positions", None
    )
    if positions is not None and cfg.task.window.size > positions:
        raise FinexpError(f"task.window.size={cfg.task.window.size} exceeds the model's {positions} positions")
    return model


def long_document_module(cfg: DictConfig, model: nn.Module, datamodule: Any) -> pl.LightningModule:
    from finexp.tasks.long_document import LongDocumentModule

    return LongDocumentModule(
        model,
        datamodule.label_names,
        aggregate=cfg.task.window.aggregate,
        **_optimization(cfg),
        class_weights=class_weights(cfg.task.class_weights, datamodule.class_counts()),
    )


def multilabel_datamodule(
    cfg: DictConfig,
    tokenizer: PreTrainedTokenizerBase,
    source: DataSource | None = None,
    label_names: list[str] | None = None,
    privacy: PrivacyPlan | None = None,
) -> Any:
    """The classification pipeline with label sets (``task.label_separator`` or ``task.label_columns``)."""
    from finexp.tasks.multilabel import MultiLabelDataModule

    make = functools.partial(
        MultiLabelDataModule, separator=cfg.task.label_separator, label_columns=_plain(cfg.task.label_columns)
    )
    return classification_datamodule(cfg, tokenizer, source, label_names, privacy, make)


def multilabel_module(cfg: DictConfig, model: nn.Module, datamodule: Any) -> pl.LightningModule:
    """One sigmoid output per label, binary cross-entropy; per-label and micro/macro F1."""
    from finexp.tasks.multilabel import MultiLabelModule

    return MultiLabelModule(
        model,
        datamodule.label_names,
        **_optimization(cfg),
    )


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
            ``label_names``, ``num_labels``, ``datasets`` (split -> dataset), ``fingerprints`` and ``texts`` (split ->
            one text per row, sentence, prompt or document: what finexp-eval's predictions.csv lists).
        model: ``(cfg, num_labels, tokenizer, initial) -> nn.Module`` with the adapter applied; ``initial`` is
            ``model.init_from``'s weights or None.
        module: ``(cfg, model, datamodule) -> LightningModule``; every type but classification also has
            ``predictions_table(predict_outputs, texts) -> DataFrame``, finexp-eval's predictions.csv.
        monitor: ``num_labels -> metric`` that ``task.monitor=auto`` resolves to.
        report: which trust report ``analysis`` writes for it: ``classification`` (calibration, thresholds,
            fairness, explanations), ``regression`` (errors, residuals, error by target decile), or None.
    """

    datamodule: Callable[..., Any]
    model: Callable[[DictConfig, int, PreTrainedTokenizerBase, InitialWeights | None], nn.Module]
    module: Callable[[DictConfig, nn.Module, Any], pl.LightningModule]
    monitor: Callable[[int], str]
    report: str | None = None


PROBLEMS: dict[str, Problem] = {
    "classification": Problem(
        datamodule=classification_datamodule,
        model=classification_model,
        module=classification_module,
        monitor=lambda num_labels: "val/auroc" if num_labels == 2 else "val/f1_macro",
        report="classification",
    ),
    "token_classification": Problem(
        datamodule=token_classification_datamodule,
        model=token_classification_model,
        module=token_classification_module,
        monitor=lambda num_labels: "val/f1",
    ),
    "generation": Problem(
        datamodule=generation_datamodule,
        model=generation_model,
        module=generation_module,
        monitor=lambda num_labels: "val/loss",
    ),
    "long_document": Problem(
        datamodule=long_document_datamodule,
        model=long_document_model,
        module=long_document_module,
        monitor=lambda num_labels: "val/auroc" if num_labels == 2 else "val/f1_macro",
    ),
    "regression": Problem(
        datamodule=regression_datamodule,
        model=regression_model,
        module=regression_module,
        monitor=lambda num_labels: "val/rmse",
        report="regression",
    ),
    "multilabel": Problem(
        datamodule=multilabel_datamodule,
        model=classification_model,
        module=multilabel_module,
        monitor=lambda num_labels: "val/f1_macro",
    ),
}


def problem_of(cfg: DictConfig) -> Problem:
    problem = cfg.task.problem
    if problem not in PROBLEMS:
        raise FinexpError(f"task.problem={problem!r}: unknown problem type; allowed: {', '.join(sorted(PROBLEMS))}")
    return PROBLEMS[problem]


def federation_from(cfg: DictConfig, module: pl.LightningModule, datamodule: Any, loggers: list[Any]) -> Any:
    """``federated=...``: the clients' partitions, the Flower strategy and the trainers of a federated run.

    Returns a :class:`finexp.federated.simulation.Federation` (Flower is imported only here, when asked for).
    """
    from finexp.config import monitor_mode
    from finexp.federated import partition_rows
    from finexp.federated.client import ClientDP
    from finexp.federated.partition import client_values
    from finexp.federated.simulation import Federation

    fed = cfg.federated
    train_set = datamodule.datasets["train"]
    groups = None
    if fed.partition == "column":
        frame = datamodule.splits.train
        if fed.partition_column not in frame.columns:
            raise FinexpError(
                f"federated.partition_column={fed.partition_column!r} is not a column of the train split; "
                f"columns: {', '.join(map(str, frame.columns))}"
            )
        groups = frame[fed.partition_column].tolist()
        if len(groups) != len(train_set):
            raise FinexpError(
                f"federated.partition=column: {len(groups)} rows in the train frame but {len(train_set)} tokenized"
            )
    seed = fed.partition_seed if fed.partition_seed is not None else cfg.data.split_seed
    partitions = partition_rows(
        train_set.labels.tolist(),
        fed.num_clients,
        fed.partition,
        seed=seed,
        alpha=fed.alpha,
        groups=groups,
        column=fed.partition_column,
        min_rows=fed.min_rows,
    )
    dp = None
    if fed.dp.enabled:
        if fed.dp.noise_multiplier is not None:
            dp = ClientDP(fed.dp.clipping_norm, fed.dp.noise_multiplier)
        else:
            dp = ClientDP.for_epsilon(fed.dp.clipping_norm, fed.dp.epsilon, fed.dp.delta, fed.rounds)
    base = {  # local rounds and server-side evaluation: no logger, checkpoints, summaries or progress bars
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": cfg.paths.output_dir,
    }

    def make_trainer(**overrides: Any) -> pl.Trainer:
        return instantiate(cfg.trainer, **{**base, **overrides})

    monitor = cfg.task.monitor
    return Federation(
        module,
        partitions,
        train_set,
        datamodule.val_dataloader(),
        strategy=instantiate(fed.strategy),
        make_trainer=make_trainer,
        rounds=fed.rounds,
        local_epochs=fed.local_epochs,
        batch_size=cfg.data.batch_size,
        pad_token_id=datamodule.tokenizer.pad_token_id,
        monitor=monitor,
        mode=monitor_mode(monitor),
        loggers=loggers,
        seed=cfg.seed,
        schedule=fed.schedule,
        dp=dp,
        dp_delta=fed.dp.delta if dp is not None else None,
        client_names=client_values(groups, partitions) if groups is not None else None,
        group_by_length=cfg.data.group_by_length,
    )
