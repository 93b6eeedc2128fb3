"""Load a tokenizer and an encoder: from a local directory, the hub, or built from a config with random weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from finexp import FinexpError


class ModelLoadError(FinexpError):
    """Weights or a tokenizer could not be found."""


def _offline(local_files_only: bool) -> bool:
    return local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")


def load_pretrained(loader: Any, name_or_path: str, what: str, local_files_only: bool, **kwargs: Any) -> Any:
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
    tokenizer = load_pretrained(AutoTokenizer, name_or_path, "tokenizer", local_files_only)
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
        return load_pretrained(AutoModel, name_or_path, "model", local_files_only)
    return AutoModel.from_config(config_from_architecture(architecture, vocab_size, "bert, gpt2", "a model"))


def config_from_architecture(
    architecture: dict[str, Any] | None, vocab_size: int | None, example: str, what: str
) -> PretrainedConfig:
    """A transformers config from ``model.architecture`` (``model_type`` + config kwargs), for random weights.

    ``vocab_size`` (the tokenizer's) fills in when the architecture does not set one; ``example`` and ``what`` word
    the error when ``model_type`` is missing.
    """
    if not architecture or "model_type" not in architecture:
        raise ModelLoadError(f"model.architecture needs a model_type (e.g. {example}) to build {what} from scratch")
    kwargs = dict(architecture)
    model_type = kwargs.pop("model_type")
    if vocab_size is not None:
        kwargs.setdefault("vocab_size", vocab_size)
    return AutoConfig.for_model(model_type, **kwargs)


def max_positions(
    name_or_path: str | None, architecture: dict[str, Any] | None, local_files_only: bool = False
) -> int | None:
    """How many token positions the model has (``max_position_embeddings`` / ``n_positions``), read from its config
    alone (no weights); None when the architecture has no fixed limit."""
    if name_or_path is not None:
        config = load_pretrained(AutoConfig, name_or_path, "model config", local_files_only)
    else:
        config = config_from_architecture(architecture, None, "bert, gpt2", "a model")
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
