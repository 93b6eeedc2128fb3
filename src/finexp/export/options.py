"""The ``KEY=VALUE`` options of ``finexp-export``, validated before any work is done."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from finexp import FinexpError

FORMATS = ("hf", "peft", "onnx")
REPO_ID = re.compile(r"^([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class ExportOptions:
    """What ``finexp-export`` writes.

    Attributes:
        format: ``hf`` (the merged model as a sentence-transformers directory), ``peft`` (the unmerged adapter in
            peft's format + the head; LoRA, IA³, prompt and prefix tuning) or ``onnx`` (``hf`` + ``model.onnx``,
            checked with ONNX Runtime).
        quantize: ``none`` or ``int8`` (with ``format=onnx``: ONNX Runtime dynamic quantization, ``model.int8.onnx``).
        onnx_tolerance: largest absolute logit difference ONNX Runtime's fp32 model may show against PyTorch.
        int8_tolerance: largest absolute logit difference the int8 model may show against fp32 PyTorch.
        rounds: timing repeats over the measurement batches (medians are reported).
        max_rows: measure on at most this many test rows (None: the whole test split).
        push_to_hub: a Hugging Face repo id (``user/name``) to upload the directory to; checked before any work.
        license: the model card's ``license`` (default: the run's ``model.license``).
        base_model: ``format=peft``: the base model's hub id written into ``adapter_config.json`` and the card
            (default: the run's ``model.name_or_path``; none for random weights, then ``base/`` is written).
    """

    format: str = "hf"
    quantize: str = "none"
    onnx_tolerance: float = 1e-4
    int8_tolerance: float = 0.5
    rounds: int = 3
    max_rows: int | None = None
    push_to_hub: str | None = None
    license: str | None = None
    base_model: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise FinexpError(f"format={self.format!r} is not allowed: choose {', '.join(FORMATS)}")
        if self.quantize not in ("none", "int8"):
            raise FinexpError(f"quantize={self.quantize!r} is not allowed: choose none or int8")
        if self.quantize == "int8" and self.format != "onnx":
            # torch.ao.quantization.quantize_dynamic is deprecated (torch 2.10+); ONNX Runtime's quantizer is the
            # maintained dynamic-int8 path for CPU inference
            raise FinexpError(
                f"quantize=int8 with format={self.format} is not supported: use format=onnx quantize=int8 "
                "(ONNX Runtime dynamic int8)"
            )
        if self.format == "onnx":
            missing = [p for p in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(p) is None]
            if missing:
                raise FinexpError(f"format=onnx needs {', '.join(missing)}: pip install 'finexp[onnx]'")
        for name in ("onnx_tolerance", "int8_tolerance"):
            if not getattr(self, name) > 0:
                raise FinexpError(f"{name}={getattr(self, name)} is not allowed: must be > 0")
        if self.rounds < 1:
            raise FinexpError(f"rounds={self.rounds} is not allowed: must be >= 1")
        if self.max_rows is not None and self.max_rows < 1:
            raise FinexpError(f"max_rows={self.max_rows} is not allowed: must be >= 1 or unset")
        if self.push_to_hub is not None and not REPO_ID.match(self.push_to_hub):
            raise FinexpError(f"push_to_hub={self.push_to_hub!r} is not a Hugging Face repo id (user/name)")
        if self.base_model is not None and self.format != "peft":
            raise FinexpError(f"base_model={self.base_model!r} is for format=peft (the adapter's base reference)")

    @property
    def measured(self) -> bool:
        """Whether the export is measured against fp32 PyTorch on the test split (``export_summary.json``)."""
        return self.format == "onnx"

    @classmethod
    def parse(cls, tokens: Sequence[str]) -> ExportOptions:
        """``["format=onnx", "rounds=5"]`` (the command line's ``KEY=VALUE`` words) -> options."""
        kinds: dict[str, type] = {f.name: str for f in fields(cls)}
        kinds |= {"onnx_tolerance": float, "int8_tolerance": float, "rounds": int, "max_rows": int}
        values: dict[str, Any] = {}
        for token in tokens:
            key, sep, value = token.partition("=")
            if not sep or key not in kinds:
                raise FinexpError(f"{token!r}: expected KEY=VALUE with KEY one of {', '.join(kinds)}")
            try:
                values[key] = kinds[key](value)
            except ValueError:
                raise FinexpError(f"{token!r}: {key} must be a {kinds[key].__name__}") from None
        return cls(**values)
