"""An encoder, a pooling of its token states, and a linear head."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from finexp.models.fusion import NumericInput


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
    """``logits = head(dropout(pool(encoder(tokens))))``, or with ``numeric_features`` (fusion)
    ``head(dropout([pool(encoder(tokens)), standardized(features)]))``.

    Args:
        encoder: a transformers model returning ``last_hidden_state``.
        num_labels: number of outputs (classes; 1 for a regression target).
        pooling: ``mean``, ``cls`` or ``last``.
        dropout: dropout before the head.
        numeric_features: numeric columns concatenated to the pooled embedding (0: text only); their train
            statistics are set with ``model.numeric.set_statistics``.
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        num_labels: int,
        pooling: str = "mean",
        dropout: float = 0.1,
        numeric_features: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.numeric = NumericInput(numeric_features) if numeric_features else None
        self.head = nn.Linear(encoder.config.hidden_size + numeric_features, num_labels)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = pool(hidden, attention_mask, self.pooling)
        if self.numeric is not None:
            if features is None:
                raise ValueError(f"this model fuses {self.numeric.num_features} numeric features: pass `features`")
            pooled = torch.cat([pooled, self.numeric(features).to(pooled.dtype)], dim=-1)
        return self.head(self.dropout(pooled))
