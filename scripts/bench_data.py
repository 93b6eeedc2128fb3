"""Data preparation at scale: read, split, tokenize and batch 10k / 100k / 1M short texts with tiny_bert's tokenizer.

Each size is a generated CSV of short headlines (~30 tokens, 3 classes) read by finexp's ClassificationDataModule
exactly as ``finexp-train model=tiny_bert task=text_classification data.path=...`` reads it. Every measurement runs
in a fresh Python process, so its peak RSS is its own:

- cold: the first preparation (read the CSV, split, tokenize, write the memory-mapped token cache);
- cached: a second process on the same data and cache (what every later run of a sweep pays), with the time from
  interpreter start to a ready datamodule and the time of ``prepare()`` alone;
- epoch: one tiny_bert training epoch over the largest size cut to ``--steps`` batches (``trainer.limit_train_batches``)
  through ``finexp.train``: model time per step (``time/train_step_s`` of metrics.json), against the loader's own
  time per batch (the same train loader iterated without a model).

    python scripts/bench_data.py                     # 10k, 100k, 1M rows; epoch over 1M rows, 200 steps
    python scripts/bench_data.py --quick             # 10k rows only, 20 steps (a smoke run: correctness, not timing)
    python scripts/bench_data.py --tokenize-workers 2

Targets (issue 18): 1M rows prepared with peak RSS <= 2 GB, a cached second start <= 10 s, rows/s that stay flat
across sizes (linear cost), and data time per step << model time.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports: a cached start counts them

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from omegaconf import DictConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = [
    *[
        "revenue",
        "profit",
        "loss",
        "guidance",
        "margin",
        "dividend",
        "shares",
        "bond",
        "yield",
        "rate",
        "inflation",
        "outlook",
        "quarter",
        "growth",
    ],
    *[
        "decline",
        "forecast",
        "earnings",
        "debt",
        "rating",
        "upgrade",
        "downgrade",
        "merger",
        "acquisition",
        "buyback",
        "demand",
        "supply",
    ],
    *[
        "costs",
        "sales",
        "market",
        "investors",
        "analysts",
        "lender",
        "credit",
        "default",
        "liquidity",
        "capital",
        "exposure",
        "hedge",
    ],
]
COMPANIES = ["ACME", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka"]
LABELS = ["negative", "neutral", "positive"]


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` headlines of 12-28 words (~30 WordPiece tokens with [CLS]/[SEP]) and a label."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("text,label\n")
        for _ in range(rows):
            words = " ".join(rng.choices(WORDS, k=rng.randint(12, 28)))
            handle.write(f"{rng.choice(COMPANIES)} {words},{rng.choice(LABELS)}\n")


def compose_cfg(csv: Path, cache: Path, out: Path, *overrides: str) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from finexp.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "model=tiny_bert",
                "task=text_classification",
                f"data.path={csv}",
                "task.text_column=text",
                "task.label_column=label",
                "logger=csv",
                "analysis=none",
                "trainer.accelerator=cpu",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                "callbacks.progress_bar=null",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.log_dir = str(out / "outputs")
        cfg.paths.output_dir = str(out / "run")
        cfg.paths.cache_dir = str(cache)
    return cfg


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_prepare(args: argparse.Namespace) -> dict:
    from finexp import build

    cfg = compose_cfg(args.csv, args.cache, args.out, f"data.tokenize_workers={args.tokenize_workers}")
    begin = time.perf_counter()
    datamodule = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    datamodule.prepare()
    prepared = time.perf_counter()
    train = datamodule.datasets["train"]
    rows = sum(len(d) for d in datamodule.datasets.values())
    return {
        "rows": rows,
        "prepare_s": prepared - begin,
        "start_s": prepared - STARTED,
        "peak_rss_mb": peak_rss_mb(),
        "mean_tokens": float(train.lengths.mean()),
        "mapped": type(train.ids).__name__ == "memmap",
    }


def child_epoch(args: argparse.Namespace) -> dict:
    from finexp import build
    from finexp.train import train

    overrides = [
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={args.steps}",
        "trainer.limit_val_batches=2",
        "trainer.num_sanity_val_steps=0",
        "data.batch_size=32",
        "test=false",
    ]
    cfg = compose_cfg(args.csv, args.cache, args.out, *overrides)
    datamodule = build.datamodule_from(cfg, build.tokenizer_from(cfg))
    datamodule.prepare()
    loader = iter(datamodule.train_dataloader())
    begin = time.perf_counter()
    for _ in range(args.steps):
        next(loader)
    data_step = (time.perf_counter() - begin) / args.steps
    metrics = train(cfg)
    return {
        "train_rows": len(datamodule.datasets["train"]),
        "steps": args.steps,
        "data_s_per_step": data_step,
        "model_s_per_step": metrics["time/train_step_s"] / args.steps,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_child(kind: str, csv: Path, cache: Path, out: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--csv", str(csv), "--cache", str(cache)]
    command += ["--out", str(out), "--steps", str(args.steps), "--tokenize-workers", str(args.tokenize_workers)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{kind} on {csv} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k rows and 20 steps: a smoke run")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=200, help="training steps of the epoch measurement")
    parser.add_argument("--tokenize-workers", type=int, default=1, help="data.tokenize_workers")
    parser.add_argument("--workdir", type=Path, default=None, help="where the CSVs and caches go (default: a temp dir)")
    parser.add_argument("--child", choices=["prepare", "epoch"], help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child_prepare(args) if args.child == "prepare" else child_epoch(args)
        print(json.dumps(result))
        return
    if args.quick:
        args.sizes, args.steps = [10_000], 20
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        print(f"tiny_bert's tokenizer, data.tokenize_workers={args.tokenize_workers}, {os.cpu_count()} CPUs")
        print(
            f"{'rows':>10} {'cold s':>8} {'rows/s':>9} {'peak RSS MB':>12} {'cached start s':>15} "
            f"{'cached prepare s':>17} {'cached RSS MB':>14} {'tokens/row':>10}"
        )
        for size in args.sizes:
            csv = work / f"texts-{size}.csv"
            write_csv(csv, size)
            cache = work / f"cache-{size}"
            cold = run_child("prepare", csv, cache, work / f"run-{size}", args)
            warm = run_child("prepare", csv, cache, work / f"run-{size}-again", args)
            assert warm["mapped"] and warm["rows"] == cold["rows"] == size
            print(
                f"{size:>10,} {cold['prepare_s']:>8.2f} {size / cold['prepare_s']:>9,.0f} "
                f"{cold['peak_rss_mb']:>12,.0f} {warm['start_s']:>15.2f} {warm['prepare_s']:>17.2f} "
                f"{warm['peak_rss_mb']:>14,.0f} {cold['mean_tokens']:>10.1f}"
            )
        size = args.sizes[-1]
        epoch = run_child("epoch", work / f"texts-{size}.csv", work / f"cache-{size}", work / "epoch", args)
        data_ms, model_ms = 1000 * epoch["data_s_per_step"], 1000 * epoch["model_s_per_step"]
        print(
            f"\none tiny_bert epoch over {epoch['train_rows']:,} train rows, {epoch['steps']} steps of 32 "
            f"(trainer.limit_train_batches): data {data_ms:.2f} ms/step, model {model_ms:.1f} ms/step "
            f"({model_ms / data_ms:.0f}x), peak RSS {epoch['peak_rss_mb']:,.0f} MB"
        )


if __name__ == "__main__":
    main()
