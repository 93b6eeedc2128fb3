"""``serve.precision=bf16``: the PyTorch backend's weights in bfloat16, checked against float32 before serving.

On a GPU bf16 halves the weights' memory and uses the tensor cores; on a CPU with native bf16 instructions
(AVX512-BF16 or AMX, which oneDNN uses) a forward pass is about 1.7x faster than float32 for MiniLM
(``scripts/bench_serve.py --precision``). Where the hardware has no bf16 support PyTorch emulates it, slower than
float32, so finexp-serve refuses it there rather than serve slower. Before any request is answered, every model
scores the same probe texts in float32 and in bf16: their labels must agree and their logits must lie within
``serve.bf16_tolerance``, else the server stops with the measured difference. The difference is reported in
``/metadata`` (``precision``, ``bf16_probe_max_diff``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from finexp.config import ConfigError
from finexp.serving.onnx import probe_logits

if TYPE_CHECKING:
    from finexp.inference import Ensemble, Predictor

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, device: str, onnx: bool = False) -> None:
    """Refuse an unknown precision, bf16 beside ``serve.onnx`` (``onnx``), and bf16 where the hardware would only
    emulate it (before weights load).

    Raises:
        ConfigError: naming ``serve.precision`` and what to do instead.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"serve.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return
    if onnx:
        raise ConfigError(
            f"serve.precision={precision} casts the PyTorch model; serve.onnx= is an ONNX Runtime model "
            "(its own precision is chosen at export: finexp-export quantize=int8)"
        )
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_bf16_supported():
            raise ConfigError("serve.precision=bf16: this GPU has no bfloat16 support; use serve.precision=fp32")
        return
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        raise ConfigError(
            "serve.precision=bf16: this CPU has no native bfloat16 instructions (AVX512-BF16 or AMX), where PyTorch "
            "emulates it slower than float32; use serve.precision=fp32, or serve.onnx= an int8 export"
        )


def to_bf16(model: Predictor | Ensemble, tolerance: float) -> Predictor | Ensemble:
    """``model`` (each member of an ensemble) with its weights cast to bfloat16, in place, after the probe check.

    Raises:
        ConfigError: a model whose bf16 logits differ from its float32 ones by more than ``tolerance`` on the
            probes, or whose probe labels change.
    """
    import torch

    if not tolerance > 0:
        raise ConfigError(f"serve.bf16_tolerance={tolerance!r} is not allowed: must be > 0")
    worst = 0.0
    for member in getattr(model, "members", [model]):
        if not isinstance(member.model, torch.nn.Module):
            raise ConfigError("serve.precision=bf16 casts a PyTorch model; it does not apply to serve.onnx")
        expected = probe_logits(member)
        member.model.to(torch.bfloat16)
        got = probe_logits(member)
        diff = float((got - expected).abs().max())
        if not diff <= tolerance or not torch.equal(got.argmax(-1), expected.argmax(-1)):
            member.model.to(torch.float32)
            raise ConfigError(
                f"serve.precision=bf16: the bf16 logits differ from float32's by {diff:.3g} on the start-up probes "
                f"(serve.bf16_tolerance={tolerance:g}) or change a probe's label; serve with serve.precision=fp32"
            )
        worst = max(worst, diff)
    model.metadata.update({"precision": "bf16", "bf16_probe_max_diff": round(worst, 6)})
    return model
