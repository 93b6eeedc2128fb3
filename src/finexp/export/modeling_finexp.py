"""A finexp classifier as a transformers model: any encoder, a pooling of its token states, a linear head.

This file is copied into every directory ``finexp-export`` writes, so the model loads with transformers alone::

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(path)

The standard ``*ForSequenceClassification`` heads read the first token (BERT's pooler) or the last one; finexp models
may mean-pool, so the head travels with its own forward. It imports nothing from finexp.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class FinexpClassifierConfig(PretrainedConfig):
    """``encoder``: the encoder's own config as a dict (with ``model_type``); ``pooling``: mean | cls | last."""

    model_type = "finexp_classifier"

    def __init__(self, encoder: dict[str, Any] | None = None, pooling: str = "mean", **kwargs: Any) -> None:
        self.encoder = dict(encoder or {})
        self.pooling = pooling
        super().__init__(**kwargs)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """Token states ``(batch, seq, dim)`` -> one vector per row, ignoring padding (as finexp trained it)."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if how == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    last = attention_mask.sum(1).long() - 1
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last.clamp(min=0)]


class FinexpForSequenceClassification(PreTrainedModel):
    """``logits = head(pool(encoder(tokens)))``: the exported finexp classifier."""

    config_class = FinexpClassifierConfig
    base_model_prefix = "encoder"

    def __init__(self, config: FinexpClassifierConfig) -> None:
        super().__init__(config)
        encoder_config = dict(config.encoder)
        self.encoder = AutoModel.from_config(AutoConfig.for_model(encoder_config.pop("model_type"), **encoder_config))
        self.head = nn.Linear(self.encoder.config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if hasattr(self, "encoder") and hasattr(self.encoder, "_init_weights"):
            self.encoder._init_weights(module)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.head(pool(hidden, attention_mask, self.config.pooling))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
