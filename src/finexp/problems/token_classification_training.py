"""What ``task.problem=token_classification`` trains for: a tag per word (NER), scored per entity as seqeval does.

Metrics: ``{stage}/precision``, ``{stage}/recall``, ``{stage}/f1`` (micro over entities) and, per entity type ``T``,
``{stage}/precision_T``, ``{stage}/recall_T``, ``{stage}/f1_T``. An entity counts as found only when its type and
its exact word span match (CoNLL's evaluation). Predictions are read at each word's first sub-token.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from seqeval.metrics.sequence_labeling import get_entities
from torch import nn
from torchmetrics import Metric, MetricCollection

from finexp.data.ner import IGNORE
from finexp.problems.training_module import Batch, Objective, TrainingModule


def entity_report(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict[str, dict]:
    """Entity-level precision, recall, F1 and support, overall (``"micro"``) and per entity type.

    Entities are read as seqeval's default (conlleval) mode reads them: an ``I-X`` after ``O`` or after another
    type starts a new entity, and a change of type ends one (``B-ORG I-PER`` is two entities).
    """
    found, predicted, actual = Counter(), Counter(), Counter()
    for i, (truth, pred) in enumerate(zip(true_tags, pred_tags, strict=True)):
        gold = {(kind, start, end, i) for kind, start, end in get_entities(list(truth))}
        guess = {(kind, start, end, i) for kind, start, end in get_entities(list(pred))}
        for entities, counter in ((gold & guess, found), (guess, predicted), (gold, actual)):
            counter.update(kind for kind, *_ in entities)
    report = {kind: _scores(found[kind], predicted[kind], actual[kind]) for kind in sorted(actual | predicted)}
    report["micro"] = _scores(sum(found.values()), sum(predicted.values()), sum(actual.values()))
    return report


def _scores(found: int, predicted: int, actual: int) -> dict[str, float]:
    precision = found / predicted if predicted else 0.0
    recall = found / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual}


class EntityScores(Metric):
    """Collects word-level tag predictions of whole sentences; ``compute`` scores entities (see :func:`entity_report`).

    ``update(logits, labels)`` reads the positions whose label is not -100 (each word's first sub-token). The states
    are concatenated across processes, so the score is the same under DDP.

    Args:
        label_names: tag names, index = tag id (IOB2).
    """

    full_state_update = False

    def __init__(self, label_names: Sequence[str]) -> None:
        super().__init__()
        self.label_names = list(label_names)
        self.types = [tag[2:] for tag in self.label_names if tag.startswith("B-")]
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("lengths", default=[], dist_reduce_fx="cat")
        self.report: dict[str, dict] = {}

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        words = labels != IGNORE
        self.preds.append(logits.argmax(-1)[words])
        self.target.append(labels[words])
        self.lengths.append(words.sum(1))

    def sentences(self) -> tuple[list[list[str]], list[list[str]]]:
        """The collected (gold, predicted) tag sequences, one per sentence."""

        def cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
            if isinstance(state, torch.Tensor):
                return state
            return torch.cat(state) if state else torch.zeros(0, dtype=torch.long)

        lengths = cat(self.lengths).tolist()
        split = [t.tolist() for t in (cat(self.target), cat(self.preds))]
        names = self.label_names
        out: tuple[list[list[str]], list[list[str]]] = ([], [])
        for seqs, flat in zip(out, split, strict=True):
            start = 0
            for n in lengths:
                seqs.append([names[i] for i in flat[start : start + n]])
                start += n
        return out

    def compute(self) -> dict[str, torch.Tensor]:
        report = entity_report(*self.sentences())  # states gathered from every process here
        self.report = report  # the full report (with supports), for entity_report.json
        scores = {key: torch.tensor(value) for key, value in report["micro"].items() if key != "support"}
        for kind in self.types:  # every known type, so each epoch logs the same keys
            for key in ("precision", "recall", "f1"):
                scores[f"{key}_{kind}"] = torch.tensor(report.get(kind, {}).get(key, 0.0))
        return scores


class TokenObjective(Objective):
    """Cross-entropy over words' first sub-tokens (other positions are labelled -100); entity scores on val and test.

    Args:
        label_names: tag names (IOB2), index = tag id.
        report_dir: where ``entity_report.json`` (per-type precision, recall, F1, support of the test split) goes;
            None: nowhere.
    """

    metric_stages = ("val", "test")

    def __init__(self, label_names: Sequence[str], report_dir: str | Path | None = None) -> None:
        super().__init__(label_names)
        self.report_dir = Path(report_dir) if report_dir is not None else None

    def attach(self, module: TrainingModule) -> None:
        module.loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE)

    def metrics(self) -> MetricCollection:
        return MetricCollection({"entities": EntityScores(self.label_names)})  # its keys: precision, f1_ORG ...

    def forward(self, module: TrainingModule, batch: Batch) -> torch.Tensor:
        """``(batch, tokens, tags)`` logits."""
        return module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def loss(self, module: TrainingModule, raw: torch.Tensor, batch: Batch) -> torch.Tensor:
        return module.loss_fn(raw.flatten(0, 1), batch["labels"].flatten())

    def predict(self, module: TrainingModule, raw: torch.Tensor, batch: Batch) -> dict[str, Any]:
        return {"index": batch["index"], "tags": raw.argmax(-1), "labels": batch["labels"]}

    def tested(self, module: TrainingModule, metrics: MetricCollection) -> None:
        if self.report_dir is not None and module.trainer.is_global_zero:
            self.report_dir.mkdir(parents=True, exist_ok=True)
            report = json.dumps(metrics["entities"].report, indent=2)
            (self.report_dir / "entity_report.json").write_text(report)

    def predictions_table(self, outputs: list[dict[str, torch.Tensor]], texts: list[str]) -> pd.DataFrame:
        """``predict`` outputs as one row per sentence, in dataset order (finexp-eval's predictions.csv).

        Columns: ``tokens`` (the sentence's words), ``tags`` (gold) and ``predicted``, each space-separated with one
        entry per word, and ``words_cut``: words beyond ``data.max_length`` sub-tokens are neither scored nor
        predicted, and are tagged ``-`` in both tag columns.

        Args:
            outputs: what :meth:`predict_step` returned, batch by batch.
            texts: the sentences' words joined by single spaces (the datamodule's ``texts``), in dataset order.
        """
        scored: dict[int, tuple[list[int], list[int]]] = {}
        for batch in outputs:
            for index, tags, labels in zip(batch["index"].tolist(), batch["tags"], batch["labels"], strict=True):
                words = labels != IGNORE  # each scored word's first sub-token
                scored[index] = (labels[words].tolist(), tags[words].tolist())
        names, rows = self.label_names, []
        for index, text in enumerate(texts):
            tokens = text.split(" ")
            gold, predicted = scored[index]
            cut = ["-"] * (len(tokens) - len(gold))
            rows.append(
                {
                    "tokens": text,
                    "tags": " ".join([names[i] for i in gold] + cut),
                    "predicted": " ".join([names[i] for i in predicted] + cut),
                    "words_cut": len(cut),
                }
            )
        return pd.DataFrame(rows, columns=["tokens", "tags", "predicted", "words_cut"])
