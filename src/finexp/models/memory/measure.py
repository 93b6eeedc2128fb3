"""Measuring a training step's peak memory (CUDA's allocator counters, or on CPU torch's profiler), to check the
estimate of :mod:`finexp.models.memory.estimate` against."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


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
