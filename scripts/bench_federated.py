"""Central vs federated fine-tuning on credit scoring (MiniLM + LoRA), and bytes per round with LoRA vs full.

Runs ``finexp-train -m experiment=federated_vs_central`` (central; FedAvg over 5 IID clients; FedAvg over 5 clients
with Dirichlet(0.5) label skew; same budget: 3 epochs = 3 rounds x 1 local epoch) on a stratified subsample of the
table, summarizes it with ``finexp-report``, then measures the bytes of one round with full fine-tuning against LoRA
(one round, two batches per client: the bytes do not depend on how long clients train).

    python scripts/bench_federated.py                       # 1,500 applicants, seed 1 (~30 min on 2 CPU cores)
    python scripts/bench_federated.py --max-rows 4454 --seeds 1,2,3
    python scripts/bench_federated.py --part bytes          # only the bytes per round (a few minutes)
    python scripts/bench_federated.py --jobs 3              # the three arms at once (busy machines)
    python scripts/bench_federated.py --part summary --out DIR   # summarize runs already there
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

QUIET = [
    "logger=csv",
    "analysis=none",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "trainer.enable_model_summary=false",
]


def _run(args: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(args)}; see {log}")
    return time.perf_counter() - started


def _metrics(directory: Path) -> list[dict]:
    runs = []
    for path in sorted(directory.rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        info = json.loads((path.parent / "run_info.json").read_text())
        arm = info["choices"].get("federated") or "none"
        runs.append(
            {"dir": path.parent, "metrics": metrics, "federated": arm != "none", "arm": arm, "seed": info["seed"]}
        )
    return runs


def _arm(run: dict) -> str:
    name = f"federated={run['arm']}" if run["federated"] else "central (federated=none)"
    return f"{name}, seed {run['seed']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-rows", type=int, default=1500, help="stratified subsample of the 4,454 applicants")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--out", default="outputs/bench_federated")
    parser.add_argument("--jobs", type=int, default=1, help=">1: the arms as single runs, this many at a time")
    parser.add_argument("--part", choices=("all", "sweep", "summary", "bytes"), default="all")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.part in ("all", "sweep"):
        _sweep(out, args.max_rows, args.seeds, args.jobs)
    if args.part in ("all", "sweep", "summary"):
        _summary(out)
    if args.part in ("all", "bytes"):
        _bytes(out.with_name(out.name + "-bytes"))  # beside, not inside: finexp-report reads every run below out


def _sweep(out: Path, max_rows: int, seeds: str, jobs: int) -> None:
    """The experiment's runs: one ``-m`` sweep, or with ``jobs > 1`` its arms as single runs, ``jobs`` at a time."""
    data = [f"data.max_rows={max_rows}"]
    started = time.perf_counter()
    if jobs == 1:
        args = ["finexp-train", "-m", "experiment=federated_vs_central", f"hydra.sweeper.params.seed={seeds}"]
        _run([*args, f"hydra.sweep.dir={out / 'sweep'}", *data, *QUIET], out / "sweep.log")
    else:
        pending = [
            (arm, seed) for seed in seeds.split(",") for arm in ("none", "fedavg", "fedavg_skewed")
        ]  # the experiment's grid
        running: list[subprocess.Popen] = []
        while pending or running:
            while pending and len(running) < jobs:
                arm, seed = pending.pop(0)
                run_dir = out / "runs" / f"{arm}-seed{seed}"
                args = ["finexp-train", "experiment=federated_vs_central", f"federated={arm}", f"seed={seed}"]
                log = (out / f"{arm}-seed{seed}.log").open("w")
                running.append(
                    subprocess.Popen(
                        [*args, f"hydra.run.dir={run_dir}", *data, *QUIET], stdout=log, stderr=subprocess.STDOUT
                    )
                )
            time.sleep(5)
            for proc in [p for p in running if p.poll() is not None]:
                running.remove(proc)
                if proc.returncode != 0:
                    sys.exit(f"failed ({proc.returncode}): {' '.join(proc.args)}")
    minutes = (time.perf_counter() - started) / 60
    print(f"experiment=federated_vs_central, {max_rows} rows, seeds {seeds}, {jobs} at a time: {minutes:.1f} min")


def _curve(run_dir: Path) -> str:
    """Val AUROC after each epoch (central) or round (federated; round 0: the initial model), from the CSV log."""
    import pandas as pd

    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return "-"
    frame = pd.read_csv(path)
    if "val/auroc" not in frame:
        return "-"
    if "federated/round" in frame:
        rows = frame.dropna(subset=["federated/round", "val/auroc"])
        return " ".join(f"r{int(r)}:{v:.3f}" for r, v in zip(rows["federated/round"], rows["val/auroc"], strict=True))
    rows = frame.dropna(subset=["val/auroc"]).drop_duplicates("epoch")
    if "train/loss_epoch" in frame:  # the epochs that trained (the final validation logs one epoch further)
        rows = rows[rows["epoch"].isin(frame.dropna(subset=["train/loss_epoch"])["epoch"])]
    return " ".join(f"e{int(e) + 1}:{v:.3f}" for e, v in zip(rows["epoch"], rows["val/auroc"], strict=True))


def _summary(out: Path) -> None:
    """One line per run below ``out`` (unfinished ones with their val curve so far), then ``finexp-report``."""
    for info_path in sorted(out.rglob("run_info.json")):
        run_dir = info_path.parent
        if (run_dir / "metrics.json").is_file():
            continue
        arm = json.loads(info_path.read_text())["choices"].get("federated") or "none"
        print(f"  unfinished {arm:<26} val/auroc so far {_curve(run_dir)}")
    for run in sorted(_metrics(out), key=lambda r: (_arm(r), str(r["dir"]))):
        m = run["metrics"]
        line = f"  {_arm(run):<36} test/auroc {m['test/auroc']:.4f}  val/auroc {m['val/auroc']:.4f}"
        if run["federated"]:
            line += (
                f"  label skew {m['federated/label_skew']:.3f}  best round {m['federated/best_round']}"
                f"  bytes/round {m['federated/bytes_per_round'] / 1e6:.2f} MB"
            )
        print(line + f"  fit {m['time/fit_s']:.0f} s  val/auroc {_curve(run['dir'])}")
    report = subprocess.run(["finexp-report", str(out), "--by", "federated"], capture_output=True, text=True)
    print(report.stdout.strip() or report.stderr.strip())


def _bytes(out: Path) -> None:
    """Bytes per round depend on what trains and the number of clients, not on the rows: 300 rows are enough."""
    out.mkdir(parents=True, exist_ok=True)
    data = ["data.max_rows=300"]
    sent = {}
    for adapter in ("full", "lora"):
        run_dir = out / f"bytes_{adapter}"
        if (run_dir / "metrics.json").is_file():  # measured before (--part bytes again only prints)
            sent[adapter] = json.loads((run_dir / "metrics.json").read_text())
            continue
        _run(
            [
                "finexp-train",
                "federated=fedavg",
                f"adapter={adapter}",
                "federated.rounds=1",
                "trainer.limit_train_batches=2",
                f"hydra.run.dir={run_dir}",
                *data,
                *QUIET,
            ],
            out / f"bytes_{adapter}.log",
        )
        sent[adapter] = json.loads((run_dir / "metrics.json").read_text())
    for adapter, m in sent.items():
        print(
            f"  bytes per round, {adapter:<4}: {m['federated/bytes_per_round'] / 1e6:8.2f} MB "
            f"(up {m['federated/bytes_up_per_round'] / 1e6:.2f} + down {m['federated/bytes_down_per_round'] / 1e6:.2f},"
            f" 5 clients, {m['federated/exchanged_parameters']:,} parameters exchanged)"
        )
    ratio = sent["full"]["federated/bytes_per_round"] / sent["lora"]["federated/bytes_per_round"]
    print(f"  LoRA sends {ratio:.0f}x fewer bytes per round than full fine-tuning")


if __name__ == "__main__":
    main()
