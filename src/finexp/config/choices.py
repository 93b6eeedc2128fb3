"""Closed sets of config values, as ``Enum`` types: a value outside the set fails while Hydra composes the config."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """One of a closed set of strings: equal to its value (``Pooling.mean == "mean"``) and printed as it.

    OmegaConf accepts a member's name on the command line, so names are the values themselves; a value that is not
    an identifier (``4bit``) uses the functional form (``Choice("Quantization", {"4bit": "4bit"})``).
    """

    def __str__(self) -> str:
        return str(self.value)


class Pooling(Choice):
    """How token states become one vector: their mean, the first ([CLS]) token, or the last real token (decoders)."""

    mean = "mean"
    cls = "cls"
    last = "last"


class ModelKind(Choice):
    transformer = "transformer"
    baseline = "baseline"  # a classic model (model=tfidf_logreg, gbm)


class DType(Choice):
    """The dtype weights are loaded in; ``auto``: the checkpoint's own (float32 for a model built from a config)."""

    auto = "auto"
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class AttnImplementation(Choice):
    sdpa = "sdpa"  # torch's scaled_dot_product_attention (fused kernels where the device has them)
    eager = "eager"  # the reference implementation (attention weights available, slowest)
    flash_attention_2 = "flash_attention_2"  # needs the flash-attn package and a recent NVIDIA GPU


Quantization = Choice("Quantization", {"4bit": "4bit", "8bit": "8bit"})  # bitsandbytes base weights (NF4 / LLM.int8)
