"""The estimate of a training step's peak memory, from a model built on the meta device (see :mod:`finexp.models.memory`
for the formula), and the check that stops a run which cannot fit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from finexp import FinexpError
from finexp.models.memory.terms import (
    BlockShape,
    block_activations,
    dtype_bytes,
    first_block,
    is_linear,
    transformer_of,
    unique_parameters,
    weight_bytes,
)


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
        tokens: tokens per sequence as the transformer sees them (padded length; prompt tuning's virtual tokens
            included).
        lm_positions: positions per step where a vocabulary-wide head runs (``sequences x tokens`` for language
            modelling; 0 for a pooled classifier).
        prefix_tokens: key/value positions every attention layer gets besides the tokens (prefix tuning's virtual
            tokens); 0: none.
    """

    sequences: int
    tokens: int
    lm_positions: int = 0
    prefix_tokens: int = 0


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
    params = unique_parameters(model)
    trainable = [p for p in params if p.requires_grad]
    weights = weight_bytes(model, quantization)
    gradients = sum(p.numel() * p.element_size() for p in trainable)
    optimizer = optimizer_states * gradients + (4 * len(trainable) if optimizer_states else 0)  # + a step count each

    weights_dtype = next((p.dtype for p in params if p.is_floating_point() and not p.requires_grad), None)
    weights_dtype = weights_dtype or next(p.dtype for p in params if p.is_floating_point())
    s = dtype_bytes(autocast_dtype) if autocast_dtype is not None else dtype_bytes(weights_dtype)
    if quantization:
        s = 4 if autocast_dtype is None else s  # k-bit preparation runs the rest in fp32; 4-bit outputs cast back
    mask_bytes = 1 if device == "cuda" else s
    attention = attn_implementation or "sdpa"
    # sdpa's fused CPU kernel has no dropout: with attention dropout in training it falls back to the math path
    fused = attention != "eager" and not (device == "cpu" and block_shape.attention_dropout > 0)
    tokens, sequences = shape.tokens, shape.sequences
    per_token = block_activations(
        first_block(transformer),
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
        autocast_copies = sum(m.weight.numel() for m in model.modules() if is_linear(m)) * dtype_bytes(autocast_dtype)
    # prefix tuning: the prompt encoder's keys and values of every layer (alive through the forward pass), and in
    # each layer the prefix part of the keys and values attention saves (and, materialised, its probabilities)
    prefix_block, prefix_outside = 0.0, 0.0
    if shape.prefix_tokens:
        prefix = shape.prefix_tokens * sequences
        # with a prefix, attention gets an explicit mask, and transformers repeats grouped key/value heads to every
        # query head before sdpa (no enable_gqa): the keys and values it saves are then all heads wide
        kv = block_shape.hidden if fused else block_shape.kv_hidden
        prefix_block = s * 2 * kv * prefix + s * 2 * (kv - block_shape.kv_hidden) * n_tokens
        if not fused:
            probs = (4 + (s if s < 4 else 0)) if block_shape.rms_norm else s
            dropped = mask_bytes + s if block_shape.attention_dropout > 0 else 0
            prefix_block += block_shape.heads * tokens * prefix * (probs + dropped)
        prefix_outside = prefix * _prefix_width(model) * s
    blocks += prefix_block * block_shape.layers
    outside += prefix_outside
    saved = blocks + outside + logits + autocast_copies
    # checkpointing: each block keeps its input; in backward one block at a time is recomputed
    checkpointed = (s * h * n_tokens) * block_shape.layers + per_token * n_tokens + prefix_block + outside + logits
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
        recomputed_block=int(per_token * n_tokens + prefix_block),
        step_scratch=int(step_scratch),
        gradient_checkpointing=gradient_checkpointing,
        parameters=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in trainable),
        shape=shape,
        notes=tuple(notes),
    )


def _prefix_width(model: nn.Module) -> int:
    """Entries per virtual token of prefix tuning's prompt encoder output (layers x 2 x hidden)."""
    for name, module in model.named_modules():
        if name.endswith("prompt_encoder") or ".prompt_encoder." in f".{name}.":
            embedding = next((m for m in module.modules() if isinstance(m, nn.Embedding)), None)
            if embedding is not None:
                return max(embedding.embedding_dim, *(getattr(m, "out_features", 0) for m in module.modules()))
    return 0


def _lm_head(model: nn.Module, transformer: nn.Module) -> nn.Module | None:
    head = getattr(model, "head", None)
    vocab = getattr(transformer.config, "vocab_size", None)
    if isinstance(head, nn.Linear) and head.out_features == vocab:
        return head
    return None


def virtual_tokens(model: nn.Module) -> tuple[int, int]:
    """``(prepended, prefix)``: the virtual tokens of peft's prompt learning in ``model``. Prompt tuning and
    p-tuning prepend theirs to every sequence (each block sees them as tokens); prefix tuning adds its own to every
    attention layer's keys and values. ``(0, 0)`` for any other adapter."""
    for module in model.modules():
        config = getattr(module, "active_peft_config", None)
        if config is not None and getattr(config, "is_prompt_learning", False):
            n = int(config.num_virtual_tokens)
            return (0, n) if str(getattr(config.peft_type, "value", config.peft_type)) == "PREFIX_TUNING" else (n, 0)
    return 0, 0


def step_shape(model: nn.Module, batch_size: int, max_length: int) -> StepShape:
    """What a training batch of ``batch_size`` rows of up to ``max_length`` tokens becomes inside finexp's models:
    a language model predicts every position; ``method=generative`` adds its instruction around each row and
    scores the answers (one sequence per row when every answer is one token, else one per row and class);
    classifiers pool, with no vocabulary-wide head. Prompt learning's virtual tokens (:func:`virtual_tokens`)
    lengthen every sequence (prompt tuning) or every layer's keys and values (prefix tuning)."""
    from finexp.models.causal_lm import CausalLM
    from finexp.models.generative import GenerativeClassifier

    prepended, prefix = virtual_tokens(model)
    if isinstance(model, CausalLM):
        return StepShape(batch_size, max_length + prepended, batch_size * max_length, prefix)
    if isinstance(model, GenerativeClassifier):
        answers = model.answers
        longest = max(len(a) for a in answers)
        tokens = max_length + len(model.prefix) + len(model.suffix) + (longest if longest > 1 else 0)
        if model.max_positions is not None:
            tokens = min(tokens, model.max_positions)
        if longest == 1:
            return StepShape(batch_size, tokens + prepended, batch_size, prefix)
        sequences = batch_size * len(answers)
        return StepShape(sequences, tokens + prepended, sequences * longest, prefix)
    return StepShape(batch_size, max_length + prepended, 0, prefix)


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
