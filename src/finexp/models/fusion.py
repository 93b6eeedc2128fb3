"""Numeric table columns beside the text: standardized with train-split statistics, concatenated to the pooled
text embedding before the head (``model.fusion=concat``)."""

from __future__ import annotations

import torch
from torch import nn


class NumericInput(nn.Module):
    """Standardize ``k`` numeric features with the train split's mean and standard deviation; missing -> 0 (the mean).

    The statistics are buffers, so they travel in every checkpoint and an evaluation on a new file uses the
    training statistics. Until :meth:`set_statistics` is called they are 0 and 1 (identity).

    Args:
        num_features: number of numeric columns ``k``.
        clip: standardized values are clipped to ``[-clip, clip]`` (heavy-tailed columns such as income would
            otherwise dominate the head's input).
    """

    def __init__(self, num_features: int, clip: float = 5.0) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = num_features
        self.clip = clip
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Use these per-column statistics (a column with no spread is only centred)."""
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(
                f"expected {self.num_features} statistics, got mean {tuple(mean.shape)}, std {tuple(std.shape)}"
            )
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        scaled = (features.to(self.mean.dtype) - self.mean) / self.std
        return scaled.nan_to_num(0.0).clamp(-self.clip, self.clip)
