"""DP-SGD step time against a non-private step: same model, same adapter, same batch (target: <= 3x).

    python scripts/bench_dp_sgd.py                       # all-MiniLM-L6-v2 + LoRA, 32 credit-scoring rows
    python scripts/bench_dp_sgd.py --adapter full --model tiny_bert

A step is forward, loss, backward and optimizer step (zeroing included). The private step is what
``privacy=dp_sgd`` runs inside Lightning: finexp's DPSGD callback attaches Opacus' per-row gradient hooks to the module
and Opacus' DPOptimizer clips each row, adds noise and steps. Two identical modules (one hooked) alternate in rounds,
so both see the same machine load; the script prints the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_dir
from opacus.optimizers import DPOptimizer

from finexp import build
from finexp.config import config_dir
from finexp.privacy.dp_sgd import DPSGD


def _module(cfg, datamodule, tokenizer):  # noqa: ANN001
    torch.manual_seed(0)
    model = build.model_from(cfg, datamodule.num_labels, tokenizer)
    module = build.module_from(cfg, model, datamodule)
    module.train()
    return module


def _step(module, optimizer, batch) -> None:  # noqa: ANN001
    optimizer.zero_grad(set_to_none=True)
    logits = module(batch["input_ids"], batch["attention_mask"])
    module.loss_fn(logits, batch["labels"]).backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--adapter", default="lora")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and variant")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = [f"model={args.model}", f"adapter={args.adapter}", "privacy=dp_sgd", "paths.cache_dir=outputs/.cache"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    tokenizer = build.tokenizer_from(cfg)
    datamodule = build.datamodule_from(cfg, tokenizer)
    datamodule.prepare()
    rows = [datamodule.datasets["train"][i] for i in range(args.batch_size)]
    batch = datamodule.train_dataloader().collate_fn(rows)

    plain = _module(cfg, datamodule, tokenizer)
    private = _module(cfg, datamodule, tokenizer)
    plain_opt = torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=1e-4)
    dp = DPSGD(max_grad_norm=1.0, noise_multiplier=1.0)
    dp._attach(private, probe=datamodule.train_dataloader().collate_fn(rows[:2]))  # what on_fit_start attaches
    private_opt = DPOptimizer(
        torch.optim.AdamW([p for p in private.parameters() if p.requires_grad], lr=1e-4),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=args.batch_size,
    )
    trainable = sum(p.numel() for p in private.parameters() if p.requires_grad)

    for module, optimizer in ((plain, plain_opt), (private, private_opt)):  # warm-up
        _step(module, optimizer, batch)
    ratios, plain_s, private_s = [], [], []
    for _ in range(args.rounds):
        times = []
        for module, optimizer in ((plain, plain_opt), (private, private_opt)):
            started = time.perf_counter()
            for _ in range(args.steps):
                _step(module, optimizer, batch)
            times.append((time.perf_counter() - started) / args.steps)
        plain_s.append(times[0])
        private_s.append(times[1])
        ratios.append(times[1] / times[0])
    tokens = int(batch["attention_mask"].sum())
    print(
        f"model={args.model} adapter={args.adapter} batch={args.batch_size} rows ({tokens} tokens, "
        f"padded to {batch['input_ids'].shape[1]}) trainable={trainable} threads={torch.get_num_threads()}"
    )
    print(f"non-private step: median {statistics.median(plain_s) * 1000:.0f} ms over {args.rounds} rounds")
    print(f"DP-SGD step:      median {statistics.median(private_s) * 1000:.0f} ms")
    ratio = statistics.median(ratios)
    print(f"DP-SGD / non-private step time: median {ratio:.2f}x (per-round: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"target <= 3x: {'met' if ratio <= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
