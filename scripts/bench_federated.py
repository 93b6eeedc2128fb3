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
    python scripts/bench_federated.py --rounds 10 --lr 1e-3   # more rounds, a tuned client lr (target: within 0.02)
    python scripts/bench_federated.py --rounds 5 --local-epochs 2 --lr 1e-3   # central: 10 epochs, the same budget
    python scripts/bench_federated.py --part overhead       # deployment (SuperLink + 2 nodes), simulation, in-process
    python scripts/bench_federated.py --quick               # a correctness check of the overhead part (tiny_bert)

The overhead part runs the same tiny run on each runtime: federated.runtime=inprocess, simulation (Flower's Ray
runtime, when finexp[federated-sim] is installed) and deployment against a SuperLink and two SuperNodes started here
on 127.0.0.1 (finexp-federate serve / node, each node on its own file), and prints round wall time and bytes per round
side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from finexp.testing.loopback import free_ports, stop_process_group, wait_for_port

QUIET = [
    "logger=csv",
    "analysis=none",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "trainer.enable_model_summary=false",
]


ARMS = ("central", "iid", "dirichlet")  # experiment=federated_vs_central: federated=none, fedavg, fedavg_skewed


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
        if arm != "none" and metrics.get("federated/label_skew", 0) > 0.05 and "skewed" not in arm:
            arm += " (dirichlet)"  # another strategy's Dirichlet arm: the same config name as its IID arm
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
    parser.add_argument("--part", choices=("all", "sweep", "summary", "bytes", "overhead"), default="all")
    parser.add_argument("--rounds", type=int, default=None, help="federated rounds (and central epochs) of the sweep")
    parser.add_argument("--lr", type=float, default=None, help="optimizer.lr of every arm (the client lr)")
    parser.add_argument("--local-epochs", type=int, default=None, help="federated.local_epochs of the clients")
    parser.add_argument("--quick", action="store_true", help="only the overhead part, 1 round, tiny (a check)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="the arms to run (default: all)")
    parser.add_argument(
        "--strategy", default="fedavg", help="conf/federated config of the federated arms (fedavgm, fedadam, fedprox)"
    )
    parser.add_argument(
        "--federated-overrides", nargs="*", default=[], help="more overrides of the federated arms only"
    )
    parser.add_argument("--central-epochs", type=int, default=None, help="epochs of the central arm (default: budget)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        _overhead(out.with_name(out.name + "-overhead-quick"), rounds=1, rows=60)
        return
    extra = [f"optimizer.lr={args.lr}"] if args.lr is not None else []
    federated_extra = []  # federated.* exists only in the federated arms (federated=none composes to an empty node)
    local_epochs = args.local_epochs or 1
    if args.rounds is not None:  # same budget: rounds x local epochs = epochs of the central arm
        extra += [f"trainer.max_epochs={args.rounds * local_epochs}"]
        federated_extra += [f"federated.rounds={args.rounds}"]
    if args.local_epochs is not None:
        federated_extra += [f"federated.local_epochs={args.local_epochs}"]
    federated_extra += args.federated_overrides
    central_extra = [f"trainer.max_epochs={args.central_epochs}"] if args.central_epochs else []
    arms = {arm: _arm_overrides(arm, args.strategy, federated_extra, central_extra) for arm in args.arms}
    if args.part in ("all", "sweep"):
        single = args.jobs > 1 or federated_extra or central_extra or args.strategy != "fedavg" or len(arms) < 3
        _sweep(out, args.max_rows, args.seeds, args.jobs, extra, arms if single else None)
    if args.part in ("all", "sweep", "summary"):
        _summary(out)
    if args.part in ("all", "bytes"):
        _bytes(out.with_name(out.name + "-bytes"))  # beside, not inside: finexp-report reads every run below out
    if args.part in ("all", "overhead"):
        _overhead(out.with_name(out.name + "-overhead"), rounds=3, rows=400)


def _arm_overrides(arm: str, strategy: str, federated_extra: list[str], central_extra: list[str]) -> list[str]:
    """One arm's overrides: central (``federated=none``), IID or Dirichlet(0.5) partitions under ``strategy``."""
    if arm == "central":
        return ["federated=none", *central_extra]
    if arm == "dirichlet":  # fedavg: the experiment's own arm, conf/federated/fedavg_skewed.yaml
        skew = ["federated.partition=dirichlet", "federated.alpha=0.5"]
        chosen = ["federated=fedavg_skewed"] if strategy == "fedavg" else [f"federated={strategy}", *skew]
        return [*chosen, *federated_extra]
    return [f"federated={strategy}", *federated_extra]


def _sweep(
    out: Path, max_rows: int, seeds: str, jobs: int, extra: list[str], arms: dict[str, list[str]] | None
) -> None:
    """The experiment's runs: one ``-m`` sweep, or its arms as single runs, ``jobs`` at a time (also when the
    federated arms take overrides of their own, which a ``-m`` sweep would pass to the central arm too)."""
    data = [f"data.max_rows={max_rows}", *extra]
    started = time.perf_counter()
    if arms is None:
        args = ["finexp-train", "-m", "experiment=federated_vs_central", f"hydra.sweeper.params.seed={seeds}"]
        _run([*args, f"hydra.sweep.dir={out / 'sweep'}", *data, *QUIET], out / "sweep.log")
    else:
        pending = [(arm, seed) for seed in seeds.split(",") for arm in arms]  # the experiment's grid, or part of it
        running: list[subprocess.Popen] = []
        while pending or running:
            while pending and len(running) < jobs:
                arm, seed = pending.pop(0)
                run_dir = out / "runs" / f"{arm}-seed{seed}"
                args = ["finexp-train", "experiment=federated_vs_central", *arms[arm], f"seed={seed}"]
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


WORDS = {
    "bullish": ["shares rally after strong earnings", "profit beats forecast", "stock upgraded to buy"],
    "bearish": ["shares slump on weak guidance", "loss widens as sales fall", "stock downgraded to sell"],
}


def _headlines(path: Path, rows: int, seed: int) -> None:
    """A generated, easy headline file (the wording decides the label): one per institution and the coordinator."""
    import pandas as pd

    rng = random.Random(seed)
    labels = ["bullish" if i % 2 else "bearish" for i in range(rows)]
    frame = [{"headline": f"{rng.choice(['ACME', 'Globex'])} {rng.choice(WORDS[y])}", "sentiment": y} for y in labels]
    pd.DataFrame(frame).to_csv(path, index=False)


def _overhead(out: Path, rounds: int, rows: int) -> None:
    """Deployment (SuperLink + 2 SuperNodes on loopback) vs in-process on the same tiny run: round time, bytes."""
    out.mkdir(parents=True, exist_ok=True)
    coordinator, banks = out / "coordinator.csv", [out / "bank_a.csv", out / "bank_b.csv"]
    for i, path in enumerate([coordinator, *banks]):
        _headlines(path, rows, seed=i)
    common = [
        "model=tiny_bert",
        "task=text_classification",
        f"data.path={coordinator}",
        "task.text_column=headline",
        "task.label_column=sentiment",
        "federated=fedavg",
        "federated.num_clients=2",
        f"federated.rounds={rounds}",
        "trainer.accelerator=cpu",
        *QUIET,
    ]
    serverappio, fleet, control, app_a, app_b = free_ports(5)
    env = {**os.environ, "FLWR_HOME": str(out / "flwr_home")}
    cli = [sys.executable, "-m", "finexp.federated.cli"]
    processes = []
    try:
        serve = [
            *cli,
            "serve",
            f"--serverappio-port={serverappio}",
            f"--fleet-port={fleet}",
            f"--control-port={control}",
        ]
        processes.append(
            subprocess.Popen(
                serve,
                stdout=(out / "superlink.log").open("w"),
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        )
        wait_for_port(fleet)
        wait_for_port(control)
        for bank, port in zip(banks, (app_a, app_b), strict=True):
            node = [
                *cli,
                "node",
                f"--data={bank}",
                f"--superlink=127.0.0.1:{fleet}",
                f"--clientappio-address=127.0.0.1:{port}",
            ]
            processes.append(
                subprocess.Popen(
                    node,
                    stdout=(out / f"{bank.stem}.log").open("w"),
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
            wait_for_port(port)
        runs = {}
        import importlib.util

        simulation = ("simulation",) if importlib.util.find_spec("ray") else ()  # finexp[federated-sim]
        for runtime in ("inprocess", *simulation, "deployment"):
            run_dir = out / runtime
            args = ["finexp-train", *common, f"federated.runtime={runtime}", f"hydra.run.dir={run_dir}"]
            if runtime == "deployment":
                args.append(f"federated.superlink=127.0.0.1:{control}")
            seconds = _run(args, out / f"{runtime}.log")
            runs[runtime] = (json.loads((run_dir / "metrics.json").read_text()), seconds)
    finally:
        for process in processes:  # each by its process group (the Flower process and its app children)
            stop_process_group(process)
    print(f"  tiny_bert, 2 nodes x {rows} rows, {rounds} round(s), FedAvg (deployment: loopback, insecure)")
    print(
        f"  {'runtime':<11} {'round s':>8} {'bytes/round':>12} {'up':>10} {'down':>10} {'test/auroc':>10} {'run s':>6}"
    )
    for runtime, (m, seconds) in runs.items():
        print(
            f"  {runtime:<11} {m['federated/round_s']:8.2f} {m['federated/bytes_per_round']:12,.0f} "
            f"{m['federated/bytes_up_per_round']:10,.0f} {m['federated/bytes_down_per_round']:10,.0f} "
            f"{m['test/auroc']:10.4f} {seconds:6.0f}"
        )
    extra = runs["deployment"][0]["federated/round_s"] - runs["inprocess"][0]["federated/round_s"]
    print(f"  deployment overhead per round: {extra:+.2f} s (separate processes, gRPC, model built on each node)")


if __name__ == "__main__":
    main()
