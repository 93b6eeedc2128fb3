"""``finexp-eval``: evaluate a finexp checkpoint on its run's test split or on a file.

    finexp-eval ckpt_path=outputs/credit_scoring/runs/<date>/<time>/checkpoints/best.ckpt
    finexp-eval ckpt_path=.../best.ckpt data_path=applicants_2026.csv

Writes metrics.json, per_class_report.json/.csv and predictions.csv to its own run directory. The checkpoint is read
with ``torch.load(weights_only=True)``: tensors and plain values only, never pickled code, so a checkpoint from an
untrusted source cannot run anything. The model is rebuilt from the config saved beside it.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import classification_report, confusion_matrix

from finexp import FinexpError, build
from finexp.config import config_dir, validate_config
from finexp.data.datamodule import DataSource
from finexp.records import write_json
from finexp.tasks.classification import SequenceClassificationModule

log = logging.getLogger("finexp")


def find_run_dir(ckpt: Path) -> Path:
    """The run directory of a checkpoint: the nearest parent holding ``config.yaml``."""
    for directory in (ckpt.parent, ckpt.parent.parent):
        if (directory / "config.yaml").is_file():
            return directory
    raise FinexpError(f"{ckpt}: no config.yaml beside it or in its parent; was it written by finexp-train?")


def load_checkpoint(ckpt: Path) -> dict[str, Any]:
    if not ckpt.is_file():
        raise FinexpError(f"checkpoint not found: {ckpt}")
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # an unpickling refusal or a corrupt file: both are the user's to fix
        raise FinexpError(f"{ckpt}: not a loadable finexp checkpoint ({type(err).__name__}: {err})") from err


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild the model of a run, load the checkpoint's weights and test it. Returns the metrics."""
    ckpt = Path(cfg.ckpt_path).expanduser().resolve()
    checkpoint = load_checkpoint(ckpt)
    run_dir = find_run_dir(ckpt)
    run_cfg = OmegaConf.load(run_dir / "config.yaml")
    validate_config(run_cfg)
    info_path = run_dir / "run_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    labels = checkpoint.get("finexp", {}).get("label_names") or info.get("labels")
    if not labels:
        raise FinexpError(f"{ckpt}: holds no label names and {info_path} is missing")
    if info.get("serialized_columns"):  # serialize new files with exactly the training columns, in order
        run_cfg.task.feature_columns = info["serialized_columns"]
    if cfg.batch_size:
        run_cfg.data.eval_batch_size = cfg.batch_size

    tokenizer = build.tokenizer_from(run_cfg)
    source = DataSource(test_path=cfg.data_path) if cfg.data_path else None
    datamodule = build.datamodule_from(run_cfg, tokenizer, source=source, label_names=labels)
    datamodule.prepare()
    model = build.model_from(run_cfg, len(labels), tokenizer)
    module = SequenceClassificationModule(model, labels)
    module.load_state_dict(checkpoint["state_dict"])

    trainer = instantiate(cfg.trainer, _convert_="all")
    metrics: dict[str, Any] = {}
    for result in trainer.test(module, dataloaders=datamodule.test_dataloader(), verbose=False):
        metrics |= result
    outputs = trainer.predict(module, dataloaders=datamodule.test_dataloader())
    index = torch.cat([o["index"] for o in outputs])
    probs = torch.cat([o["probs"] for o in outputs])[index.argsort()]
    truth = datamodule.datasets["test"].labels
    predicted = probs.argmax(-1)

    out = Path(cfg.paths.output_dir)
    report = classification_report(
        truth,
        predicted,
        labels=list(range(len(labels))),
        target_names=labels,
        output_dict=True,
        zero_division=0,
    )
    write_json(
        out / "per_class_report.json",
        {
            **report,
            "confusion_matrix": confusion_matrix(truth, predicted, labels=list(range(len(labels)))).tolist(),
        },
    )
    pd.DataFrame(report).T.to_csv(out / "per_class_report.csv")
    frame = pd.DataFrame(
        {
            "text": datamodule.texts["test"],
            "label": [labels[i] for i in truth],
            "predicted": [labels[i] for i in predicted],
        }
    )
    for i, name in enumerate(labels):
        frame[f"prob_{name}"] = probs[:, i].numpy()
    frame.to_csv(out / "predictions.csv", index=False)

    test_fingerprint = datamodule.fingerprints["test"]
    metrics = {
        "status": "completed",
        "checkpoint": str(ckpt),
        "data": cfg.data_path or "test split of the run",
        "data_fingerprint": test_fingerprint,
        "same_test_split_as_training": test_fingerprint == info.get("data_fingerprint", {}).get("test"),
        "rows": len(truth),
        **{k: float(v) for k, v in sorted(metrics.items())},
    }
    write_json(out / "metrics.json", metrics)
    print(
        "\n".join(
            [
                "",
                "finexp evaluation",
                *(f"  {k:<14} {v:.4f}" for k, v in metrics.items() if k.startswith("test/")),
                f"  written to: {out}",
            ]
        ),
        flush=True,
    )
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
