"""ONNX Runtime as finexp-serve's backend: ``serve.onnx=<a finexp-export format=onnx directory, or one of its
.onnx files>`` beside ``ckpt=`` (the run the export was made from).

The export holds the graph; the checkpoint's run holds what the graph does not: how a row becomes text (the
serializer, PII masking), the input profile behind drift flags, the labels and the hashes ``/metadata`` reports. At
start-up both models score the same probe texts and must agree within the tolerance the export was checked with
(``export_summary.json``: ``onnx/tolerance`` for ``model.onnx``, ``onnx_int8/tolerance`` for ``model.int8.onnx``), so
an export of another run is refused; then only the ONNX Runtime session scores (on CPU).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finexp import FinexpError
from finexp.config import ConfigError

if TYPE_CHECKING:
    import torch

    from finexp.inference import Predictor

ONNX_FILES = {"model.onnx": "onnx", "model.int8.onnx": "onnx_int8"}  # file -> its form in export_summary.json
DEFAULT_TOLERANCE = {"onnx": 1e-4, "onnx_int8": 0.5}  # finexp-export's defaults (ExportOptions)
PROBES = ["finexp start-up check", "a longer probe: shares rally 12% after the bank raised its 2025 outlook"]


def onnx_file(setting: str) -> Path:
    """The ``.onnx`` file ``serve.onnx`` names (a directory means its ``model.onnx``), checked before any weights load.

    Raises:
        ConfigError: ONNX Runtime is not installed, or the path is not an ONNX file or an export directory.
    """
    if importlib.util.find_spec("onnxruntime") is None:
        raise ConfigError(
            f"serve.onnx={setting}: ONNX Runtime is not installed: pip install 'finexp[onnx]' (or onnxruntime), "
            "or leave serve.onnx unset to serve with PyTorch"
        )
    path = Path(setting).expanduser()
    if path.is_dir():
        if not (path / "model.onnx").is_file():
            raise ConfigError(
                f"serve.onnx={setting}: no model.onnx in that directory; write one with "
                "'finexp-export CKPT DIR format=onnx'"
            )
        path = path / "model.onnx"
    elif not path.is_file():
        raise ConfigError(f"serve.onnx={setting}: no such file or directory")
    elif path.suffix != ".onnx":
        raise ConfigError(f"serve.onnx={setting}: not an .onnx file (give a finexp-export format=onnx directory)")
    return path


class OnnxLogits:
    """``(input_ids, attention_mask) -> logits`` through an ONNX Runtime CPU session: a :class:`Predictor`'s model.

    Args:
        path: an ONNX file with inputs ``input_ids``, ``attention_mask`` and output ``logits`` (finexp-export's).
        threads: intra-op threads (None: torch's thread count).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        from finexp.export.compress import onnx_runner

        self.path = Path(path)
        self._run = onnx_runner(self.path, threads)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._run({"input_ids": input_ids.cpu(), "attention_mask": attention_mask.cpu()})


def probe_inputs(predictor: Predictor) -> tuple[torch.Tensor, torch.Tensor]:
    """The start-up probe texts as ``(input_ids, attention_mask)`` CPU tensors, tokenized as ``predictor`` does."""
    import torch

    batch = predictor.tokenizer(PROBES, padding=True, truncation=True, max_length=predictor.max_length)
    return torch.tensor(batch["input_ids"], dtype=torch.long), torch.tensor(batch["attention_mask"], dtype=torch.long)


def probe_logits(predictor: Predictor) -> torch.Tensor:
    """``predictor``'s model's float32 logits (on CPU) for the probe texts, on the predictor's device."""
    import torch

    ids, mask = probe_inputs(predictor)
    with torch.inference_mode():
        return predictor.model(ids.to(predictor.device), mask.to(predictor.device)).float().cpu()


def _tolerance(path: Path) -> float:
    form = ONNX_FILES.get(path.name, "onnx")
    summary_path = path.parent / "export_summary.json"
    try:
        summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    except (OSError, json.JSONDecodeError) as err:
        raise FinexpError(f"{summary_path}: not a readable JSON file ({type(err).__name__}: {err})") from None
    value = summary.get(f"{form}/tolerance", DEFAULT_TOLERANCE[form])
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise FinexpError(f"{summary_path}: {form}/tolerance={value!r} is not a positive number")
    return float(value)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_predictor(predictor: Predictor, path: Path, threads: int | None = None) -> Predictor:
    """``predictor`` (a checkpoint's) with its model replaced by the ONNX file ``path`` exported from it.

    Raises:
        FinexpError: the export's labels differ from the run's, or its logits on the probe texts differ from the
            checkpoint's by more than the export's tolerance (an export of another run).
    """

    from finexp.export.layouts import read_sentence_transformers
    from finexp.inference import Predictor

    directory = path.parent
    if (directory / "modules.json").is_file():
        _, _, labels = read_sentence_transformers(directory)
        if labels != predictor.labels:
            raise FinexpError(
                f"serve.onnx={path}: the export's labels {labels} are not the checkpoint's {predictor.labels}: "
                "export this checkpoint (finexp-export CKPT DIR format=onnx)"
            )
    session = OnnxLogits(path, threads)
    expected = probe_logits(predictor)
    got = session(*probe_inputs(predictor)).float()
    tolerance = _tolerance(path)
    diff = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
    if not diff <= tolerance:
        raise FinexpError(
            f"serve.onnx={path}: its logits differ from the checkpoint's by {diff:.3g} on the start-up probes "
            f"(tolerance {tolerance:g} from export_summary.json): it was not exported from this checkpoint; "
            "export it with 'finexp-export CKPT DIR format=onnx'"
        )
    metadata = predictor.metadata | {"backend": "onnxruntime", "onnx_file": path.name, "onnx_sha256": _sha256(path)}
    return Predictor(
        session,
        predictor.tokenizer,
        predictor.labels,
        predictor.spec,
        predictor.serializer,
        predictor.max_length,
        metadata,
        predictor.batch_size,
        predictor.preprocess,
        "cpu",
        input_profile=predictor.input_profile,
    )
