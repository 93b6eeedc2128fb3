"""The terms of the memory estimate: the bytes of a model's weights as loaded (full precision, NF4, int8) and what
one transformer block saves for backward (:func:`block_activations`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from finexp import FinexpError


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


# NF4 with double quantization, as bitsandbytes stores it: packed weights (2 per byte), an 8-bit absmax per block of
# 64 weights, an fp32 scale per 256 of those, the 16-entry NF4 code book and the 256-entry code of the absmax.
NF4_BLOCK = 64
NF4_BLOCKS_PER_SCALE = 256


def nf4_bytes(numel: int) -> int:
    """Bytes of one NF4, double-quantized weight of ``numel`` entries (bitsandbytes' layout)."""
    blocks = math.ceil(numel / NF4_BLOCK)
    return math.ceil(numel / 2) + blocks + 4 * math.ceil(blocks / NF4_BLOCKS_PER_SCALE) + 4 * 16 + 4 * 256 + 4


def int8_bytes(weight: torch.Tensor) -> int:
    """Bytes of one LLM.int8 weight: one byte per entry and an fp32 scale per output row."""
    return weight.numel() + 4 * weight.shape[0]


def is_linear(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2) is a linear layer with its weight stored transposed; bitsandbytes quantizes it too
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _is_lora(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "base_layer")


def transformer_of(model: nn.Module) -> nn.Module:
    """The transformers model inside ``model`` (a classifier's encoder, a peft wrapper's base model)."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and type(module).__name__ not in ("PeftModel",):
            return module
    raise FinexpError(f"{type(model).__name__} holds no transformers model to estimate the memory of")


def _quantized_weights(transformer: nn.Module) -> set[int]:
    """ids of the weights a 4-/8-bit load quantizes: frozen linear weights of the transformer (what
    ``from_pretrained(quantization_config=...)`` converts: not the output embeddings, not adapter layers)."""
    skip: set[int] = set()
    output = transformer.get_output_embeddings() if hasattr(transformer, "get_output_embeddings") else None
    if output is not None:
        skip.add(id(output.weight))
    ids = set()
    for name, module in transformer.named_modules():
        if not is_linear(module) or "lora_" in name or "modules_to_save" in name:
            continue
        weight = module.weight
        if id(weight) not in skip and not weight.requires_grad:
            ids.add(id(weight))
    return ids


def weight_bytes(model: nn.Module, quantization: str | None = None) -> int:
    """Bytes of every parameter and buffer of ``model`` as loaded (see the module docstring for 4-/8-bit)."""
    quantized = _quantized_weights(transformer_of(model)) if quantization else set()
    total = 0
    for param in unique_parameters(model):
        if id(param) in quantized:
            total += nf4_bytes(param.numel()) if quantization == "4bit" else int8_bytes(param)
        elif quantization and not param.requires_grad and param.is_floating_point():
            total += param.numel() * 4  # peft's prepare_model_for_kbit_training: fp32
        else:
            total += param.numel() * param.element_size()
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    return total


def unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list({id(p): p for p in model.parameters()}.values())  # tied weights once


@dataclass(frozen=True)
class BlockShape:
    """The dimensions of a transformer block that set what it saves for backward, read from its config and modules."""

    hidden: int
    intermediate: int
    heads: int
    kv_hidden: int  # key/value width: kv heads x head size (GQA)
    layers: int
    vocab: int
    rms_norm: bool  # RMSNorm computed in fp32 (Llama family) vs LayerNorm
    gated: bool  # SwiGLU (gate, up, down) vs a dense MLP with one activation
    activation_saves: int  # tensors of intermediate width a dense MLP's activation saves
    attention_dropout: float
    hidden_dropout: float
    embedding_dropout: float

    @classmethod
    def of(cls, transformer: nn.Module) -> BlockShape:
        config = transformer.config
        hidden = _first(config, "hidden_size", "n_embd", "d_model")
        heads = _first(config, "num_attention_heads", "n_head")
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        intermediate = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
        block = first_block(transformer)
        names = {name.rsplit(".", 1)[-1] for name, _ in block.named_modules()}
        norms = [type(m).__name__ for m in block.modules() if "norm" in type(m).__name__.lower()]
        act = str(getattr(config, "hidden_act", None) or getattr(config, "activation_function", "gelu"))
        return cls(
            hidden=hidden,
            intermediate=intermediate,
            heads=heads,
            kv_hidden=kv_heads * head_dim,
            layers=_first(config, "num_hidden_layers", "n_layer", "num_layers"),
            vocab=int(getattr(config, "vocab_size", 0) or 0),
            rms_norm=any("RMS" in n for n in norms),
            gated=bool(names & {"gate_proj", "gate_up_proj", "w1", "w3"}),
            activation_saves=ACTIVATION_SAVES.get(act, 1),
            attention_dropout=_dropout(config, "attention_probs_dropout_prob", "attn_pdrop", "attention_dropout"),
            hidden_dropout=_dropout(config, "hidden_dropout_prob", "resid_pdrop", "hidden_dropout"),
            embedding_dropout=_dropout(config, "hidden_dropout_prob", "embd_pdrop"),
        )


# How many intermediate-width tensors a dense MLP's activation saves: F.gelu and relu one; GPT-2's gelu_new is
# written out in Python (x, x^3 term, tanh, product: four).
ACTIVATION_SAVES = {"gelu_new": 4, "gelu_fast": 4, "quick_gelu": 2}


def _first(config: Any, *keys: str) -> int:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise FinexpError(f"cannot estimate memory: the model config has none of {', '.join(keys)}")


def _dropout(config: Any, *keys: str) -> float:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int | float):
            return float(value)
    return 0.0


def first_block(transformer: nn.Module) -> nn.Module:
    from finexp.adapters.layers import find_blocks

    return find_blocks(transformer)[0]


# The linear layers of a block by what their input is: layers of one group read the same tensor, saved once.
ROLES = (
    ("attention.output.dense", "attn_out"),  # BERT family
    ("intermediate.dense", "mlp_in"),
    ("output.dense", "mlp_out"),
    ("attn.c_attn", "attn_in"),  # GPT-2
    ("attn.c_proj", "attn_out"),
    ("mlp.c_fc", "mlp_in"),
    ("mlp.c_proj", "mlp_out"),
    ("q_proj", "attn_in"),  # Llama, Mistral, Qwen, Gemma, ...
    ("k_proj", "attn_in"),
    ("v_proj", "attn_in"),
    ("qkv_proj", "attn_in"),
    ("query", "attn_in"),
    ("key", "attn_in"),
    ("value", "attn_in"),
    ("o_proj", "attn_out"),
    ("out_proj", "attn_out"),
    ("gate_proj", "mlp_in"),
    ("up_proj", "mlp_in"),
    ("gate_up_proj", "mlp_in"),
    ("down_proj", "mlp_out"),
)


def _role(name: str) -> str:
    for suffix, role in ROLES:
        if name == suffix or name.endswith("." + suffix):
            return role
    return name  # an unknown layer: its input counted on its own


@dataclass(frozen=True)
class _Linear:
    role: str
    in_features: int
    weight_trains: bool
    lora_rank: int  # 0: no LoRA
    lora_dropout: float


def _block_linears(block: nn.Module) -> list[_Linear]:
    layers = []
    for name, module in block.named_modules():
        if "lora_" in name or name.endswith("base_layer"):
            continue
        if _is_lora(module):
            base = module.base_layer
            adapter = next(iter(module.lora_A))
            dropout = module.lora_dropout[adapter]
            layers.append(
                _Linear(
                    _role(name),
                    _in_features(base),
                    base.weight.requires_grad,
                    module.lora_A[adapter].out_features,
                    float(getattr(dropout, "p", 0.0)),
                )
            )
        elif is_linear(module):
            layers.append(_Linear(_role(name), _in_features(module), module.weight.requires_grad, 0, 0.0))
    return layers


def _in_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.weight.shape[0]  # Conv1D: (in, out)


def block_activations(
    block: nn.Module,
    shape: BlockShape,
    tokens: int,
    act_bytes: int,
    quantization: str | None = None,
    fused_attention: bool = True,
    mask_bytes: int | None = None,
    autocast: bool = False,
) -> float:
    """Bytes one transformer block saves for backward, per token of a ``tokens``-long sequence.

    Derived from what autograd keeps, op by op (checked against ``grad_fn._saved_*`` on Llama, GPT-2 and BERT):

    - each norm: RMSNorm its input in fp32 and the normalised input (only if the norm's weight trains);
      LayerNorm its input and two fp32 statistics;
    - each linear layer its input, only if its weight trains (a frozen weight needs just itself to pass the
      gradient on); layers that share an input (q/k/v, gate/up) save it once; under LoRA the adapter branch
      saves its dropout output and mask, and its rank-r middle; bitsandbytes' 8-bit CPU/XPU matmul saves the
      input whether or not the weight trains;
    - fused attention (sdpa's flash/efficient kernels, flash_attention_2): q, k, v, the output and one fp32
      log-sum-exp per head; materialised attention (eager, or sdpa's math path when attention dropout is on during
      training): q and the repeated k and v, the ``heads x tokens`` probabilities (in fp32 plus a cast copy for the
      Llama family), and with dropout its mask and the dropped probabilities;
    - the MLP: SwiGLU saves the gate's input, its silu and the up projection (three of intermediate width);
      a dense MLP what its activation saves (``ACTIVATION_SAVES``);
    - hidden dropout (BERT, GPT-2): a mask per dropout (two per block), in the activation dtype on CPU, one byte
      on CUDA.

    Args:
        act_bytes: bytes per element of the activations (2 under bf16/fp16 weights or autocast, else 4).
        mask_bytes: bytes per dropout mask element (default: ``act_bytes``, as CPU's dropout stores it).
        autocast: ``*-mixed`` precision: norms and the residual stream stay fp32, and every linear layer reading
            a norm's fp32 output saves its own cast copy of it (q, k and v each one).
    """
    s = act_bytes
    mask = s if mask_bytes is None else mask_bytes
    h, i, a = shape.hidden, shape.intermediate, shape.heads
    linears = _block_linears(block)
    norm_weights_train = any(
        p.requires_grad for m in block.modules() if "norm" in type(m).__name__.lower() for p in m.parameters()
    )
    total = 0.0
    norm = 4 if autocast else s  # autocast runs norms in fp32 on the fp32 residual stream
    if shape.rms_norm:
        total += 2 * (4 * h + 4 + (norm * h if norm_weights_train else 0))
    else:
        total += 2 * (norm * h + 8)
    groups: dict[str, list[_Linear]] = {}
    for layer in linears:
        groups.setdefault(layer.role, []).append(layer)
    for role, members in groups.items():
        width = members[0].in_features
        input_saved = any(m.weight_trains for m in members) or quantization == "8bit"
        for m in members:
            if m.lora_rank:
                if m.lora_dropout > 0:
                    total += (s + mask) * width  # the dropped copy lora_A reads, and the mask
                else:
                    input_saved = True  # lora_A reads the shared input itself
                total += s * m.lora_rank  # lora_A's output, read by lora_B
        if role == "attn_out" and fused_attention:
            continue  # the attention kernel saves its output anyway: the same tensor
        if autocast and role in ("attn_in", "mlp_in"):  # each layer casts the fp32 norm output itself
            total += s * width * sum(1 for m in members if m.weight_trains or quantization == "8bit")
        elif input_saved:
            total += s * width
    if fused_attention:
        total += s * (2 * h + 2 * shape.kv_hidden) + 4 * a
    else:
        probs = (4 + (s if s < 4 else 0)) if shape.rms_norm else s  # Llama's eager softmax runs in fp32
        total += 3 * s * h + a * tokens * probs
        if shape.attention_dropout > 0:
            total += a * tokens * (mask + s)
    if shape.gated:
        total += 3 * s * i
    else:
        total += shape.activation_saves * s * i
    if shape.hidden_dropout > 0:
        total += 2 * mask * h
    return total
