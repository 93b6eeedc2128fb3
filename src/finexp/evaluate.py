"""``finexp-eval``: evaluate a finexp checkpoint on its run's test split or on a file.

    finexp-eval ckpt_path=outputs/credit_scoring/runs/<date>/<time>/checkpoints/best.ckpt
    finexp-eval ckpt_path=.../best.ckpt data_path=applicants_2026.csv

Writes metrics.json (the test metrics, plus ``status``, ``checkpoint``, ``data``, ``data_fingerprint``,
``same_test_split_as_training`` and ``rows``) and predictions.csv to its own run directory; ``data_path`` is read in
the run's own format. What else, per ``task.problem``:

- classification: per_class_report.json/.csv (with the confusion matrix), the trust report; predictions.csv has one
  row per row with its label, prediction and class probabilities (and business-rule decisions with ``rules=...``).
- regression, multilabel: predictions.csv with each row's target and prediction (the module's ``predictions_table``).
- token_classification (CoNLL files): entity_report.json (per entity type); predictions.csv has one row per
  sentence: its words, gold and predicted tags (space-separated, one per word).
- generation (prompt/response files): predictions.csv has the prompt, the reference, the generated answer and the
  row's exact match and ROUGE-L.
- long_document: predictions.csv has one row per document: its window-aggregated class probabilities, prediction
  and window count.

The checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain values only, never pickled code, so
a checkpoint from an untrusted source cannot run anything. The model is rebuilt from the config saved beside it.
"""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from finexp import FinexpError
from finexp.config import config_dir, validate_analysis
from finexp.records import write_json

if TYPE_CHECKING:  # the heavy stack loads inside the functions: finexp-eval --help answers without torch
    import pytorch_lightning as pl

    from finexp.runs import TrainedRun

log = logging.getLogger("finexp")


@dataclass
class LoadedRun:
    """A trained run rebuilt for evaluation: the run (config, records, weights), its data and its module."""

    run: TrainedRun
    datamodule: Any  # the problem type's datamodule (finexp.build.PROBLEMS)
    module: pl.LightningModule

    @property
    def ckpt(self) -> Path:
        return self.run.ckpt

    @property
    def run_cfg(self) -> DictConfig:
        return self.run.config

    @property
    def info(self) -> dict[str, Any]:
        return self.run.info

    @property
    def labels(self) -> list[str]:
        return self.run.labels


def load_run(
    ckpt_path: str, data_path: str | None = None, batch_size: int | None = None, output_dir: str | None = None
) -> LoadedRun:
    """Open the run of ``ckpt_path`` (:class:`finexp.runs.TrainedRun`: safe loading, config on the schema) and
    rebuild its module; the data is the run's own splits, or ``data_path`` as the test split. Files the module writes
    while it is tested (NER's entity_report.json) go to ``output_dir`` (finexp-eval's own directory), never into the
    training run; None keeps the saved config's, for callers that do not test."""
    from finexp.runs import TrainedRun

    run = TrainedRun.open(ckpt_path)
    run.require("evaluate")
    datamodule = run.datamodule(data_path=data_path, batch_size=batch_size, output_dir=output_dir)
    return LoadedRun(run, datamodule, run.module(datamodule))


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild the model of a run, load the checkpoint's weights and test it. Returns the metrics."""
    validate_analysis(cfg.get("analysis"))
    import pandas as pd
    import torch

    from finexp import build
    from finexp.analysis import AnalysisOptions, Predictions, analyze
    from finexp.analysis.metrics import classification_summary
    from finexp.rules import score_with_rules
    from finexp.targets import instantiate

    rules = build.rules_from(cfg)  # parsed before anything loads: a bad rule fails fast
    run = load_run(cfg.ckpt_path, cfg.data_path, cfg.batch_size, cfg.paths.output_dir)
    run.run.announce("finexp-eval")
    ckpt, run_cfg, info, labels = run.ckpt, run.run_cfg, run.info, run.labels
    datamodule, module = run.datamodule, run.module
    trainer = instantiate(cfg.trainer)
    metrics: dict[str, Any] = {}
    for result in trainer.test(module, dataloaders=datamodule.test_dataloader(), verbose=False):
        metrics |= result
    if hasattr(module, "predictions_table"):  # every problem type but classification: no per-class/trust report
        return _evaluate_rows(cfg, run, trainer, metrics)
    outputs = trainer.predict(module, dataloaders=datamodule.test_dataloader())
    index = torch.cat([o["index"] for o in outputs])
    probs = torch.cat([o["probs"] for o in outputs])[index.argsort()]
    truth = datamodule.datasets["test"].labels
    predicted = probs.argmax(-1)

    out = Path(cfg.paths.output_dir)
    summary = classification_summary(probs.numpy(), truth.numpy(), labels)
    report = {**summary["per_class"], **{k: summary[k] for k in ("accuracy", "macro avg", "weighted avg")}}
    write_json(out / "per_class_report.json", {**report, "confusion_matrix": summary["confusion_matrix"]})
    pd.DataFrame({k: v for k, v in report.items() if isinstance(v, dict)}).T.to_csv(out / "per_class_report.csv")
    frame = pd.DataFrame(
        {
            "text": datamodule.texts["test"],
            "label": [labels[i] for i in truth],
            "predicted": [labels[i] for i in predicted],
        }
    )
    for i, name in enumerate(labels):
        frame[f"prob_{name}"] = probs[:, i].numpy()
    rules_metrics: dict[str, float] = {}
    if rules is not None:  # the model + business rules (conf/rules), scored on the same rows
        rows = datamodule.splits.test
        rules.check_columns(rows.columns)
        rules.check_labels(labels)
        rules_metrics, decisions = score_with_rules(rules, rows.to_dict("records"), probs.numpy(), truth, labels)
        for key in ("model_decision", "rule", "final_decision"):
            frame[key] = [getattr(d, key) for d in decisions]
    frame.to_csv(out / "predictions.csv", index=False)

    test_fingerprint = datamodule.fingerprints["test"]
    metrics = {
        "status": "completed",
        **run.run.trust_record(),  # the checkpoint and config it trusted, with their SHA-256
        "data": cfg.data_path or "test split of the run",
        "data_fingerprint": test_fingerprint,
        "same_test_split_as_training": test_fingerprint == info.get("data_fingerprint", {}).get("test"),
        "rows": len(truth),
        **{k: float(v) for k, v in sorted(metrics.items())},
        **rules_metrics,
    }
    if cfg.analysis.enabled:
        options = AnalysisOptions(**OmegaConf.to_container(cfg.analysis, resolve=True))
        command = None
        if HydraConfig.initialized():
            command = " ".join(["finexp-eval", *(shlex.quote(o) for o in HydraConfig.get().overrides.task)])
        metrics |= analyze(
            out,
            module,
            datamodule,
            options,
            "test",
            config=OmegaConf.to_container(run_cfg, resolve=True),
            metrics=metrics,
            command=command,
            title=f"finexp evaluation report: {ckpt.parent.parent.name}",
            evaluated=Predictions(probs.numpy(), truth.numpy()),
        )
    write_json(out / "metrics.json", metrics)
    print(
        "\n".join(
            [
                "",
                "finexp evaluation",
                *(f"  {k:<14} {v:.4f}" for k, v in metrics.items() if k.startswith(("test/", "test_rules/"))),
                f"  written to: {out}",
            ]
        ),
        flush=True,
    )
    return metrics


def _evaluate_rows(cfg: DictConfig, run: LoadedRun, trainer: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json and predictions.csv of a module that tabulates its own predictions: ``predictions_table(outputs,
    texts)`` turns ``trainer.predict``'s outputs into one row per item of ``datamodule.texts["test"]`` (a row, a
    sentence, a prompt, a document)."""
    datamodule, module = run.datamodule, run.module
    outputs = trainer.predict(module, dataloaders=datamodule.test_dataloader())
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    module.predictions_table(outputs, datamodule.texts["test"]).to_csv(out / "predictions.csv", index=False)
    test_fingerprint = datamodule.fingerprints["test"]
    metrics = {
        "status": "completed",
        **run.run.trust_record(),
        "data": cfg.data_path or "test split of the run",
        "data_fingerprint": test_fingerprint,
        "same_test_split_as_training": test_fingerprint == run.info.get("data_fingerprint", {}).get("test"),
        "rows": len(datamodule.texts["test"]),  # documents, not their windows
        **{k: float(v) for k, v in sorted(metrics.items())},
    }
    write_json(out / "metrics.json", metrics)
    lines = [f"  {k:<14} {v:.4f}" for k, v in metrics.items() if k.startswith("test/")]
    print("\n".join(["", "finexp evaluation", *lines, f"  written to: {out}"]), flush=True)
    return metrics


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except FinexpError as err:
        log.error("%s", err)
        print(f"finexp-eval: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def main() -> None:
    """Console-script entry point (``finexp-eval``)."""
    _hydra_main()


if __name__ == "__main__":
    main()
