"""How long does ``finexp-report`` take on a big sweep? Fabricate run directories in finexp-train's layout and time the
report (target: 200 runs in <= 30 s on 2 cores, bootstrap included).

    python scripts/bench_report.py                       # 200 runs: 5 tasks x 4 strategies x 10 seeds, 600 test rows
    python scripts/bench_report.py --runs 20 --rows 200  # a quick check that it works
    python scripts/bench_report.py --keep outputs/fake_sweep   # keep the fabricated sweep

Each fabricated run has what finexp-train writes and the report reads: ``config.yaml`` (task, model, adapter,
method, seed, paths), ``run_info.json`` (seed, choices, labels, monitor, data fingerprint, versions, git, command),
``metrics.json`` (test metrics and costs) and ``test_predictions.csv`` (row, row_id, gold, predicted and one
probability per class, 3 classes). Strategies differ in accuracy (0.60 to 0.75) so the paired tests have something
to find. Timed: ``finexp-report --suite --format latex,html --reproduce`` (1,000 bootstrap resamples) and the plain
per-setting report of the same tree.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

LABELS = ["bearish", "bullish", "neutral"]
STRATEGIES = {"full": 0.75, "lora": 0.72, "freeze": 0.60, "ia3": 0.70}  # adapter -> accuracy of its runs


def fabricate(root: Path, runs: int, rows: int, tasks: int) -> int:
    """Write ``runs`` run directories below ``root`` (tasks x strategies x seeds); returns how many were written."""
    rng = np.random.default_rng(0)
    seeds = max(1, runs // (tasks * len(STRATEGIES)))
    golds = {t: rng.integers(0, len(LABELS), rows) for t in range(tasks)}
    written = 0
    for t in range(tasks):
        task, gold = f"task{t}", golds[t]
        for adapter, accuracy in STRATEGIES.items():
            for seed in range(1, seeds + 1):
                if written == runs:
                    return written
                run = root / task / f"{adapter}-{seed}"
                run.mkdir(parents=True)
                config = {
                    "seed": seed,
                    "task": {"name": task, "problem": "classification", "monitor": "val/f1_macro"},
                    "model": {"name": "minilm", "kind": "transformer"},
                    "adapter": {"name": adapter},
                    "method": {"name": "finetune"},
                    "optimizer": {"lr": 1e-4},
                    "paths": {"output_dir": str(run)},
                }
                (run / "config.yaml").write_text(yaml.safe_dump(config))
                info = {
                    "seed": seed,
                    "command": ["finexp-train", "-m", "experiment=benchmark_suite"],
                    "versions": {"finexp": "0.1.0", "torch": "2.4.0"},
                    "git": {"finexp": {"commit": "0" * 40, "dirty": False}},
                    "data_fingerprint": {"test": f"fp{t}"},
                    "choices": {"adapter": adapter, "method": "finetune", "task": task, "model": "minilm"},
                    "labels": LABELS,
                    "monitor": "val/f1_macro",
                }
                (run / "run_info.json").write_text(json.dumps(info))
                correct = rng.random(rows) < accuracy
                predicted = np.where(correct, gold, (gold + rng.integers(1, len(LABELS), rows)) % len(LABELS))
                probs = rng.dirichlet(np.ones(len(LABELS)), rows) * 0.5
                probs[np.arange(rows), predicted] += 0.5
                frame = pd.DataFrame({"row": np.arange(rows), "row_id": [f"{t}-{i}" for i in range(rows)]})
                frame["gold"] = [LABELS[g] for g in gold]
                frame["predicted"] = [LABELS[p] for p in predicted]
                for i, name in enumerate(LABELS):
                    frame[f"prob_{name}"] = probs[:, i]
                frame.to_csv(run / "test_predictions.csv", index=False)
                metrics = {
                    "status": "completed",
                    "monitor": "val/f1_macro",
                    "test/f1_macro": float(correct.mean()),
                    "test/accuracy": float(correct.mean()),
                    "params/trainable": 22_000_000 if adapter == "full" else 100_000,
                    "params/trainable_pct": 100.0 if adapter == "full" else 0.45,
                    "time/epoch_s": 30.0,
                    "memory/peak_mb": 1500.0,
                }
                (run / "metrics.json").write_text(json.dumps(metrics))
                written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rows", type=int, default=600, help="test rows per task")
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--keep", default=None, help="write the sweep here and keep it (default: a temp dir)")
    args = parser.parse_args()
    from finexp.report import Options, write_report

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="finexp-bench-report-"))
    try:
        started = time.perf_counter()
        count = fabricate(root, args.runs, args.rows, args.tasks)
        print(f"fabricated {count} runs ({args.rows} test rows each) in {time.perf_counter() - started:.1f} s: {root}")
        for name, suite in (("suite report", True), ("per-setting report of task0", False)):
            started = time.perf_counter()
            frame = write_report(
                root if suite else root / "task0",
                by="strategy" if suite else "adapter",
                suite_mode=suite,
                options=Options(baseline="adapter=full"),
                formats=("markdown", "latex", "html"),
                reproduce=True,
            )
            seconds = time.perf_counter() - started
            significant = int(frame["significant"].sum())
            print(f"{name}: {seconds:.1f} s ({len(frame)} rows, {significant} significant vs full)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
