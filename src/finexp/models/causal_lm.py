"""A decoder language model split into ``encoder`` (the transformer) and ``head`` (the LM head), and decoding.

The split lets the adapters of :mod:`finexp.adapters` (which work on ``model.encoder`` and always train
``model.head``) apply to decoders unchanged: LoRA on GPT-2's ``c_attn``, prompt and prefix tuning, top layers.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from finexp.models.backbone import ModelLoadError, config_from_architecture, load_pretrained

# Decoder families that also appear in the masked-LM table (their causal head is the real one).
_DECODERS_WITH_MLM_HEADS = {"bart", "mbart", "xlm", "reformer"}


def build_causal_lm(
    name_or_path: str | None = None,
    architecture: dict[str, Any] | None = None,
    vocab_size: int | None = None,
    local_files_only: bool = False,
) -> PreTrainedModel:
    """A causal LM (``AutoModelForCausalLM``): pretrained, or built from ``architecture`` with random weights.

    Raises:
        ModelLoadError: the model is an encoder trained for masked-language modelling (BERT, MiniLM, ...), which
            cannot generate; or ``architecture`` has no ``model_type``.
    """
    if name_or_path is not None:
        config = load_pretrained(AutoConfig, name_or_path, "model config", local_files_only)
    else:
        config = config_from_architecture(architecture, vocab_size, "gpt2", "a decoder")
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and config.model_type not in _DECODERS_WITH_MLM_HEADS:
        raise ModelLoadError(
            f"task.problem=generation needs a decoder (GPT-style) model; {config.model_type!r} is a masked-language "
            "encoder. Use model=tiny_gpt, or model=hf model.name_or_path=<a causal LM such as gpt2>"
        )
    if name_or_path is not None:
        return load_pretrained(AutoModelForCausalLM, name_or_path, "model", local_files_only)
    return AutoModelForCausalLM.from_config(config)


class CausalLM(torch.nn.Module):
    """``logits = head(encoder(tokens))`` for every position: next-token scores.

    Args:
        lm: a transformers causal LM (``GPT2LMHeadModel``, ``LlamaForCausalLM``, ...). Its base model becomes
            ``encoder`` and its output embedding ``head`` (GPT-2 ties it to the input embeddings: one parameter).
    """

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.encoder = lm.base_model
        self.head = lm.get_output_embeddings()
        self.max_positions = _max_positions(lm.config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden)


def _max_positions(config: Any) -> int | None:
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@torch.no_grad()
def generate(
    model: CausalLM,
    prompt: torch.Tensor,
    eos_id: int,
    max_new_tokens: int = 48,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Continue one prompt (1-D token ids) until ``eos_id``, ``max_new_tokens`` or the model's last position.

    Greedy by default; with ``do_sample``, sampling from ``softmax(logits / temperature)`` (among the ``top_k``
    likeliest tokens if given). Each step runs the model over the whole sequence (no key/value cache): slower for
    long answers, but correct for every adapter, including prompt and prefix tuning, which wrap the forward pass.

    Returns:
        The generated ids, without the prompt and without the end token.
    """
    ids = prompt.view(1, -1)
    out: list[int] = []
    for _ in range(max_new_tokens):
        if model.max_positions is not None and ids.shape[1] >= model.max_positions:
            break
        logits = model(ids, torch.ones_like(ids))[0, -1].float()
        if do_sample:
            logits = logits / temperature
            if top_k is not None:
                threshold = logits.topk(min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < threshold, float("-inf"))
            token = int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
        else:
            token = int(logits.argmax())
        if token == eos_id:
            break
        out.append(token)
        ids = torch.cat([ids, ids.new_tensor([[token]])], dim=1)
    return out
