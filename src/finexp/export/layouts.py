"""The directory layouts ``finexp-export`` writes, each in a format the ecosystem loads without finexp or remote code.

- :func:`write_sentence_transformers` (``format=hf``): the merged model as a sentence-transformers directory: the
  encoder at the root (``save_pretrained``: ``config.json``, ``model.safetensors``, the tokenizer), ``1_Pooling``
  (mean, cls or last token, as finexp trained it) and ``2_Dense`` (the classifier head, identity activation), so
  ``SentenceTransformer(path).encode(texts)`` returns the logits. finexp's pooling reads the encoder's token states
  directly, which no ``*ForSequenceClassification`` class does (BERT's applies its pooler's dense + tanh first), so
  this is the one standard form that reproduces every finexp classifier exactly.
- :func:`write_adapter` (``format=peft``, and prompt/prefix tuning or bottleneck adapters, which cannot be merged):
  ``adapter/`` (peft's ``save_pretrained``: ``PeftModel.from_pretrained(base, path / "adapter")``), ``head.safetensors``
  + ``head.json`` (pooling, labels), the tokenizer, and ``base/`` when the base has no name to load it by.

:class:`ExportedClassifier` reads a sentence-transformers export back as a plain torch module
``(input_ids, attention_mask) -> logits`` (JSON and safetensors only: no code from the directory runs), for the ONNX
export and the measurements.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from finexp import FinexpError

ST_POOLING = {"mean": "mean", "cls": "cls", "last": "lasttoken"}  # finexp's model.pooling -> sentence-transformers'
FINEXP_POOLING = {v: k for k, v in ST_POOLING.items()}
HEAD_FILE, HEAD_CONFIG = "head.safetensors", "head.json"


@dataclass(frozen=True)
class Layout:
    """What an export directory is and how to load it (``export_summary.json`` and the printed summary say it)."""

    name: str  # sentence-transformers | peft | unmerged
    loads_with: str  # the library call that loads it
    trust_remote_code: bool  # False everywhere finexp writes a standard form
    note: str = ""


def labels_config(labels: list[str]) -> dict[str, Any]:
    return {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}


def write_sentence_transformers(
    encoder: nn.Module, head: nn.Linear, pooling: str, tokenizer: Any, labels: list[str], out: Path, max_length: int
) -> Layout:
    """Write a merged encoder + pooling + linear head as a sentence-transformers directory (see the module doc)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    if pooling not in ST_POOLING:
        raise FinexpError(f"model.pooling={pooling!r} has no sentence-transformers pooling mode")
    encoder.config.update(labels_config(labels))  # the label names travel in the standard place, config.json
    encoder.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    hidden = int(head.in_features)
    modules = [
        # finexp never feeds token_type_ids (GPT-2 would embed a BERT vocabulary's zeros): nor does the export
        Transformer(str(out), max_seq_length=max_length, processing_kwargs={"text": {"return_token_type_ids": False}}),
        Pooling(hidden, pooling_mode=ST_POOLING[pooling]),
        Dense(
            hidden,
            int(head.out_features),
            activation_function=nn.Identity(),
            init_weight=head.weight.detach().cpu().clone(),
            init_bias=head.bias.detach().cpu().clone(),
        ),
    ]
    SentenceTransformer(modules=modules, device="cpu").save(str(out), create_model_card=False)
    return Layout(
        "sentence-transformers",
        f"SentenceTransformer({str(out)!r}).encode(texts)  # -> logits; labels: config.json id2label",
        trust_remote_code=False,
    )


def save_tokenizer(tokenizer: Any, out: Path) -> None:
    """Save the tokenizer so it returns only what finexp feeds the encoder: a BERT vocabulary on GPT-2 would
    otherwise add ``token_type_ids``, which GPT-2 embeds (finexp never passes them)."""
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    tokenizer.save_pretrained(out)


def write_adapter(
    encoder: nn.Module,
    head: nn.Linear,
    pooling: str,
    tokenizer: Any,
    labels: list[str],
    out: Path,
    base_reference: str | None,
    extra: dict[str, Any] | None = None,
) -> Layout:
    """Write a peft-wrapped encoder as ``adapter/`` (peft's format) + ``head.safetensors``; ``base/`` when
    ``base_reference`` is None (random or locally built weights that no name loads).

    ``encoder`` is a ``PeftModel`` (LoRA, IA³, prompt or prefix tuning), unmerged.
    """
    from peft import PeftModel

    if not isinstance(encoder, PeftModel):
        raise FinexpError(f"format=peft needs a peft adapter (lora, ia3, prompt_tuning, prefix_tuning); got {encoder}")
    out.mkdir(parents=True, exist_ok=True)
    base_dir = out / "base"
    encoder.save_pretrained(out / "adapter")
    if base_reference is None:
        # LoRA / IA³ layers sit inside the base model's modules: unload() puts the plain ones back (after the
        # adapter is saved: it is destructive); prompt and prefix tuning leave the base untouched
        prompts = encoder.active_peft_config.is_prompt_learning
        (encoder.get_base_model() if prompts else encoder.unload()).save_pretrained(base_dir)
        save_tokenizer(tokenizer, base_dir)
    if base_reference is not None:  # peft records whatever the base was loaded from; publish the reference given
        config_path = out / "adapter" / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base_reference
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_tokenizer(tokenizer, out)
    write_head(head, pooling, labels, out, {"base_model": base_reference or "base", **(extra or {})})
    base = repr(base_reference) if base_reference is not None else f"{str(base_dir)!r}"
    return Layout(
        "peft",
        f"PeftModel.from_pretrained(AutoModel.from_pretrained({base}), {str(out / 'adapter')!r}) + head.safetensors",
        trust_remote_code=False,
    )


def write_head(head: nn.Linear, pooling: str, labels: list[str], out: Path, extra: dict[str, Any]) -> None:
    save_file(_contiguous(head.state_dict()), out / HEAD_FILE, metadata={"format": "pt"})
    meta = {"pooling": pooling, "num_labels": len(labels), **labels_config(labels), **extra}
    (out / HEAD_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FinexpError(f"{path}: not a readable JSON file ({type(err).__name__}: {err})") from None


def read_sentence_transformers(directory: str | Path) -> tuple[str, dict[str, torch.Tensor], list[str]]:
    """(finexp pooling, head weights, label names) of a sentence-transformers export, from JSON and safetensors."""
    directory = Path(directory)
    modules = _read_json(directory / "modules.json")
    by_kind = {str(m.get("type", "")).rsplit(".", 1)[-1]: directory / str(m.get("path", "")) for m in modules}
    if "Pooling" not in by_kind or "Dense" not in by_kind:
        raise FinexpError(f"{directory}/modules.json: needs a Pooling and a Dense module (a finexp-export directory)")
    pooling = _read_json(by_kind["Pooling"] / "config.json").get("pooling_mode")
    if pooling not in FINEXP_POOLING:
        raise FinexpError(f"{by_kind['Pooling']}/config.json: pooling_mode={pooling!r} is not one finexp writes")
    dense = load_file(str(by_kind["Dense"] / "model.safetensors"))
    head = {"weight": dense["linear.weight"], "bias": dense["linear.bias"]}
    config = _read_json(directory / "config.json")
    id2label = config.get("id2label") or {}
    labels = [id2label[str(i)] for i in range(len(id2label))]
    if len(labels) != head["weight"].shape[0]:
        raise FinexpError(f"{directory}/config.json: id2label has {len(labels)} labels, the head {len(head['bias'])}")
    return FINEXP_POOLING[pooling], head, labels


def read_export_weights(directory: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``encoder.*`` and ``head.*`` weights and the label names of a merged export: a sentence-transformers
    directory, or the older layout (``model.safetensors`` with those keys + ``config.json``) finexp wrote before."""
    directory = Path(directory)
    if (directory / "modules.json").is_file():
        _, head, labels = read_sentence_transformers(directory)
        encoder = load_file(str(directory / "model.safetensors"))
        return {f"encoder.{k}": v for k, v in encoder.items()} | {f"head.{k}": v for k, v in head.items()}, labels
    state = load_file(str(directory / "model.safetensors"))
    meta = _read_json(directory / "config.json")
    return state, [meta["id2label"][str(i)] for i in range(int(meta["num_labels"]))]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """finexp's pooling (as :func:`finexp.models.classifier.pool`), for the loaded-back module."""
    from finexp.models.classifier import pool as finexp_pool

    return finexp_pool(hidden, attention_mask, how)


class ExportedClassifier(nn.Module):
    """A sentence-transformers export as ``(input_ids, attention_mask) -> logits`` (plain torch, traceable)."""

    def __init__(self, encoder: nn.Module, head: nn.Linear, pooling: str, labels: list[str]) -> None:
        super().__init__()
        self.encoder, self.head, self.pooling, self.labels = encoder, head, pooling, labels

    @classmethod
    def from_dir(cls, directory: str | Path) -> ExportedClassifier:
        from transformers import AutoModel

        pooling, weights, labels = read_sentence_transformers(directory)
        encoder = AutoModel.from_pretrained(str(directory), trust_remote_code=False)
        head = nn.Linear(weights["weight"].shape[1], weights["weight"].shape[0])
        head.load_state_dict(weights)
        return cls(encoder, head, pooling, labels).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(pool(hidden, attention_mask, self.pooling))
