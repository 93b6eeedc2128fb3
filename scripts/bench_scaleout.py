"""Scale-out targets: DDP on 2 CPU processes vs 1 process, and a joblib (2 workers) vs basic-launcher sweep.

    python scripts/bench_scaleout.py            # both; outputs under outputs/bench_scaleout/
    python scripts/bench_scaleout.py --only ddp

DDP: the same global batch (1 process x 32 rows vs 2 processes x 16 rows), same seed and data; prints the final
val/test AUROC of each and the training throughput (train rows x epochs / fit seconds, spawn start-up included).
Sweep: 4 tiny-model jobs (2 learning rates x 2 seeds) with hydra/launcher=basic and =joblib (n_jobs=2); prints
each command's wall time and their ratio. Runs alternate (basic, joblib, basic, ...) over --repeats, medians quoted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "bench_scaleout"
COMMON = [
    "model=tiny_bert",
    "logger=csv",
    "analysis=none",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "trainer.enable_model_summary=false",
    "data.max_rows=1200",
    "optimizer.lr=1e-3",
    "callbacks.early_stopping=null",
]


def _run(args: list[str]) -> float:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "finexp.train", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{result.stderr[-3000:]}")
    return wall


def bench_ddp(repeats: int, seeds: list[int]) -> None:
    """Each seed trains once per setup (interleaved); "within noise" = the setups' mean gap vs the seed spread."""
    setups = {
        "1 process x 32": ["trainer=cpu", "data.batch_size=32"],
        "2 processes x 16 (ddp_cpu)": ["trainer=ddp_cpu", "data.batch_size=16"],
    }
    results: dict[str, list[dict]] = {name: [] for name in setups}
    for r in range(repeats):
        for seed in seeds:
            for i, (name, extra) in enumerate(setups.items()):
                run_dir = OUT / f"ddp-{r}-{seed}-{i}"
                shutil.rmtree(run_dir, ignore_errors=True)
                _run([*COMMON, *extra, "trainer.max_epochs=2", f"seed={seed}", f"hydra.run.dir={run_dir}"])
                metrics = json.loads((run_dir / "metrics.json").read_text())
                rows = json.loads((run_dir / "run_info.json").read_text())["rows"]["train"]
                metrics["rows_per_s"] = rows * 2 / metrics["time/fit_s"]
                results[name].append(metrics)
                print(f"ddp  {name:<28} seed {seed}  test/auroc {metrics['test/auroc']:.4f}", flush=True)
    for name, runs in results.items():
        med = {k: statistics.median(m[k] for m in runs) for k in ("val/auroc", "test/auroc", "rows_per_s")}
        spread = statistics.stdev(m["test/auroc"] for m in runs) if len(runs) > 1 else float("nan")
        mean = statistics.mean(m["test/auroc"] for m in runs)
        print(
            f"ddp  {name:<28} test/auroc mean {mean:.4f} ± {spread:.4f} (sd over {len(runs)} runs)  "
            f"median val/auroc {med['val/auroc']:.4f}  train rows/s {med['rows_per_s']:.1f}"
        )
    one, two = results.values()
    gap = statistics.mean(m["test/auroc"] for m in two) - statistics.mean(m["test/auroc"] for m in one)
    print(f"ddp  test/auroc gap (2 processes - 1 process): {gap:+.4f}")
    rate_one, rate_two = (statistics.median(m["rows_per_s"] for m in runs) for runs in (one, two))
    print(f"ddp  throughput ratio 2 processes / 1 process: {rate_two / rate_one:.2f}")


def bench_sweep(repeats: int) -> None:
    sweep = [
        "-m",
        *COMMON,
        "trainer=cpu",
        "data.max_rows=600",
        "trainer.max_epochs=1",
        "optimizer.lr=1e-3,3e-3",
        "seed=1,2",
    ]
    walls: dict[str, list[float]] = {"basic": [], "joblib": []}
    for r in range(repeats):
        for launcher in walls:
            sweep_dir = OUT / f"sweep-{launcher}-{r}"
            shutil.rmtree(sweep_dir, ignore_errors=True)
            extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
            walls[launcher].append(_run([*sweep, *extra, f"hydra.sweep.dir={sweep_dir}"]))
    for launcher, times in walls.items():
        print(
            f"sweep 4 jobs  hydra/launcher={launcher:<7} wall {statistics.median(times):.1f} s  "
            f"(runs: {', '.join(f'{t:.1f}' for t in times)})"
        )
    ratio = statistics.median(walls["joblib"]) / statistics.median(walls["basic"])
    print(f"sweep wall-time ratio joblib(2) / basic: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("ddp", "sweep"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="DDP: one run per seed and setup")
    args = parser.parse_args()
    print(f"cpu cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    if args.only in (None, "sweep"):
        bench_sweep(args.repeats)
    if args.only in (None, "ddp"):
        bench_ddp(args.repeats, args.seeds)


if __name__ == "__main__":
    main()
