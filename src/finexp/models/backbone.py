"""Load a tokenizer and an encoder: from a local directory, the hub, or built from a config with random weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from finexp import FinexpError


class ModelLoadError(FinexpError):
    """Weights or a tokenizer could not be found."""


def _offline(local_files_only: bool) -> bool:
    return local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")


def _load(loader: Any, name_or_path: str, what: str, local_files_only: bool, **kwargs: Any) -> Any:
    """Load from a local directory, else the local HF cache, else the hub - failing fast with one clear message."""
    if Path(name_or_path).expanduser().is_dir():
        return loader.from_pretrained(str(Path(name_or_path).expanduser()), **kwargs)
    try:  # the cache first: no network round-trip, no retries
        return loader.from_pretrained(name_or_path, local_files_only=True, **kwargs)
    except OSError:
        if _offline(local_files_only):
            raise ModelLoadError(
                f"{what} {name_or_path!r} is neither a local directory nor in the Hugging Face cache, and this run "
                "is offline (model.local_files_only or HF_HUB_OFFLINE). Download it once on a machine with network "
                f"(`hf download {name_or_path}`) and copy the cache, or point model.name_or_path at a local directory."
            ) from None
    try:
        return loader.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        raise ModelLoadError(
            f"could not load {what} {name_or_path!r}: not a local directory, not cached, and the hub did not "
            f"provide it ({str(err).splitlines()[0]}). Check the id, your network, or use a local directory."
        ) from None


def build_tokenizer(name_or_path: str, local_files_only: bool = False) -> PreTrainedTokenizerBase:
    """A fast tokenizer, with a pad token even for GPT-style vocabularies that lack one."""
    tokenizer = _load(AutoTokenizer, name_or_path, "tokenizer", local_files_only)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def build_encoder(
    name_or_path: str | None = None,
    architecture: dict[str, Any] | None = None,
    vocab_size: int | None = None,
    local_files_only: bool = False,
) -> PreTrainedModel:
    """The bare encoder (no task head).

    Args:
        name_or_path: pretrained weights (hub id or directory); None builds from ``architecture``.
        architecture: transformers config kwargs, with ``model_type`` (e.g. ``{"model_type": "bert",
            "hidden_size": 32, ...}``), for a randomly initialised model.
        vocab_size: the tokenizer's size, for models built from ``architecture``.
        local_files_only: never use the network.
    """
    if name_or_path is not None:
        return _load(AutoModel, name_or_path, "model", local_files_only)
    if not architecture or "model_type" not in architecture:
        raise ModelLoadError("model.architecture needs a model_type (e.g. bert, gpt2) to build a model from scratch")
    kwargs = dict(architecture)
    model_type = kwargs.pop("model_type")
    if vocab_size is not None:
        kwargs.setdefault("vocab_size", vocab_size)
    config = AutoConfig.for_model(model_type, **kwargs)
    return AutoModel.from_config(config)
