"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021), implemented here in a few dozen lines.

The maintained library (``adapters``) pins ``transformers~=4.57`` and would downgrade the project's transformers 5,
so finexp carries its own. An adapter is ``x + up(act(down(x)))`` with ``down: d -> d/reduction_factor``; ``up`` starts
at zero, so a fresh adapter is the identity and training starts from the pretrained model.

Placement, per transformer block (the papers' figures):

* **Houlsby**: one adapter after the attention output projection and one after the feed-forward output projection,
  each before the residual sum and layer norm; the layer norms train too.
* **Pfeiffer**: one adapter after the feed-forward output projection only; layer norms stay frozen.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from finexp.adapters.layers import AdapterError, find_blocks

# (attention output projection, feed-forward output projection, layer norms) inside one block, per family.
PLACEMENTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("attention.output.dense", "output.dense", ("attention.output.LayerNorm", "output.LayerNorm")),  # BERT family
    ("attn.c_proj", "mlp.c_proj", ("ln_1", "ln_2")),  # GPT-2
    ("self_attn.o_proj", "mlp.down_proj", ("input_layernorm", "post_attention_layernorm")),  # Llama family
)
VARIANTS = {"houlsby": "silu", "pfeiffer": "relu"}  # the activation AdapterHub uses for each
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class BottleneckAdapter(nn.Module):
    """``x + up(act(down(x)))``: a residual bottleneck MLP that starts as the identity.

    Args:
        hidden_size: the model dimension ``d``.
        bottleneck_size: the inner dimension ``m`` (``2dm + d + m`` parameters).
        activation: relu | silu | gelu | tanh.
    """

    def __init__(self, hidden_size: int, bottleneck_size: int, activation: str = "relu") -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck_size, hidden_size)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # identity at start
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class Adapted(nn.Module):
    """A projection followed by an adapter: ``adapter(proj(x))``; the projection keeps its weights and name."""

    def __init__(self, proj: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.proj = proj
        self.adapter = adapter

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.adapter(self.proj(*args, **kwargs))


def _placement(block: nn.Module) -> tuple[str, str, tuple[str, ...]]:
    names = {name for name, _ in block.named_modules()}
    for attn, ffn, norms in PLACEMENTS:
        if attn in names and ffn in names:
            return attn, ffn, norms
    known = "; ".join(f"{a} + {f}" for a, f, _ in PLACEMENTS)
    raise AdapterError(
        f"adapter=bottleneck does not know where to put adapters in a {type(block).__name__} block (looked for {known})"
    )


def _replace(block: nn.Module, path: str, make: Any) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = block.get_submodule(parent_path) if parent_path else block
    setattr(parent, child, make(getattr(parent, child)))


def build_bottleneck(
    model: nn.Module,
    variant: str = "houlsby",
    reduction_factor: int = 16,
    activation: str | None = None,
) -> nn.Module:
    """Insert bottleneck adapters into every block of ``model.encoder``; only they, the head (and, for Houlsby,
    the layer norms) train.

    Args:
        model: a :class:`~finexp.models.classifier.SequenceClassifier`.
        variant: ``houlsby`` (after attention and feed-forward, layer norms train) or ``pfeiffer`` (after
            feed-forward only).
        reduction_factor: ``d / m``; larger means a narrower bottleneck and fewer parameters.
        activation: the bottleneck's nonlinearity; None uses the variant's (houlsby: silu, pfeiffer: relu).
    """
    if variant not in VARIANTS:
        raise AdapterError(f"adapter.variant={variant!r} is not allowed: choose one of {', '.join(VARIANTS)}")
    activation = activation or VARIANTS[variant]
    if activation not in ACTIVATIONS:
        raise AdapterError(f"adapter.activation={activation!r} is not allowed: choose one of {', '.join(ACTIVATIONS)}")
    hidden = model.encoder.config.hidden_size
    if not 1 <= reduction_factor <= hidden:
        raise AdapterError(f"adapter.reduction_factor={reduction_factor} is not allowed: must be in 1..{hidden}")
    size = max(1, hidden // reduction_factor)

    model.requires_grad_(False)
    for block in find_blocks(model.encoder):
        attn, ffn, norms = _placement(block)
        for path in (attn, ffn) if variant == "houlsby" else (ffn,):
            _replace(block, path, lambda proj: Adapted(proj, BottleneckAdapter(hidden, size, activation)))
        if variant == "houlsby":
            for norm in norms:
                block.get_submodule(norm).requires_grad_(True)
    for module in model.encoder.modules():
        if isinstance(module, BottleneckAdapter):
            module.requires_grad_(True)
    model.head.requires_grad_(True)
    return model


def bottleneck_parameters(hidden_size: int, reduction_factor: int) -> int:
    """Parameters of one adapter: ``2dm + d + m`` (two projections with biases)."""
    m = max(1, hidden_size // reduction_factor)
    return 2 * hidden_size * m + hidden_size + m
