"""Fine-tuning strategies: functions that take a :class:`SequenceClassifier` and choose what trains.

Each is the ``_target_`` of a file in ``conf/adapter/`` and returns the (possibly wrapped) model. The head always
trains. Here: ``full`` and ``freeze``; :mod:`.strategies` (top ``k`` layers), :mod:`.peft_methods` (LoRA/DoRA/rsLoRA,
IA³, prompt and prefix tuning), :mod:`.bottleneck` (Houlsby/Pfeiffer adapters); :mod:`.checkpoint` saves only what
trains; :mod:`.layers` finds the transformer blocks of any architecture.
"""

from __future__ import annotations

from torch import nn


def train_everything(model: nn.Module) -> nn.Module:
    """Full fine-tuning: every weight trains."""
    model.requires_grad_(True)
    return model


def freeze_encoder(model: nn.Module, train_embeddings: bool = False) -> nn.Module:
    """Linear probe: the encoder is frozen, only the head (and optionally the token embeddings) trains."""
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    if train_embeddings:
        model.encoder.get_input_embeddings().requires_grad_(True)
    return model


def count_parameters(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameter counts, and the trainable share in percent."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "params/total": total,
        "params/trainable": trainable,
        "params/trainable_pct": 100.0 * trainable / total,
    }
