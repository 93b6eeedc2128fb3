"""ONNX and ONNX int8 forms of an exported classifier, each checked and measured on the run's test split.

``finexp-export CKPT OUT format=onnx [quantize=int8]`` calls :func:`compress`, which starts from the
sentence-transformers directory :func:`finexp.export.export` writes (read back as
:class:`~finexp.export.layouts.ExportedClassifier`) and adds

- ``model.onnx``: the model traced by ``torch.export`` (the dynamo exporter; inputs ``input_ids`` and
  ``attention_mask``, output ``logits``, batch and sequence axes dynamic), checked with onnxruntime against the
  PyTorch logits on the measurement rows; the export fails when the largest absolute difference exceeds
  ``onnx_tolerance``.
- with ``quantize=int8``, ``model.int8.onnx``: ``onnxruntime.quantization.quantize_dynamic`` of ``model.onnx``
  (int8 weights of the MatMul/Gemm nodes, activations quantized per batch at run time; embeddings stay fp32), checked
  against fp32 PyTorch with ``int8_tolerance``. It replaces the PyTorch int8 form finexp wrote before
  (``torch.ao.quantization.quantize_dynamic``, deprecated in torch 2.10+).

Both write ``export_summary.json``: accuracy (and AUROC for binary tasks) of each form on the rows measured, file
sizes, and CPU throughput timed on the same batches, interleaved (the forms alternate batch by batch, in alternating
order) and repeated; medians per batch are reported, so a busy machine slows every form alike.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from finexp import FinexpError
from finexp.export.layouts import ExportedClassifier
from finexp.export.options import ExportOptions

log = logging.getLogger("finexp")

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
Batch = dict[str, torch.Tensor]
Runner = Callable[[Batch], torch.Tensor]


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
    """``(input_ids, attention_mask) -> logits`` module (eval mode, no grad) as ``batch -> logits``."""
    model.eval()

    def run(batch: Batch) -> torch.Tensor:
        with torch.inference_mode():
            return model(batch["input_ids"], batch["attention_mask"])

    return run


def check_logits(
    reference: Sequence[torch.Tensor], candidate: Sequence[torch.Tensor], tolerance: float, key: str = "onnx_tolerance"
) -> float:
    """Largest absolute difference between a candidate's logits and PyTorch's; raises above ``tolerance``."""
    diff = max(float((c - r).abs().max()) for r, c in zip(reference, candidate, strict=True))
    if not diff <= tolerance:
        raise FinexpError(
            f"the exported model's logits differ from PyTorch's by up to {diff:.3g}, above {key}={tolerance:g}; "
            "the file was not kept"
        )
    return diff


def quantize_onnx_int8(source: str | Path, target: str | Path) -> Path:
    """ONNX Runtime dynamic int8 quantization of ``source`` (weights int8, activations per batch) into ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = Path(target)
    prepared = target.with_name(target.stem + ".pre.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # shapes + folding, as ORT advises
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)
    return target


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


def compress(out_dir: str | Path, datamodule: Any, options: ExportOptions) -> dict[str, Any]:
    """Add ``model.onnx`` (and with ``quantize=int8`` ``model.int8.onnx``) to an exported sentence-transformers
    directory, check and measure them against fp32 PyTorch on the test split. Returns the measurements."""
    out = Path(out_dir)
    fp32 = ExportedClassifier.from_dir(out)  # measure what was saved, loaded back
    batches, labels = measurement_batches(datamodule, options.max_rows)
    summary: dict[str, Any] = {
        "rows": len(labels),
        "threads": torch.get_num_threads(),
        "rounds": options.rounds,
        "fp32/size_mb": file_mb(out / "model.safetensors") + file_mb(out / "2_Dense" / "model.safetensors"),
    }
    first = batches[0]  # one real row, twice: any example of at least 2 x 2 tokens traces the same graph
    sample = {k: first[k][:1].repeat(2, 1) for k in ("input_ids", "attention_mask")}
    export_onnx(fp32, out / ONNX_FILE, sample)
    runners = {"fp32": torch_runner(fp32), "onnx": onnx_runner(out / ONNX_FILE)}
    summary["onnx/size_mb"] = file_mb(out / ONNX_FILE)
    if options.quantize == "int8":
        quantize_onnx_int8(out / ONNX_FILE, out / INT8_FILE)
        runners["onnx_int8"] = onnx_runner(out / INT8_FILE)
        summary["onnx_int8/size_mb"] = file_mb(out / INT8_FILE)
    logits, report = measure(runners, batches, labels, options.rounds)
    summary |= report
    checks = {"onnx": (ONNX_FILE, options.onnx_tolerance, "onnx_tolerance")}
    if options.quantize == "int8":
        checks["onnx_int8"] = (INT8_FILE, options.int8_tolerance, "int8_tolerance")
    for form, (name, tolerance, key) in checks.items():
        try:
            summary[f"{form}/max_abs_logit_diff"] = check_logits([logits["fp32"]], [logits[form]], tolerance, key)
        except FinexpError as err:
            for file in (ONNX_FILE, INT8_FILE):
                (out / file).unlink(missing_ok=True)
            raise FinexpError(f"{name}: {err}") from None
        summary[f"{form}/tolerance"] = tolerance
    for form in checks:
        agree = (logits[form].argmax(-1) == logits["fp32"].argmax(-1)).float().mean()
        summary[f"{form}/prediction_agreement"] = float(agree)
        summary[f"change/{form}/size_ratio"] = summary[f"{form}/size_mb"] / summary["fp32/size_mb"]
        summary[f"change/{form}/speedup"] = summary[f"{form}/rows_per_s"] / summary["fp32/rows_per_s"]
        for metric in ("accuracy", "auroc"):
            if f"fp32/test_{metric}" in summary:
                change = summary[f"{form}/test_{metric}"] - summary[f"fp32/test_{metric}"]
                summary[f"change/{form}/test_{metric}_points"] = 100 * change
    return summary
