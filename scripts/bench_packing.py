"""Instruction tuning with and without ``data.packing``: one training epoch of a Llama on short prompt/response rows.

    python scripts/bench_packing.py            # 2,000 rows of ~15-60 tokens, max_length 256, Llama 4 x 256 (random)
    python scripts/bench_packing.py --quick    # 200 rows, tiny_llama (2 x 64): a smoke run, < 1 min

Both runs read the same generated file through finexp's GenerationDataModule (tiny_llama's tokenizer), build the
same model from the same seed and fit one epoch with Lightning at the same batch size (sequences per step), after a
warm-up fit, interleaved, the faster of two fits each. Packed,
each sequence holds several rows, so an epoch has fewer, fuller steps. Prints sequences, real tokens, pad fraction,
epoch seconds and real tokens/s of each run, and the speed-up.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from finexp import build
from finexp.config import config_dir

WORDS = [
    "loan",
    "card",
    "rate",
    "fee",
    "account",
    "transfer",
    "balance",
    "limit",
    "credit",
    "payment",
    "branch",
    "mortgage",
    "deposit",
    "savings",
]


def rows(n: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    return pd.DataFrame({"prompt": [text(5, 30) for _ in range(n)], "response": [text(3, 25) for _ in range(n)]})


def run(path: Path, packing: bool, args: argparse.Namespace, cache: Path) -> dict[str, float]:
    overrides = [
        "task=answer_generation",
        "model=tiny_llama",
        f"data.path={path}",
        f"data.packing={str(packing).lower()}",
        f"data.max_length={args.max_length}",
        f"data.batch_size={args.batch_size}",
        f"paths.cache_dir={cache}",
        f"paths.log_dir={cache.parent}",  # outside a Hydra run: no ${hydra:...} directories
        f"paths.output_dir={cache.parent / ('packed' if packing else 'unpacked')}",
        "seed=0",
    ]
    if not args.quick:  # a wider model: per-token compute dominates, as in a real LLM
        overrides += [
            "model.architecture.hidden_size=256",
            "model.architecture.intermediate_size=688",
            "model.architecture.num_hidden_layers=4",
        ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    tokenizer = build.tokenizer_from(cfg)
    datamodule = build.datamodule_from(cfg, tokenizer)
    datamodule.prepare()
    pl.seed_everything(0, verbose=False)
    model = build.model_from(cfg, 0, tokenizer)
    module = build.module_from(cfg, model, datamodule)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="auto",
    )
    loader = datamodule.train_dataloader()
    real = pad = 0
    for batch in loader:
        real += int(batch["attention_mask"].sum())
        pad += int((batch["attention_mask"] == 0).sum())
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - start
    return {
        "sequences": len(datamodule.datasets["train"]),
        "steps": len(loader),
        "tokens": real,
        "pad_fraction": pad / (real + pad),
        "seconds": seconds,
        "tokens_per_s": real / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 rows and tiny_llama: a smoke run")
    parser.add_argument("--rows", type=int, default=None, help="rows in the file (default 2000; quick: 200)")
    parser.add_argument("--max-length", type=int, default=256, help="data.max_length: the packed sequence length")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step, packed or not")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.rows or (200 if args.quick else 2000)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qa.jsonl"
        rows(n, seed=0).to_json(path, orient="records", lines=True)
        run(path, True, args, Path(tmp) / "cache")  # warm-up: the first fit of a process pays one-off costs
        results: dict[bool, dict[str, float]] = {}
        for packing in (False, True, False, True):  # interleaved; the faster of two fits each
            r = run(path, packing, args, Path(tmp) / "cache")
            if packing not in results or r["seconds"] < results[packing]["seconds"]:
                results[packing] = r
    print(f"{n} rows (70% train), max_length {args.max_length}, batch {args.batch_size} sequences, 1 epoch")
    print(f"{'':10} {'sequences':>10} {'steps':>6} {'tokens':>8} {'pad':>6} {'seconds':>8} {'tokens/s':>9}")
    for packing, r in results.items():
        name = "packed" if packing else "unpacked"
        print(
            f"{name:10} {r['sequences']:>10} {r['steps']:>6} {r['tokens']:>8} {r['pad_fraction']:>6.1%} "
            f"{r['seconds']:>8.1f} {r['tokens_per_s']:>9.0f}"
        )
    assert results[True]["tokens"] == results[False]["tokens"], "packing must keep every token"
    print(f"speed-up (real tokens/s): {results[True]['tokens_per_s'] / results[False]['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
