"""Strategies that choose which existing weights train (no new modules): the top ``k`` blocks."""

from __future__ import annotations

from torch import nn

from finexp.adapters.layers import AdapterError, find_blocks


def train_top_layers(model: nn.Module, k: int = 2) -> nn.Module:
    """Only the top ``k`` transformer blocks and the head train; embeddings and lower blocks stay frozen.

    Args:
        model: a :class:`~finexp.models.classifier.SequenceClassifier` (attributes ``encoder`` and ``head``).
        k: number of blocks, counted from the top, that train.
    """
    blocks = find_blocks(model.encoder)
    if not 1 <= k <= len(blocks):
        raise AdapterError(f"adapter.k={k} is not allowed: this encoder has {len(blocks)} layers (1..{len(blocks)})")
    model.requires_grad_(False)
    for block in blocks[len(blocks) - k :]:
        block.requires_grad_(True)
    model.head.requires_grad_(True)
    return model
