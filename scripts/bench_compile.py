"""Training throughput with and without ``trainer.compile=true`` (torch.compile of the encoder), tiny_bert and MiniLM.

    python scripts/bench_compile.py                 # tiny_bert and minilm, batch 16 x 64 tokens, 20 timed steps
    python scripts/bench_compile.py --models minilm --batch-size 32 --length 128 --steps 30
    python scripts/bench_compile.py --device cuda --precision bf16   # on a GPU: bf16 autocast, as trainer=gpu does
    python scripts/bench_compile.py --quick         # tiny_bert, 2 steps: checks the script, not a timing

Each model is built as finexp-train builds it (``finexp.build.model_from`` with ``model=<name>``), then trained with
AdamW on fixed-shape random token batches: ``--warmup`` steps first (the compiled variant compiles there; their time
is reported as ``first steps s``), then ``--steps`` timed steps. The compiled variant uses
:func:`finexp.compile.compile_encoder`, the hook ``trainer.compile=true`` runs. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from torch.nn import functional as F

from finexp.build import model_from, tokenizer_from
from finexp.compile import compile_encoder
from finexp.config import config_dir


def build(model: str) -> tuple[torch.nn.Module, int]:
    """A finexp classifier of ``model=<model>`` (2 labels) and its vocabulary size."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", "task=text_classification", "data.path=unused.csv"])
    tokenizer = tokenizer_from(cfg)
    return model_from(cfg, 2, tokenizer, ["negative", "positive"]), len(tokenizer)


def measure(model: str, compiled: bool, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    net, vocab = build(model)
    net.to(args.device).train()
    if compiled:
        compile_encoder(net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    ids = torch.randint(5, vocab, (args.batch_size, args.length), device=args.device)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (args.batch_size,), device=args.device)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step() -> float:
        with autocast:
            loss = F.cross_entropy(net(input_ids=ids, attention_mask=mask).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    started = time.perf_counter()
    for _ in range(args.warmup):
        step()
    first = time.perf_counter() - started
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    return {
        "model": model,
        "compile": compiled,
        "first_s": first,
        "step_ms": median * 1e3,
        "samples_per_s": args.batch_size / median,
        "tokens_per_s": args.batch_size * args.length / median,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny_bert", "minilm"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("32", "bf16"), default="32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny_bert, 1 warm-up and 2 timed steps")
    args = parser.parse_args()
    if args.quick:
        args.models, args.warmup, args.steps = ["tiny_bert"], 1, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, precision {args.precision}, "
        f"batch {args.batch_size} x {args.length} tokens, {args.warmup} warm-up + {args.steps} timed steps"
    )
    print(f"{'model':<10} {'compile':<8} {'first steps s':>13} {'step ms':>9} {'samples/s':>10} {'tokens/s':>10}")
    rows = []
    for model in args.models:
        for compiled in (False, True):
            r = measure(model, compiled, args)
            rows.append(r)
            print(
                f"{model:<10} {compiled!s:<8} {r['first_s']:>13.2f} {r['step_ms']:>9.1f} "
                f"{r['samples_per_s']:>10.1f} {r['tokens_per_s']:>10.0f}",
                flush=True,
            )
    for model in args.models:
        eager, comp = (next(r for r in rows if r["model"] == model and r["compile"] is c) for c in (False, True))
        print(f"{model}: compiled / eager throughput = {comp['tokens_per_s'] / eager['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
