"""The typed schemas of finexp's config groups, registered in Hydra's ConfigStore.

YAML files in ``conf/`` extend them (``defaults: [/schema/<group>/<name>@_here_]``), so a misspelt key or a value of
the wrong type fails while Hydra composes the config. Closed sets of values are ``Enum`` fields (``model.dtype``,
``model.pooling`` ...): ``model.pooling=max`` fails at composition and names the allowed values.

This module holds the tops of the entry points' configs (``conf/train.yaml``, ``eval``, ``predict``, ``serve``) and
the groups only they use (``analysis``, ``federated``, ``search``, ``rules``, ``serve``, ``paths``); the groups of a
task and its data are in :mod:`finexp.config.task_schema`, those of a model and its training in
:mod:`finexp.config.training_schema`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING

from finexp.config.task_schema import DataConfig, TaskConfig
from finexp.config.training_schema import (
    AdamWConfig,
    BottleneckAdapterConfig,
    DistillConfig,
    DPSGDConfig,
    FreezeAdapterConfig,
    FullAdapterConfig,
    GenerativeMethodConfig,
    IA3AdapterConfig,
    LabelDPConfig,
    LoraAdapterConfig,
    MethodConfig,
    ModelConfig,
    PrefixTuningAdapterConfig,
    PrivacyConfig,
    PromptMethodConfig,
    PromptTuningAdapterConfig,
    RecipeConfig,
    SchedulerConfig,
    SetFitMethodConfig,
    SGDConfig,
    TopLayersAdapterConfig,
)


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
class FederatedDPConfig:
    """Client-side DP of a federated run: each client clips its update and adds Gaussian noise before sending it."""

    enabled: bool = False
    clipping_norm: float = 1.0  # L2 bound on a client's update per round (its sensitivity); low clips signal
    noise_multiplier: float | None = None  # noise std / clipping_norm; null: solved for `epsilon`
    epsilon: float | None = 8.0  # target ε per client over all rounds (noise solved for it); null with noise_multiplier
    delta: float = 1.0e-5


@dataclass
class FederatedCentralDPConfig:
    """Central DP of a federated run: the coordinator clips each node's update and noises their unweighted mean
    (Flower's server-side fixed or adaptive clipping strategy wrappers)."""

    enabled: bool = False
    clipping: str = "fixed"  # fixed | adaptive (the bound follows a quantile of the nodes' update norms)
    clipping_norm: float = 1.0  # L2 bound on one node's update per round (adaptive: the initial bound)
    noise_multiplier: float | None = None  # noise std / clipping_norm on the sum of updates; null: solved for epsilon
    epsilon: float | None = 8.0  # target ε per node over all rounds; null with noise_multiplier
    delta: float = 1.0e-5
    target_clipped_quantile: float = 0.5  # adaptive: the share of updates the bound should clip
    clip_norm_lr: float = 0.2  # adaptive: how fast the bound moves
    clipped_count_stddev: float | None = None  # adaptive: noise on the clipped count (> noise/2); null: nodes/20


@dataclass
class FederatedConfig:
    """``federated=fedavg|...``: institutions fine-tune one model on Flower's Message API (finexp.federated)."""

    num_clients: int = 5
    rounds: int = 3
    local_epochs: int = 1  # epochs over its own rows each client trains per round
    local_steps: int | None = None  # optimizer steps per round instead of local_epochs (less drift under skew)
    partition: str = "iid"  # iid (stratified) | column (one client per value of partition_column) | dirichlet
    partition_column: str | None = None  # partition=column: e.g. a region or lender column of the table
    alpha: float = 0.5  # partition=dirichlet: label skew, lower = more skewed
    min_rows: int = 10  # partition=dirichlet: redraw until every client holds at least this many rows
    partition_seed: int | None = None  # null: data.split_seed
    schedule: str = "global"  # global: the lr schedule spans all rounds | round: it restarts every round
    class_weights: str | None = None  # balanced: each node weighs its loss by its own label counts (label skew)
    strategy: Any = MISSING  # a Flower Message-API strategy (flwr.serverapp.strategy.*, ``_partial_: true``)
    dp: FederatedDPConfig = field(default_factory=FederatedDPConfig)
    central_dp: FederatedCentralDPConfig = field(default_factory=FederatedCentralDPConfig)
    runtime: str = "inprocess"  # inprocess (nodes in this process) | simulation (Flower + Ray) | deployment
    client_resources: dict[str, float] = field(default_factory=lambda: {"num_cpus": 1.0, "num_gpus": 0.0})
    superlink: str | None = None  # runtime=deployment: host:port of the SuperLink's Control API (flwr run; :9093)
    root_certificates: str | None = None  # runtime=deployment: CA certificate (PEM) of a TLS SuperLink; null: insecure
    min_available_nodes: int | None = None  # nodes a round waits for; null: num_clients
    accept_failures: bool = False  # true: a round goes on with the nodes that answered (failures recorded)
    timeout: float = 3600.0  # seconds a round waits for the nodes' replies
    secure_aggregation: bool = False  # SecAgg+ masks: the coordinator gets only the nodes' weighted mean
    secure_max_rows: int = 1000  # SecAgg+: the most rows a node may hold (its weight); ~ the largest node's rows


@dataclass
class SearchConfig:
    """``search=budgeted``: trials on the validation split within a budget, then the best setting retrained and
    tested once (finexp.search; ``space`` is checked against the composed config by finexp.config.search_space)."""

    trials: int = 8  # the most trials; fewer when budget_minutes runs out first
    budget_minutes: float | None = 30.0  # no trial starts after this much wall-clock time; null: only `trials`
    seed: int = II("seed")  # the sampler's proposals (TPE)
    startup_trials: int = 3  # random trials before TPE models the results, and before the pruner may stop one
    pruner: str = "median"  # median: stop a trial below the median of earlier ones at the same epoch | none
    warmup_epochs: int = 1  # epochs of every trial that are never pruned
    storage: str | None = None  # null: the study in memory; sqlite:///search.db keeps it (a rerun continues it)
    study_name: str | None = None  # the study's name in `storage`
    keep_trial_checkpoints: bool = False  # false: a trial's checkpoints are removed once it is scored
    space: dict[str, Any] = field(default_factory=dict)  # key -> {low, high, log, step} | {choices}, nested or dotted


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
    method: MethodConfig = field(default_factory=MethodConfig)
    trainer: Any = MISSING
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    logger: Any = None
    callbacks: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    federated: Any = None  # federated=none (empty): central training; fedavg|fedprox: Flower rounds
    search: Any = None  # search=none (empty): one run; budgeted: trials on val, the best retrained and tested once
    seed: int = 42
    run_name: str = MISSING
    tags: list[str] = field(default_factory=list)
    ckpt_path: str | None = None  # resume training from this checkpoint ("last": <run dir>/checkpoints/last.ckpt)
    resume: bool = True  # a rerun into a run directory of the same config: skip it if complete, else continue it
    resume_check: bool = True  # refuse ckpt_path from another task or label set (model.init_from is for that)
    test: bool = True  # evaluate the best checkpoint on the test split after training
    test_predictions: bool = True  # with test: write test_predictions.csv (per-row predictions, finexp-report's tests)


@dataclass
class RuleConfig:
    """One business rule: when ``when`` holds for a row, ``decision`` overrides the model's (finexp.rules)."""

    name: str = MISSING
    when: str = MISSING  # a condition over input columns, e.g. "Debt / Income > 0.6" (parsed safely, never eval'd)
    decision: str = MISSING


@dataclass
class RulesConfig:
    """Business rules applied after the model by finexp-predict, finexp-serve and finexp-eval (``conf/rules``)."""

    name: str = "none"
    rules: list[RuleConfig] = field(default_factory=list)  # in order of precedence: the first that matches decides
    decisions: dict[str, str] = field(default_factory=dict)  # model label -> decision (unlisted: the label itself)
    counts_as: dict[str, str] = field(default_factory=dict)  # rule-only decision -> label, for model + rules metrics
    extra_columns: list[str] = field(default_factory=list)  # input columns rules read that the model does not


@dataclass
class PredictConfig:
    """The top of ``conf/predict.yaml``."""

    ckpt: Any = MISSING  # a .ckpt, or several (a,b,c or [a,b,c]): an ensemble averaging their probabilities
    input: str = MISSING  # CSV, TSV, JSONL or Parquet
    output: str | None = None  # by extension; null: predictions.<input's extension> in the run directory
    chunk_rows: int = 10000
    batch_size: int = 64
    device: str = "auto"
    threads: int = 0
    attributions: int = 0
    ig_steps: int = 32
    progress: bool = True
    rules: RulesConfig = field(default_factory=RulesConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class ServerConfig:
    """``finexp-serve``'s HTTP settings (``serve.*``)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 256
    batch_size: int = 64
    # micro-batching across requests and the backend (finexp.serving.batcher, finexp.serving.onnx)
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    onnx: str | None = None  # a finexp-export format=onnx directory or .onnx file: ONNX Runtime scores
    precision: str = "fp32"  # fp32 | bf16 (PyTorch backend; finexp.serving.precision)
    bf16_tolerance: float = 0.05
    device: str = "auto"
    threads: int = 0
    log_level: str = "info"
    # request limits and access control (finexp.serve.create_app documents each)
    timeout_s: float = 30.0
    max_json_depth: int = 16
    max_text_chars: int = 100_000
    docs: bool = False
    api_key_env: str | None = None  # the NAME of an environment variable holding the key, never the key
    api_key_file: str | None = None
    access_log: bool = True


@dataclass
class ServeConfig:
    """The top of ``conf/serve.yaml``."""

    ckpt: Any = MISSING
    serve: ServerConfig = field(default_factory=ServerConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class EvalConfig:
    """The top of ``conf/eval.yaml``."""

    ckpt_path: str = MISSING  # a .ckpt written by finexp-train (its run's config.yaml is read from beside it)
    data_path: str | None = None  # evaluate on this file instead of the run's own test split
    batch_size: int | None = None
    trainer: Any = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)  # model + rules metrics beside the model's own


ALLOWED = {  # task.problem: the registered problem types (finexp.problems), checked by check_compatibility
    "model.fusion": (None, "concat"),
    "task.class_weights": (None, "balanced"),
    "privacy.name": ("none", "dp_sgd", "label_dp"),
    "method.name": ("finetune", "setfit", "prompt", "generative"),
}


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="predict_schema", node=PredictConfig)
    cs.store(name="serve_schema", node=ServeConfig)
    cs.store(group="schema/rules", name="rules", node=RulesConfig)
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
    cs.store(group="schema/recipe", name="recipe", node=RecipeConfig)
    cs.store(group="schema/privacy", name="privacy", node=PrivacyConfig)
    cs.store(group="schema/analysis", name="analysis", node=AnalysisConfig)
    cs.store(group="schema/distill", name="distill", node=DistillConfig)
    cs.store(group="schema/federated", name="federated", node=FederatedConfig)
    cs.store(group="schema/search", name="search", node=SearchConfig)
    cs.store(group="schema/privacy", name="dp_sgd", node=DPSGDConfig)
    cs.store(group="schema/privacy", name="label_dp", node=LabelDPConfig)
    cs.store(group="schema/method", name="method", node=MethodConfig)
    cs.store(group="schema/method", name="setfit", node=SetFitMethodConfig)
    cs.store(group="schema/method", name="prompt", node=PromptMethodConfig)
    cs.store(group="schema/method", name="generative", node=GenerativeMethodConfig)
