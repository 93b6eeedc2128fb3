"""The body of ``finexp-train``, imported once a run really starts (:func:`finexp.train.train`).

``finexp.train`` is the console script: it composes and validates the config with nothing but Hydra/OmegaConf
loaded, so ``--help``, ``--cfg job`` and a config error answer in about a second. Everything here pulls in the
heavy stack (torch, Lightning, transformers, peft, the analysis pipeline).
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from transformers import AutoConfig

from finexp import build, recipe
from finexp.adapters import count_parameters
from finexp.analysis import AnalysisOptions, analyze
from finexp.analysis.regression import analyze_regression, predict_targets
from finexp.baselines import run_baseline
from finexp.callbacks import OptunaPruning, run_costs
from finexp.compile import compile_encoder
from finexp.config.lookups import target_of, trainer_setting
from finexp.data.profile import build_input_profile
from finexp.loggers import CSVLogger
from finexp.models import memory
from finexp.models.backbone import load_pretrained, weights_record
from finexp.models.init_from import settle_head
from finexp.problems.common import load_options
from finexp.records import run_info, write_json
from finexp.resume import check_resume_checkpoint, clear_outcome, plan_rerun, tracking_run_id
from finexp.runs import initial_weights, open_teacher
from finexp.targets import instantiate

log = logging.getLogger("finexp")


def _hydra_choices() -> dict[str, Any]:
    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")}


def _pruned_at(callbacks: Sequence[pl.Callback]) -> dict[str, int]:
    """``pruned_at_epoch`` of an Optuna trial its pruner stopped (the sweeper and the search read it back)."""
    epochs = [c.pruned_at_epoch for c in callbacks if isinstance(c, OptunaPruning) and c.pruned_at_epoch is not None]
    return {"pruned_at_epoch": epochs[0]} if epochs else {}


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.best_model_path:
        return callback.best_model_path
    return None


def _wandb_hint(trainer: pl.Trainer) -> str | None:
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            if getattr(run, "offline", False) or run.settings.mode == "offline":
                return f"W&B (offline): wandb sync {Path(run.dir).parent}"
            return f"W&B: {run.url}"
    return None


def _command() -> str | None:
    """The command line that reproduces this run (None when the config was composed in Python)."""
    if not HydraConfig.initialized():
        return None
    return " ".join(["finexp-train", *(shlex.quote(o) for o in HydraConfig.get().overrides.task)])


def _trust_report(
    cfg: DictConfig, module: pl.LightningModule, datamodule: Any, trainer: pl.Trainer, metrics: dict, resolved: Any
) -> dict[str, float]:
    """Report of the best checkpoint (loaded into ``module`` by validate/test) on test, or val with ``test=false``."""
    options = AnalysisOptions(**OmegaConf.to_container(cfg.analysis, resolve=True))
    return analyze(
        cfg.paths.output_dir,
        module,
        datamodule,
        options,
        split="test" if cfg.test else "val",
        config={**resolved, "choices": _hydra_choices()},
        metrics=metrics,
        command=_command(),
        loggers=trainer.loggers,
        title=f"finexp run report: {cfg.run_name}",
    )


def _regression_report(
    cfg: DictConfig, module: pl.LightningModule, datamodule: Any, trainer: pl.Trainer, metrics: dict, resolved: Any
) -> dict[str, float]:
    """Errors, residual plot and error by target decile of the best checkpoint on test (val with ``test=false``)."""
    split = "test" if cfg.test else "val"
    targets, predictions = predict_targets(module, getattr(datamodule, f"{split}_dataloader")())
    return analyze_regression(
        cfg.paths.output_dir,
        targets,
        predictions,
        cfg.task.label_column,
        split=split,
        config={**resolved, "choices": _hydra_choices()},
        metrics=metrics,
        command=_command(),
        loggers=trainer.loggers,
        title=f"finexp run report: {cfg.run_name}",
        rows_per_split={name: len(ds) for name, ds in datamodule.datasets.items()},
        fingerprints=datamodule.fingerprints,
    )


REPORTS = {"classification": _trust_report, "regression": _regression_report}  # Problem.report -> writer


def _train_baseline(
    cfg: DictConfig, datamodule: Any, monitor: str, output_dir: Path, records: Mapping[str, Any]
) -> dict[str, Any]:
    """Fit a classic baseline on the train split and write the same records a fine-tuning run writes."""
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    extra = {
        "choices": _hydra_choices(),
        "labels": datamodule.label_names,
        "monitor": monitor,
        "serialized_columns": datamodule.serialized_columns,
        "rows": {name: len(ds) for name, ds in datamodule.datasets.items()},
        "sampling": getattr(datamodule, "sampling_record", None),  # data.k_shot / train_fraction / train_size
    }
    write_json(output_dir / "run_info.json", run_info(cfg.seed, datamodule.fingerprints, extra))
    estimator = instantiate(cfg.model.estimator)
    results = run_baseline(estimator, datamodule, output_dir, cfg.task.class_weights, test=cfg.test)
    checkpoint = str(output_dir / "model.joblib")
    metrics = {"status": "completed", "monitor": monitor, "best_checkpoint": checkpoint, "epochs": 1, **results}
    metrics |= records
    for logger in build.loggers_from(cfg):
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "choices": _hydra_choices()})
        logger.log_metrics({k: v for k, v in {**results, **records}.items() if isinstance(v, float | int)}, step=0)
        logger.finalize("success")
    write_json(output_dir / "metrics.json", metrics)
    _print_summary(metrics, output_dir, None)
    return metrics


def run(
    cfg: DictConfig, callbacks: Sequence[pl.Callback] = (), records: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """:func:`finexp.train.train` after ``validate_config``: the run itself (see there for ``callbacks`` and
    ``records``)."""
    records = dict(records or {})
    build.check_call_arguments(cfg)
    build.check_max_length(cfg)
    output_dir = Path(cfg.paths.output_dir)
    _tracking(cfg, output_dir)
    plan = plan_rerun(output_dir, OmegaConf.to_container(cfg, resolve=True), cfg.ckpt_path, cfg.resume)
    if plan.action == "skip":  # a rerun of a sweep: this job already finished
        log.info("skipping the run: %s", plan.reason)
        return plan.metrics
    if plan.action == "resume":
        log.info("resuming from %s (%s)", plan.ckpt_path, plan.reason)
    elif plan.reason:
        log.info("starting afresh: %s", plan.reason)
    if rank_zero_only.rank == 0:
        clear_outcome(output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    tokenizer = build.tokenizer_from(cfg)
    privacy = build.privacy_from(cfg)
    datamodule = build.datamodule_from(cfg, tokenizer, privacy=privacy)
    datamodule.prepare()
    monitor = build.resolve_monitor(cfg, datamodule.num_labels)
    resume_epoch = None
    if plan.ckpt_path is not None:  # read safely and checked before Lightning restores it
        resumed = check_resume_checkpoint(plan.ckpt_path, cfg.task.name, datamodule.label_names, not cfg.resume_check)
        resume_epoch = int(resumed.get("epoch", -1))
        del resumed
    if cfg.model.kind == "baseline":  # a classic model (model=tfidf_logreg, gbm): same splits, metrics, records
        return _train_baseline(cfg, datamodule, monitor, output_dir, records)
    settled = recipe.settle(cfg, datamodule)  # what the config left null (epochs, lr, head lr) is a number from here on
    log.info("%s", settled.describe())
    memory_records = {}
    if cfg.model.check_memory:  # before any weights load: the estimate beside the device's free memory
        memory_records = _check_memory(cfg, datamodule.num_labels, tokenizer, datamodule.label_names)
    initial = initial_weights(cfg.model.init_from) if cfg.model.init_from else None  # opened before anything builds
    model = build.model_from(cfg, datamodule.num_labels, tokenizer, datamodule.label_names, initial)
    del initial  # copied into the model
    initialized = settle_head(model, datamodule.label_names)  # model.init_from: keep or re-initialise the head
    method, method_records = build.method_from(cfg), {}
    if method is not None:  # method=setfit: stage 1 (contrastive pairs) now; the loop below is stage 2 (the head)
        method_records = method.prepare(
            model,
            datamodule.datasets["train"],
            tokenizer.pad_token_id,
            cfg.seed,
            build.stage_trainer_kwargs(cfg),
            weight_decay=cfg.optimizer.weight_decay,
            resume=plan.ckpt_path is not None,
        )
    compiled = compile_encoder(model) if trainer_setting(cfg.trainer, "compile") else None  # trainer.compile=true
    teacher = functools.partial(open_teacher, cfg.distill.teacher) if cfg.distill.teacher else None
    module = build.module_from(cfg, model, datamodule, teacher)
    params = count_parameters(model)

    loggers = build.loggers_from(cfg)
    for logger in loggers:  # a resumed run keeps the CSV rows of the epochs its checkpoint holds
        if isinstance(logger, CSVLogger):
            logger.resume_epoch = resume_epoch
    pruning = _sweep_trial_callback(monitor)  # a job of hparams_search=optuna: report to its trial
    extra_callbacks = [*callbacks, *([pruning] if pruning is not None else [])]
    trainer = build.trainer_from(cfg, build.callbacks_from(cfg) + privacy.callbacks() + extra_callbacks, loggers)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
        info = run_info(
            cfg.seed,
            datamodule.fingerprints,
            {
                "choices": _hydra_choices(),
                "labels": datamodule.label_names,
                "monitor": monitor,
                "serialized_columns": getattr(datamodule, "serialized_columns", None),
                "serialized_column_kinds": getattr(datamodule, "serialized_column_kinds", None),  # finexp-predict
                "rows": {name: len(ds) for name, ds in datamodule.datasets.items()},
                "sampling": getattr(datamodule, "sampling_record", None),  # data.k_shot / train_fraction / train_size
                "augment": getattr(datamodule, "augment_record", None),  # data.augment: rows added to train
                "init_from": initialized,  # model.init_from: the earlier run, and whether its head was kept
                "privacy": privacy.report(),  # labels randomized and PII masked (DP-SGD's ε: metrics.json)
                "model_weights": weights_record(model, cfg.model.name_or_path, load_options(cfg)),  # what loaded
                "compiled": compiled,  # trainer.compile=true: the module torch.compile compiled (null: none)
                "recipe": settled.record(),  # recipe=auto: epochs, lr, head lr, each derived or set (its source)
            },
        )
        write_json(output_dir / "run_info.json", info)
        _write_input_profile(cfg, datamodule, output_dir)
    for logger in trainer.loggers:
        logger.log_hyperparams({**resolved, "choices": _hydra_choices(), **params, **settled.flat()})
        logger.log_metrics({**params, **{k: v for k, v in records.items() if isinstance(v, float | int)}}, step=0)
    log.info(
        "trainable parameters: %d of %d (%.2f%%)",
        params["params/trainable"],
        params["params/total"],
        params["params/trainable_pct"],
    )

    started = time.perf_counter()
    federation = None
    if cfg.get("federated"):  # federated=fedavg|fedprox|...: Flower rounds over simulated clients, not one fit
        federation = _federate(cfg, module, datamodule, trainer, output_dir)
    else:
        # weights_only, explicitly: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn a resumed last.ckpt into code
        trainer.fit(module, datamodule=datamodule, ckpt_path=plan.ckpt_path, weights_only=True)
    fit_seconds = time.perf_counter() - started
    train_metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    costs = run_costs(trainer)  # now: validate/test below replace the callback metrics

    best = federation.best_checkpoint if federation is not None else _best_checkpoint(trainer)
    if best is None and cfg.trainer.get("max_epochs") == 0:  # zero-/few-shot: the model as loaded is the run's
        best = str(output_dir / "checkpoints" / "best.ckpt")
        trainer.save_checkpoint(best, weights_only=True)
    metrics: dict[str, Any] = {}
    for result in trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True):
        metrics |= result
    if cfg.test:
        for result in trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True):
            metrics |= result
        if trainer.is_global_zero and cfg.test_predictions:  # per-row predictions of the best checkpoint
            from finexp.run_predictions import write_test_predictions

            write_test_predictions(output_dir, module, datamodule, cfg.task.label_column)
    metrics = {
        "status": "completed",
        "monitor": monitor,
        "best_checkpoint": best,
        "epochs": trainer.current_epoch or int(costs.get("time/epochs", 0)),  # spawned DDP: the ranks' count
        "time/fit_s": fit_seconds,
        **{k: float(v) for k, v in train_metrics.items()},
        **params,
        **costs,
        **memory_records,  # the estimate (memory/estimate_mb and its parts), beside the measured memory/peak_mb
        **privacy.report(),
        **method_records,
        **(federation.report() if federation is not None else {}),
        **_pruned_at(extra_callbacks),  # an Optuna trial (hparams_search=optuna or search=budgeted) pruned
        **records,  # e.g. a search's summary (search/*)
        **{k: float(v) for k, v in sorted(metrics.items())},
    }
    report = REPORTS.get(build.problem_of(cfg).report or "")
    if trainer.is_global_zero and cfg.analysis.enabled and report is not None:
        metrics |= report(cfg, module, datamodule, trainer, metrics, resolved)
    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
        _print_summary(metrics, output_dir, _wandb_hint(trainer))
    return metrics


# precision -> (autocast compute dtype, dtype every parameter is cast to); Lightning's plugins do both
_PRECISION_MEMORY = {
    "bf16-mixed": (torch.bfloat16, None),
    "bf16": (torch.bfloat16, None),
    "16-mixed": (torch.float16, None),
    "16": (torch.float16, None),
    "bf16-true": (None, torch.bfloat16),
    "16-true": (None, torch.float16),
}
_CONFIG_ONLY = ("dtype", "torch_dtype", "transformers_version", "_name_or_path", "architectures", "quantization_config")


def estimate_run_memory(
    cfg: DictConfig, num_labels: int, tokenizer: Any, label_names: list[str] | None = None
) -> memory.MemoryEstimate:
    """The peak memory of one training step of ``cfg`` (:func:`finexp.models.memory.estimate_memory`), before any
    weights load: the run's model, adapter applied, is built with its parameters on the meta device, from the
    checkpoint's config file alone when ``model.name_or_path`` is set."""
    m = cfg.model
    options = load_options(cfg)
    meta_cfg = copy.deepcopy(cfg)
    with open_dict(meta_cfg):
        if m.name_or_path is not None:  # the architecture of the checkpoint: its config.json, no weights
            revision = {"revision": options.revision} if options.revision else {}
            config = load_pretrained(AutoConfig, m.name_or_path, "model config", m.local_files_only, **revision)
            meta_cfg.model.architecture = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_ONLY}
            meta_cfg.model.name_or_path = None
        meta_cfg.model.quantization = None  # counted by estimate_memory; a meta model cannot be quantized
        meta_cfg.model.gradient_checkpointing = False  # both settings are estimated
    with memory.parameters_on_meta():
        model = build.model_from(meta_cfg, num_labels, tokenizer, label_names)
    autocast, cast = _PRECISION_MEMORY.get(str(trainer_setting(cfg.trainer, "precision")), (None, None))
    if cast is not None:
        model = model.to(cast)
    length = cfg.data.max_length
    if cfg.task.problem == "long_document":  # batches of windows
        length = cfg.task.window.size
    optimizer = target_of(cfg.optimizer)
    states = (1 if cfg.optimizer.get("momentum") else 0) if optimizer.endswith("sgd") else 2
    return memory.estimate_memory(
        model,
        memory.step_shape(model, cfg.data.batch_size, length),
        quantization=options.quantization,
        gradient_checkpointing=options.gradient_checkpointing,
        attn_implementation=options.attn_implementation,
        autocast_dtype=autocast,
        optimizer_states=states,
        per_sample_gradients=cfg.data.batch_size if cfg.privacy.name == "dp_sgd" else 0,
        device=_memory_device(cfg),
    )


def _memory_device(cfg: DictConfig) -> str:
    accelerator = str(trainer_setting(cfg.trainer, "accelerator"))
    return "cuda" if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu"


def _check_memory(cfg: DictConfig, num_labels: int, tokenizer: Any, label_names: list[str] | None) -> dict[str, float]:
    """Print the run's memory estimate beside the device's free memory and stop when it cannot fit
    (``model.check_memory=false`` skips this); returns the estimate's ``metrics.json`` entries."""
    try:
        estimate = estimate_run_memory(cfg, num_labels, tokenizer, label_names)
    except Exception as err:  # a model the estimate cannot build on the meta device must not stop the run; say so
        log.warning(
            "no memory estimate for this run: its model could not be built on the meta device or read (%s: %s); "
            "the run goes on (model.check_memory=false skips the attempt)",
            type(err).__name__,
            err,
        )
        return {}
    device = _memory_device(cfg)
    devices = trainer_setting(cfg.trainer, "devices")
    processes = devices if device == "cpu" and isinstance(devices, int) and devices > 1 else 1  # share one RAM
    available = memory.available_memory(device)
    if rank_zero_only.rank == 0:
        print(estimate.table(available, device), flush=True)
    memory.check_fits(estimate, available, device, processes)
    return {**estimate.records(), "memory/available_mb": available / 2**20}


def _write_input_profile(cfg: DictConfig, datamodule: Any, output_dir: Path) -> None:
    """``input_profile.json``: type, range, categories and text lengths of each input column of the train split, as
    read (finexp-predict and -serve flag rows outside it). Problem types whose rows are not table/text rows (NER
    sentences, prompts) have none."""
    splits = getattr(datamodule, "splits", None)
    if splits is None or not hasattr(splits, "train") or cfg.task.problem in ("token_classification", "generation"):
        return
    if cfg.task.text_column is not None:
        columns, kinds = [cfg.task.text_column], {cfg.task.text_column: "free_text"}
    else:
        columns, kinds = datamodule.serialized_columns, datamodule.serialized_column_kinds
    write_json(output_dir / "input_profile.json", build_input_profile(splits.train, columns, kinds))


def _federate(
    cfg: DictConfig, module: pl.LightningModule, datamodule: Any, trainer: pl.Trainer, output_dir: Path
) -> Any:
    """Federated training (``federated=...``): Flower rounds, then the best and last global models saved as this run's
    checkpoints (so validation, test, the report, finexp-eval and finexp-export read them as any run's)."""
    from finexp.federated.setup import federation_from  # Flower loads only for federated runs
    from finexp.federated.simulation import save_checkpoints

    federation = federation_from(cfg, module, datamodule, trainer.loggers).run()
    save_checkpoints(trainer, module, datamodule, federation)
    if trainer.is_global_zero:
        federation.write(output_dir / "federation.json")
    return federation


def _print_summary(metrics: dict[str, Any], output_dir: Path, wandb_hint: str | None) -> None:
    rows = [(k, v) for k, v in metrics.items() if k.startswith(("test/", "val/")) and isinstance(v, float)]
    width = max((len(k) for k, _ in rows), default=10)
    lines = ["", "finexp run finished", *(f"  {k:<{width}}  {v:.4f}" for k, v in rows)]
    lines.append(f"  run directory: {output_dir}")
    if wandb_hint:
        lines.append(f"  {wandb_hint}")
    print("\n".join(lines), flush=True)


def _tracking(cfg: DictConfig, output_dir: Path) -> None:
    """W&B bookkeeping: one run id per run directory (a resumed run continues its W&B run), the runs of a multirun
    in one group, and tags naming the run's task, model, adapter and privacy."""
    wandb = OmegaConf.select(cfg, "logger.wandb")
    if not wandb:
        return
    choices = _hydra_choices()
    adapter = choices.get("adapter") or target_of(cfg.adapter).rsplit(".", 1)[-1]
    auto_tags = [f"task:{cfg.task.name}", f"model:{cfg.model.name}", f"adapter:{adapter}"]
    auto_tags.append(f"privacy:{cfg.privacy.name}")
    with open_dict(cfg):
        # Under a W&B sweep agent the run id comes from the agent (WANDB_RUN_ID); otherwise from the run directory.
        wandb.id = os.environ.get("WANDB_RUN_ID") or (tracking_run_id(output_dir) if rank_zero_only.rank == 0 else None)
        wandb.resume = "allow"
        if wandb.get("group") is None:
            wandb.group = _sweep_group(cfg.task.name)
        wandb.tags = [*(wandb.get("tags") or []), *(t for t in auto_tags if t not in (wandb.get("tags") or []))]


def _sweep_group(task: str) -> str:
    """The W&B group: ``<task>`` for a single run, ``<task>/<sweep dir>`` shared by the jobs of one multirun."""
    if _is_multirun():
        sweep_dir = Path(HydraConfig.get().sweep.dir)
        return f"{task}/{sweep_dir.parent.name}-{sweep_dir.name}"
    return task


def _sweep_trial_callback(monitor: str) -> OptunaPruning | None:
    """The pruning callback of a job of finexp's Optuna sweeper (``hydra.sweeper.trial`` set), else None."""
    if not _is_multirun():
        return None
    sweeper = HydraConfig.get().sweeper
    if sweeper.get("trial") is None or not target_of(sweeper).startswith(_OPTUNA_SWEEPER):
        return None
    from hydra_plugins.finexp_optuna_sweeper.optuna_sweeper import _instantiate_optuna, open_trial

    pruner = _instantiate_optuna(sweeper.pruner, "pruners", "hydra.sweeper.pruner")
    trial = open_trial(sweeper.study_name, sweeper.storage, int(sweeper.trial), pruner)
    if trial is None:
        if type(pruner).__name__ != "NopPruner":
            log.warning(
                "hydra.sweeper.pruner=%s cannot prune this trial: its in-memory study lives in another process; "
                "set hydra.sweeper.storage=sqlite:///<file>.db",
                type(pruner).__name__,
            )
        return None
    return OptunaPruning(trial, monitor)


_OPTUNA_SWEEPER = "hydra_plugins.finexp_optuna_sweeper."


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
