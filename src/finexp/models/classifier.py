"""An encoder, a pooling of its token states, and a linear head."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce token states ``(batch, seq, dim)`` to one vector per row, ignoring padding.

    ``mean``: average of real tokens (what sentence encoders such as all-MiniLM were trained with);
    ``cls``: the first token (BERT-style); ``last``: the last real token (GPT-style decoders).
    """
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if how == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if how == "last":
        last = attention_mask.sum(1).long() - 1  # right padding: the last real token
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last.clamp(min=0)]
    raise ValueError(f"unknown pooling {how!r}; use mean, cls or last")


class SequenceClassifier(nn.Module):
    """``logits = head(dropout(pool(encoder(tokens))))``.

    Args:
        encoder: a transformers model returning ``last_hidden_state``.
        num_labels: number of classes.
        pooling: ``mean``, ``cls`` or ``last``.
        dropout: dropout before the head.
    """

    def __init__(self, encoder: PreTrainedModel, num_labels: int, pooling: str = "mean", dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(self.dropout(pool(hidden, attention_mask, self.pooling)))
