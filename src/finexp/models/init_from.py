"""Continual fine-tuning: start a run's classifier from an earlier finexp run (``model.init_from``).

The source is a finexp checkpoint (``.ckpt``; its run directory's ``config.yaml`` rebuilds the model, and LoRA / IA³
are merged into the encoder) or a directory written by ``finexp-export`` (``model.safetensors`` + ``config.json``).
The encoder weights replace the ones ``model.name_or_path`` gave, before the run's adapter is applied, so the new
run may use another strategy than the old one. The head is kept when the label set is the same (same names, same
order); otherwise it is re-initialised, and the run says so in its log and ``run_info.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from finexp import FinexpError

log = logging.getLogger("finexp")


@dataclass
class InitialWeights:
    """What an earlier run left: encoder and head weights, and the label order of its head."""

    source: str
    encoder: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    label_names: list[str]


def read_initial_weights(
    path: str | Path, classifier_of: Callable[[Path], tuple[nn.Module, list[str], str]]
) -> InitialWeights:
    """Read a finexp checkpoint or a ``finexp-export`` directory.

    ``classifier_of(ckpt) -> (model, labels, adapter)`` rebuilds a checkpoint's classifier (``finexp.runs`` opens
    runs; this module does not, so building a model never imports the run-loading code).

    Raises:
        FinexpError: the path is neither, or its adapter cannot be merged into the encoder (prompt/prefix tuning,
            bottleneck adapters: export them and continue from ``base/`` with a fresh adapter instead).
    """
    where = Path(path).expanduser()
    if where.is_dir():
        weights, config = where / "model.safetensors", where / "config.json"
        if not (weights.is_file() and config.is_file()):
            hint = " (an unmerged export: base/ + adapter/ cannot seed a run)" if (where / "base").is_dir() else ""
            raise FinexpError(f"model.init_from={path}: no model.safetensors and config.json in it{hint}")
        from finexp.export.layouts import read_export_weights  # sentence-transformers layout, or the older one

        state, labels = read_export_weights(where)
    elif where.is_file():
        state, labels = _from_checkpoint(where, classifier_of)
    else:
        raise FinexpError(f"model.init_from={path}: no such checkpoint (.ckpt) or finexp-export directory")
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    if not encoder or not head:
        raise FinexpError(f"model.init_from={path}: holds no finexp classifier (encoder.* and head.* weights)")
    return InitialWeights(str(where), encoder, head, list(labels))


def _from_checkpoint(
    ckpt: Path, classifier_of: Callable[[Path], tuple[nn.Module, list[str], str]]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    from peft import PeftModel

    from finexp.adapters.bottleneck import BottleneckAdapter
    from finexp.adapters.peft_methods import PromptTunedEncoder

    model, labels, adapter = classifier_of(ckpt)
    encoder = model.encoder
    prompts = isinstance(encoder, PromptTunedEncoder) or (
        isinstance(encoder, PeftModel) and encoder.active_peft_config.is_prompt_learning
    )
    if prompts or any(isinstance(m, BottleneckAdapter) for m in encoder.modules()):
        raise FinexpError(
            f"model.init_from={ckpt}: adapter={adapter} adds modules or inputs that cannot be merged into the "
            "encoder; continue from a full, frozen, top-layers, LoRA or IA³ run"
        )
    if isinstance(encoder, PeftModel):
        encoder = encoder.merge_and_unload()  # LoRA / IA³ folded into the base weights
    state = {f"encoder.{k}": v.detach().clone() for k, v in encoder.state_dict().items()}
    state |= {f"head.{k}": v.detach().clone() for k, v in model.head.state_dict().items()}
    return state, list(labels)


def load_encoder(model: nn.Module, weights: InitialWeights) -> None:
    """Copy the earlier run's encoder into ``model.encoder`` (before any adapter wraps it); head when shapes match.

    Raises:
        FinexpError: the encoders differ (another architecture or size than ``model=...`` builds).
    """
    mismatch = f"model.init_from={weights.source}: its encoder does not match this run's model"
    try:
        result = model.encoder.load_state_dict(weights.encoder, strict=False)
    except RuntimeError as err:  # same names, other shapes (another size of the architecture)
        detail = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise FinexpError(f"{mismatch} ({detail}); use the model the earlier run used") from None
    parameters = dict(model.encoder.named_parameters())
    missing = [k for k in result.missing_keys if k in parameters]
    if missing or result.unexpected_keys:
        raise FinexpError(
            f"{mismatch} (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}); "
            "use the model the earlier run used"
        )
    same_shape = all(weights.head[k].shape == v.shape for k, v in model.head.state_dict().items())
    if same_shape:
        model.head.load_state_dict(weights.head)
    model.init_from = weights  # read (and dropped) by settle_head once the label order is known


def settle_head(model: nn.Module, label_names: list[str]) -> dict[str, Any] | None:
    """Keep the earlier head for the same label set; otherwise re-initialise it, and say so.

    Returns:
        A record for ``run_info.json`` (None when the model was not started from an earlier run).
    """
    weights: InitialWeights | None = getattr(model, "init_from", None)
    if weights is None:
        return None
    model.init_from = None  # the tensors are copied; do not keep a second set alive
    record: dict[str, Any] = {"source": weights.source, "previous_labels": weights.label_names}
    if list(label_names) == weights.label_names:
        record["head"] = "kept"
        log.info("model.init_from: encoder and head from %s (same labels)", weights.source)
    else:
        if hasattr(model, "reset_head"):  # a hybrid's head restarts at zero (SequenceClassifier.score_feature)
            model.reset_head()
        else:
            model.head.reset_parameters()
        record["head"] = "reinitialized"
        log.warning(
            "model.init_from: the label set changed (%s -> %s): the head was re-initialized; the encoder comes from %s",
            ", ".join(weights.label_names),
            ", ".join(label_names),
            weights.source,
        )
    return record
