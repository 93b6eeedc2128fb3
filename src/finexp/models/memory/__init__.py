"""The memory of a training step: estimated from the model's shapes before any weights load, and measured.

:func:`estimate_memory` (:mod:`.estimate`; its terms in :mod:`.terms`) reads a model built with its parameters on
the meta device (:func:`parameters_on_meta`: shapes, dtypes and ``requires_grad`` exactly as the real build makes
them, adapter included, no bytes allocated), and adds up what a step holds at its peak:

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

:func:`measure_step_peak` (:mod:`.measure`) measures the same quantity on a real step (CUDA's allocator counters,
or on CPU the allocation and free events of torch's profiler), so the estimate can be checked against it.
"""

from finexp.models.memory.estimate import (
    MemoryCheckError,
    MemoryEstimate,
    StepShape,
    available_memory,
    check_fits,
    estimate_memory,
    format_bytes,
    parameters_on_meta,
    step_shape,
)
from finexp.models.memory.measure import classification_step, measure_step_peak, resident_bytes
from finexp.models.memory.terms import BlockShape, block_activations, nf4_bytes, transformer_of, weight_bytes

__all__ = [
    "BlockShape",
    "MemoryCheckError",
    "MemoryEstimate",
    "StepShape",
    "available_memory",
    "block_activations",
    "check_fits",
    "classification_step",
    "estimate_memory",
    "format_bytes",
    "measure_step_peak",
    "nf4_bytes",
    "parameters_on_meta",
    "resident_bytes",
    "step_shape",
    "transformer_of",
    "weight_bytes",
]
