"""A decoder language model split into ``encoder`` (the transformer) and ``head`` (the LM head), and decoding.

The split lets the adapters of :mod:`finexp.adapters` (which work on ``model.encoder`` and always train
``model.head``) apply to decoders unchanged: LoRA on GPT-2's ``c_attn``, prompt and prefix tuning, top layers.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from finexp import FinexpError
from finexp.models.backbone import (
    LoadOptions,
    ModelLoadError,
    config_from_architecture,
    load_model,
    load_pretrained,
    prepare_for_training,
)

# Decoder families that also appear in the masked-LM table (their causal head is the real one).
_DECODERS_WITH_MLM_HEADS = {"bart", "mbart", "xlm", "reformer"}


def build_causal_lm(
    name_or_path: str | None = None,
    architecture: dict[str, Any] | None = None,
    vocab_size: int | None = None,
    local_files_only: bool = False,
    options: LoadOptions | None = None,
) -> PreTrainedModel:
    """A causal LM (``AutoModelForCausalLM``): pretrained, or built from ``architecture`` with random weights;
    ``options`` (dtype, attention, 4-/8-bit base, checkpointing, revision) say how.

    Raises:
        ModelLoadError: the model is an encoder trained for masked-language modelling (BERT, MiniLM, ...), which
            cannot generate; or ``architecture`` has no ``model_type``.
    """
    options = options or LoadOptions()
    if name_or_path is not None:
        revision = {"revision": options.revision} if options.revision else {}
        config = load_pretrained(AutoConfig, name_or_path, "model config", local_files_only, **revision)
    else:
        config = config_from_architecture(architecture, vocab_size, "gpt2", "a decoder")
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and config.model_type not in _DECODERS_WITH_MLM_HEADS:
        raise ModelLoadError(
            f"task.problem=generation needs a decoder (GPT-style) model; {config.model_type!r} is a masked-language "
            "encoder. Use model=tiny_gpt, or model=hf model.name_or_path=<a causal LM such as gpt2>"
        )
    if name_or_path is not None:
        return load_model(AutoModelForCausalLM, name_or_path, local_files_only, options)
    return prepare_for_training(AutoModelForCausalLM.from_config(config, **options.config_kwargs()), options)


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

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of every position. With ``position_ids`` (packed rows, :mod:`finexp.data.packing`) the 2-D mask
        is left out: transformers reads the position restarts as row boundaries and masks attention across them (only
        without a key/value cache, hence ``use_cache=False``)."""
        if position_ids is not None:
            hidden = self.encoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        else:
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
    likeliest tokens if given). Each step runs the model over the whole sequence (no key/value cache): slow, but
    correct for every adapter, including prompt and prefix tuning, which wrap the forward pass. Many prompts at
    once, with a cache: :func:`generate_batch`.

    Returns:
        The generated ids, without the prompt and without the end token.
    """
    ids = prompt.view(1, -1)
    out: list[int] = []
    for _ in range(max_new_tokens):
        if model.max_positions is not None and ids.shape[1] >= model.max_positions:
            break
        logits = model(ids, torch.ones_like(ids))[:, -1]
        token = int(_next_tokens(logits, do_sample, temperature, top_k, generator)[0])
        if token == eos_id:
            break
        out.append(token)
        ids = torch.cat([ids, ids.new_tensor([[token]])], dim=1)
    return out


def _next_tokens(
    logits: torch.Tensor,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One next token per row of ``logits`` (``(rows, vocab)``): the argmax, or a draw (see :func:`generate`)."""
    logits = logits.float()
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        threshold = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def supports_cache(model: CausalLM) -> bool:
    """Whether ``model.encoder`` can decode with a key/value cache (:func:`generate_batch`'s fast path).

    Not under peft's prompt learning (prompt, prefix, p-tuning): its wrapper re-prepends the virtual tokens (or
    the prefix keys/values, passed as ``past_key_values`` themselves) on every call, so a call that feeds one new
    token on top of a cache would see the prompt again, or clash with the cache argument.
    """
    for module in model.encoder.modules():
        config = getattr(module, "active_peft_config", None)
        if config is not None and config.is_prompt_learning:
            return False
    return True


def _cache_keyword(encoder: torch.nn.Module) -> str:
    """The transformers model's name for its key/value cache, argument and output field alike.

    Recent transformers 5 releases call it ``cache`` (and warn on the older ``past_key_values``, which finexp's
    lower bound, transformers 4.45, still needs).
    """
    base = next((m for m in encoder.modules() if isinstance(m, PreTrainedModel)), encoder)
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _left_pad(prompts: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of the prompts left-padded to the longest: every row's last token is its last column."""
    width = max(len(prompt) for prompt in prompts)
    ids = prompts[0].new_full((len(prompts), width), pad_id)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            ids[row, width - len(prompt) :] = prompt
            mask[row, width - len(prompt) :] = 1
    return ids, mask


@torch.no_grad()
def generate_batch(
    model: CausalLM,
    prompts: list[torch.Tensor],
    pad_id: int,
    eos_id: int,
    max_new_tokens: int = 48,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Continue many prompts at once with a key/value cache; each row stops as :func:`generate` does.

    The prompts are left-padded (so every row's next token is the last column) and their positions count real
    tokens only, so a greedy row decodes what :func:`generate` decodes for its prompt alone (up to float rounding
    of near-ties); the prompt runs once, then each step feeds only the new tokens. A row that has ended keeps
    feeding masked padding until all have. Sampling draws every row's token from ``generator`` in one call per step:
    reproducible for the same seed and batch, but not the same draws as :func:`generate` row by row.
    Models that cannot use a cache (see :func:`supports_cache`) are decoded prompt by prompt with :func:`generate`.

    Args:
        model: the decoder.
        prompts: 1-D token ids, one tensor per prompt (lengths may differ; none empty), on the model's device.
        pad_id: the id put in padded positions (masked: any valid id works).
        eos_id: the token that ends an answer (never returned).
        max_new_tokens: the longest answer.
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature.
        top_k: sample among the ``top_k`` likeliest tokens only (None: all).
        generator: the random source of sampling.

    Returns:
        Each prompt's generated ids, in order, without the prompt and the end token.

    Raises:
        FinexpError: a prompt is empty (there is no last token to continue from).
    """
    if not prompts:
        return []
    if any(len(prompt) == 0 for prompt in prompts):
        raise FinexpError("generate_batch: a prompt is empty; give every prompt at least one token (e.g. bos)")
    decoding = {"do_sample": do_sample, "temperature": temperature, "top_k": top_k, "generator": generator}
    if not supports_cache(model):
        return [generate(model, prompt, eos_id, max_new_tokens, **decoding) for prompt in prompts]

    cache_key = _cache_keyword(model.encoder)
    ids, mask = _left_pad(prompts, pad_id)
    lengths = mask.sum(-1)  # real tokens of each row so far (prompt + answer)
    limit = model.max_positions
    done = lengths >= limit if limit is not None else torch.zeros_like(lengths, dtype=torch.bool)
    out: list[list[int]] = [[] for _ in prompts]
    cache = None
    step_ids = ids
    for _ in range(max_new_tokens):
        if bool(done.all()):
            break
        # padding (and an ended row's later steps) sits at position 0 / its last one: masked, never attended to
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
        result = model.encoder(
            input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_key: cache}
        )
        cache = getattr(result, cache_key, None)
        if cache is None:  # the model declined to cache (a config or wrapper turned it off): feeding only the new
            # tokens would silently lose the context, so start over prompt by prompt
            return [generate(model, prompt, eos_id, max_new_tokens, **decoding) for prompt in prompts]
        tokens = _next_tokens(model.head(result.last_hidden_state[:, -1]), **decoding)
        done |= tokens == eos_id
        for row in (~done).nonzero().flatten().tolist():
            out[row].append(int(tokens[row]))
        lengths = lengths + (~done).long()
        if limit is not None:
            done |= lengths >= limit
        # an ended row (end token, or its last position) feeds masked padding from here on
        live = ~done
        step_ids = torch.where(live, tokens, torch.full_like(tokens, pad_id)).view(-1, 1)
        mask = torch.cat([mask, live.long().view(-1, 1)], dim=1)
    return out
