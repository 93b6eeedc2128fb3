"""Turn a composed config into objects: the only place, beside the entry points, that reads a DictConfig.

What depends on the problem type (``task.problem``) lives in :mod:`finexp.problems`, one module per type; this module
dispatches to the registered type and builds what every run shares (tokenizer, callbacks, loggers, trainer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ProgressBar
from torch import nn
from transformers import PreTrainedTokenizerBase

from finexp import FinexpError
from finexp.adapters.checkpoint import TrainableOnlyCheckpoint
from finexp.config.lookups import trainer_setting
from finexp.data.datamodule import DataSource
from finexp.methods.setfit import SetFit
from finexp.models.backbone import build_tokenizer, max_positions
from finexp.models.init_from import InitialWeights
from finexp.privacy import PrivacyPlan
from finexp.problems import PROBLEMS, Problem, get_problem
from finexp.problems.classification import distillation_module
from finexp.problems.common import augmenter_from, class_weights, fusion_columns, privacy_from, sampling_from
from finexp.problems.common import plain as _plain
from finexp.rules import RuleSet
from finexp.targets import check_arguments, instantiate

__all__ = [  # the public entry points, and the names re-exported from finexp.problems
    "PROBLEMS",
    "Problem",
    "augmenter_from",
    "callbacks_from",
    "check_call_arguments",
    "check_max_length",
    "class_weights",
    "datamodule_from",
    "distillation_module",
    "fit_fusion_statistics",
    "fusion_columns",
    "loggers_from",
    "method_from",
    "model_from",
    "module_from",
    "privacy_from",
    "problem_of",
    "resolve_monitor",
    "rules_from",
    "sampling_from",
    "stage_trainer_kwargs",
    "tokenizer_from",
    "trainer_from",
]

log = logging.getLogger("finexp")


def problem_of(cfg: DictConfig) -> Problem:
    """The registered problem type of ``task.problem`` (:mod:`finexp.problems`)."""
    return get_problem(cfg.task.problem)


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


def fit_fusion_statistics(model: nn.Module, datamodule: Any) -> None:
    """Give a fusion model the train split's mean/std of its numeric columns (a checkpoint then carries them)."""
    numeric = getattr(model, "numeric", None)
    if numeric is not None and len(datamodule.datasets.get("train", ())):
        numeric.set_statistics(*datamodule.numeric_statistics())


def rules_from(cfg: DictConfig) -> RuleSet | None:
    """The business rules of ``cfg.rules`` (``conf/rules``; finexp-predict, -serve, -eval); None for ``rules=none``."""
    node = cfg.get("rules")
    if node is None or not (node.rules or node.decisions):
        return None
    return RuleSet.from_specs(_plain(node.rules), _plain(node.decisions), _plain(node.counts_as), node.name)


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
    if trainer_setting(cfg.trainer, "enable_progress_bar") is False:  # Lightning refuses a progress bar callback then
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
    keys = ("accelerator", "precision", "deterministic", "gradient_clip_val", "enable_progress_bar", "default_root_dir")
    return {key: trainer_setting(cfg.trainer, key) for key in keys} | {"devices": 1}


def loggers_from(cfg: DictConfig) -> list[Any]:
    return _instantiate_group(cfg.get("logger"))


def trainer_from(cfg: DictConfig, callbacks: list[pl.Callback], loggers: list[Any]) -> pl.Trainer:
    if cfg.privacy.name == "dp_sgd" and trainer_setting(cfg.trainer, "gradient_clip_val"):
        log.warning(
            "privacy=dp_sgd: trainer.gradient_clip_val=%s turned off; DP-SGD clips each row's gradient to "
            "privacy.max_grad_norm=%s instead",
            cfg.trainer.gradient_clip_val,
            cfg.privacy.max_grad_norm,
        )
        cfg.trainer.gradient_clip_val = None  # the saved config.yaml shows what ran
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
