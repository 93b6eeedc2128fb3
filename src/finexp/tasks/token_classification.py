"""Token classification (named entities) as a LightningModule, scored per entity with seqeval's semantics.

Metrics: ``{stage}/precision``, ``{stage}/recall``, ``{stage}/f1`` (micro over entities) and, per entity type ``T``,
``{stage}/precision_T``, ``{stage}/recall_T``, ``{stage}/f1_T``. An entity counts as found only when its type and
its exact word span match (CoNLL's evaluation). Predictions are read at each word's first sub-token.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
from seqeval.metrics.sequence_labeling import get_entities
from torch import nn
from torchmetrics import Metric

from finexp.data.ner import IGNORE
from finexp.tasks.optimization import OptimizerFactory, SchedulerFactory, configure_optimizers


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


class TokenClassificationModule(pl.LightningModule):
    """Trains a :class:`~finexp.models.token_classifier.TokenClassifier` with cross-entropy over words' first
    sub-tokens.

    Args:
        model: maps ``(input_ids, attention_mask)`` to ``(batch, tokens, tags)`` logits.
        label_names: tag names (IOB2), index = tag id.
        optimizer: builds the optimizer from parameter groups; None for a module that only evaluates.
        scheduler: builds a per-step LR schedule from ``(optimizer, num_training_steps=...)``; None for none.
        report_dir: where ``entity_report.json`` (per-type precision, recall, F1, support of the test split) goes.
    """

    def __init__(
        self,
        model: nn.Module,
        label_names: list[str],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        report_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.label_names = list(label_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE)
        self.val_scores = EntityScores(label_names)
        self.test_scores = EntityScores(label_names)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"])
        return self.loss_fn(logits.flatten(0, 1), batch["labels"].flatten()), logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, logits = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._step(batch)
        self.val_scores.update(logits, batch["labels"])
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(logits))

    def on_validation_epoch_end(self) -> None:
        self.log_dict({f"val/{k}": v for k, v in self.val_scores.compute().items()}, sync_dist=True)
        self.val_scores.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._step(batch)
        self.test_scores.update(logits, batch["labels"])
        self.log("test/loss", loss, sync_dist=True, batch_size=len(logits))

    def on_test_epoch_end(self) -> None:
        self.log_dict({f"test/{k}": v for k, v in self.test_scores.compute().items()}, sync_dist=True)
        if self.report_dir is not None and self.trainer.is_global_zero:
            self.report_dir.mkdir(parents=True, exist_ok=True)
            report = json.dumps(self.test_scores.report, indent=2)
            (self.report_dir / "entity_report.json").write_text(report)
        self.test_scores.reset()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"])
        return {"index": batch["index"], "tags": logits.argmax(-1), "labels": batch["labels"]}

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

    def configure_optimizers(self) -> dict:
        return configure_optimizers(self, self.model, self.optimizer_factory, self.scheduler_factory)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["finexp"] = {"label_names": list(self.label_names)}  # plain strings: loads with weights_only
