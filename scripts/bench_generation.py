"""Answer decoding: the one-prompt, uncached loop (``generate``) against batched, cached ``generate_batch``.

    python scripts/bench_generation.py            # 64 prompts x 32 new tokens, GPT-2 of 4 layers x 256 (random)
    python scripts/bench_generation.py --quick    # 16 prompts x 12 tokens, 2 layers x 64: a smoke run, < 30 s

Both paths decode the same prompts (lengths 8-40, seeded) greedily with the same random-weight GPT-2 built from a
config; the end id lies outside the vocabulary, so no answer stops early and both paths decode every token. The
batched path decodes ``--batch-size`` prompts at a time, as ``GenerationModule`` decodes an eval batch. Prints the
seconds of each path, checks that the outputs are identical (exit 1 if not), and prints the speed-up. Target of
issue 15: >= 5x at the full size.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from finexp.models.causal_lm import CausalLM, build_causal_lm, generate, generate_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model and few prompts: a smoke run")
    parser.add_argument("--prompts", type=int, default=None, help="number of prompts (default 64; quick: 16)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per answer (default 32; quick: 12)")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts decoded together by generate_batch")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the machine is shared)")
    args = parser.parse_args()
    n_prompts = args.prompts or (16 if args.quick else 64)
    new_tokens = args.new_tokens or (12 if args.quick else 32)
    width, layers = (64, 2) if args.quick else (256, 4)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    torch.manual_seed(0)
    vocab = 2048
    arch = {
        "model_type": "gpt2",
        "n_embd": width,
        "n_layer": layers,
        "n_head": 4,
        "n_positions": 128,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    model = CausalLM(build_causal_lm(None, arch, vocab)).to(device).eval()
    rng = torch.Generator().manual_seed(1)
    prompts = [
        torch.randint(1, vocab, (int(n),), generator=rng).to(device)
        for n in torch.randint(8, 41, (n_prompts,), generator=rng)
    ]
    eos = vocab + 1  # never generated: every answer runs new_tokens long

    def timed(fn: Callable[[], list[list[int]]]) -> tuple[float, list[list[int]]]:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    generate(model, prompts[0], eos, 2)  # warm-up of both paths (allocator, kernels)
    generate_batch(model, prompts[:2], 0, eos, 2)
    loop_s, loop = timed(lambda: [generate(model, p, eos, new_tokens) for p in prompts])
    size = args.batch_size
    batched_s, batched = timed(
        lambda: [
            a
            for i in range(0, n_prompts, size)
            for a in generate_batch(model, prompts[i : i + size], 0, eos, new_tokens)
        ]
    )
    same = loop == batched
    rows_differ = sum(a != b for a, b in zip(loop, batched, strict=True))
    print(
        f"model: gpt2 {layers} layers x {width}, vocab {vocab}; {n_prompts} prompts x {new_tokens} new tokens; {device}"
    )
    print(f"per-prompt uncached loop: {loop_s:.2f} s")
    print(f"batched cached (batch {size}): {batched_s:.2f} s")
    print(f"identical greedy outputs: {same} ({rows_differ} row(s) differ)")
    print(f"speed-up: {loop_s / batched_s:.1f}x (target >= 5x at the full size)")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
