"""Learning-rate schedules (``conf/scheduler``) and the parameter groups every optimizer gets."""

from __future__ import annotations

import math

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup_steps(num_training_steps: int, warmup_ratio: float) -> int:
    return math.ceil(num_training_steps * warmup_ratio)


def linear_warmup(optimizer: Optimizer, num_training_steps: int, warmup_ratio: float = 0.1) -> LambdaLR:
    """Linear warm-up to the peak learning rate, then linear decay to zero."""
    warmup = _warmup_steps(num_training_steps, warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - warmup))

    return LambdaLR(optimizer, factor)


def cosine(optimizer: Optimizer, num_training_steps: int, warmup_ratio: float = 0.1) -> LambdaLR:
    """Linear warm-up, then half a cosine down to zero."""
    warmup = _warmup_steps(num_training_steps, warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, num_training_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, num_training_steps: int, warmup_ratio: float = 0.0) -> LambdaLR:
    """Optional linear warm-up, then a constant learning rate."""
    warmup = _warmup_steps(num_training_steps, warmup_ratio)
    return LambdaLR(optimizer, lambda step: (step + 1) / warmup if step < warmup else 1.0)


def parameter_groups(model: nn.Module) -> list[dict]:
    """Trainable parameters, with no weight decay on biases and normalisation weights (as BERT was trained)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
