"""Learning-rate schedules (``conf/scheduler``) and the parameter groups every optimizer gets."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
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
    """Trainable parameters, with no weight decay on biases and normalisation weights (as BERT was trained).

    Each group carries ``param_names`` (a key torch optimizers keep), which :func:`layerwise_groups` reads.
    """
    decay, no_decay = {"params": [], "param_names": []}, {"params": [], "param_names": [], "weight_decay": 0.0}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = no_decay if param.ndim < 2 or "norm" in name.lower() else decay
        group["params"].append(param)
        group["param_names"].append(name)
    return [g for g in (decay, no_decay) if g["params"]]


_BLOCK = re.compile(r"\.(?:layer|layers|h|blocks?)\.(\d+)\.")  # BERT/RoBERTa, Llama, GPT-2, others
_EMBEDDING = re.compile(r"embed|\.wte\.|\.wpe\.")


def layer_depth(name: str) -> int | None:
    """Block index of a parameter name (``encoder.encoder.layer.3.attention...`` -> 3), None outside the blocks."""
    match = _BLOCK.search(name)
    return int(match.group(1)) if match else None


def layerwise_groups(
    groups: list[dict], lr: float, layer_decay: float = 1.0, head_lr: float | None = None
) -> list[dict]:
    """Split parameter groups by depth and give each its learning rate (groups need ``param_names``).

    Layer-wise decay (as in ELECTRA/BEiT fine-tuning): with ``L`` blocks, block ``i`` (0-based) gets
    ``lr * layer_decay ** (L - i)``, the embeddings ``lr * layer_decay ** (L + 1)``, and what sits above the blocks
    (final norms, soft prompts) ``lr``; the head (``head.*``) gets ``head_lr`` when set, else ``lr``. ``L`` is the
    highest block index among the given parameters plus one (the top block trains in every finexp strategy).

    Args:
        groups: groups from :func:`parameter_groups` (their other options, e.g. weight decay, are kept).
        lr: the optimizer's base learning rate.
        layer_decay: per-layer factor in (0, 1]; 1 means no decay.
        head_lr: learning rate of the head; None: ``lr``.
    """
    if layer_decay == 1.0 and head_lr is None:
        return groups
    if any("param_names" not in g for g in groups):
        raise ValueError("layer-wise learning rates need parameter groups with param_names (see parameter_groups)")
    names = [n for g in groups for n in g["param_names"]]
    depths = [d for d in map(layer_depth, names) if d is not None]
    top = max(depths) + 1 if depths else 0

    def rate(name: str) -> float:
        if name.startswith("head."):
            return head_lr if head_lr is not None else lr
        depth = layer_depth(name)
        if depth is None:
            depth = -1 if _EMBEDDING.search(name) and "prompt_encoder" not in name else top
        return lr * layer_decay ** (top - depth)

    split: list[dict] = []
    for group in groups:
        by_rate: dict[float, dict] = {}
        for param, name in zip(group["params"], group["param_names"], strict=True):
            entry = by_rate.setdefault(rate(name), {"params": [], "param_names": []})
            entry["params"].append(param)
            entry["param_names"].append(name)
        options = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        split += [{**options, **entry, "lr": r} for r, entry in sorted(by_rate.items(), reverse=True)]
    return split


def adamw(
    params: Iterable[dict],
    lr: float = 5e-5,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    layer_decay: float = 1.0,
    head_lr: float | None = None,
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over :func:`layerwise_groups` of ``params`` (plain AdamW with the defaults)."""
    groups = layerwise_groups(list(params), lr, layer_decay, head_lr)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


def sgd(
    params: Iterable[dict],
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = True,
    layer_decay: float = 1.0,
    head_lr: float | None = None,
) -> torch.optim.SGD:
    """``torch.optim.SGD`` over :func:`layerwise_groups` of ``params`` (plain SGD with the defaults)."""
    groups = layerwise_groups(list(params), lr, layer_decay, head_lr)
    return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)
