"""peft's methods (LoRA, IA³, prompt and prefix tuning) applied to a classifier's encoder; the head stays ours.

peft wraps only ``model.encoder``: the head sits outside it and always trains. Target modules default to the
architecture's attention projections and can be overridden from the config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from peft import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)
from peft.utils import (
    TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
    TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
)
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from finexp.adapters.layers import AdapterError

# LoRA targets per architecture: the attention query/value projections (Hu et al., 2021). Architectures not listed
# fall back to peft's own table; anything else must name its modules in adapter.target_modules.
LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "camembert": ["query", "value"],
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
}


def _model_type(encoder: nn.Module) -> str:
    return getattr(encoder.config, "model_type", type(encoder).__name__)


def _linear_names(encoder: nn.Module) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, m in encoder.named_modules() if isinstance(m, nn.Linear)}
    return sorted(names)


def lora_targets(encoder: nn.Module) -> list[str]:
    """The default LoRA target modules of this encoder's architecture."""
    model_type = _model_type(encoder)
    targets = LORA_TARGETS.get(model_type) or TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if not targets:
        raise AdapterError(
            f"no default LoRA target modules for model type {model_type!r}; set adapter.target_modules to some of "
            f"its linear layers: {', '.join(_linear_names(encoder))}"
        )
    return list(targets)


def _wrap(model: nn.Module, config: PeftConfig, method: str) -> nn.Module:
    """Apply ``config`` to ``model.encoder``; everything else frozen except the head."""
    model.requires_grad_(False)
    try:
        model.encoder = get_peft_model(model.encoder, config)
    except ValueError as err:  # e.g. a target module name that matches nothing
        raise AdapterError(f"adapter={method} cannot be applied to {_model_type(model.encoder)!r}: {err}") from None
    model.head.requires_grad_(True)
    return model


ALL_LINEAR = "all-linear"


def build_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.1,
    target_modules: Sequence[str] | None = None,
    use_dora: bool = False,
    use_rslora: bool = False,
) -> nn.Module:
    """LoRA: ``W + (alpha / r) B A`` on the target projections; only ``A``, ``B`` (and the head) train.

    Args:
        model: a :class:`~finexp.models.classifier.SequenceClassifier`.
        r: rank of the update.
        alpha: scaling numerator (``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA).
        dropout: dropout on the LoRA branch's input.
        target_modules: module names to adapt; None picks the architecture's attention query/value projections;
            ``[all-linear]`` every linear layer (QLoRA's choice).
        use_dora: DoRA (weight-decomposed LoRA: a trained magnitude per output feature).
        use_rslora: rank-stabilised scaling ``alpha / sqrt(r)``.
    """
    if r < 1:
        raise AdapterError(f"adapter.r={r} is not allowed: must be >= 1")
    targets: list[str] | str = list(target_modules) if target_modules else lora_targets(model.encoder)
    if targets == [ALL_LINEAR]:
        targets = ALL_LINEAR  # peft's keyword: every linear layer (a one-item list would be a module name)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        use_dora=use_dora,
        use_rslora=use_rslora,
        fan_in_fan_out=_model_type(model.encoder) == "gpt2",  # GPT-2's Conv1D stores weights transposed
    )
    return _wrap(model, config, "lora")


def build_ia3(
    model: nn.Module,
    target_modules: Sequence[str] | None = None,
    feedforward_modules: Sequence[str] | None = None,
) -> nn.Module:
    """IA³: learned vectors that rescale keys, values and the feed-forward activations (Liu et al., 2022).

    Args:
        model: a :class:`~finexp.models.classifier.SequenceClassifier`.
        target_modules: modules whose outputs (or inputs, for feed-forward ones) are rescaled; None: peft's
            defaults for the architecture.
        feedforward_modules: the subset of ``target_modules`` that are feed-forward layers (scaled on the input).
    """
    model_type = _model_type(model.encoder)
    targets = (
        list(target_modules) if target_modules else TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(model_type)
    )
    if not targets:
        raise AdapterError(
            f"no default IA³ target modules for model type {model_type!r}; set adapter.target_modules and "
            f"adapter.feedforward_modules (linear layers: {', '.join(_linear_names(model.encoder))})"
        )
    if feedforward_modules is None:
        feedforward_modules = TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type, [])
    config = IA3Config(
        target_modules=list(targets),
        feedforward_modules=list(feedforward_modules),
        fan_in_fan_out=model_type == "gpt2",
    )
    return _wrap(model, config, "ia3")


class PromptTunedEncoder(nn.Module):
    """A prompt-tuned encoder whose output drops the virtual tokens, so pooling sees one state per real token.

    peft prepends ``num_virtual_tokens`` learned embeddings (and extends the attention mask); the classifier's
    pooling uses the caller's mask, so the virtual positions are cut from ``last_hidden_state`` here.
    """

    def __init__(self, peft_model: PeftModel, num_virtual_tokens: int) -> None:
        super().__init__()
        self.peft = peft_model
        self.num_virtual_tokens = num_virtual_tokens

    @property
    def config(self) -> Any:
        return self.peft.base_model.config

    def get_input_embeddings(self) -> nn.Module:
        return self.peft.base_model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> BaseModelOutput:
        hidden = self.peft(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return BaseModelOutput(last_hidden_state=hidden[:, self.num_virtual_tokens :])


def _check_forward(model: nn.Module, method: str) -> None:
    """Run two tokens through the wrapped encoder: some architectures reject prompts only at forward time.

    Skipped for a model built with its parameters on the meta device (the memory estimate's): nothing can run
    there, and the real build checks again.
    """
    device = next(model.parameters()).device
    if device.type == "meta":
        return
    ids = torch.ones(1, 2, dtype=torch.long, device=device)
    try:
        with torch.no_grad():
            out = model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids))
    except Exception as err:  # whatever the architecture raises, the user needs the method, the model and the cause
        raise AdapterError(
            f"adapter={method} is not supported by model type {_model_type(model.encoder)!r}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Use adapter=lora or ia3."
        ) from None
    if out.last_hidden_state.shape[1] != ids.shape[1]:
        raise AdapterError(f"adapter={method}: the encoder returned {out.last_hidden_state.shape[1]} positions for 2")


def build_prompt_tuning(
    model: nn.Module,
    num_virtual_tokens: int = 20,
    init_text: str | None = None,
    tokenizer: str | None = None,
) -> nn.Module:
    """Prompt tuning: ``num_virtual_tokens`` trained input embeddings prepended to every row (Lester et al., 2021).

    Args:
        model: a :class:`~finexp.models.classifier.SequenceClassifier`.
        num_virtual_tokens: length of the soft prompt (each costs one position of ``data.max_length``'s budget).
        init_text: initialise the prompt from this text's token embeddings (else random).
        tokenizer: tokenizer name or path, needed with ``init_text``.
    """
    if num_virtual_tokens < 1:
        raise AdapterError(f"adapter.num_virtual_tokens={num_virtual_tokens} is not allowed: must be >= 1")
    if init_text and not tokenizer:
        raise AdapterError("adapter.init_text needs adapter.tokenizer (the model's tokenizer path) to embed the text")
    max_positions = getattr(model.encoder.config, "max_position_embeddings", None)
    if max_positions is not None and num_virtual_tokens >= max_positions:
        raise AdapterError(
            f"adapter.num_virtual_tokens={num_virtual_tokens} leaves no room for text: the model has "
            f"{max_positions} positions"
        )
    kwargs: dict[str, Any] = {"prompt_tuning_init": "RANDOM"}
    if init_text:
        kwargs = {
            "prompt_tuning_init": "TEXT",
            "prompt_tuning_init_text": init_text,
            "tokenizer_name_or_path": tokenizer,
        }
    config = PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=num_virtual_tokens, **kwargs)
    model = _wrap(model, config, "prompt_tuning")
    model.encoder = PromptTunedEncoder(model.encoder, num_virtual_tokens)
    _check_forward(model, "prompt_tuning")
    return model


def build_prefix_tuning(model: nn.Module, num_virtual_tokens: int = 20, prefix_projection: bool = False) -> nn.Module:
    """Prefix tuning: trained keys and values prepended in every attention layer (Li & Liang, 2021).

    Args:
        model: a :class:`~finexp.models.classifier.SequenceClassifier`.
        num_virtual_tokens: prefix length per layer.
        prefix_projection: reparametrise the prefix through an MLP (more parameters, often more stable).
    """
    if num_virtual_tokens < 1:
        raise AdapterError(f"adapter.num_virtual_tokens={num_virtual_tokens} is not allowed: must be >= 1")
    config = PrefixTuningConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        num_virtual_tokens=num_virtual_tokens,
        prefix_projection=prefix_projection,
    )
    model = _wrap(model, config, "prefix_tuning")
    _check_forward(model, "prefix_tuning")
    return model
