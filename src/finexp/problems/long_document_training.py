"""``task.problem=long_document`` training: windows are classified, their logits aggregated per document.

Training is plain sequence classification of windows, each labelled with its document's label (a window of a
non-compliant filing may itself look harmless: that is label noise the aggregation averages out). Validation and
test collect every window's logits and aggregate them per document (``mean`` or ``max`` over windows, per class);
the classification metrics (and ``{stage}/loss``) then see one row per document. ``{stage}/documents`` and
``{stage}/windows`` count what was scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn
from torchmetrics import Metric

from finexp.problems.classification_training import ClassificationObjective
from finexp.problems.training_module import Batch, OptimizerFactory, SchedulerFactory, TrainingModule

AGGREGATES = ("mean", "max")


def aggregate_windows(logits: torch.Tensor, docs: torch.Tensor, how: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Document logits from window logits: ``(documents, doc_logits)``, documents in ascending order.

    Args:
        logits: ``(windows, classes)``.
        docs: ``(windows,)`` document index of each window.
        how: ``mean`` (every window counts alike) or ``max`` (per class, the strongest window decides: one
            alarming passage flags the document).
    """
    if how not in AGGREGATES:
        raise ValueError(f"task.window.aggregate={how!r}: choose one of {', '.join(AGGREGATES)}")
    documents, inverse = torch.unique(docs, return_inverse=True)
    index = inverse.unsqueeze(1).expand_as(logits)
    out = logits.new_zeros(len(documents), logits.shape[1])
    reduce = "mean" if how == "mean" else "amax"
    return documents, out.scatter_reduce(0, index, logits, reduce=reduce, include_self=False)


class DocumentAggregator(Metric):
    """Collects window logits, labels and document ids; ``compute`` returns one ``(logits, label)`` per document.

    States are concatenated across processes, so documents whose windows were scored on different DDP ranks are
    still aggregated whole.
    """

    full_state_update = False

    def __init__(self, how: str = "mean") -> None:
        super().__init__()
        self.how = how
        for name in ("logits", "labels", "docs"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, labels: torch.Tensor, docs: torch.Tensor) -> None:
        self.logits.append(logits.detach().float())
        self.labels.append(labels)
        self.docs.append(docs)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(doc_logits, doc_labels, windows)``."""

        def cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
            return state if isinstance(state, torch.Tensor) else torch.cat(state)

        logits, labels, docs = cat(self.logits), cat(self.labels), cat(self.docs)
        documents, doc_logits = aggregate_windows(logits, docs, self.how)
        inverse = torch.searchsorted(documents, docs)
        doc_labels = labels.new_zeros(len(documents)).scatter(0, inverse, labels)  # a document's windows share it
        return doc_logits, doc_labels, len(docs)


class LongDocumentModule(TrainingModule):
    """A :class:`TrainingModule` of classification trained on windows (a window is a row), scored per document.

    Only evaluation and ``predict`` differ from classification's: documents replace rows.

    Args:
        model: maps a window's ``(input_ids, attention_mask)`` to logits.
        label_names: class names, index = label id (binary: index 1 is the positive class).
        aggregate: ``mean`` or ``max`` of the windows' logits.
        optimizer: builds the optimizer from parameter groups; None for a module that only evaluates.
        scheduler: builds a per-step LR schedule from ``(optimizer, num_training_steps=...)``; None for none.
        class_weights: optional cross-entropy weight per class.
    """

    def __init__(
        self,
        model: nn.Module,
        label_names: Sequence[str],
        aggregate: str = "mean",
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        if aggregate not in AGGREGATES:
            raise ValueError(f"task.window.aggregate={aggregate!r}: choose one of {', '.join(AGGREGATES)}")
        super().__init__(model, ClassificationObjective(label_names, class_weights), optimizer, scheduler)
        self.aggregate = aggregate
        self.val_documents = DocumentAggregator(aggregate)
        self.test_documents = DocumentAggregator(aggregate)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.val_documents.update(self.model_output(batch), batch["labels"], batch["doc"])

    def on_validation_epoch_end(self) -> None:
        self._score("val", self.val_documents)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.test_documents.update(self.model_output(batch), batch["labels"], batch["doc"])

    def on_test_epoch_end(self) -> None:
        self._score("test", self.test_documents)

    def _score(self, stage: str, documents: DocumentAggregator) -> None:
        if not documents.docs:  # nothing was scored (e.g. limit_val_batches=0)
            return
        logits, labels, windows = documents.compute()
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(logits, labels)
        scores = dict(metrics.compute())
        scores[f"{stage}/loss"] = self.loss_fn(logits, labels)
        scores[f"{stage}/documents"] = float(len(labels))
        scores[f"{stage}/windows"] = float(windows)
        self.log_dict(scores, sync_dist=True)
        metrics.reset()
        documents.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self.model_output(batch)
        return {"doc": batch["doc"], "logits": logits, "labels": batch["labels"]}

    def predictions_table(self, outputs: list[dict[str, torch.Tensor]], texts: list[str]) -> pd.DataFrame:
        """``predict`` outputs aggregated to one row per document, in dataset order (finexp-eval's predictions.csv).

        Columns: ``text``, ``label``, ``predicted`` (the likeliest class), ``prob_<label>`` (softmax of the
        document's aggregated logits, as the test metrics score it) and ``windows`` (how many were scored).

        Args:
            outputs: what :meth:`predict_step` returned, batch by batch (windows).
            texts: the documents' texts (the datamodule's ``texts``), in dataset order.
        """
        docs = torch.cat([o["doc"] for o in outputs])
        documents, logits = aggregate_windows(torch.cat([o["logits"] for o in outputs]).float(), docs, self.aggregate)
        if documents.tolist() != list(range(len(texts))):
            raise ValueError(f"windows of {len(documents)} documents were predicted, but there are {len(texts)}")
        labels = torch.zeros(len(texts), dtype=torch.long).scatter(0, docs, torch.cat([o["labels"] for o in outputs]))
        probs = logits.softmax(-1)
        names = self.label_names
        frame = pd.DataFrame(
            {
                "text": texts,
                "label": [names[i] for i in labels.tolist()],
                "predicted": [names[i] for i in probs.argmax(-1).tolist()],
            }
        )
        for i, name in enumerate(names):
            frame[f"prob_{name}"] = probs[:, i].numpy()
        frame["windows"] = torch.bincount(docs, minlength=len(texts)).numpy()
        return frame
