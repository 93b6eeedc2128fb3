"""Knowledge distillation: a student classifier learns from a trained teacher's softened logits and the hard labels.

The loss (Hinton et al., 2015) is

    loss = alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE(student logits, labels),
    p_teacher = softmax(z_teacher / T),  p_student = softmax(z_student / T)

(``F.kl_div(log p_student, p_teacher)``: the teacher's distribution is the target). ``T^2`` keeps the soft-target
gradients on the scale of the hard-label ones when ``T`` changes. The teacher runs once, before training, over the
train split; its logits are looked up by the row index every batch carries, so no epoch re-runs the teacher.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from finexp import FinexpError
from finexp.problems.classification_training import ClassificationObjective
from finexp.problems.training_module import Batch, OptimizerFactory, SchedulerFactory, TrainingModule
from finexp.progress import progress

log = logging.getLogger("finexp")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    hard_loss: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distillation loss of one batch.

    Args:
        student_logits: ``(batch, classes)``.
        teacher_logits: ``(batch, classes)``, the teacher's logits of the same rows.
        labels: ``(batch,)`` class ids.
        temperature: ``T`` > 0; softens both distributions (higher: more of the teacher's ranking of wrong classes).
        alpha: weight of the soft-target term in [0, 1]; ``1 - alpha`` weighs the hard-label cross-entropy.
        hard_loss: the hard-label loss (default: unweighted cross-entropy; pass the task's class-weighted one).

    Returns:
        ``(loss, soft, hard)``: the mixed loss and its two terms (``soft`` already multiplied by ``T^2``).
    """
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    teacher = F.softmax(teacher_logits.to(student_logits.dtype) / temperature, dim=-1)
    soft = F.kl_div(log_student, teacher, reduction="batchmean") * temperature**2
    hard = (hard_loss or nn.CrossEntropyLoss())(student_logits, labels)
    return alpha * soft + (1 - alpha) * hard, soft, hard


@torch.inference_mode()
def compute_teacher_logits(
    teacher: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """The teacher's logits for every text, in the order of ``texts`` (row ``i`` -> ``texts[i]``).

    Texts are tokenized with the teacher's own tokenizer and truncation length, so a student with another vocabulary
    still gets the teacher's view of each row; rows are batched by length (less padding) and put back in order.
    """
    teacher.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    device = next(teacher.parameters()).device
    out: torch.Tensor | None = None
    for start in progress(range(0, len(order), batch_size), desc="teacher labelling", unit="batch"):
        rows = order[start : start + batch_size]
        encoded = tokenizer(
            [texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        logits = teacher(input_ids=encoded["input_ids"].to(device), attention_mask=encoded["attention_mask"].to(device))
        if out is None:
            out = torch.empty(len(texts), logits.size(-1), dtype=torch.float32)
        out[torch.tensor(rows)] = logits.float().cpu()
    if out is None:
        raise FinexpError("distillation: the train split is empty; the teacher has nothing to label")
    return out


def cached_teacher_logits(
    path: Path | None,
    key: dict[str, str],
    compute: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """Teacher logits from ``path`` when it was written for the same ``key`` (teacher and train split), else
    ``compute()`` them and write them there (``path=None``: memory only)."""
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            log.info("distillation: teacher logits read from %s", path)
            return saved["logits"]
        log.info("distillation: %s was written for another teacher or train split; recomputing", path)
    logits = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one per process: DDP ranks may write at once
        torch.save({"key": key, "logits": logits}, tmp)
        tmp.replace(path)
    return logits


class DistillationObjective(ClassificationObjective):
    """Classification whose training loss mixes the teacher's soft targets in (:func:`distillation_loss`).

    Validation and test are classification's (cross-entropy on the hard labels, the same metrics), so a student's
    numbers compare with any other run's. The checkpoint holds only the student: ``finexp-eval`` and
    ``finexp-export`` load it like any other classifier. Logs ``train/soft_loss`` and ``train/hard_loss`` per epoch.

    Args:
        label_names: class names (in the teacher's order: ``teacher_logits`` columns follow them).
        teacher_logits: ``(train rows, classes)``; row ``i`` belongs to the train dataset's row ``i``.
        temperature: softmax temperature ``T`` > 0.
        alpha: weight of the soft-target loss in [0, 1].
        class_weights: weights of the hard-label cross-entropy.
    """

    def __init__(
        self,
        label_names: Sequence[str],
        teacher_logits: torch.Tensor,
        temperature: float = 2.0,
        alpha: float = 0.5,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(label_names, class_weights)
        if teacher_logits.ndim != 2 or teacher_logits.size(1) != len(label_names):
            raise FinexpError(
                f"distillation: teacher logits of shape {tuple(teacher_logits.shape)} do not fit "
                f"{len(label_names)} classes ({', '.join(label_names)})"
            )
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise FinexpError(f"distillation: need temperature > 0 and alpha in [0, 1], got {temperature}, {alpha}")
        self.temperature = temperature
        self.alpha = alpha
        self.teacher_logits = teacher_logits.float()

    def attach(self, module: TrainingModule) -> None:
        super().attach(module)
        # Not persistent: the checkpoint stays a plain student; a resumed run gets them from the cache again.
        module.register_buffer("teacher_logits", self.teacher_logits, persistent=False)

    def soft_targets(self, module: TrainingModule, index: torch.Tensor) -> torch.Tensor:
        """The teacher's logits of the batch's rows (``index``: positions in the train dataset)."""
        return module.teacher_logits[index.to(module.teacher_logits.device)]

    def training_loss(
        self, module: TrainingModule, raw: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        teacher, labels = self.soft_targets(module, batch["index"]), batch["labels"]
        loss, soft, hard = distillation_loss(raw, teacher, labels, self.temperature, self.alpha, module.loss_fn)
        return loss, {"train/soft_loss": soft, "train/hard_loss": hard}


def distillation_module(
    model: nn.Module,
    label_names: Sequence[str],
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
    optimizer: OptimizerFactory | None = None,
    scheduler: SchedulerFactory | None = None,
    class_weights: Sequence[float] | None = None,
) -> TrainingModule:
    """A :class:`TrainingModule` training the student ``model`` with a :class:`DistillationObjective`."""
    objective = DistillationObjective(label_names, teacher_logits, temperature, alpha, class_weights)
    return TrainingModule(model, objective, optimizer, scheduler)
