"""Smaller and faster forms of an exported classifier: dynamic int8 quantization and ONNX, each measured on data.

``finexp-export CKPT OUT quantize=int8`` and ``finexp-export CKPT OUT format=onnx`` call :func:`compress`, which
starts from the merged Hugging Face directory :func:`finexp.export.export` writes and adds

- ``model.int8.pt``: the state of the model with every ``nn.Linear`` dynamically quantized to int8 (weights int8,
  activations quantized per batch at run time; CPU only). :func:`load_quantized` loads it back (``torch.load`` with
  ``weights_only=True``). Embeddings and layer norms stay fp32, so the size shrinks by less than 4x on models whose
  parameters sit mostly in the embedding table (MiniLM: half of them).
- ``model.onnx``: the model traced by ``torch.export`` (the dynamo exporter; inputs ``input_ids`` and
  ``attention_mask``, output ``logits``, batch and sequence axes dynamic), checked with onnxruntime against the
  PyTorch logits on the measurement rows; the export fails when the largest absolute difference exceeds the
  tolerance.

Both write ``export_summary.json``: accuracy (and AUROC for binary tasks) of each form on the rows measured (the run's
test split), file sizes, and CPU throughput timed on the same batches, interleaved (the forms alternate batch by
batch, in alternating order) and repeated; medians per batch are reported, so a busy machine slows both alike.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from finexp import FinexpError
from finexp.export.modeling_finexp import FinexpForSequenceClassification

log = logging.getLogger("finexp")

INT8_FILE = "model.int8.pt"
ONNX_FILE = "model.onnx"
SUMMARY_FILE = "export_summary.json"
Batch = dict[str, torch.Tensor]
Runner = Callable[[Batch], torch.Tensor]


@dataclass(frozen=True)
class CompressOptions:
    """What ``finexp-export`` does beyond the Hugging Face directory.

    Attributes:
        format: ``hf`` (the directory only) or ``onnx`` (also ``model.onnx``, checked with onnxruntime).
        quantize: ``none`` or ``int8`` (dynamic int8 ``nn.Linear`` layers, ``model.int8.pt``).
        onnx_tolerance: largest absolute logit difference ONNX Runtime may show against PyTorch.
        rounds: timing repeats over the measurement batches (medians are reported).
        max_rows: measure on at most this many test rows (None: the whole test split).
    """

    format: str = "hf"
    quantize: str = "none"
    onnx_tolerance: float = 1e-4
    rounds: int = 3
    max_rows: int | None = None

    def __post_init__(self) -> None:
        if self.format not in ("hf", "onnx"):
            raise FinexpError(f"format={self.format!r} is not allowed: choose hf or onnx")
        if self.quantize not in ("none", "int8"):
            raise FinexpError(f"quantize={self.quantize!r} is not allowed: choose none or int8")
        if self.format == "onnx" and self.quantize != "none":
            raise FinexpError(
                "format=onnx with quantize=int8 is not supported: export the int8 PyTorch model (quantize=int8) or "
                "the fp32 ONNX model (format=onnx)"
            )
        if self.format == "onnx":
            missing = [p for p in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(p) is None]
            if missing:
                raise FinexpError(f"format=onnx needs {', '.join(missing)}: pip install 'finexp[onnx]'")
        if not self.onnx_tolerance > 0:
            raise FinexpError(f"onnx_tolerance={self.onnx_tolerance} is not allowed: must be > 0")
        if self.rounds < 1:
            raise FinexpError(f"rounds={self.rounds} is not allowed: must be >= 1")
        if self.max_rows is not None and self.max_rows < 1:
            raise FinexpError(f"max_rows={self.max_rows} is not allowed: must be >= 1 or unset")

    @property
    def active(self) -> bool:
        return self.format != "hf" or self.quantize != "none"

    @classmethod
    def parse(cls, tokens: Sequence[str]) -> CompressOptions:
        """``["quantize=int8", "rounds=5"]`` (the command line's ``KEY=VALUE`` words) -> options."""
        kinds = {"format": str, "quantize": str, "onnx_tolerance": float, "rounds": int, "max_rows": int}
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


class LogitsOnly(nn.Module):
    """``(input_ids, attention_mask) -> logits`` of an exported classifier: a plain tensor out, for tracing."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


# --------------------------------------------------------------------------------------------------------------
# int8
# --------------------------------------------------------------------------------------------------------------
def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every ``nn.Linear`` dynamically quantized to int8 (CPU inference)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch 2.10+ deprecates torch.ao eager quantization in favour of torchao, which has no dynamic int8 x86
        # kernel for nn.Linear that beats it on CPU yet; the API still works in this torch.
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings(
            "ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel", category=UserWarning
        )
        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def load_quantized(directory: str | Path) -> nn.Module:
    """The int8 model ``finexp-export ... quantize=int8`` wrote to ``directory`` (CPU, eval mode).

    Builds the architecture from ``config.json`` (no fp32 weights are read), quantizes it the same way and loads
    ``model.int8.pt`` with ``torch.load(weights_only=True)``.
    """
    directory = Path(directory)
    path = directory / INT8_FILE
    if not path.is_file():
        raise FinexpError(f"{path} not found: export with `finexp-export CKPT {directory} quantize=int8`")
    config = FinexpForSequenceClassification.config_class.from_pretrained(directory)
    model = quantize_int8(FinexpForSequenceClassification(config))
    with warnings.catch_warnings():
        # torch's own unpickler of quantized tensors still goes through TypedStorage; nothing for us to change
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def file_mb(path: Path) -> float:
    return path.stat().st_size / 2**20


# --------------------------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------------------------
def export_onnx(model: nn.Module, path: str | Path, sample: Batch) -> Path:
    """Trace ``model`` (``input_ids, attention_mask -> logits``) with the dynamo exporter into ``path``.

    Batch and sequence axes are dynamic; ``sample`` must have at least 2 rows and 2 tokens (``torch.export`` fixes
    axes whose example size is 0 or 1).
    """
    path = Path(path)
    args = (sample["input_ids"], sample["attention_mask"])
    if min(args[0].shape) < 2:
        raise FinexpError(f"the ONNX example batch must be at least 2x2 tokens, got {tuple(args[0].shape)}")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    axes = {0: batch, 1: sequence}
    with warnings.catch_warnings():
        # the exporter warns that `batch`/`sequence` share constraints between the two inputs (they do, by design)
        warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
        program = torch.onnx.export(
            model.eval(),
            args,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": axes, "attention_mask": axes},
            dynamo=True,
            verbose=False,
        )
    program.save(str(path))
    return path


def onnx_runner(path: str | Path, threads: int | None = None) -> Runner:
    """An onnxruntime CPU session as ``batch -> logits`` (``threads``: intra-op threads; default torch's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(batch: Batch) -> torch.Tensor:
        feeds = {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}
        return torch.from_numpy(session.run(["logits"], feeds)[0])

    return run


def torch_runner(model: nn.Module) -> Runner:
    model.eval()

    def run(batch: Batch) -> torch.Tensor:
        with torch.inference_mode():
            return LogitsOnly(model)(batch["input_ids"], batch["attention_mask"])

    return run


def check_onnx(reference: Sequence[torch.Tensor], candidate: Sequence[torch.Tensor], tolerance: float) -> float:
    """Largest absolute difference between ONNX Runtime's and PyTorch's logits; raises above ``tolerance``."""
    diff = max(float((c - r).abs().max()) for r, c in zip(reference, candidate, strict=True))
    if not diff <= tolerance:
        raise FinexpError(
            f"ONNX Runtime's logits differ from PyTorch's by up to {diff:.3g}, above onnx_tolerance={tolerance:g}; "
            "the ONNX model was not kept"
        )
    return diff


# --------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------
def interleaved_timing(
    runners: dict[str, Runner], batches: Sequence[Batch], rounds: int = 3
) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[float]]]:
    """Run every runner on every batch, ``rounds`` times, alternating which goes first; return the first round's
    outputs and each runner's median seconds per batch."""
    names = list(runners)
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    seconds: dict[str, list[list[float]]] = {n: [[] for _ in batches] for n in names}
    for r in range(rounds):
        for b, batch in enumerate(batches):
            order = names if (r + b) % 2 == 0 else names[::-1]
            for name in order:
                started = time.perf_counter()
                logits = runners[name](batch)
                seconds[name][b].append(time.perf_counter() - started)
                if r == 0:
                    outputs[name].append(logits.float())
    return outputs, {n: [statistics.median(t) for t in seconds[n]] for n in names}


def classification_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, and AUROC of class 1 for binary tasks (both classes present)."""
    probs = logits.softmax(-1)
    scores = {"accuracy": float((probs.argmax(-1) == labels).float().mean())}
    if probs.size(1) == 2 and len(labels.unique()) == 2:
        scores["auroc"] = float(roc_auc_score(labels.numpy(), probs[:, 1].numpy()))
    return scores


def measure(
    runners: dict[str, Runner], batches: Sequence[Batch], labels: torch.Tensor, rounds: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Logits (in batch order) and per-form scores and throughput on ``batches``."""
    outputs, per_batch = interleaved_timing(runners, batches, rounds)
    rows = sum(len(b["input_ids"]) for b in batches)
    logits = {name: torch.cat(out) for name, out in outputs.items()}
    report: dict[str, Any] = {}
    for name in runners:
        total = sum(per_batch[name])
        report |= {f"{name}/test_{k}": v for k, v in classification_scores(logits[name], labels).items()}
        report[f"{name}/rows_per_s"] = rows / total
        report[f"{name}/batch_latency_ms_median"] = 1000 * statistics.median(per_batch[name])
    return logits, report


def measurement_batches(datamodule: Any, max_rows: int | None) -> tuple[list[Batch], torch.Tensor]:
    """The run's test batches (eval batch size, in order), cut at ``max_rows``, and their labels."""
    batches, taken = [], 0
    for batch in datamodule.test_dataloader():
        if max_rows is not None and taken >= max_rows:
            break
        keep = len(batch["input_ids"]) if max_rows is None else min(len(batch["input_ids"]), max_rows - taken)
        batches.append({k: v[:keep] for k, v in batch.items()})
        taken += keep
    if not batches:
        raise FinexpError("the run's test split is empty: nothing to measure the compressed model on")
    return batches, torch.cat([b["labels"] for b in batches])


def compress(out_dir: str | Path, datamodule: Any, options: CompressOptions) -> dict[str, Any]:
    """Add the int8 or ONNX form to an exported directory, measure it against fp32 PyTorch on the test split and
    write ``export_summary.json``. Returns the summary."""
    out = Path(out_dir)
    fp32 = FinexpForSequenceClassification.from_pretrained(out).eval()
    batches, labels = measurement_batches(datamodule, options.max_rows)
    summary: dict[str, Any] = {
        "format": options.format,
        "quantize": options.quantize,
        "rows": len(labels),
        "threads": torch.get_num_threads(),
        "rounds": options.rounds,
        "fp32/size_mb": file_mb(out / "model.safetensors"),
    }
    runners = {"fp32": torch_runner(fp32)}
    if options.quantize == "int8":
        int8 = quantize_int8(fp32)
        torch.save(int8.state_dict(), out / INT8_FILE)
        runners["int8"] = torch_runner(load_quantized(out))  # measure what was saved, loaded back
        summary["int8/size_mb"] = file_mb(out / INT8_FILE)
        new = "int8"
    else:
        first = batches[0]  # one real row, twice: any example of at least 2 x 2 tokens traces the same graph
        sample = {k: first[k][:1].repeat(2, 1) for k in ("input_ids", "attention_mask")}
        export_onnx(LogitsOnly(fp32), out / ONNX_FILE, sample)
        runners["onnx"] = onnx_runner(out / ONNX_FILE)
        summary["onnx/size_mb"] = file_mb(out / ONNX_FILE)
        new = "onnx"
    logits, report = measure(runners, batches, labels, options.rounds)
    summary |= report
    if new == "onnx":
        try:
            summary["onnx/max_abs_diff"] = check_onnx([logits["fp32"]], [logits["onnx"]], options.onnx_tolerance)
        except FinexpError:
            (out / ONNX_FILE).unlink()
            raise
        summary["onnx/tolerance"] = options.onnx_tolerance
    else:
        summary["int8/max_abs_logit_diff"] = float((logits["int8"] - logits["fp32"]).abs().max())
    summary[f"{new}/prediction_agreement"] = float((logits[new].argmax(-1) == logits["fp32"].argmax(-1)).float().mean())
    summary["change/size_ratio"] = summary[f"{new}/size_mb"] / summary["fp32/size_mb"]
    summary["change/speedup"] = summary[f"{new}/rows_per_s"] / summary["fp32/rows_per_s"]
    for metric in ("accuracy", "auroc"):
        if f"fp32/test_{metric}" in summary:
            summary[f"change/test_{metric}_points"] = 100 * (
                summary[f"{new}/test_{metric}"] - summary[f"fp32/test_{metric}"]
            )
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
