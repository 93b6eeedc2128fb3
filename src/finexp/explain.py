"""``finexp-explain``: integrated-gradients explanations of a finexp checkpoint.

    finexp-explain ckpt_path=outputs/credit_scoring/runs/<date>/<time>/checkpoints/best.ckpt
    finexp-explain ckpt_path=.../best.ckpt data_path=new_applicants.csv analysis.explain_examples=50

Writes ``explanations.html`` (highlighted texts, self-contained), ``explanations.json`` (per-example attributions, top
words, per-column importance) and, for serialized table tasks, ``feature_importance.png`` to its own run directory.
The model is rebuilt like ``finexp-eval`` does (weights read with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from finexp import FinexpError
from finexp.config import config_dir, validate_analysis
from finexp.records import write_json

log = logging.getLogger("finexp")


def explain(cfg: DictConfig) -> dict[str, Any]:
    """Explain the first ``analysis.explain_examples`` test rows of a checkpoint. Returns what was written."""
    validate_analysis(cfg.analysis)
    from finexp.analysis import attributions as attr  # the heavy stack: after the config checks
    from finexp.analysis.pipeline import explanation_section
    from finexp.evaluate import load_run

    run = load_run(cfg.ckpt_path, cfg.data_path, cfg.batch_size)
    dm = run.datamodule
    n = min(cfg.analysis.explain_examples, len(dm.texts["test"]))
    if n == 0:
        raise FinexpError("the test split is empty: nothing to explain")
    separator = dict(dm.columns.serializer_options).get("separator", ". ")
    try:
        explanations = attr.integrated_gradients(
            run.module.model,
            dm.tokenizer,
            dm.texts["test"][:n],
            run.labels,
            dm.datasets["test"].labels[:n].tolist(),
            dm.max_length,
            cfg.analysis.ig_steps,
            dm.serialized_columns,
            separator,
        )
    except ValueError as err:  # a tokenizer without offsets, a model without an embedding layer
        raise FinexpError(f"cannot explain {run.ckpt}: {err}") from err
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    section, results = explanation_section(out, explanations, run.labels, cfg.analysis.top_words)
    (out / "explanations.md").write_text(f"# {section.title}\n\n{section.body}\n")
    write_json(out / "explanations.json", {"checkpoint": str(run.ckpt), **results})
    words, features = results["top_words"], results["feature_importance"]
    lines = [
        "",
        "finexp explanations",
        "  towards:  " + ", ".join(w["word"] for w in words["positive"][:8]),
        "  against:  " + ", ".join(w["word"] for w in words["negative"][:8]),
    ]
    if features:
        ranked = sorted(features, key=lambda c: -features[c]["mean_abs"])
        lines.append("  columns:  " + ", ".join(ranked[:8]))
    lines.append(f"  written to: {out / 'explanations.html'}")
    print("\n".join(lines), flush=True)
    return results


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="explain")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        explain(cfg)
    except FinexpError as err:
        log.error("%s", err)
        print(f"finexp-explain: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def main() -> None:
    """Console-script entry point (``finexp-explain``)."""
    _hydra_main()


if __name__ == "__main__":
    main()
