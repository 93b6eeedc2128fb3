"""Where the transformer blocks of an encoder are, whatever the architecture (BERT, RoBERTa, GPT-2, Llama, ...)."""

from __future__ import annotations

from torch import nn

from finexp import FinexpError


class AdapterError(FinexpError):
    """A fine-tuning strategy that cannot be applied to this model."""


def num_layers(encoder: nn.Module) -> int:
    """Number of transformer blocks, read from the model's config (``num_hidden_layers`` or ``n_layer``)."""
    config = encoder.config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise AdapterError(f"cannot tell how many layers a {type(encoder).__name__} has (no num_hidden_layers in config)")


def find_blocks(encoder: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks: the first ``nn.ModuleList`` with one entry per layer.

    That is ``encoder.layer`` in BERT/RoBERTa/DeBERTa, ``h`` in GPT-2 and ``layers`` in Llama-style models; registration
    order puts it before any per-head lists, so the first match is the block list.
    """
    depth = num_layers(encoder)
    for module in encoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise AdapterError(f"no list of {depth} transformer blocks found in {type(encoder).__name__}")
