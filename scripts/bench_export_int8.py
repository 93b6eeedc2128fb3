"""ONNX Runtime int8 against fp32 (PyTorch and ONNX Runtime) for a fine-tuned MiniLM on credit scoring.

    python scripts/bench_export_int8.py                                   # trains the MiniLM, then measures
    python scripts/bench_export_int8.py --ckpt outputs/.../best.ckpt      # measure an existing MiniLM run
    python scripts/bench_export_int8.py --rounds 5 --max-rows 500

Steps, each a separate finexp process as a user would run them: ``finexp-train model=minilm`` (``--epochs`` epochs of
``--batches`` batches of 32 rows; skipped with ``--ckpt``), then ``finexp-export CKPT OUT format=onnx quantize=int8``,
which measures fp32 PyTorch, fp32 ONNX Runtime and int8 ONNX Runtime on the run's test split (same batches,
interleaved, ``--rounds`` repeats, median per batch) and writes ``export_summary.json``. Printed: median batch
latency, throughput, file size, test accuracy / AUROC and their change against fp32, largest logit gap. Run it alone
on the machine: the timings are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

COMMON = [
    "logger=csv",
    "analysis=none",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "trainer.num_sanity_val_steps=0",
]
FORMS = {"fp32": "PyTorch fp32", "onnx": "ONNX Runtime fp32", "onnx_int8": "ONNX Runtime int8"}


def run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} … failed:\n{result.stderr[-4000:]}")


def train(out: Path, epochs: int, batches: int) -> str:
    run_dir = out / "teacher"
    if not (run_dir / "metrics.json").is_file():
        paths = [f"paths.log_dir={out}", f"hydra.run.dir={run_dir}", f"paths.output_dir={run_dir}"]
        budget = [f"trainer.max_epochs={epochs}", f"trainer.limit_train_batches={batches}"]
        run([sys.executable, "-m", "finexp.train", *COMMON, "model=minilm", *budget, *paths])
    return json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_export_int8"))
    parser.add_argument("--ckpt", help="a fine-tuned MiniLM checkpoint (skips training)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batches", type=int, default=40, help="train batches (of 32) per epoch")
    parser.add_argument("--rounds", type=int, default=3, help="timing repeats (medians per batch)")
    parser.add_argument("--max-rows", type=int, help="test rows measured (default: the whole test split)")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ckpt = str(Path(args.ckpt).resolve()) if args.ckpt else train(out, args.epochs, args.batches)

    export_dir = out / "minilm-onnx-int8"
    options = ["format=onnx", "quantize=int8", f"rounds={args.rounds}"]
    if args.max_rows:
        options.append(f"max_rows={args.max_rows}")
    entry = "import sys; from finexp.export import main; main(sys.argv[1:])"
    run([sys.executable, "-c", entry, ckpt, str(export_dir), *options])
    s = json.loads((export_dir / "export_summary.json").read_text())

    print(f"{s['rows']} test rows, {s['rounds']} rounds, {s['threads']} threads; checkpoint {ckpt}")
    columns = ["latency ms", "rows/s", "size MB", "accuracy", "auroc", "max |Δlogit|"]
    print(f"{'form':<18} " + " ".join(f"{c:>12}" for c in columns))
    for form, title in FORMS.items():
        gap = s.get(f"{form}/max_abs_logit_diff", 0.0)
        values = [
            f"{s[f'{form}/batch_latency_ms_median']:.2f}",
            f"{s[f'{form}/rows_per_s']:.1f}",
            f"{s[f'{form}/size_mb']:.1f}",
            f"{s[f'{form}/test_accuracy']:.4f}",
            f"{s.get(f'{form}/test_auroc', float('nan')):.4f}",
            f"{gap:.2e}",
        ]
        print(f"{title:<18} " + " ".join(f"{v:>12}" for v in values))
    for form in ("onnx", "onnx_int8"):
        auroc = s.get(f"change/{form}/test_auroc_points")
        print(
            f"{FORMS[form]} vs fp32: speedup {s[f'change/{form}/speedup']:.2f}x, "
            f"size {s[f'change/{form}/size_ratio']:.2f}x, "
            f"accuracy {s[f'change/{form}/test_accuracy_points']:+.2f} points"
            + (f", auroc {auroc:+.2f} points" if auroc is not None else "")
            + f", prediction agreement {s[f'{form}/prediction_agreement']:.4f}"
        )
    (out / "bench_export_int8.json").write_text(json.dumps(s, indent=2) + "\n")


if __name__ == "__main__":
    main()
