"""``task.problem=classification``: one label per row of text or table (the default problem type).

Also the pieces that regression, multi-label and long documents reuse (the row pipeline, the pooled classifier) and
knowledge distillation (``distill.teacher``), which only classification students support.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from finexp import FinexpError
from finexp.problems.capabilities import METHODS, MODEL_KINDS, PRIVACY, Capabilities
from finexp.problems.common import (
    augmenter_from,
    batching_from,
    class_weights,
    data_source,
    encoder,
    fusion_columns,
    load_options,
    optimization,
    plain,
    privacy_from,
    sampling_from,
    with_adapter,
)
from finexp.problems.registry import Problem, register

if TYPE_CHECKING:
    import pytorch_lightning as pl
    import torch
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from finexp.data.datamodule import ClassificationDataModule, DataSource
    from finexp.models.classifier import SequenceClassifier
    from finexp.models.init_from import InitialWeights
    from finexp.privacy import PrivacyPlan

log = logging.getLogger("finexp")


def datamodule(
    cfg: DictConfig,
    tokenizer: PreTrainedTokenizerBase,
    source: DataSource | None = None,
    label_names: list[str] | None = None,
    privacy: PrivacyPlan | None = None,
    datamodule_class: Callable[..., ClassificationDataModule] | None = None,
) -> ClassificationDataModule:
    """Rows (a text column, or table rows serialized to text) -> one label each; PII masking applies always.

    ``datamodule_class``: a subclass for another kind of label (regression, multi-label) reusing this pipeline.
    """
    from finexp.baselines.stacking import gbm_score_from
    from finexp.data.datamodule import ClassificationDataModule, Columns, SplitPolicy

    task, data = cfg.task, cfg.data
    masking = (privacy or privacy_from(cfg)).mask if cfg.privacy.mask_pii else None
    serialization = plain(task.serialization)
    phrases = serialization.pop("columns")
    return (datamodule_class or ClassificationDataModule)(
        tokenizer,
        source=data_source(cfg, source),
        columns=Columns(
            label=task.label_column,
            text=task.text_column,
            features=plain(task.feature_columns),
            exclude=plain(task.exclude_columns),
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
        batching=batching_from(cfg),
        cache_dir=data.cache_dir,
        tokenize_workers=data.tokenize_workers,
        label_names=label_names,
        preprocess=masking,
        train_label_transform=privacy.labels if privacy is not None else None,
        train_batch_sampler=privacy.dp_sgd.batch_sampler if privacy is not None and privacy.dp_sgd else None,
        sampling=sampling_from(cfg),
        augment=augmenter_from(cfg),
        numeric_columns=fusion_columns(cfg),
        stacking=gbm_score_from(plain(task.hybrid)),  # task.hybrid: boosting's cross-fitted score as a column
    )


def model(
    cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase, initial: InitialWeights | None = None
) -> SequenceClassifier:
    """Encoder + pooling + linear head over ``num_labels`` outputs, with the adapter applied (``method=prompt``:
    a masked LM scoring label words instead)."""
    from finexp.models.classifier import SequenceClassifier
    from finexp.models.init_from import load_encoder

    m = cfg.model
    if cfg.method.name == "prompt":
        return with_adapter(cfg, prompt_model(cfg, num_labels, tokenizer))
    if cfg.method.name == "generative":
        return with_adapter(cfg, generative_model(cfg, num_labels, tokenizer))
    fused = fusion_columns(cfg)
    hybrid = cfg.task.hybrid  # boosting's log-odds also skip the head: the model starts as boosting (see the class)
    score = fused.index(hybrid.column) if hybrid.gbm_score and hybrid.column in fused else None
    classifier = SequenceClassifier(
        encoder(cfg, tokenizer),
        num_labels,
        pooling=m.pooling,
        dropout=m.dropout,
        numeric_features=len(fused),
        score_feature=score,
    )
    if initial is not None:  # continual fine-tuning: an earlier run's weights, before the adapter
        load_encoder(classifier, initial)
    return with_adapter(cfg, classifier)


def prompt_model(cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
    """``method=prompt`` (PET): the model's masked LM, the pattern ``method.template`` and ``method.verbalizer``."""
    from finexp.models.prompt import PromptClassifier, PromptTemplate, build_masked_lm, verbalizer_ids

    m, method = cfg.model, cfg.method
    words = verbalizer_ids(tokenizer, plain(method.verbalizer))
    if len(words) != num_labels:
        raise FinexpError(f"method.verbalizer has {len(words)} labels ({', '.join(words)}); the task has {num_labels}")
    lm = build_masked_lm(m.name_or_path, plain(m.architecture), len(tokenizer), m.local_files_only, load_options(cfg))
    return PromptClassifier(lm, PromptTemplate(tokenizer, method.template), words)


def generative_model(cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
    """``method=generative``: a causal LM scoring each label's answer after ``method.prompt_template``."""
    from finexp.models.backbone import ModelLoadError
    from finexp.models.causal_lm import build_causal_lm
    from finexp.models.generative import GenerativeClassifier, GenerativePrompt

    m, method = cfg.model, cfg.method
    try:
        lm = build_causal_lm(
            m.name_or_path, plain(m.architecture), len(tokenizer), m.local_files_only, load_options(cfg)
        )
    except ModelLoadError as err:
        if "masked-language encoder" not in str(err):  # build_causal_lm's refusal of encoders, said for this method
            raise
        raise FinexpError(
            f"method=generative needs a decoder (GPT-style) model, not model={m.name}: use model=tiny_gpt, or "
            "model=hf model.name_or_path=<a causal LM such as gpt2>"
        ) from err
    words = plain(method.label_words) or plain(cfg.task.label_words)  # the method's, else the task's names
    prompt = GenerativePrompt(
        tokenizer, method.prompt_template, words, method.system_prompt, bool(method.chat_template)
    )
    names = list(words) if words else [str(i) for i in range(num_labels)]  # build.model_from binds the real ones
    return GenerativeClassifier(lm, prompt, names)


def module(cfg: DictConfig, model: SequenceClassifier, datamodule: ClassificationDataModule) -> pl.LightningModule:
    """Cross-entropy (``task.class_weights``), accuracy/F1/AUROC/KS."""
    from finexp.problems.classification_training import classification_module

    if cfg.method.name == "generative" and cfg.method.in_context_examples:
        model.set_examples(in_context_examples(datamodule, cfg.method.in_context_examples, cfg.seed))
    return classification_module(
        model,
        datamodule.label_names,
        **optimization(cfg),
        class_weights=class_weights(cfg.task.class_weights, datamodule.class_counts()),
    )


def in_context_examples(datamodule: ClassificationDataModule, k: int, seed: int) -> list[tuple[str, str]]:
    """``k`` train rows (text, label name), drawn without replacement with ``seed``: the solved examples of
    few-shot prompting (``method.in_context_examples``)."""
    import random

    texts, labels = datamodule.texts["train"], datamodule.datasets["train"].labels.tolist()
    if k > len(texts):
        raise FinexpError(f"method.in_context_examples={k} exceeds the {len(texts)} rows of the train split")
    rows = random.Random(seed).sample(range(len(texts)), k)
    return [(texts[i], datamodule.label_names[labels[i]]) for i in rows]


def distillation_module(
    cfg: DictConfig, model: SequenceClassifier, datamodule: ClassificationDataModule, open_teacher: Callable[[], Any]
) -> pl.LightningModule:
    """``distill.teacher=CKPT``: the student trains on the teacher's soft targets and the hard labels.

    The teacher (rebuilt from its run's config, like ``finexp-eval`` does) labels the train split once, here, before
    training; with ``distill.cache`` the logits go to ``<run dir>/teacher_logits.pt``, keyed by the teacher file and
    the train split's fingerprint, and a resumed run reads them back instead of loading the teacher.
    """
    from finexp.problems.distillation import cached_teacher_logits, compute_teacher_logits, distillation_module

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
    return distillation_module(
        model,
        labels,
        cached_teacher_logits(cache, key, label_train_split),
        temperature=distill.temperature,
        alpha=distill.alpha,
        **optimization(cfg),
        class_weights=class_weights(cfg.task.class_weights, datamodule.class_counts()),
    )


def class_monitor(num_labels: int) -> str:
    """``val/auroc`` for binary tasks, ``val/f1_macro`` otherwise."""
    return "val/auroc" if num_labels == 2 else "val/f1_macro"


PROBLEM = register(
    "classification",
    Problem(
        datamodule=datamodule,
        model=model,
        module=module,
        monitor=class_monitor,
        report="classification",
        supports=Capabilities(
            model_kinds=MODEL_KINDS,
            privacy=PRIVACY,
            mask_pii=True,
            methods=METHODS,
            fusion=True,
            k_shot=True,
            cross_validation=True,
            class_weights=True,
            distillation=True,
            federated=True,
            explain=True,
            init_from=True,
            teacher=True,
            export=True,
            predict=True,
            serve=True,
        ),
    ),
)
