"""LoRA (r=8) against full fine-tuning of all-MiniLM-L6-v2: trainable share, checkpoint size, peak memory.

    python scripts/bench_strategies.py                     # credit scoring, 20 training batches of 32, 2 repeats
    python scripts/bench_strategies.py --batches 40 --repeats 3

Each run is a separate ``finexp-train`` process (so the peak resident memory of one run is not inflated by another),
on the same data, batch size and batches; runs alternate (full, lora, full, lora, ...) so background load hits both.
Figures come from each run's metrics.json (finexp.callbacks.RunCosts): the peak RSS while fitting, the best
checkpoint's size on disk. Targets: LoRA trainable <= 2% of all parameters; its checkpoint <= 5% of full
fine-tuning's; its peak memory below full fine-tuning's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

STRATEGIES = {"full": ["adapter=full"], "lora": ["adapter=lora", "adapter.r=8", "optimizer.lr=5e-4"]}


def run(strategy: str, out: Path, batches: int, max_rows: int) -> dict:
    overrides = [
        *STRATEGIES[strategy],
        "model=minilm",
        "logger=csv",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={batches}",
        "trainer.limit_val_batches=4",
        "trainer.limit_test_batches=4",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "data.batch_size=32",
        f"data.max_rows={max_rows}",
        f"paths.log_dir={out}",
        f"hydra.run.dir={out / strategy}",
        f"paths.output_dir={out / strategy}",
    ]
    result = subprocess.run([sys.executable, "-m", "finexp.train", *overrides], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{strategy} failed:\n{result.stderr[-3000:]}")
    return json.loads((out / strategy / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-rows", type=int, default=1500)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in STRATEGIES}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name in STRATEGIES:
                results[name].append(run(name, Path(tmp) / f"{repeat}", args.batches, args.max_rows))

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    for name in STRATEGIES:
        print(
            f"{name:5s} trainable {median(name, 'params/trainable'):>12,.0f} of {median(name, 'params/total'):,.0f} "
            f"({median(name, 'params/trainable_pct'):.3f}%)  checkpoint {median(name, 'checkpoint/size_mb'):8.2f} MB  "
            f"peak RSS {median(name, 'memory/peak_mb'):7.0f} MB (start {median(name, 'memory/start_mb'):.0f} MB)  "
            f"{median(name, 'throughput/train_samples_per_s'):6.1f} samples/s  "
            f"peaks {[round(r['memory/peak_mb']) for r in results[name]]}"
        )
    pct = median("lora", "params/trainable_pct")
    ckpt = median("lora", "checkpoint/size_mb") / median("full", "checkpoint/size_mb")
    growth = {n: median(n, "memory/peak_mb") - median(n, "memory/start_mb") for n in STRATEGIES}
    peak_ok = all(
        lo["memory/peak_mb"] < fu["memory/peak_mb"] for lo, fu in zip(results["lora"], results["full"], strict=True)
    )
    print(f"target LoRA trainable <= 2%: {pct:.3f}% -> {'PASS' if pct <= 2 else 'FAIL'}")
    print(f"target LoRA checkpoint <= 5% of full: {100 * ckpt:.2f}% -> {'PASS' if ckpt <= 0.05 else 'FAIL'}")
    print(
        f"target LoRA peak memory < full (each repeat): {median('lora', 'memory/peak_mb'):.0f} MB vs "
        f"{median('full', 'memory/peak_mb'):.0f} MB; growth while fitting {growth['lora']:.0f} MB vs "
        f"{growth['full']:.0f} MB -> {'PASS' if peak_ok else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
