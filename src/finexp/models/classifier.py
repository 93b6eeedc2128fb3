"""An encoder, a pooling of its token states, and a linear head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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

    With ``score_feature`` (a stacked hybrid, ``task.hybrid``) one of the features is a log-odds score of the
    positive class (gradient boosting's), and it also goes *around* the head, unscaled, into the positive logit::

        logits = head(dropout([pooled, standardized(features)])) + [0, score]

    and the head starts at zero (weights and bias). So the untrained model's probability is exactly
    ``sigmoid(score)``, boosting's own, and training can only add what the text and the numbers know on top of it
    (the residual). The head still sees the standardized score, so the score's total weight,
    ``a = 1 + (w[1] - w[0]) / std(score)`` (``w``: the head's weights on it), starts at 1 and is learnt like any
    head weight (``optimizer.head_lr``; weight decay pulls it back to 1, towards plain boosting). A randomly
    initialised head would instead give the score a random sign and a weight no larger than any text dimension's,
    and a few epochs at fine-tuning rates do not undo that (the model then ranks *worse* than chance).

    Args:
        encoder: a transformers model returning ``last_hidden_state``.
        num_labels: number of outputs (classes; 1 for a regression target).
        pooling: ``mean``, ``cls`` or ``last``.
        dropout: dropout before the head.
        numeric_features: numeric columns concatenated to the pooled embedding (0: text only); their train
            statistics are set with ``model.numeric.set_statistics``.
        score_feature: the index, among the numeric features, of a log-odds score added to the positive logit (two
            labels only; the head is then zero-initialised); None: no skip connection.
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        num_labels: int,
        pooling: str = "mean",
        dropout: float = 0.1,
        numeric_features: int = 0,
        score_feature: int | None = None,
    ) -> None:
        super().__init__()
        if score_feature is not None:
            if num_labels != 2:
                raise ValueError(f"score_feature is a positive-class log-odds: two labels only, got {num_labels}")
            if not 0 <= score_feature < numeric_features:
                raise ValueError(f"score_feature={score_feature} is not one of the {numeric_features} numeric features")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.numeric = NumericInput(numeric_features) if numeric_features else None
        self.head = nn.Linear(encoder.config.hidden_size + numeric_features, num_labels)
        self.score_feature = score_feature
        if score_feature is not None:  # the residual starts at nothing: the model starts as the score
            self._zero_head()

    def reset_head(self) -> None:
        """A fresh head (``model.init_from`` with other labels): Linear's random init, zeros with ``score_feature``."""
        self.head.reset_parameters()
        if self.score_feature is not None:
            self._zero_head()

    def _zero_head(self) -> None:
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = pool(hidden, attention_mask, self.pooling)
        if self.numeric is not None:
            if features is None:
                raise ValueError(f"this model fuses {self.numeric.num_features} numeric features: pass `features`")
            pooled = torch.cat([pooled, self.numeric(features).to(pooled.dtype)], dim=-1)
        logits = self.head(self.dropout(pooled))
        if self.score_feature is None:
            return logits
        score = features[:, self.score_feature].to(logits.dtype).nan_to_num(0.0)  # raw log-odds, not standardized
        return logits + F.pad(score.unsqueeze(-1), (1, 0))  # + [0, score]: softmax's p(positive) = sigmoid(score)
