"""The memory of a training step: estimated from the model's shapes before any weights load, and measured.

:func:`estimate_memory` reads a model built with its parameters on the meta device (:func:`parameters_on_meta`:
shapes, dtypes and ``requires_grad`` exactly as the real build makes them, adapter included, no bytes allocated),
and adds up what a step holds at its peak:

- **weights**: each parameter's bytes in its dtype, buffers included; with a 4-bit base every frozen linear weight
  of the transformer is NF4 (half a byte per weight, an 8-bit absmax per block of 64, double-quantized to one fp32
  scale per 256 blocks, plus its 16-entry and 256-entry code books), with an 8-bit base one byte per weight plus
  one fp32 scale per output row; peft's k-bit preparation keeps every other parameter in fp32.
- **gradients**: one per trainable parameter, in its dtype.
- **optimizer state**: AdamW keeps two (``exp_avg``, ``exp_avg_sq``) per trainable parameter in its dtype, SGD
  with momentum one.
- **activations**: the tensors autograd saves for backward (:func:`block_activations` derives them op by op), plus
  the vocabulary-wide logits where a language-model head runs, and the transient gradients at the start of
  backward. With gradient checkpointing each block keeps only its input, and one block is recomputed at a time.

Lightning's step runs ``forward -> zero_grad -> backward -> optimizer.step``, so the previous step's gradients are
still alive at the end of the forward pass; the peak is therefore
``weights + optimizer + max(gradients + activations + forward transients, activations + backward transients,
gradients + optimizer-step scratch)``.

:func:`measure_step_peak` measures the same quantity on a real step (CUDA's allocator counters, or on CPU the
allocation and free events of torch's profiler), so the estimate can be checked against it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from finexp import FinexpError


class MemoryCheckError(FinexpError):
    """A run whose estimated memory does not fit the device."""


# ---------------------------------------------------------------------------------------------------------------
# Building without memory


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no memory, no initialisation cost); buffers
    and every other tensor stay real, so builder code that reads values (token ids, label words) still runs.

    ``with torch.device("meta")`` would also put those other tensors on meta, and reading them fails.
    """
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------------------------
# The estimate


@dataclass(frozen=True)
class StepShape:
    """What one training step feeds the transformer.

    Args:
        sequences: sequences per step (the batch; ``batch x classes`` for generative scoring of multi-token answers).
        tokens: tokens per sequence (padded length).
        lm_positions: positions per step where a vocabulary-wide head runs (``sequences x tokens`` for language
            modelling; 0 for a pooled classifier).
    """

    sequences: int
    tokens: int
    lm_positions: int = 0


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step needs at its peak, by part (see the module docstring for the formula).

    ``activations`` and ``activations_checkpointed`` are the activation terms without and with gradient
    checkpointing (transients included); ``gradient_checkpointing`` says which one the run uses.
    """

    weights: int
    gradients: int
    optimizer: int
    activations: int
    activations_checkpointed: int
    forward_transient: int
    backward_transient: int
    recomputed_block: int
    step_scratch: int
    gradient_checkpointing: bool
    parameters: int
    trainable: int
    shape: StepShape
    notes: tuple[str, ...] = field(default=())

    def total_for(self, checkpointing: bool) -> int:
        """The step's peak with or without gradient checkpointing."""
        saved = self.activations_checkpointed if checkpointing else self.activations
        # with checkpointing, the block recomputed in backward is not alive at the end of the forward pass
        forward = saved - (self.recomputed_block if checkpointing else 0)
        return (
            self.weights
            + self.optimizer
            + max(
                self.gradients + forward + self.forward_transient,
                saved + self.backward_transient,
                self.gradients + self.step_scratch,
            )
        )

    @property
    def total(self) -> int:
        """The peak of the run as configured."""
        return self.total_for(self.gradient_checkpointing)

    def records(self) -> dict[str, float]:
        """``metrics.json`` entries (MiB)."""
        mb = 2**20
        saved = self.activations_checkpointed if self.gradient_checkpointing else self.activations
        return {
            "memory/estimate_mb": self.total / mb,
            "memory/estimate_weights_mb": self.weights / mb,
            "memory/estimate_gradients_mb": self.gradients / mb,
            "memory/estimate_optimizer_mb": self.optimizer / mb,
            "memory/estimate_activations_mb": saved / mb,
        }

    def table(self, available: int | None = None, device: str | None = None) -> str:
        """The estimate as a small table, with and without checkpointing, next to the device's free memory."""
        shape = self.shape
        this_run = 1 if self.gradient_checkpointing else 0
        header = ["no checkpointing", "checkpointing"]
        header[this_run] += " *"
        rows = [
            ("weights", self.weights, self.weights),
            ("gradients", self.gradients, self.gradients),
            ("optimizer state", self.optimizer, self.optimizer),
            ("activations", self.activations, self.activations_checkpointed),
            ("peak", self.total_for(False), self.total_for(True)),
        ]
        lines = [
            f"memory estimate of a training step ({shape.sequences} x {shape.tokens} tokens; "
            f"{self.trainable:,} of {self.parameters:,} parameters train; * = this run):",
            f"  {'':<16}{header[0]:>20}{header[1]:>17}",
            *(f"  {name:<16}{format_bytes(a):>20}{format_bytes(b):>17}" for name, a, b in rows),
        ]
        lines.append("  (peak: end of forward, start of backward or the optimizer step, whichever holds the most)")
        if available is not None:
            lines.append(f"  {device or 'device'} free: {format_bytes(available)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``320.0 MiB``, ``12.0 KiB``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _bytes_of(dtype: torch.dtype) -> int:
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


def _is_linear(module: nn.Module) -> bool:
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
        if not _is_linear(module) or "lora_" in name or "modules_to_save" in name:
            continue
        weight = module.weight
        if id(weight) not in skip and not weight.requires_grad:
            ids.add(id(weight))
    return ids


def weight_bytes(model: nn.Module, quantization: str | None = None) -> int:
    """Bytes of every parameter and buffer of ``model`` as loaded (see the module docstring for 4-/8-bit)."""
    quantized = _quantized_weights(transformer_of(model)) if quantization else set()
    total = 0
    for param in _unique_parameters(model):
        if id(param) in quantized:
            total += nf4_bytes(param.numel()) if quantization == "4bit" else int8_bytes(param)
        elif quantization and not param.requires_grad and param.is_floating_point():
            total += param.numel() * 4  # peft's prepare_model_for_kbit_training: fp32
        else:
            total += param.numel() * param.element_size()
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    return total


def _unique_parameters(model: nn.Module) -> list[nn.Parameter]:
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
        block = _first_block(transformer)
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


def _first_block(transformer: nn.Module) -> nn.Module:
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
        elif _is_linear(module):
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


def estimate_memory(
    model: nn.Module,
    shape: StepShape,
    *,
    quantization: str | None = None,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    optimizer_states: int = 2,
    per_sample_gradients: int = 0,
    device: str = "cpu",
) -> MemoryEstimate:
    """The peak memory of one training step of ``model`` (parameters on meta, adapter applied; see the module
    docstring for the formula).

    Args:
        model: the run's model as :func:`parameters_on_meta` built it, unquantized (its dtype: the weights' dtype).
        shape: sequences, tokens and language-model positions of a step.
        quantization: ``4bit`` / ``8bit``: the frozen linear weights of the transformer as bitsandbytes stores them.
        gradient_checkpointing: which of the two activation terms the run uses (both are computed).
        attn_implementation: ``eager``, ``sdpa``, ``flash_attention_2``; None: transformers' default (sdpa where the
            architecture has it).
        autocast_dtype: ``*-mixed`` precision's compute dtype (activations in it, a cast copy of every linear
            weight kept for backward); None: activations in the weights' dtype.
        optimizer_states: state tensors per trainable parameter (AdamW 2, SGD with momentum 1, plain SGD 0).
        per_sample_gradients: DP-SGD's batch size (Opacus keeps a gradient per row of the batch); 0: none.
        device: ``cpu`` or ``cuda`` (dropout masks, optimizer-step scratch).
    """
    transformer = transformer_of(model)
    block_shape = BlockShape.of(transformer)
    params = _unique_parameters(model)
    trainable = [p for p in params if p.requires_grad]
    weights = weight_bytes(model, quantization)
    gradients = sum(p.numel() * p.element_size() for p in trainable)
    optimizer = optimizer_states * gradients + (4 * len(trainable) if optimizer_states else 0)  # + a step count each

    weights_dtype = next((p.dtype for p in params if p.is_floating_point() and not p.requires_grad), None)
    weights_dtype = weights_dtype or next(p.dtype for p in params if p.is_floating_point())
    s = _bytes_of(autocast_dtype) if autocast_dtype is not None else _bytes_of(weights_dtype)
    if quantization:
        s = 4 if autocast_dtype is None else s  # k-bit preparation runs the rest in fp32; 4-bit outputs cast back
    mask_bytes = 1 if device == "cuda" else s
    attention = attn_implementation or "sdpa"
    # sdpa's fused CPU kernel has no dropout: with attention dropout in training it falls back to the math path
    fused = attention != "eager" and not (device == "cpu" and block_shape.attention_dropout > 0)
    tokens, sequences = shape.tokens, shape.sequences
    per_token = block_activations(
        _first_block(transformer),
        block_shape,
        tokens,
        s,
        quantization,
        fused_attention=fused,
        mask_bytes=mask_bytes,
        autocast=autocast_dtype is not None,
    )
    n_tokens = sequences * tokens
    blocks = per_token * n_tokens * block_shape.layers
    h, i, v = block_shape.hidden, block_shape.intermediate, block_shape.vocab
    # around the blocks: token ids, embedding dropout's mask, the final (or embedding) norm, the LM head's input
    outside = 8 * n_tokens + (mask_bytes * h * n_tokens if block_shape.embedding_dropout > 0 else 0)
    norm = 4 if autocast_dtype is not None else s
    outside += (4 * h + 4 if block_shape.rms_norm else norm * h + 8) * n_tokens
    head = _lm_head(model, transformer)
    if shape.lm_positions and head is not None and head.weight.requires_grad:
        outside += s * h * shape.lm_positions
    logits = 4 * v * shape.lm_positions  # the fp32 log-softmax the loss saves
    autocast_copies = 0
    if autocast_dtype is not None:  # autocast keeps a cast copy of every linear weight for backward
        autocast_copies = sum(m.weight.numel() for m in model.modules() if _is_linear(m)) * _bytes_of(autocast_dtype)
    saved = blocks + outside + logits + autocast_copies
    # checkpointing: each block keeps its input; in backward one block at a time is recomputed
    checkpointed = (s * h * n_tokens) * block_shape.layers + per_token * n_tokens + outside + logits
    checkpointed += autocast_copies
    # transients: the logits and their fp32 copy inside the loss, the causal mask (end of forward); the gradients
    # of the log-softmax and the logits, and of one block's intermediates (start of backward)
    mask_bytes_total = sequences * tokens * tokens * (s if not fused else 1)
    forward_transient = (s + 4) * v * shape.lm_positions + mask_bytes_total
    block_grads = s * (2 * i + 2 * h) * n_tokens
    backward_transient = 8 * v * shape.lm_positions + block_grads
    if device == "cuda":
        step_scratch = gradients  # foreach AdamW: sqrt(exp_avg_sq) of every parameter at once
    else:
        step_scratch = 2 * max((p.numel() * p.element_size() for p in trainable), default=0)  # one at a time
    if not optimizer_states:
        step_scratch = 0
    notes: list[str] = []
    if per_sample_gradients:
        gradients *= 1 + per_sample_gradients
        notes.append(f"DP-SGD: a gradient per row of the batch ({per_sample_gradients}) besides the summed one")
    if quantization:
        notes.append(f"{quantization} base: frozen linear weights of the transformer quantized, the rest fp32")
    return MemoryEstimate(
        weights=int(weights),
        gradients=int(gradients),
        optimizer=int(optimizer),
        activations=int(saved),
        activations_checkpointed=int(checkpointed),
        forward_transient=int(forward_transient),
        backward_transient=int(backward_transient),
        recomputed_block=int(per_token * n_tokens),
        step_scratch=int(step_scratch),
        gradient_checkpointing=gradient_checkpointing,
        parameters=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in trainable),
        shape=shape,
        notes=tuple(notes),
    )


def _lm_head(model: nn.Module, transformer: nn.Module) -> nn.Module | None:
    head = getattr(model, "head", None)
    vocab = getattr(transformer.config, "vocab_size", None)
    if isinstance(head, nn.Linear) and head.out_features == vocab:
        return head
    return None


def step_shape(model: nn.Module, batch_size: int, max_length: int) -> StepShape:
    """What a training batch of ``batch_size`` rows of up to ``max_length`` tokens becomes inside finexp's models:
    a language model predicts every position; ``method=generative`` adds its instruction around each row and
    scores the answers (one sequence per row when every answer is one token, else one per row and class);
    classifiers pool, with no vocabulary-wide head."""
    from finexp.models.causal_lm import CausalLM
    from finexp.models.generative import GenerativeClassifier

    if isinstance(model, CausalLM):
        return StepShape(batch_size, max_length, batch_size * max_length)
    if isinstance(model, GenerativeClassifier):
        answers = model.answers
        longest = max(len(a) for a in answers)
        tokens = max_length + len(model.prefix) + len(model.suffix) + (longest if longest > 1 else 0)
        if model.max_positions is not None:
            tokens = min(tokens, model.max_positions)
        if longest == 1:
            return StepShape(batch_size, tokens, batch_size)
        sequences = batch_size * len(answers)
        return StepShape(sequences, tokens, sequences * longest)
    return StepShape(batch_size, max_length, 0)


# ---------------------------------------------------------------------------------------------------------------
# The device, and the check


def available_memory(device: str) -> int:
    """Free bytes on ``device``: CUDA's free memory (``torch.cuda.mem_get_info``), or the RAM the OS can give
    (``psutil.virtual_memory().available``)."""
    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits(estimate: MemoryEstimate, available: int, device: str, processes: int = 1) -> None:
    """Stop, saying what to change, when the estimated peak (times ``processes`` sharing the device, as CPU DDP
    ranks share the RAM) exceeds the device's free memory."""
    needed = estimate.total * processes
    if needed <= available:
        return
    gib = 2**30
    hints = []
    if not estimate.gradient_checkpointing and estimate.total_for(True) < estimate.total:
        hints.append(f"model.gradient_checkpointing=true (~{estimate.total_for(True) * processes / gib:.2f} GiB)")
    hints += ["adapter=qlora", "a smaller data.batch_size or data.max_length"]
    ranks = f" ({processes} processes)" if processes > 1 else ""
    raise MemoryCheckError(
        f"this run needs ~{needed / gib:.2f} GiB{ranks} at its peak, the {device} has {available / gib:.2f} GiB "
        f"free: set {' / '.join(hints)}, or model.check_memory=false to skip this check"
    )


# ---------------------------------------------------------------------------------------------------------------
# Measuring


def quantization_state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The tensors bitsandbytes keeps beside quantized weights (absmax, code books, row scales): neither
    parameters nor buffers, but memory."""
    tensors: list[torch.Tensor] = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        while state is not None:
            tensors += [t for t in (state.absmax, state.code, getattr(state, "offset", None)) if t is not None]
            state = getattr(state, "state2", None)
        scale = getattr(weight, "SCB", None)
        if isinstance(scale, torch.Tensor):
            tensors.append(scale)
    return tensors


def _storage_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    storages: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def resident_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes held by ``model`` (parameters, buffers, gradients, quantization state) and ``optimizer``'s state."""
    tensors: list[torch.Tensor | None] = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters()] + quantization_state_tensors(model)
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return _storage_bytes(tensors)


def classification_step(
    model: nn.Module,
    batch: int,
    length: int,
    vocab: int,
    num_labels: int,
    losses: list[float] | None = None,
) -> Callable[[], None]:
    """One classification training step in Lightning's order (training_step, where the logits live and die, then
    zero_grad, backward, AdamW step) on seeded random token ids: what :func:`measure_step_peak` measures against the
    estimate. Each call appends its loss to ``losses``; the optimizer is the step's ``optimizer`` attribute."""
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (batch, length), generator=generator)
    labels = torch.randint(0, num_labels, (batch,), generator=generator)

    def step() -> None:
        loss = F.cross_entropy(model(ids, torch.ones_like(ids)).float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if losses is not None:
            losses.append(loss.item())

    step.optimizer = optimizer  # type: ignore[attr-defined]
    return step


def measure_step_peak(
    step: Callable[[], object],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    warmup: int = 1,
) -> int:
    """The peak bytes allocated by torch during one call of ``step`` (after ``warmup`` calls, so the optimizer
    state and gradients of the previous step exist as they do in a long run), everything alive included.

    On CUDA: the caching allocator's ``max_memory_allocated``. On CPU, where the process's resident set size mixes
    in the interpreter, libraries and the allocator's free lists: torch's profiler records every allocation and
    free of the CPU allocator with its size and time; their running sum over the measured step, on top of the
    bytes alive before it, is the live-bytes curve, and its maximum the peak (exact to the byte, intermediates
    freed within an op included). The warm-up runs inside the profiler too, so every block freed during the
    measured step was allocated while it recorded (a free of memory allocated before the profiler started is not
    reported); before it, gradients are released (``zero_grad(set_to_none=True)``) for the same reason.
    """
    model.zero_grad(set_to_none=True)
    if next(model.parameters()).device.type == "cuda":
        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())

    from torch.profiler import ProfilerActivity, profile, record_function

    before = resident_bytes(model, optimizer)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(warmup):
            step()
        with record_function("finexp.measured_step"):
            step()
    events = list(prof.profiler.kineto_results.events())  # type: ignore[union-attr]
    mark = next(e for e in events if e.name() == "finexp.measured_step")
    start, end = mark.start_ns(), mark.end_ns()
    allocations = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live, peak = 0, None
    for time_ns, nbytes in allocations:
        if time_ns >= start and peak is None:
            peak = live
        live += nbytes
        if start <= time_ns <= end:
            peak = max(peak or 0, live)
    return before + int(peak or live)
