"""Training throughput of finexp (Lightning module + Trainer) against a bare PyTorch loop on the same batches.

    python scripts/bench_overhead.py                 # all-MiniLM-L6-v2 on credit scoring, 30 batches, 3 repeats
    python scripts/bench_overhead.py --model tiny_bert --batches 200

Both sides start from the same weights and see the same pre-built, padded batches in the same order, with the same
optimizer (AdamW, linear warm-up schedule, gradient clipping at 1.0). The bare loop does forward, cross-entropy,
backward, clipping, optimizer and scheduler steps; finexp adds what a run has (train metrics, logging, pad
accounting). Throughput = samples / seconds of the training epoch. Target: finexp >= 0.95x bare (median of repeats).
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from finexp import build
from finexp.config import config_dir
from finexp.optim import linear_warmup, parameter_groups
from finexp.problems.classification_training import classification_module


class EpochTimer(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start


def bare_loop(model: nn.Module, batches: list[dict], lr: float) -> float:
    optimizer = torch.optim.AdamW(parameter_groups(model), lr=lr, weight_decay=0.01)
    scheduler = linear_warmup(optimizer, len(batches), 0.1)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    for batch in batches:
        logits = model(batch["input_ids"], batch["attention_mask"])
        loss = loss_fn(logits, batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def finexp_loop(model: nn.Module, batches: list[dict], lr: float, labels: list[str]) -> float:
    module = classification_module(
        model,
        labels,
        optimizer=functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.01),
        scheduler=functools.partial(linear_warmup, warmup_ratio=0.1),
    )
    timer = EpochTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", help="a conf/model option (default: minilm)")
    parser.add_argument("--batches", type=int, default=30, help="training batches per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per side (median reported)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"model={args.model}",
                f"data.batch_size={args.batch_size}",
                "paths.output_dir=outputs/bench",
                "paths.log_dir=outputs",
            ],
        )
    pl.seed_everything(0)
    tokenizer = build.tokenizer_from(cfg)
    datamodule = build.datamodule_from(cfg, tokenizer)
    datamodule.prepare()
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(batch)
        if len(batches) == args.batches:
            break
    samples = sum(len(b["labels"]) for b in batches)
    initial = build.model_from(cfg, datamodule.num_labels, tokenizer)
    lr = cfg.optimizer.lr

    bare, ours = [], []
    for repeat in range(args.repeats):  # alternate the order so drift on the machine hits both sides
        sides = [("bare", bare), ("finexp", ours)] if repeat % 2 == 0 else [("finexp", ours), ("bare", bare)]
        for name, results in sides:
            model = copy.deepcopy(initial)
            if name == "bare":
                seconds = bare_loop(model, batches, lr)
            else:
                seconds = finexp_loop(model, batches, lr, datamodule.label_names)
            results.append(samples / seconds)
            print(f"repeat {repeat} {name:>6}: {samples / seconds:8.1f} samples/s", flush=True)

    bare_median, ours_median = statistics.median(bare), statistics.median(ours)
    ratio = ours_median / bare_median
    print(f"\nmodel={args.model} threads={torch.get_num_threads()} batches={args.batches} samples={samples}")
    print(f"bare PyTorch loop : {bare_median:8.1f} samples/s (median of {args.repeats})")
    print(f"finexp (Lightning): {ours_median:8.1f} samples/s (median of {args.repeats})")
    print(f"ratio finexp/bare : {ratio:.3f}  (target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")


if __name__ == "__main__":
    main()
