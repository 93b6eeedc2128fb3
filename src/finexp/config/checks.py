"""Value checks: what type-checks at composition but cannot run (a negative learning rate, an unknown option).

Every entry point runs :func:`validate_config` (or :func:`validate_serving`) before it touches data or weights; what a
problem type supports is checked by :func:`finexp.problems.compat.check_compatibility`, table-driven.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

from omegaconf import DictConfig, OmegaConf

from finexp.config.lookups import target_of, trainer_setting
from finexp.config.schema import ALLOWED
from finexp.config.search_space import validate_search
from finexp.extras import require_extra
from finexp.problems.capabilities import ConfigError
from finexp.problems.capabilities import require as _require
from finexp.problems.compat import check_compatibility
from finexp.targets import check_targets


# --------------------------------------------------------------------------------------------------------------
# Value checks
# --------------------------------------------------------------------------------------------------------------
def _missing(cfg: DictConfig, key: str) -> bool:
    node = OmegaConf.select(cfg, key, throw_on_missing=False)
    return node is None or OmegaConf.is_missing(cfg, key)


def _validate_adapter(adapter: DictConfig) -> None:
    """Adapter values that type-check but cannot work (the builders check what needs the model, e.g. adapter.k)."""
    for key in ("k", "r", "num_virtual_tokens", "reduction_factor"):
        value = adapter.get(key)
        _require(value is None or value >= 1, f"adapter.{key}", value, "must be >= 1")
    if "dropout" in adapter:
        _require(0 <= adapter.dropout < 1, "adapter.dropout", adapter.dropout, "must be in [0, 1)")
    if "variant" in adapter:
        variant = adapter.variant
        _require(variant in ("houlsby", "pfeiffer"), "adapter.variant", variant, "choose houlsby or pfeiffer")


def validate_config(cfg: DictConfig) -> None:
    """Reject configs that compose but cannot run, naming the key and what is allowed.

    Raises:
        ConfigError: on the first offending key.
    """
    check_targets(OmegaConf.to_container(cfg, resolve=False), "the config")  # before anything is built
    for key in ("task.name", "task.label_column", "model.name"):
        if _missing(cfg, key):
            raise ConfigError(f"{key} must be set (e.g. `{key}=...` on the command line)")
    for key, allowed in ALLOWED.items():
        value = OmegaConf.select(cfg, key)
        _require(value in allowed, key, value, f"choose one of {', '.join(map(str, allowed))}")

    lr = cfg.optimizer.lr
    _require(lr is None or lr > 0, "optimizer.lr", lr, "must be > 0 or null (the recipe's)")
    _require(cfg.optimizer.weight_decay >= 0, "optimizer.weight_decay", cfg.optimizer.weight_decay, "must be >= 0")
    layer_decay = cfg.optimizer.layer_decay
    _require(0 < layer_decay <= 1, "optimizer.layer_decay", layer_decay, "must be in (0, 1] (1: no decay)")
    head_lr = cfg.optimizer.get("head_lr")
    _require(head_lr is None or head_lr > 0, "optimizer.head_lr", head_lr, "must be > 0 or null")
    _validate_adapter(cfg.adapter)
    warmup = cfg.scheduler.warmup_ratio
    _require(0 <= warmup < 1, "scheduler.warmup_ratio", warmup, "must be in [0, 1)")

    max_epochs = cfg.trainer.get("max_epochs")
    if cfg.method.name == "generative":  # 0: zero-/few-shot evaluation of the decoder as loaded
        _require(max_epochs is None or max_epochs >= 0, "trainer.max_epochs", max_epochs, "must be >= 0")
        k = cfg.method.in_context_examples
        _require(k >= 0, "method.in_context_examples", k, "must be >= 0")
    else:
        _require(
            max_epochs is None or max_epochs >= 1,
            "trainer.max_epochs",
            max_epochs,
            "must be >= 1 (0, evaluation without training, is for method=generative)",
        )
    _validate_strategy(cfg.trainer)
    cv = OmegaConf.select(cfg, "data.cv")
    if cv is not None and cv.folds is not None:
        _require(cv.folds >= 2, "data.cv.folds", cv.folds, "must be >= 2 (or null: no cross-validation)")
        _require(0 <= cv.fold < cv.folds, "data.cv.fold", cv.fold, f"must be in [0, {cv.folds - 1}] (data.cv.folds)")

    data = cfg.data
    for key in ("val_size", "test_size"):
        _require(0 < data[key] < 1, f"data.{key}", data[key], "must be a fraction in (0, 1)")
    _require(
        data.val_size + data.test_size < 1,
        "data.val_size + data.test_size",
        data.val_size + data.test_size,
        "must leave rows for training (< 1)",
    )
    for key in ("batch_size", "eval_batch_size"):
        _require(data[key] >= 1, f"data.{key}", data[key], "must be >= 1")
    _require(data.max_length >= 8, "data.max_length", data.max_length, "must be >= 8 tokens")
    _require(data.max_rows is None or data.max_rows >= 10, "data.max_rows", data.max_rows, "must be >= 10 or null")
    _validate_sampling(cfg)
    _validate_packing(cfg)
    _require(0 <= cfg.model.dropout < 1, "model.dropout", cfg.model.dropout, "must be in [0, 1)")
    _require(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    validate_analysis(cfg.get("analysis"))

    sources = [k for k in ("rdataset", "path", "train_path", "hf_dataset") if data.get(k)]
    if not sources:
        hint = cfg.task.data_hint
        if hint:  # a standard dataset (conf/task): name it and say how to get a local copy
            raise ConfigError(f"task '{cfg.task.name}' needs a local copy of its dataset: {hint}")
        raise ConfigError(
            f"task '{cfg.task.name}' reads your files: set data.path=FILE (finexp splits it) "
            "or data.train_path=FILE [data.val_path=FILE] [data.test_path=FILE] or data.hf_dataset=DIR_OR_NAME"
        )
    _require(
        len(sources) == 1,
        "data",
        {k: data[k] for k in sources},
        "give exactly one of data.rdataset, data.path, data.train_path, data.hf_dataset",
    )
    if (data.val_path or data.test_path) and not data.train_path:
        raise ConfigError("data.val_path/data.test_path need data.train_path as well")
    if cfg.model.kind == "baseline":
        _validate_baseline(cfg)
    elif cfg.model.name_or_path is None and cfg.model.architecture is None:
        raise ConfigError(
            "model.name_or_path must be set (a hub id or a local directory), e.g. model=hf "
            "model.name_or_path=ProsusAI/finbert"
        )
    elif cfg.model.name_or_path is None and cfg.model.tokenizer is None:
        raise ConfigError("model.tokenizer must be set for a model built from `model.architecture`")
    if cfg.model.kind != "baseline":
        _validate_model_loading(cfg)
    _validate_privacy(cfg)
    _validate_distill(cfg)
    _validate_federated(cfg)
    _validate_fusion(cfg)
    _validate_tables(cfg)
    check_compatibility(cfg)  # what the problem type supports (finexp.problems), then its own settings
    validate_search(cfg, validate_config)  # search=budgeted: its keys, each end of each range checked as a run's


def _validate_packing(cfg: DictConfig) -> None:
    """``data.packing``: rows share a training sequence, so the row must be what the model reads on its own."""
    if not cfg.data.packing:
        return
    adapter = target_of(cfg.adapter)
    conflicts = [
        (
            cfg.task.problem != "generation",
            f"task.problem={cfg.task.problem}",
            "packing is for instruction tuning (task.problem=generation)",
        ),
        (
            cfg.privacy.name == "dp_sgd",
            "privacy=dp_sgd",
            "DP-SGD bounds each row's gradient, a packed sequence mixes rows",
        ),
        (
            adapter.endswith(("build_prompt_tuning", "build_prefix_tuning")),
            f"adapter={adapter.rsplit('build_', 1)[-1]}",
            "its virtual tokens open each sequence, not each packed row",
        ),
    ]
    for conflict, setting, why in conflicts:
        if conflict:
            raise ConfigError(f"data.packing=true cannot be combined with {setting}: {why}; set data.packing=false")


# Lightning strategies that need a package beside Lightning: checked before the trainer is built, so a missing
# package stops the run with one line instead of a traceback after the data and the model have loaded.
STRATEGY_PACKAGES = {"deepspeed": "deepspeed"}


def _validate_strategy(trainer: DictConfig) -> None:
    strategy = trainer_setting(trainer, "strategy")
    name = target_of(strategy) if isinstance(strategy, DictConfig) else str(strategy or "")
    for marker, package in STRATEGY_PACKAGES.items():
        if marker in name.lower() and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"trainer.strategy={name} needs the '{package}' package, which is not installed: "
                f"pip install {package} (or choose trainer=ddp / trainer=fsdp)"
            )
    sharded = any(marker in name.lower() for marker in ("fsdp", "deepspeed"))
    if sharded and str(trainer_setting(trainer, "accelerator")) == "cpu":
        raise ConfigError(
            f"trainer.strategy={name} shards the model across GPUs and does not run on CPU "
            "(trainer.accelerator=cpu); on CPU use trainer=ddp_cpu"
        )
    num_nodes = trainer_setting(trainer, "num_nodes")
    _require(num_nodes >= 1, "trainer.num_nodes", num_nodes, "must be >= 1")


# Adapters that train the base weights themselves: a 4-/8-bit base cannot (its weights are not floats).
_TRAINS_BASE_WEIGHTS = ("train_everything", "train_top_layers")
_HALF_DTYPES = ("bfloat16", "float16")


def _validate_model_loading(cfg: DictConfig) -> None:
    """``model.dtype`` against ``trainer.precision``, quantization and attention kernels that cannot run here."""
    m = cfg.model
    precision = str(trainer_setting(cfg.trainer, "precision"))
    if m.dtype in _HALF_DTYPES and precision not in ("bf16-true", "16-true"):
        raise ConfigError(
            f"model.dtype={m.dtype} with trainer.precision={precision} would train {m.dtype} weights with no fp32 "
            f"master copy (optimizer updates lost to rounding): use trainer.precision={_true_precision(m.dtype)} to "
            "train in half precision on purpose, or model.dtype=auto (fp32 weights; with bf16-mixed, "
            "half-precision compute)"
        )
    if m.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(
            "model.attn_implementation=flash_attention_2 needs the flash-attn package (and an Ampere or newer NVIDIA "
            "GPU), which is not installed: pip install flash-attn, or use model.attn_implementation=sdpa"
        )
    if m.quantization is None:
        return
    where = f"model.quantization={m.quantization}"
    if m.name_or_path is None:
        raise ConfigError(
            f"{where} needs pretrained weights to quantize, but model={m.name} is built from model.architecture: set "
            "model.name_or_path (a hub id or a save_pretrained directory), or model.quantization=null"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"{where} needs bitsandbytes, which is not installed: pip install 'finexp[qlora]' "
            "(or model.quantization=null to load the weights unquantized)"
        )
    target = target_of(cfg.adapter)
    if target.endswith(_TRAINS_BASE_WEIGHTS):
        raise ConfigError(
            f"{where} with adapter={target.rsplit('.', 1)[-1]}: quantized base weights cannot train; use adapter=qlora "
            "(LoRA on every linear projection, as QLoRA does), adapter=lora, or model.quantization=null"
        )
    if precision in ("bf16-true", "16-true"):
        raise ConfigError(
            f"{where} with trainer.precision={precision}: Lightning would cast the quantized weights; use "
            "trainer.precision=bf16-mixed (bf16 compute, fp32 adapters) or 32-true"
        )


def _true_precision(dtype: str) -> str:
    return "bf16-true" if dtype == "bfloat16" else "16-true"


def _validate_sampling(cfg: DictConfig) -> None:
    """Few-shot / reduced-data settings (``data.k_shot`` ...) and the few-shot method (``method``)."""
    data = cfg.data
    given = [k for k in ("k_shot", "train_fraction", "train_size") if data.get(k) is not None]
    allowed = "set at most one of k_shot, train_fraction, train_size"
    _require(len(given) <= 1, "data", {k: data[k] for k in given}, allowed)
    for key in ("k_shot", "train_size"):
        _require(data.get(key) is None or data[key] >= 1, f"data.{key}", data.get(key), "must be >= 1 or null")
    fraction = data.get("train_fraction")
    _require(fraction is None or 0 < fraction <= 1, "data.train_fraction", fraction, "must be in (0, 1] or null")
    augment = data.get("augment")
    if augment is not None and augment.copies:
        from finexp.data.augment import OPS

        _require(augment.copies >= 0, "data.augment.copies", augment.copies, "must be >= 0")
        for op in augment.ops:
            _require(op in OPS, "data.augment.ops", op, f"choose from {', '.join(OPS)}")
        _require(0 < augment.probability <= 1, "data.augment.probability", augment.probability, "must be in (0, 1]")
        _require(augment.jitter_scale >= 0, "data.augment.jitter_scale", augment.jitter_scale, "must be >= 0")
        _require(
            cfg.privacy.name != "label_dp",
            "data.augment.copies",
            augment.copies,
            "must be 0 with privacy=label_dp (each copy would spend the row's label privacy again)",
        )
    method = cfg.get("method")
    if method is not None and method.name == "prompt":
        _validate_prompt(cfg)
    if method is None or method.name != "setfit":
        return
    _require(cfg.model.kind == "transformer", "method", "setfit", "needs an encoder model")
    _require(cfg.privacy.name != "dp_sgd", "method", "setfit", "stage 1 is not differentially private: not dp_sgd")
    _require(method.num_pairs is None or method.num_pairs >= 2, "method.num_pairs", method.num_pairs, ">= 2 or null")
    _require(method.max_pairs is None or method.max_pairs >= 2, "method.max_pairs", method.max_pairs, ">= 2 or null")
    for key in ("pair_epochs", "pair_batch_size"):
        _require(method[key] >= 1, f"method.{key}", method[key], "must be >= 1")
    _require(method.pair_lr > 0, "method.pair_lr", method.pair_lr, "must be > 0")
    _require(0 <= method.pair_warmup_ratio < 1, "method.pair_warmup_ratio", method.pair_warmup_ratio, "in [0, 1)")
    _require(method.head_init in ("logistic", "random"), "method.head_init", method.head_init, "logistic or random")


def _plain_value(node: Any) -> Any:
    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node


def _validate_prompt(cfg: DictConfig) -> None:
    """``method=prompt`` (PET): a classification task on a masked-LM encoder, a pattern and one entry per label."""
    method, name = cfg.method, "prompt"
    _require(cfg.model.kind == "transformer", "method", name, "needs a masked-LM encoder")
    _require(cfg.privacy.name != "dp_sgd", "method", name, "not with privacy=dp_sgd (the MLM head ties weights)")
    _require(OmegaConf.select(cfg, "model.fusion") is None, "method", name, "not with model.fusion (text only)")
    _require(not OmegaConf.select(cfg, "model.init_from"), "method", name, "not with model.init_from")
    template = method.template
    once = template.count("{text}") == 1 and template.count("{mask}") == 1
    _require(once, "method.template", template, "needs {text} and {mask} exactly once each")
    example = "e.g. method.verbalizer='{negative:bad,neutral:okay,positive:good}' (one word per label)"
    words = method.verbalizer
    _require(OmegaConf.is_dict(words) and len(words) > 0, "method.verbalizer", _plain_value(words), example)


def _validate_distill(cfg: DictConfig) -> None:
    """``distill.*`` (absent in configs saved before distillation existed)."""
    distill = cfg.get("distill")
    if distill is None or not distill.teacher:
        return
    _require(distill.temperature > 0, "distill.temperature", distill.temperature, "must be > 0")
    _require(0 <= distill.alpha <= 1, "distill.alpha", distill.alpha, "must be in [0, 1]")
    _require(distill.teacher_batch_size >= 1, "distill.teacher_batch_size", distill.teacher_batch_size, "must be >= 1")
    kind = cfg.model.kind
    _require(kind == "transformer", "distill.teacher", distill.teacher, f"the student must be an encoder, not {kind}")
    _require(
        cfg.privacy.name == "none",
        "privacy.name",
        cfg.privacy.name,
        "must be none with distill.teacher (the teacher's soft targets carry every training label unprotected)",
    )
    method = cfg.method.name
    _require(method == "finetune", "method", method, "distillation trains with the finetune loop: method=finetune")
    federated = bool(cfg.get("federated"))  # federated=none composes to an empty node
    _require(not federated, "federated", "on", "distillation trains centrally: federated=none with a teacher")


def _validate_fusion(cfg: DictConfig) -> None:
    """``model.fusion`` beside the other options (which problem types fuse: ``check_compatibility``)."""
    fusion = cfg.model.fusion
    if fusion is None:
        return
    if not cfg.task.numeric_columns and not cfg.task.hybrid.gbm_score:
        raise ConfigError("model.fusion=concat needs task.numeric_columns=[...] (the numeric columns to fuse)")
    _require(cfg.privacy.name != "dp_sgd", "model.fusion", fusion, "not with privacy=dp_sgd (text-only probe)")
    explain = cfg.analysis.explain
    _require(not explain, "analysis.explain", explain, "must be false with model.fusion (explains text only)")
    method, teacher = cfg.method.name, cfg.distill.teacher
    _require(method == "finetune", "method.name", method, "must be finetune with model.fusion")
    _require(not teacher, "distill.teacher", teacher, "must be null with model.fusion (text-only students)")


def _validate_tables(cfg: DictConfig) -> None:
    """``task.serialization``'s codebook (value maps, number formats) and ``task.hybrid`` (stacked boosting score);
    whether a mapped column exists is checked when the data is read (finexp.data.serialize.RowSerializer)."""
    from finexp.data.serialize import UNKNOWN_POLICIES, format_problem

    serialization, hybrid = cfg.task.serialization, cfg.task.hybrid
    policy = serialization.unknown_values
    allowed = f"choose one of {', '.join(UNKNOWN_POLICIES)}"
    _require(policy in UNKNOWN_POLICIES, "task.serialization.unknown_values", policy, allowed)
    for column, codes in serialization.value_map.items():
        if not OmegaConf.is_dict(codes):
            raise ConfigError(f"task.serialization.value_map.{column} must map codes to phrases ({{A11: 'below 0'}})")
    for column, rule in serialization.formats.items():
        problem = format_problem(OmegaConf.to_container(rule)) if OmegaConf.is_dict(rule) else "must be a mapping"
        if problem:
            raise ConfigError(f"task.serialization.formats.{column}: {problem}")
    if not hybrid.gbm_score:
        return
    _require(hybrid.folds >= 2, "task.hybrid.folds", hybrid.folds, "must be >= 2 (cross-fitting folds)")
    from finexp.baselines.stacking import STACKS

    _require(hybrid.stack in STACKS, "task.hybrid.stack", hybrid.stack, f"choose one of {', '.join(STACKS)}")
    fusion, text = cfg.model.fusion, cfg.task.text_column
    _require(fusion is not None, "model.fusion", fusion, "must be concat with task.hybrid.gbm_score (fuses the score)")
    _require(text is None, "task.text_column", text, "must be null with task.hybrid.gbm_score (table tasks)")
    _require(cfg.task.problem == "classification", "task.problem", cfg.task.problem, "classification with a hybrid")
    copies = cfg.data.augment.copies
    _require(copies == 0, "data.augment.copies", copies, "must be 0 with task.hybrid (copies would leak across folds)")
    from finexp.baselines import GradientBoosting  # the boosting's arguments, named as model=gbm names them

    known = set(inspect.signature(GradientBoosting).parameters)
    for key in hybrid.gbm:
        _require(key in known, f"task.hybrid.gbm.{key}", hybrid.gbm[key], f"not an argument ({', '.join(known)})")


def _validate_federated(cfg: DictConfig) -> None:
    """``federated=...``: Flower must be installed, the partition must make sense, and training must be local."""
    fed = cfg.get("federated")
    if not fed:  # federated=none (an empty node) or null: central training
        return
    if importlib.util.find_spec("flwr") is None:
        raise ConfigError("federated=... needs Flower, which is not installed: pip install 'finexp[federated]'")
    _require(fed.num_clients >= 2, "federated.num_clients", fed.num_clients, "must be >= 2")
    _require(fed.rounds >= 1, "federated.rounds", fed.rounds, "must be >= 1")
    _require(fed.local_epochs >= 1, "federated.local_epochs", fed.local_epochs, "must be >= 1")
    steps = fed.get("local_steps")
    _require(steps is None or steps >= 1, "federated.local_steps", steps, "must be >= 1 (null: local_epochs)")
    partitions = ("iid", "column", "dirichlet")
    allowed = f"choose one of {', '.join(partitions)}"
    _require(fed.partition in partitions, "federated.partition", fed.partition, allowed)
    if fed.partition == "column" and not fed.partition_column:
        raise ConfigError("federated.partition=column needs federated.partition_column (e.g. a region column)")
    _require(fed.alpha > 0, "federated.alpha", fed.alpha, "must be > 0 (lower: more label skew)")
    _require(fed.min_rows >= 1, "federated.min_rows", fed.min_rows, "must be >= 1")
    _require(fed.schedule in ("global", "round"), "federated.schedule", fed.schedule, "choose global or round")
    _require(fed.class_weights in (None, "balanced"), "federated.class_weights", fed.class_weights, "null or balanced")
    if fed.class_weights is not None:
        problem = cfg.task.problem
        _require(
            problem == "classification",
            "federated.class_weights",
            fed.class_weights,
            f"for task.problem=classification (a cross-entropy over labels), not {problem}",
        )
    if OmegaConf.is_missing(fed, "strategy") or "_target_" not in fed.strategy:
        raise ConfigError("federated.strategy needs a _target_ (a Flower strategy, e.g. flwr.server.strategy.FedAvg)")
    dp = fed.dp
    if dp.enabled:
        if (dp.noise_multiplier is None) == (dp.epsilon is None):
            raise ConfigError(
                "federated.dp needs exactly one of federated.dp.epsilon (noise solved for it) and "
                "federated.dp.noise_multiplier; set the other to null"
            )
        _require(dp.clipping_norm > 0, "federated.dp.clipping_norm", dp.clipping_norm, "must be > 0")
        if dp.noise_multiplier is not None:
            _require(dp.noise_multiplier >= 0, "federated.dp.noise_multiplier", dp.noise_multiplier, "must be >= 0")
        if dp.epsilon is not None:
            _require(dp.epsilon > 0, "federated.dp.epsilon", dp.epsilon, "must be > 0")
        _require(0 < dp.delta < 1, "federated.dp.delta", dp.delta, "must be in (0, 1)")
    _validate_central_dp(fed.central_dp)
    if fed.secure_aggregation:
        _require(fed.secure_max_rows >= 1, "federated.secure_max_rows", fed.secure_max_rows, "must be >= 1")
    if fed.secure_aggregation and fed.central_dp.enabled:
        raise ConfigError(
            "federated.secure_aggregation=true hides every update from the coordinator, which "
            "federated.central_dp must clip one by one; use federated.dp.enabled=true (clip and noise on each node)"
        )
    kind = cfg.model.kind
    _require(kind == "transformer", "model.kind", kind, "federated runs fine-tune a transformer (not a baseline)")
    if cfg.privacy.name == "dp_sgd" and dp.enabled:
        raise ConfigError(
            "privacy=dp_sgd (DP-SGD on every node, record-level) and federated.dp.enabled=true (client-level clip "
            "and noise of each update) are two guarantees for one privacy/epsilon; choose one "
            "(federated.central_dp composes with either)"
        )
    method = cfg.method.name
    _require(method == "finetune", "method.name", method, "federated clients train with method=finetune")
    trainer = cfg.trainer
    devices, strategy = trainer_setting(trainer, "devices"), trainer_setting(trainer, "strategy")
    _require(devices in (1, "1", "auto"), "trainer.devices", devices, "must be 1 with federated (one process)")
    _require(strategy == "auto", "trainer.strategy", strategy, "must be auto with federated (one process)")
    _require(cfg.ckpt_path is None, "ckpt_path", cfg.ckpt_path, "federated runs cannot resume mid-federation yet")


def _validate_central_dp(dp: DictConfig) -> None:
    """``federated.central_dp``: Flower's server-side clipping wrappers and the noise (or ε) they add."""
    if not dp.enabled:
        return
    if (dp.noise_multiplier is None) == (dp.epsilon is None):
        raise ConfigError(
            "federated.central_dp needs exactly one of federated.central_dp.epsilon (noise solved for it) and "
            "federated.central_dp.noise_multiplier; set the other to null"
        )
    key = "federated.central_dp"
    _require(dp.clipping in ("fixed", "adaptive"), f"{key}.clipping", dp.clipping, "choose fixed or adaptive")
    _require(dp.clipping_norm > 0, f"{key}.clipping_norm", dp.clipping_norm, "must be > 0")
    if dp.noise_multiplier is not None:
        _require(dp.noise_multiplier >= 0, f"{key}.noise_multiplier", dp.noise_multiplier, "must be >= 0")
    if dp.epsilon is not None:
        _require(dp.epsilon > 0, f"{key}.epsilon", dp.epsilon, "must be > 0")
    _require(0 < dp.delta < 1, f"{key}.delta", dp.delta, "must be in (0, 1)")
    quantile = dp.target_clipped_quantile
    _require(0 <= quantile <= 1, f"{key}.target_clipped_quantile", quantile, "must be in [0, 1]")
    _require(dp.clip_norm_lr > 0, f"{key}.clip_norm_lr", dp.clip_norm_lr, "must be > 0")


def _validate_baseline(cfg: DictConfig) -> None:
    if not cfg.model.get("estimator") or "_target_" not in cfg.model.estimator:
        raise ConfigError(f"model={cfg.model.name} is a baseline: model.estimator needs a _target_")
    if cfg.model.tokenizer is None:
        raise ConfigError("model.tokenizer must be set for a baseline (the shared datamodule tokenizes once)")
    _require(cfg.privacy.name != "dp_sgd", "privacy.name", cfg.privacy.name, "a baseline has no gradients: not dp_sgd")


def _validate_privacy(cfg: DictConfig) -> None:
    privacy = cfg.privacy
    if privacy.name == "dp_sgd":
        if (privacy.noise_multiplier is None) == (privacy.epsilon is None):
            raise ConfigError(
                "privacy=dp_sgd needs exactly one of privacy.epsilon (noise solved for it) and "
                "privacy.noise_multiplier; set the other to null"
            )
        _require(privacy.max_grad_norm > 0, "privacy.max_grad_norm", privacy.max_grad_norm, "must be > 0")
        if privacy.noise_multiplier is not None:
            _require(privacy.noise_multiplier >= 0, "privacy.noise_multiplier", privacy.noise_multiplier, ">= 0")
        if privacy.epsilon is not None:
            _require(privacy.epsilon > 0, "privacy.epsilon", privacy.epsilon, "must be > 0 (inf: no noise)")
        if privacy.delta is not None:
            _require(0 < privacy.delta < 1, "privacy.delta", privacy.delta, "must be in (0, 1) or null (1/N)")
        _require(privacy.accountant in ("rdp", "prv", "gdp"), "privacy.accountant", privacy.accountant, "rdp|prv|gdp")
        accumulate = trainer_setting(cfg.trainer, "accumulate_grad_batches")
        _require(accumulate == 1, "trainer.accumulate_grad_batches", accumulate, "must be 1 with privacy=dp_sgd")
        _require(
            cfg.task.class_weights is None,
            "task.class_weights",
            cfg.task.class_weights,
            "must be null with privacy=dp_sgd (a weighted mean couples the rows' gradients)",
        )
    elif privacy.name == "label_dp":
        _require(privacy.epsilon > 0, "privacy.epsilon", privacy.epsilon, "must be > 0 (inf: labels untouched)")
        _require(privacy.prior in (None, "first_stage"), "privacy.prior", privacy.prior, "null or first_stage")
        fraction = privacy.first_stage_fraction
        _require(0 < fraction < 1, "privacy.first_stage_fraction", fraction, "must be in (0, 1)")
    if privacy.mask_pii and privacy.pii.types is not None:
        from finexp.privacy.pii import PII_TYPES

        for kind in privacy.pii.types:
            _require(kind in PII_TYPES, "privacy.pii.types", kind, f"choose from {', '.join(PII_TYPES)}")


def validate_analysis(analysis: DictConfig | None) -> None:
    """Value checks of the ``analysis`` group (also run by finexp-eval and finexp-explain)."""
    if analysis is None:
        return
    rate, where = analysis.approval_rate, ("approval_rate", "val_f1_max", "default")
    _require(analysis.ece_bins >= 2, "analysis.ece_bins", analysis.ece_bins, "must be >= 2")
    _require(0 < rate < 1, "analysis.approval_rate", rate, "must be a fraction in (0, 1)")
    _require(analysis.explain_examples >= 1, "analysis.explain_examples", analysis.explain_examples, "must be >= 1")
    _require(analysis.ig_steps >= 2, "analysis.ig_steps", analysis.ig_steps, "must be >= 2")
    _require(analysis.top_words >= 1, "analysis.top_words", analysis.top_words, "must be >= 1")
    _require(analysis.fairness_at in where, "analysis.fairness_at", analysis.fairness_at, f"one of {', '.join(where)}")
    if analysis.explain:  # before training, not when the report is written at its end
        require_extra("explain", "analysis.explain=true")


def validate_serving(cfg: DictConfig) -> None:
    """Value checks of ``finexp-predict`` (``conf/predict.yaml``) and ``finexp-serve`` (``conf/serve.yaml``)."""
    if OmegaConf.select(cfg, "serve") is not None:  # finexp-serve: its HTTP stack is an extra
        require_extra("serve", "finexp-serve")
    for key in ("chunk_rows", "batch_size", "serve.max_batch", "serve.batch_size"):
        value = OmegaConf.select(cfg, key)
        _require(value is None or value >= 1, key, value, "must be >= 1")
    for key in ("attributions", "threads", "serve.threads"):
        value = OmegaConf.select(cfg, key)
        _require(value is None or value >= 0, key, value, "must be >= 0 (0: no attributions)")
    steps = OmegaConf.select(cfg, "ig_steps")
    _require(steps is None or steps >= 2, "ig_steps", steps, "must be >= 2")
    port = OmegaConf.select(cfg, "serve.port")
    _require(port is None or 0 <= port <= 65535, "serve.port", port, "must be in [0, 65535] (0: any free port)")
    for key in ("device", "serve.device"):
        value = OmegaConf.select(cfg, key)
        allowed = value is None or value in ("auto", "cpu") or str(value).startswith("cuda")
        _require(allowed, key, value, "auto, cpu or cuda[:N]")
    ckpt = OmegaConf.select(cfg, "ckpt")
    _require(bool(ckpt), "ckpt", ckpt, "give a checkpoint path, or several (a,b,c) for an ensemble")
