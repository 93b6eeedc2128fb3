"""Do the non-classification problem types learn? Tiny models on generated data, end to end through ``train()``.

    python scripts/bench_problem_types.py                       # all three, CPU, a few minutes on 2 cores
    python scripts/bench_problem_types.py --only generation --overrides trainer.accelerator=gpu
    python scripts/bench_problem_types.py --only ner --encoder minilm --overrides optimizer.lr=1e-4

* ``ner``: tiny_bert on CoNLL sentences from 4 templates; the test sentences name companies, people and places never
  seen in training (3 names per type each side): test entity F1.
* ``generation``: tiny_gpt on five question -> answer pairs (prompts paraphrased): exact match and ROUGE-L of greedy
  answers to the test prompts, and perplexity.
* ``long_document``: tiny_bert on 100-250-word documents where one 7-word sentence decides the label; windows of 32
  tokens; AUROC per document with ``task.window.aggregate=mean`` against ``max``.

The data are synthetic: these numbers check the pipelines (alignment, loss masking, decoding, aggregation), not a
model's quality on real financial text.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from finexp.config import config_dir
from finexp.train import train

FAST = [
    "logger=csv",
    "analysis=none",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "callbacks.early_stopping=null",
]


def conll(path: Path, n: int, seed: int, names_from: int = 0) -> Path:
    """``n`` sentences; ``names_from=0`` draws entity names from the first half of each list, 1 from the second."""
    rng = random.Random(seed)
    orgs = ["Acme Corp", "Globex Bank", "Initech Capital", "Umbrella Holdings", "Stark Industries", "Wayne Trust"]
    people = ["John Smith", "Mary Jones", "Ann Lee", "Raj Patel", "Li Wei", "Ola Nordmann"]
    places = ["London", "New York", "Frankfurt", "Hong Kong", "Zurich", "Sao Paulo"]
    frames = [
        ["The", "lender", "{ORG}", "of", "{LOC}", "signed", "with", "{PER}", "."],
        ["{PER}", "joined", "{ORG}", "in", "{LOC}", "last", "year", "."],
        ["Shares", "of", "{ORG}", "fell", "after", "{PER}", "resigned", "."],
        ["{ORG}", "opened", "an", "office", "in", "{LOC}", "."],
    ]
    names = {
        kind: pool[3 * names_from : 3 * names_from + 3]
        for kind, pool in (("ORG", orgs), ("PER", people), ("LOC", places))
    }
    lines = ["-DOCSTART- O", ""]
    for _ in range(n):
        for slot in rng.choice(frames):
            if slot.startswith("{"):
                kind = slot[1:-1]
                for i, word in enumerate(rng.choice(names[kind]).split()):
                    lines.append(f"{word} {'B' if i == 0 else 'I'}-{kind}")
            else:
                lines.append(f"{slot} O")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def qa(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    pairs = [
        ("how do i reset my pin", "open the app settings and choose reset pin"),
        ("my card was stolen", "freeze the card in the app and call us"),
        ("what is the daily transfer limit", "the daily transfer limit is five thousand"),
        ("how long does a transfer take", "transfers arrive within one business day"),
        ("can i order a new card", "yes order a new card in the app"),
    ]
    openers = ["", "hello ", "hi there ", "good morning ", "please help "]
    rows = [{"prompt": rng.choice(openers) + q, "response": a} for q, a in (rng.choice(pairs) for _ in range(n))]
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return path


def documents(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    filler = [
        "the",
        "company",
        "reported",
        "its",
        "quarterly",
        "results",
        "and",
        "the",
        "outlook",
        "for",
        "next",
        "year",
    ]
    signal = ["undisclosed", "related", "party", "loans", "breach", "the", "covenant"]
    rows = []
    for i in range(n):
        words = [rng.choice(filler) for _ in range(rng.randint(100, 250))]
        if i % 2:
            at = rng.randint(0, len(words))
            words[at:at] = signal
        rows.append({"text": " ".join(words), "label": "non_compliant" if i % 2 else "compliant"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def run(name: str, overrides: list[str], keys: list[str], out: Path, extra: list[str]) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*FAST, *overrides, *extra])
    cfg.paths.output_dir = str(out / name)
    cfg.paths.cache_dir = str(out / "cache")
    started = time.perf_counter()
    metrics = train(cfg)
    seconds = time.perf_counter() - started
    shown = "  ".join(f"{k}={metrics[k]:.4f}" for k in keys)
    print(f"RESULT {name:<22} {shown}  fit+test={seconds:.0f}s", flush=True)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["ner", "generation", "long_document"], nargs="*")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra config overrides for every run")
    parser.add_argument("--encoder", default="tiny_bert", help="model of the ner and long_document runs (minilm: real)")
    args = parser.parse_args()
    only = set(args.only or ["ner", "generation", "long_document"])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if "ner" in only:
            # test sentences name other companies, people and places than training: the tagger must use context
            train_path, test_path = conll(out / "train.conll", 400, 0, 0), conll(out / "test.conll", 100, 1, 1)
            run(
                "ner (unseen test names)",
                [
                    "task=ner",
                    f"model={args.encoder}",
                    f"data.train_path={train_path}",
                    f"data.test_path={test_path}",
                    "trainer.max_epochs=6",
                    "optimizer.lr=3e-3",
                ],
                ["test/precision", "test/recall", "test/f1", "test/f1_ORG", "test/f1_PER", "test/f1_LOC"],
                out,
                args.overrides,
            )
        if "generation" in only:
            path = qa(out / "qa.jsonl", 300, 0)
            run(
                "generation",
                [
                    "task=answer_generation",
                    "model=tiny_gpt",
                    f"data.path={path}",
                    "trainer.max_epochs=15",
                    "optimizer.lr=5e-3",
                    "task.generation.max_new_tokens=12",
                ],
                ["val/perplexity", "test/perplexity", "test/exact_match", "test/rouge_l"],
                out,
                args.overrides,
            )
        if "long_document" in only:
            path = documents(out / "docs.csv", 200, 0)
            for aggregate in ("mean", "max"):
                run(
                    f"long_document/{aggregate}",
                    [
                        "task=compliance_review",
                        f"model={args.encoder}",
                        f"data.path={path}",
                        "task.positive_label=non_compliant",
                        "task.window.size=32",
                        "task.window.stride=24",
                        f"task.window.aggregate={aggregate}",
                        "trainer.max_epochs=4",
                        "optimizer.lr=3e-3",
                    ],
                    ["test/auroc", "test/accuracy", "test/documents", "test/windows"],
                    out,
                    args.overrides,
                )


if __name__ == "__main__":
    main()
