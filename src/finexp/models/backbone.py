"""Load a tokenizer and an encoder: from a local directory, the hub, or built from a config with random weights.

How the weights load (dtype, attention kernel, 4-/8-bit base, activation checkpointing, hub revision) is one
:class:`LoadOptions`, which every model builder takes (``finexp.problems.common.load_options`` makes it from the
config).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
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
    """Weights or a tokenizer could not be found, or cannot load as asked."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadOptions:
    """How a model's weights load and what a training step keeps in memory (``model.*`` in the config).

    Args:
        dtype: the weights as loaded (``float32``, ``bfloat16``, ``float16``), never "auto": the config's ``auto``
            is resolved from ``trainer.precision`` before this is made.
        attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2``; None: the model's default.
        gradient_checkpointing: recompute each block's activations in backward (non-reentrant, so frozen inputs
            under LoRA need no input-grad hook).
        quantization: ``4bit`` (NF4, double quantization, bf16 compute) or ``8bit`` (LLM.int8) base weights through
            bitsandbytes; needs pretrained weights (``model.name_or_path``).
        revision: the hub branch, tag or commit to load.
    """

    dtype: str = "float32"
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    quantization: str | None = None
    revision: str | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def pretrained_kwargs(self) -> dict[str, Any]:
        """``from_pretrained`` arguments."""
        kwargs: dict[str, Any] = {"dtype": self.torch_dtype}
        if self.attn_implementation is not None:
            kwargs["attn_implementation"] = self.attn_implementation
        if self.revision is not None:
            kwargs["revision"] = self.revision
        if self.quantization is not None:
            kwargs["quantization_config"] = bitsandbytes_config(self.quantization)
        return kwargs

    def config_kwargs(self) -> dict[str, Any]:
        """``from_config`` arguments (random weights: no revision, no quantization)."""
        if self.quantization is not None:
            raise ModelLoadError(
                f"model.quantization={self.quantization} needs pretrained weights to quantize: set "
                "model.name_or_path (a hub id or a directory written by save_pretrained), or model.quantization=null"
            )
        kwargs: dict[str, Any] = {"dtype": self.torch_dtype}
        if self.attn_implementation is not None:
            kwargs["attn_implementation"] = self.attn_implementation
        return kwargs


def bitsandbytes_config(quantization: str) -> Any:
    """transformers' ``BitsAndBytesConfig`` for ``model.quantization`` (QLoRA's NF4 recipe for 4bit)."""
    require_bitsandbytes(quantization)
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ModelLoadError(f"model.quantization={quantization!r} is not allowed: choose 4bit, 8bit or null")


def require_bitsandbytes(quantization: str) -> None:
    """Stop with one line when bitsandbytes cannot quantize here (not installed, or no backend for this device)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            f"model.quantization={quantization} needs bitsandbytes, which is not installed: pip install "
            "'finexp[qlora]' (or set model.quantization=null to load the weights unquantized)"
        )


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute activations in backward (non-reentrant: works with frozen embeddings under LoRA/prompt tuning)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ModelLoadError(
            f"model.gradient_checkpointing=true: {type(model).__name__} does not support gradient checkpointing; "
            "set model.gradient_checkpointing=false"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.20 (the old name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # a cache is useless when activations are recomputed (and warns)


def prepare_for_training(model: Any, options: LoadOptions) -> Any:
    """After loading: peft's k-bit preparation for a quantized base, activation checkpointing when asked."""
    if options.quantization is not None:
        from peft import prepare_model_for_kbit_training

        # casts the non-quantized weights (norms, embeddings) to fp32 and lets gradients reach the adapters
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if options.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def weights_record(model: Any, name_or_path: str | None, options: LoadOptions) -> dict[str, Any]:
    """What weights ran and how they loaded, for ``run_info.json``.

    ``model`` is the loaded transformers model (or a wrapper whose ``encoder`` is one). The source is the hub
    commit, or a local directory's fingerprint: every file's name, size, and first and last MiB (reading 14 GB of
    7B weights in full would take minutes); a model built from ``model.architecture`` has neither.
    """
    config = getattr(getattr(model, "encoder", model), "config", None)
    record: dict[str, Any] = {
        "dtype": options.dtype,
        "attn_implementation": getattr(config, "_attn_implementation", None),  # what transformers picked
        "gradient_checkpointing": options.gradient_checkpointing,
        "quantization": options.quantization,
    }
    if name_or_path is None:
        return record | {"source": "architecture"}
    directory = Path(name_or_path).expanduser()
    if not directory.is_dir():
        commit = getattr(config, "_commit_hash", None)
        return record | {"source": "hub", "id": name_or_path, "revision": options.revision, "commit": commit}
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(directory)}\0{size}\0".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(2**20))
            if size > 2**21:
                handle.seek(-(2**20), os.SEEK_END)
                digest.update(handle.read(2**20))
    return record | {"source": "directory", "path": str(directory.resolve()), "fingerprint": digest.hexdigest()}


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
    options: LoadOptions | None = None,
) -> PreTrainedModel:
    """The bare encoder (no task head).

    Args:
        name_or_path: pretrained weights (hub id or directory); None builds from ``architecture``.
        architecture: transformers config kwargs, with ``model_type`` (e.g. ``{"model_type": "bert",
            "hidden_size": 32, ...}``), for a randomly initialised model.
        vocab_size: the tokenizer's size, for models built from ``architecture``.
        local_files_only: never use the network.
        options: dtype, attention, quantization, checkpointing and revision (default: fp32, the model's own).
    """
    options = options or LoadOptions()
    if name_or_path is not None:
        return load_model(AutoModel, name_or_path, local_files_only, options)
    config = config_from_architecture(architecture, vocab_size, "bert, gpt2", "a model")
    return prepare_for_training(AutoModel.from_config(config, **options.config_kwargs()), options)


def load_model(loader: Any, name_or_path: str, local_files_only: bool, options: LoadOptions) -> PreTrainedModel:
    """Pretrained weights as ``options`` say, prepared for training; a quantized load that bitsandbytes cannot do
    here (no backend for the device, an op it lacks) stops with one line naming ``model.quantization``."""
    try:
        model = load_pretrained(loader, name_or_path, "model", local_files_only, **options.pretrained_kwargs())
    except (ImportError, RuntimeError, ValueError, NotImplementedError) as err:
        if options.quantization is None:
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(
            f"model.quantization={options.quantization}: bitsandbytes cannot load {name_or_path!r} quantized on this "
            f"machine ({first}); run on a CUDA GPU, or set model.quantization=null"
        ) from None
    return prepare_for_training(model, options)


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
