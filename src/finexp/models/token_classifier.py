"""An encoder with a linear head on every token (named-entity tagging)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel


class TokenClassifier(nn.Module):
    """``logits[b, t] = head(dropout(encoder(tokens)[b, t]))``: one score per tag for every sub-token.

    Attributes ``encoder`` and ``head`` are what the adapters (``finexp.adapters``) work on, as in
    :class:`~finexp.models.classifier.SequenceClassifier`.

    Args:
        encoder: a transformers model returning ``last_hidden_state``.
        num_labels: number of tags.
        dropout: dropout before the head.
    """

    def __init__(self, encoder: PreTrainedModel, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(self.dropout(hidden))
