"""Per-row test predictions of a training run (``test_predictions.csv``), so two runs on the same test split can be
compared row by row (``finexp-report``'s bootstrap intervals and paired tests, :mod:`finexp.stats`).

One row per test item (a row, a sentence, a document, a prompt) in the test split's order:

- ``row``: its position in the test split; ``row_id``: a hash of its text and gold value, so rows can be matched
  across runs; the split as a whole is ``run_info.json``'s ``data_fingerprint.test``;
- ``gold`` and ``predicted``: the label name (classification, long documents), the target and the prediction
  (regression), space-separated tags, one per word (token classification), ``|``-joined label sets (multi-label),
  the reference and the generated answer (generation);
- ``prob_<label>``: class probabilities, where the problem type has them.

Texts are left out (the file stays small; ``row_id`` ties a row to its text). ``finexp-train`` writes it after the
test step unless ``test_predictions=false``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from finexp import FinexpError

FILENAME = "test_predictions.csv"
GOLD_COLUMNS = ("label", "labels", "tags", "reference")  # predictions_table's gold column, per problem type
TEXT_COLUMNS = ("text", "tokens", "prompt")  # left out of the file
PREDICTED_COLUMNS = {"generated": "predicted"}


def row_ids(texts: Sequence[str], gold: Sequence[object]) -> list[str]:
    """A 12-hex-digit hash per row of its text and gold value (the per-row part of the split fingerprint)."""
    return [
        hashlib.sha256(f"{text}\x1f{label}".encode()).hexdigest()[:12] for text, label in zip(texts, gold, strict=True)
    ]


@torch.no_grad()
def predict_outputs(module: torch.nn.Module, loader: Any) -> list[dict[str, Any]]:
    """``module.predict_step`` over every batch of ``loader`` on the module's device, in eval mode.

    A plain loop rather than ``Trainer.predict``: it runs on rank zero only (a distributed predict would return
    each rank's share), without callbacks or loggers.
    """
    device = next(module.parameters()).device
    training = module.training
    module.eval()
    outputs = []
    try:
        for i, batch in enumerate(loader):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            output = module.predict_step(batch, i)
            outputs.append({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in output.items()})
    finally:
        module.train(training)
    return outputs


def classification_table(outputs: list[dict[str, Any]], texts: Sequence[str], labels: Sequence[str]) -> pd.DataFrame:
    """Classification ``predict_step`` outputs (``index``, ``probs``, ``labels``) as rows in dataset order."""
    index = torch.cat([o["index"] for o in outputs])
    order = index.argsort()
    probs = torch.cat([o["probs"] for o in outputs])[order].float().numpy()
    truth = torch.cat([o["labels"] for o in outputs])[order].numpy()
    if len(truth) != len(texts):
        raise FinexpError(f"predicted {len(truth)} test rows, but the test split has {len(texts)}")
    frame = pd.DataFrame({"gold": [labels[i] for i in truth], "predicted": [labels[i] for i in probs.argmax(-1)]})
    for i, name in enumerate(labels):
        frame[f"prob_{name}"] = probs[:, i]
    return frame


def normalize_table(table: pd.DataFrame, label_column: str | None = None) -> pd.DataFrame:
    """A problem type's ``predictions_table`` as ``gold``, ``predicted`` and the rest, texts left out."""
    gold = next((c for c in (*GOLD_COLUMNS, label_column) if c and c in table.columns), None)
    if gold is None:
        raise FinexpError(f"predictions table has no gold column (one of {GOLD_COLUMNS}); columns: {list(table)}")
    table = table.rename(columns={gold: "gold", **PREDICTED_COLUMNS})
    kept = ["gold", "predicted"] + [c for c in table.columns if c not in {"gold", "predicted", *TEXT_COLUMNS}]
    return table[kept]


def write_test_predictions(run_dir: str | Path, module: Any, datamodule: Any, label_column: str | None = None) -> Path:
    """Predict the test split with ``module`` as it is (the best checkpoint, after ``trainer.test``) and write
    ``<run_dir>/test_predictions.csv``.

    Args:
        run_dir: the run directory.
        module: the run's LightningModule; classification modules are tabulated here, every other problem type by
            its own ``predictions_table(outputs, texts)``.
        datamodule: the prepared datamodule (``test_dataloader()``, ``texts["test"]``, ``label_names``).
        label_column: ``task.label_column``, the gold column of a regression ``predictions_table``.

    Returns:
        The file's path.
    """
    texts = list(datamodule.texts["test"])
    outputs = predict_outputs(module, datamodule.test_dataloader())
    if hasattr(module, "predictions_table"):
        table = normalize_table(module.predictions_table(outputs, texts), label_column)
    else:
        table = classification_table(outputs, texts, list(datamodule.label_names))
    table.insert(0, "row_id", row_ids(texts, table["gold"].astype(str).tolist()))
    table.insert(0, "row", np.arange(len(table)))
    path = Path(run_dir) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)  # readers never see half a file
    return path


def _entity_counts(gold: pd.Series, predicted: pd.Series) -> np.ndarray:
    """Per sentence: correct, predicted and gold entity counts (exact span and type; cut words ``-`` read as O)."""
    from seqeval.metrics.sequence_labeling import get_entities

    def entities(tags: str) -> set[tuple[str, int, int]]:
        return set(get_entities([t if t != "-" else "O" for t in str(tags).split(" ")]))

    counts = []
    for g, p in zip(gold, predicted, strict=True):
        gold_set, predicted_set = entities(g), entities(p)
        counts.append((len(gold_set & predicted_set), len(predicted_set), len(gold_set)))
    return np.asarray(counts, dtype=np.int64).reshape(-1, 3)


def load_row_predictions(
    path: str | Path,
    problem: str = "classification",
    labels: Sequence[str] | None = None,
    fingerprint: str | None = None,
) -> Any:
    """Read a ``test_predictions.csv`` into :class:`finexp.stats.RowPredictions` (data only, nothing executed).

    Args:
        path: the file.
        problem: ``task.problem`` of the run: classification and long_document (class probabilities), regression,
            token_classification; others have no row-level metric here.
        labels: the run's class names in model order (``run_info.json``'s ``labels``); default: the ``prob_`` columns.
        fingerprint: the test split's fingerprint, kept with the predictions for the same-rows check.

    Raises:
        FinexpError: the file misses a column its problem type needs, or holds an unknown label.
    """
    from finexp.stats import RowPredictions

    path = Path(path)
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise FinexpError(f"{path}: could not be read ({type(err).__name__}: {err})") from err
    for column in ("row_id", "gold", "predicted"):
        if column not in frame.columns:
            raise FinexpError(f"{path}: column {column!r} is missing; columns: {', '.join(map(str, frame.columns))}")
    ids = frame["row_id"].astype(str).to_numpy()
    if problem in ("classification", "long_document"):
        names = list(labels) if labels else [c[len("prob_") :] for c in frame.columns if c.startswith("prob_")]
        missing = [f"prob_{n}" for n in names if f"prob_{n}" not in frame.columns]
        if not names or missing:
            raise FinexpError(f"{path}: probability column(s) missing: {', '.join(missing) or 'prob_<label>'}")
        index = {n: i for i, n in enumerate(names)}
        gold_names = frame["gold"].astype(str)
        unknown = sorted(set(gold_names) - set(index))
        if unknown:
            raise FinexpError(f"{path}: column 'gold' holds label(s) not in the run's labels: {unknown[:5]}")
        probs = frame[[f"prob_{n}" for n in names]].to_numpy(dtype=float)
        return RowPredictions(ids, gold=gold_names.map(index).to_numpy(), probs=probs, fingerprint=fingerprint)
    if problem == "regression":
        gold = pd.to_numeric(frame["gold"], errors="coerce").to_numpy(dtype=float)
        value = pd.to_numeric(frame["predicted"], errors="coerce").to_numpy(dtype=float)
        if not (np.isfinite(gold).all() and np.isfinite(value).all()):
            raise FinexpError(f"{path}: columns 'gold' and 'predicted' must be numbers for a regression run")
        return RowPredictions(ids, gold=gold, value=value, fingerprint=fingerprint)
    if problem == "token_classification":
        entities = _entity_counts(frame["gold"], frame["predicted"])
        return RowPredictions(ids, entities=entities, fingerprint=fingerprint)
    raise FinexpError(f"{path}: no row-level statistics for task.problem={problem!r}")
