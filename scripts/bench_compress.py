"""Compression targets on credit scoring: int8 quantization and ONNX Runtime for a fine-tuned MiniLM, and a distilled
tiny BERT student.

    python scripts/bench_compress.py                               # everything, into outputs/bench_compress
    python scripts/bench_compress.py --teacher-ckpt outputs/.../best.ckpt   # reuse a fine-tuned MiniLM

Steps (each a separate finexp process, as a user would run them):

1. the teacher: ``finexp-train model=minilm`` on credit scoring, ``--teacher-epochs`` epochs of ``--teacher-batches``
   batches (the short budget: 40 x 32 = 1,280 of the 3,117 train rows by default); val and test splits are whole;
2. ``finexp-export ... format=onnx quantize=int8`` of the teacher: fp32 ONNX Runtime and int8 ONNX Runtime (dynamic
   quantization) measured against fp32 PyTorch on the run's test split (interleaved batches, ``--rounds`` repeats,
   medians); ``scripts/bench_export_int8.py`` prints the same comparison as a table;
3. the student: ``finexp-train experiment=distill distill.teacher=<teacher>`` (tiny BERT, 2 layers, hidden 32), and
   the same student trained without the teacher (``distill.teacher=null``) to show what the soft targets add;
4. the student's speedup: teacher and student (both fp32 PyTorch) timed on the same test batches, interleaved.

Targets: int8 (ONNX Runtime) throughput >= 1.5x fp32 PyTorch and test accuracy drop <= 1 point; ONNX Runtime fp32 vs
PyTorch eager throughput reported; the student's share of the teacher's test AUROC and its speedup reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

COMMON = [
    "logger=csv",
    "analysis=none",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "trainer.num_sanity_val_steps=0",
]


def finexp(command: str, *args: str) -> float:
    """Run a finexp console script (its module) in its own process; returns its wall time."""
    if command == "train":
        entry = [sys.executable, "-m", "finexp.train", *args]
    else:  # finexp.export is a package without __main__
        entry = [sys.executable, "-c", "import sys; from finexp.export import main; main(sys.argv[1:])", *args]
    started = time.perf_counter()
    result = subprocess.run(entry, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"finexp-{command} {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return time.perf_counter() - started


def train(out: Path, name: str, *overrides: str) -> dict:
    return train_parallel(out, {name: list(overrides)})[name]


def train_parallel(out: Path, runs: dict[str, list[str]]) -> dict[str, dict]:
    """finexp-train runs, each in its own process, all at once; returns their metrics (a finished run is reused)."""
    running = {}
    for name, overrides in runs.items():
        run = out / name
        if not (run / "metrics.json").is_file():
            paths = [f"paths.log_dir={out}", f"hydra.run.dir={run}", f"paths.output_dir={run}"]
            command = [sys.executable, "-m", "finexp.train", *COMMON, *overrides, *paths]
            running[name] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for name, process in running.items():
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"finexp-train {' '.join(runs[name])} failed:\n{stderr[-4000:]}")
    return {name: json.loads((out / name / "metrics.json").read_text()) for name in runs}


def export(ckpt: str, out: Path, *options: str) -> dict:
    finexp("export", ckpt, str(out), *options)
    return json.loads((out / "export_summary.json").read_text()) if options else {}


def student_speedup(teacher_ckpt: str, teacher_dir: Path, student_dir: Path, rounds: int, rows: int | None) -> dict:
    """Teacher and student (fp32 PyTorch) on the teacher run's test batches, interleaved."""
    from transformers import AutoTokenizer

    from finexp.export.compress import interleaved_timing, measurement_batches, torch_runner
    from finexp.export.layouts import ExportedClassifier
    from finexp.runs import TrainedRun

    vocab = [AutoTokenizer.from_pretrained(d, trust_remote_code=False).get_vocab() for d in (teacher_dir, student_dir)]
    if vocab[0] != vocab[1]:
        raise SystemExit("teacher and student tokenizers differ: time them on their own tokenizations")
    batches, _ = measurement_batches(TrainedRun.open(teacher_ckpt).datamodule(), rows)
    runners = {
        "teacher": torch_runner(ExportedClassifier.from_dir(teacher_dir)),
        "student": torch_runner(ExportedClassifier.from_dir(student_dir)),
    }
    _, seconds = interleaved_timing(runners, batches, rounds)
    rows = sum(len(b["input_ids"]) for b in batches)
    return {"rows": rows, **{name: rows / sum(per_batch) for name, per_batch in seconds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_compress"))
    parser.add_argument("--teacher-ckpt", help="a fine-tuned MiniLM credit-scoring checkpoint (skips step 1)")
    parser.add_argument("--teacher-epochs", type=int, default=1)
    parser.add_argument("--teacher-batches", type=int, default=40, help="train batches (of 32) per teacher epoch")
    parser.add_argument("--student-epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="timing repeats (medians per batch)")
    parser.add_argument("--speed-rows", type=int, help="test rows timed for the student's speedup (default: all)")
    parser.add_argument(
        "--parts", default="int8,distill", help="which measurements (comma-separated; run them apart in parallel)"
    )
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; outputs in {out}", flush=True)

    if args.teacher_ckpt:
        teacher_ckpt = str(Path(args.teacher_ckpt).resolve())
        teacher = json.loads((Path(teacher_ckpt).parents[1] / "metrics.json").read_text())
    else:
        budget = [f"trainer.max_epochs={args.teacher_epochs}", f"trainer.limit_train_batches={args.teacher_batches}"]
        teacher = train(out, "teacher", "model=minilm", *budget)
        teacher_ckpt = teacher["best_checkpoint"]
    print(
        f"teacher minilm ({args.teacher_epochs} epoch(s) of {args.teacher_batches} batches of 32 rows): "
        f"test/auroc {teacher['test/auroc']:.4f}  test/accuracy {teacher['test/accuracy']:.4f}",
        flush=True,
    )

    parts = set(args.parts.split(","))
    results: dict = {"teacher": {k: v for k, v in teacher.items() if k.startswith(("test/", "params/", "time/"))}}
    if "int8" in parts:
        results["int8"] = bench_int8(teacher_ckpt, out, args.rounds)
    if "distill" in parts:
        results |= bench_distill(teacher, teacher_ckpt, out, args.student_epochs, args.rounds, args.speed_rows)
    (out / f"bench_compress_{'_'.join(sorted(parts))}.json").write_text(json.dumps(results, indent=2) + "\n")


def bench_int8(teacher_ckpt: str, out: Path, rounds: int) -> dict:
    """fp32 PyTorch, fp32 ONNX Runtime and int8 ONNX Runtime of the teacher, on its test split."""
    s = export(teacher_ckpt, out / "teacher-onnx-int8", "format=onnx", "quantize=int8", f"rounds={rounds}")
    speedup, points = s["change/onnx_int8/speedup"], s["change/onnx_int8/test_accuracy_points"]
    ok_speed, ok_acc = speedup >= 1.5, points >= -1.0
    print(
        f"int8 ONNX Runtime ({s['rows']} test rows, {s['rounds']} rounds, {s['threads']} threads): "
        f"fp32 PyTorch {s['fp32/rows_per_s']:.1f} rows/s, fp32 ONNX {s['onnx/rows_per_s']:.1f} rows/s, "
        f"int8 ONNX {s['onnx_int8/rows_per_s']:.1f} rows/s, speedup {speedup:.2f}x "
        f"(target >= 1.5x: {'PASS' if ok_speed else 'FAIL'})\n"
        f"int8 accuracy fp32 {s['fp32/test_accuracy']:.4f} -> int8 {s['onnx_int8/test_accuracy']:.4f}, "
        f"change {points:+.2f} points (target >= -1: {'PASS' if ok_acc else 'FAIL'}); "
        f"auroc {s['fp32/test_auroc']:.4f} -> {s['onnx_int8/test_auroc']:.4f}; "
        f"agreement {s['onnx_int8/prediction_agreement']:.4f}; max |logit diff| "
        f"{s['onnx_int8/max_abs_logit_diff']:.3g} (tolerance {s['onnx_int8/tolerance']:g})\n"
        f"size fp32 {s['fp32/size_mb']:.1f} MB, ONNX {s['onnx/size_mb']:.1f} MB, "
        f"int8 ONNX {s['onnx_int8/size_mb']:.1f} MB "
        f"({s['change/onnx_int8/size_ratio']:.2f}x)",
        flush=True,
    )
    return s


def bench_distill(
    teacher: dict, teacher_ckpt: str, out: Path, epochs: int, rounds: int, speed_rows: int | None
) -> dict:
    student_args = ["experiment=distill", f"trainer.max_epochs={epochs}"]
    students = train_parallel(
        out,
        {
            "student-distilled": [*student_args, f"distill.teacher={teacher_ckpt}"],
            "student-alone": [*student_args, "distill.teacher=null"],  # the same student without the teacher
        },
    )
    student, alone = students["student-distilled"], students["student-alone"]
    info = {n: json.loads((out / n / "run_info.json").read_text()) for n in ("student-distilled", "student-alone")}
    teacher_info = json.loads((Path(teacher_ckpt).parents[1] / "run_info.json").read_text())
    same_test = all(i["data_fingerprint"]["test"] == teacher_info["data_fingerprint"]["test"] for i in info.values())
    export(teacher_ckpt, out / "teacher-hf")
    export(student["best_checkpoint"], out / "student-hf")
    speed = student_speedup(teacher_ckpt, out / "teacher-hf", out / "student-hf", rounds, speed_rows)
    share = student["test/auroc"] / teacher["test/auroc"]
    print(
        f"distill tiny_bert student ({student['params/total'] / 1e6:.2f}M params vs teacher "
        f"{teacher['params/total'] / 1e6:.1f}M; {epochs} epochs; same test split: {same_test}): "
        f"test/auroc {student['test/auroc']:.4f} = {100 * share:.1f}% of the teacher's {teacher['test/auroc']:.4f}; "
        f"without the teacher {alone['test/auroc']:.4f} ({100 * alone['test/auroc'] / teacher['test/auroc']:.1f}%)\n"
        f"distill inference ({speed['rows']} test rows, {rounds} rounds): teacher {speed['teacher']:.1f} rows/s, "
        f"student {speed['student']:.1f} rows/s, "
        f"speedup {speed['student'] / speed['teacher']:.1f}x",
        flush=True,
    )
    return {
        "student": {k: v for k, v in student.items() if k.startswith(("test/", "params/", "time/"))},
        "student_alone": {k: v for k, v in alone.items() if k.startswith(("test/", "params/", "time/"))},
        "student_auroc_share": share,
        "inference_rows_per_s": speed,
    }


if __name__ == "__main__":
    main()
