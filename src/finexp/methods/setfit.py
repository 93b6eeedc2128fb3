"""SetFit (Tunstall et al., 2022, "Efficient Few-Shot Learning Without Prompts") with Lightning owning the loops.

Stage 1 tunes the encoder contrastively: pairs of labelled rows, a target cosine similarity of 1 for two rows of the
same class and 0 for different classes, mean squared error between the pair's cosine similarity and its target
(sentence-transformers' ``CosineSimilarityLoss``, SetFit's default). A few labelled rows give many pairs, which is
why the recipe works with 8 examples per class. Stage 2 fits the head on the tuned embeddings: an L2-regularised
logistic regression (SetFit's head) copied into finexp's linear head, which the ordinary finexp training loop then
refines with the encoder frozen, so checkpoints, metrics, reports and ``finexp-eval`` are those of any run.

The ``setfit`` package itself (1.2.0) installs beside transformers 5 and torch 2.13, but it runs its own Hugging Face
``Trainer`` loop on a sentence-transformers model directory; this module keeps the recipe inside finexp's loop so it
composes with every adapter (stage 1 trains what the adapter leaves trainable, e.g. LoRA) and with randomly
initialised test encoders.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from finexp import FinexpError
from finexp.data.batching import PadCollator, TokenizedDataset
from finexp.models.classifier import pool
from finexp.optim import linear_warmup, parameter_groups
from finexp.progress import progress

log = logging.getLogger("finexp")

PAIRS_PER_ROW = 40  # SetFit's default: num_iterations=20 rounds of one positive and one negative pair per row


def sentence_pairs(labels: list[int] | torch.Tensor, num_pairs: int, seed: int) -> list[tuple[int, int, float]]:
    """Row pairs with their target similarity, alternating same-class (1.0) and different-class (0.0) pairs.

    Anchors cycle through the rows in a seeded random order, so every row anchors about the same number of pairs;
    the partner is drawn uniformly from the anchor's class (another row when the class has one) or from the other
    classes. A class with a single row pairs with itself.

    Raises:
        FinexpError: fewer than two classes (no negative pairs).
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise FinexpError(f"SetFit needs rows of at least two classes to build pairs; got {classes.tolist()}")
    rng = np.random.default_rng(seed)
    members = {c: np.flatnonzero(labels == c) for c in classes}
    others = {c: np.flatnonzero(labels != c) for c in classes}
    order = rng.permutation(len(labels))
    pairs = []
    for i in range(num_pairs):
        turn, slot = divmod(i // 2, len(labels))
        if slot == 0 and turn > 0 and i % 2 == 0:  # a new round: a new order (once per anchor's pair of pairs)
            order = rng.permutation(len(labels))
        anchor = int(order[slot])
        cls = labels[anchor]
        if i % 2 == 0:
            same = members[cls][members[cls] != anchor]
            partner = int(rng.choice(same)) if len(same) else anchor
            pairs.append((anchor, partner, 1.0))
        else:
            pairs.append((anchor, int(rng.choice(others[cls])), 0.0))
    return pairs


class PairDataset(Dataset):
    """Pairs of tokenized rows of ``dataset`` with a target similarity."""

    def __init__(self, dataset: TokenizedDataset, pairs: list[tuple[int, int, float]]) -> None:
        self.dataset = dataset
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[dict, dict, float]:
        a, b, target = self.pairs[index]
        return self.dataset[a], self.dataset[b], target


class PairCollator:
    """One padded batch of ``2 * B`` rows (the first members of the pairs, then the second) and ``B`` targets."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = PadCollator(pad_token_id)

    def __call__(self, pairs: list[tuple[dict, dict, float]]) -> dict[str, torch.Tensor]:
        batch = self.pad([a for a, _, _ in pairs] + [b for _, b, _ in pairs])
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "target": torch.tensor([t for _, _, t in pairs], dtype=torch.float),
        }


class ContrastivePairModule(pl.LightningModule):
    """Stage 1: cosine-similarity regression on sentence pairs, training what is trainable in ``encoder``.

    Args:
        encoder: a transformers encoder returning ``last_hidden_state`` (possibly wrapped by peft).
        pooling: how token states become one vector (``mean``, ``cls``, ``last``), as the classifier pools.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (none on biases and norms).
        warmup_ratio: share of the steps with a linear warm-up; the rate then decays linearly to zero.
    """

    def __init__(
        self, encoder: nn.Module, pooling: str, lr: float, weight_decay: float = 0.01, warmup_ratio: float = 0.1
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.losses: list[float] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        mask = batch["attention_mask"]
        hidden = self.encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        left, right = pool(hidden, mask, self.pooling).chunk(2)
        loss = F.mse_loss(F.cosine_similarity(left, right, dim=-1), batch["target"])
        self.losses.append(float(loss.detach()))
        self.log("setfit/pair_loss", loss, prog_bar=True, batch_size=len(batch["target"]))
        return loss

    def configure_optimizers(self) -> dict:
        groups = parameter_groups(self.encoder)
        if not groups:
            raise FinexpError("method=setfit: the adapter leaves nothing in the encoder to train (adapter=freeze?)")
        for group in groups:
            group.setdefault("weight_decay", self.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.lr)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = linear_warmup(optimizer, steps, self.warmup_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@torch.no_grad()
def embed(model: nn.Module, dataset: TokenizedDataset, pad_token_id: int, batch_size: int = 64) -> torch.Tensor:
    """Pooled encoder outputs of every row (eval mode, no gradients), as the head sees them."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=PadCollator(pad_token_id))
    out = []
    for batch in progress(loader, desc="setfit: embedding", unit="batch"):
        mask = batch["attention_mask"].to(device)
        hidden = model.encoder(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state
        out.append(pool(hidden, mask, model.pooling).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def fit_logistic_head(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, seed: int) -> float:
    """Fit an L2 logistic regression (scikit-learn, C=1, as SetFit's head) and copy it into ``head``.

    Binary problems give one weight vector ``w``; the head's two logits become ``-z/2`` and ``z/2`` with
    ``z = w·x + b``, whose softmax is the regression's sigmoid. Returns the regression's training accuracy.
    """
    from sklearn.linear_model import LogisticRegression

    x, y = features.numpy(), labels.numpy()
    regression = LogisticRegression(max_iter=2000, random_state=seed).fit(x, y)
    weight = torch.as_tensor(regression.coef_, dtype=head.weight.dtype)
    bias = torch.as_tensor(regression.intercept_, dtype=head.bias.dtype)
    num_labels = head.out_features
    if len(regression.classes_) != num_labels:
        raise FinexpError(
            f"the training rows hold {len(regression.classes_)} of the {num_labels} classes; SetFit's head "
            "needs every class in the training split"
        )
    if num_labels == 2:
        weight, bias = torch.cat([-weight / 2, weight / 2]), torch.cat([-bias / 2, bias / 2])
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.device))
        head.bias.copy_(bias.to(head.bias.device))
    return float(regression.score(x, y))


@dataclass
class SetFit:
    """The SetFit recipe's settings (``conf/method/setfit.yaml``); :meth:`prepare` runs stage 1 and readies stage 2.

    Attributes:
        num_pairs: pairs per stage-1 epoch; None: 40 per training row (SetFit's default), at most ``max_pairs``.
        max_pairs: cap on the pairs of ``num_pairs=None`` (None: no cap).
        pair_epochs: passes over the pairs.
        pair_batch_size: pairs per step.
        pair_lr: stage-1 learning rate of the encoder.
        pair_warmup_ratio: share of stage-1 steps spent warming up.
        freeze_encoder: stage 2 trains the head only (the encoder also stays in eval mode: no dropout on features).
        head_init: ``logistic`` (start the head at a logistic regression on the tuned embeddings) or ``random``.
    """

    num_pairs: int | None = None
    max_pairs: int | None = 4000
    pair_epochs: int = 1
    pair_batch_size: int = 16
    pair_lr: float = 2e-5
    pair_warmup_ratio: float = 0.1
    freeze_encoder: bool = True
    head_init: str = "logistic"

    def prepare(
        self,
        model: nn.Module,
        train: TokenizedDataset,
        pad_token_id: int,
        seed: int,
        trainer_kwargs: dict[str, Any] | None = None,
        weight_decay: float = 0.01,
        resume: bool = False,
    ) -> dict[str, float]:
        """Stage 1 on ``train`` (contrastive pairs), then the head's start and what trains in stage 2.

        Args:
            model: a :class:`~finexp.models.classifier.SequenceClassifier` with its adapter applied.
            train: the tokenized training split.
            pad_token_id: the tokenizer's padding id.
            seed: seeds the pairs and the logistic regression.
            trainer_kwargs: ``pytorch_lightning.Trainer`` arguments for stage 1 (accelerator, precision, ...).
            weight_decay: stage-1 AdamW weight decay.
            resume: stage 2 continues from a checkpoint that already holds the tuned encoder and head: skip stage 1
                and the head's start, only set what trains.

        Returns:
            What stage 1 did, for ``metrics.json``: ``setfit/pairs``, ``setfit/pair_loss_first`` and ``_last``
            (mean of the first and last 10% of steps), ``setfit/head_train_accuracy``, ``time/setfit_pairs_s``.
        """
        if resume:
            self._stage_two(model)
            return {}
        num_pairs = self.num_pairs or min(PAIRS_PER_ROW * len(train), self.max_pairs or PAIRS_PER_ROW * len(train))
        pairs = sentence_pairs(train.labels, num_pairs, seed)
        loader = DataLoader(
            PairDataset(train, pairs),
            batch_size=self.pair_batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            collate_fn=PairCollator(pad_token_id),
        )
        stage = ContrastivePairModule(model.encoder, model.pooling, self.pair_lr, weight_decay, self.pair_warmup_ratio)
        kwargs = {
            "max_epochs": self.pair_epochs,
            "logger": False,
            "enable_checkpointing": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            **(trainer_kwargs or {}),
        }
        log.info(
            "SetFit stage 1: %d sentence pairs from %d rows, %d epoch(s)", len(pairs), len(train), self.pair_epochs
        )
        model.train()
        started = time.perf_counter()
        pl.Trainer(**kwargs).fit(stage, train_dataloaders=loader)
        records = {"setfit/pairs": float(len(pairs)), "time/setfit_pairs_s": time.perf_counter() - started}
        tenth = max(1, len(stage.losses) // 10)
        records["setfit/pair_loss_first"] = float(np.mean(stage.losses[:tenth]))
        records["setfit/pair_loss_last"] = float(np.mean(stage.losses[-tenth:]))

        if self.head_init == "logistic":
            features = embed(model, train, pad_token_id)
            records["setfit/head_train_accuracy"] = fit_logistic_head(model.head, features, train.labels, seed)
        self._stage_two(model)
        return records

    def _stage_two(self, model: nn.Module) -> None:
        model.train()
        if self.freeze_encoder:
            model.requires_grad_(False)
            model.head.requires_grad_(True)
            model.encoder.eval()  # frozen features without dropout, as the logistic regression saw them
