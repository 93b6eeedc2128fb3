"""Schemas of how a model is built and trained: ``model``, ``adapter``, ``optimizer``, ``scheduler``, ``privacy``,
``method`` and ``distill``. Registered in Hydra's ConfigStore by :mod:`finexp.config.schema`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from finexp.config.choices import AttnImplementation, DType, ModelKind, Pooling, Quantization


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
    lr: float | None = None  # None: the recipe's rate for the adapter (finexp.recipe)
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
class RecipeConfig:
    """``conf/recipe/*.yaml``: how :mod:`finexp.recipe` fills the epochs, lr and head lr a config leaves null."""

    name: str = "auto"
    steps_floor: int = 250  # optimizer steps of training at least ...
    steps_per_class: int = 30  # ... or this many per label, whichever is more
    min_epochs: int = 3
    max_epochs: int = 10
    lr: dict[str, float] = field(default_factory=dict)  # adapter option (full, lora, ...) -> its learning rate
    many_classes: int = 10  # from this many labels on, the head learns at head_lr
    head_lr: float | None = 1e-3


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
class DistillConfig:
    """Knowledge distillation from a trained finexp teacher (problems/distillation.py); off while teacher is null."""

    teacher: str | None = None  # a .ckpt written by finexp-train (same task and labels); null: no distillation
    temperature: float = 2.0  # softens both distributions; higher: more of the teacher's view of the wrong classes
    alpha: float = 0.5  # weight of the soft-target (KL) loss; 1 - alpha weighs the hard-label cross-entropy
    teacher_batch_size: int = 64  # rows per teacher forward pass (the teacher runs once, before training)
    cache: bool = True  # keep the teacher's logits in <run dir>/teacher_logits.pt (a resumed run reads them back)


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
