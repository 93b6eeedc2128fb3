"""``task.problem=generation`` training: response-only loss, perplexity, exact match, ROUGE-L of decoded answers.

Metrics: ``{stage}/loss`` (mean negative log-likelihood per response token, the end token included) and
``{stage}/perplexity`` (its exponential) on val and test; at test time every test prompt is answered and scored
against its reference: ``test/exact_match`` and ``test/rouge_l`` (LCS-based F1, torchmetrics' ROUGE-L). Each
validation epoch also answers ``num_examples`` validation prompts and writes them to ``generations.txt`` (and W&B /
TensorBoard as text). Answers are decoded a batch at a time, with a key/value cache where the adapter allows one
(:func:`~finexp.models.causal_lm.generate_batch`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torch import nn
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.functional.text.rouge import rouge_score

from finexp.data.ner import IGNORE
from finexp.models.causal_lm import CausalLM, generate_batch
from finexp.problems.training_module import Batch, Objective, OptimizerFactory, SchedulerFactory, TrainingModule

_WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> list[str]:
    """Words of ``text``, lower-cased, punctuation dropped (SQuAD-style), so tokenizer spacing does not count."""
    return _WORD.findall(text.lower())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both texts have the same normalized words, else 0.0."""
    return float(normalize(prediction) == normalize(reference))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (Lin, 2004) over normalized words: the longest common subsequence's precision/recall F1.

    torchmetrics' ROUGE-L, given :func:`normalize`'s words: its default normalizer keeps ASCII letters and digits
    only, which would drop every accented or non-Latin word. Two empty texts score 1.0 (torchmetrics: 0.0), as
    :func:`exact_match` does: an empty answer to an empty reference is right.
    """
    if not normalize(prediction) and not normalize(reference):
        return 1.0
    scores = rouge_score(prediction, reference, rouge_keys="rougeL", normalizer=str.lower, tokenizer=_WORD.findall)
    return float(scores["rougeL_fmeasure"])


def response_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token negative log-likelihood over the labelled (response) positions, and their count.

    Position ``t`` predicts token ``t + 1``; labels of -100 (padding, prompt) contribute nothing, so a prompt
    token's label can never change the loss.
    """
    shifted = labels[:, 1:]
    nll = nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), shifted.flatten(), ignore_index=IGNORE, reduction="sum"
    )
    return nll, (shifted != IGNORE).sum()


class LanguageModelObjective(Objective):
    """The mean negative log-likelihood of the response tokens (:func:`response_nll`); no label names, no metrics
    (perplexity and the answers' scores are :class:`GenerationModule`'s evaluation)."""

    def __init__(self) -> None:
        super().__init__([])

    def forward(self, module: TrainingModule, batch: Batch) -> torch.Tensor:
        """``(batch, tokens, vocabulary)`` next-token logits; packed batches (``data.packing``) bring position ids
        that restart per row, which keep the rows from attending to each other (:mod:`finexp.data.packing`)."""
        if "position_ids" in batch:
            return module.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
            )
        return module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def loss(self, module: TrainingModule, raw: torch.Tensor, batch: Batch) -> torch.Tensor:
        nll, count = response_nll(raw, batch["labels"])
        return nll / count.clamp(min=1)


class GenerationModule(TrainingModule):
    """Fine-tunes a :class:`~finexp.models.causal_lm.CausalLM` on prompt -> response pairs.

    Training is :class:`TrainingModule`'s with a :class:`LanguageModelObjective`; validation and test sum the
    response NLL for perplexity, and answer prompts by decoding.

    Args:
        model: the decoder (adapter applied).
        tokenizer: decodes generated ids to text.
        eos_id: the token that ends an answer.
        optimizer: builds the optimizer from parameter groups; None for a module that only evaluates.
        scheduler: builds a per-step LR schedule from ``(optimizer, num_training_steps=...)``; None for none.
        max_new_tokens: the longest answer generated.
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature.
        top_k: sample among the ``top_k`` likeliest tokens only (None: all).
        num_examples: validation prompts answered and logged each epoch.
        samples_path: the text file those answers are appended to (None: loggers only).
        seed: seed of sampled decoding.
    """

    def __init__(
        self,
        model: CausalLM,
        tokenizer: object,
        eos_id: int,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        max_new_tokens: int = 48,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        num_examples: int = 4,
        samples_path: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(model, LanguageModelObjective(), optimizer, scheduler)
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.decoding = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature}
        self.decoding["top_k"] = top_k
        self.num_examples = num_examples
        self.samples_path = Path(samples_path) if samples_path is not None else None
        self.seed = seed
        self._samples: list[tuple[str, str, str]] = []
        for stage in ("val", "test"):
            setattr(self, f"{stage}_nll", SumMetric())
            setattr(self, f"{stage}_tokens", SumMetric())
        self.test_exact_match = MeanMetric()
        self.test_rouge_l = MeanMetric()

    def _nll(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return response_nll(self.model_output(batch), batch["labels"])

    # ----------------------------------------------------------------------------------------------------------
    # Decoding
    # ----------------------------------------------------------------------------------------------------------
    def answer(self, batch: dict[str, torch.Tensor], rows: Sequence[int], seed: int) -> list[tuple[str, str, str]]:
        """``(prompt, reference, generated)`` texts of the given rows of a batch; ``seed`` seeds sampled decoding.

        The rows are decoded together (:func:`~finexp.models.causal_lm.generate_batch`): a sampled answer depends on
        the seed and the rows decoded with it, both fixed by the batch, so test and predict decode the same answers.
        """
        generator = torch.Generator(device=self.device).manual_seed(seed)
        decode = self.tokenizer.decode
        rows = list(rows)
        prompts = [batch["input_ids"][i, : int(batch["prompt_length"][i])] for i in rows]
        pad_id = self.tokenizer.pad_token_id
        generated = generate_batch(
            self.model,
            prompts,
            pad_id if pad_id is not None else self.eos_id,  # masked: any id works
            self.eos_id,
            generator=generator,
            **self.decoding,
        )
        out = []
        for i, prompt, answer in zip(rows, prompts, generated, strict=True):
            labels = batch["labels"][i]
            reference = labels[(labels != IGNORE) & (labels != self.eos_id)]
            out.append(
                (
                    decode(prompt.tolist(), skip_special_tokens=True),
                    decode(reference.tolist(), skip_special_tokens=True),
                    decode(answer, skip_special_tokens=True),
                )
            )
        return out

    # ----------------------------------------------------------------------------------------------------------
    # Validation and test
    # ----------------------------------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        nll, count = self._nll(batch)
        self.val_nll.update(nll)
        self.val_tokens.update(count)
        wanted = self.num_examples - len(self._samples)
        if wanted > 0 and not self.trainer.sanity_checking:
            self._samples += self.answer(
                batch, range(min(wanted, len(batch["labels"]))), self.seed + self.current_epoch
            )

    def on_validation_epoch_end(self) -> None:
        self._log_perplexity("val")
        if self._samples and self.trainer.is_global_zero:
            self._write_samples(self._samples)
        self._samples = []

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        nll, count = self._nll(batch)
        self.test_nll.update(nll)
        self.test_tokens.update(count)
        # seeded by batch, not epoch: finexp-eval's test (and predict) of the checkpoint decodes the same answers
        for _, reference, generated in self.answer(batch, range(len(batch["labels"])), self.seed + batch_idx):
            self.test_exact_match.update(exact_match(generated, reference))
            self.test_rouge_l.update(rouge_l(generated, reference))

    def on_test_epoch_end(self) -> None:
        self._log_perplexity("test")
        self.log("test/exact_match", self.test_exact_match.compute(), sync_dist=True)
        self.log("test/rouge_l", self.test_rouge_l.compute(), sync_dist=True)
        self.test_exact_match.reset()
        self.test_rouge_l.reset()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor | list[str]]:
        """Each row's reference and generated answer, decoded as :meth:`test_step` scores them."""
        answers = self.answer(batch, range(len(batch["labels"])), self.seed + batch_idx)
        return {
            "index": batch["index"],
            "reference": [reference for _, reference, _ in answers],
            "generated": [generated for _, _, generated in answers],
        }

    def predictions_table(self, outputs: list[dict[str, torch.Tensor | list[str]]], texts: list[str]) -> pd.DataFrame:
        """``predict`` outputs as one row per prompt, in dataset order (finexp-eval's predictions.csv).

        Columns: ``prompt`` (as the file holds it), ``reference`` and ``generated`` (decoded from tokens, as
        ``test/exact_match`` and ``test/rouge_l`` score them: an uncased vocabulary lower-cases them, and a reference
        longer than ``data.max_length`` is cut), and the row's ``exact_match`` and ``rouge_l``.

        Args:
            outputs: what :meth:`predict_step` returned, batch by batch.
            texts: the prompts (the datamodule's ``texts``), in dataset order.
        """
        answers: dict[int, tuple[str, str]] = {}
        for batch in outputs:
            pairs = zip(batch["reference"], batch["generated"], strict=True)
            answers |= dict(zip(batch["index"].tolist(), pairs, strict=True))
        rows = []
        for index, prompt in enumerate(texts):
            reference, generated = answers[index]
            rows.append(
                (prompt, reference, generated, exact_match(generated, reference), rouge_l(generated, reference))
            )
        return pd.DataFrame(rows, columns=["prompt", "reference", "generated", "exact_match", "rouge_l"])

    def _log_perplexity(self, stage: str) -> None:
        nll, tokens = getattr(self, f"{stage}_nll"), getattr(self, f"{stage}_tokens")
        loss = nll.compute() / tokens.compute().clamp(min=1)
        # min(...): a random model's loss is ~log(vocab); exp of a diverging loss must stay a number for loggers
        self.log_dict(
            {f"{stage}/loss": loss, f"{stage}/perplexity": loss.clamp(max=math.log(1e30)).exp()}, sync_dist=True
        )
        nll.reset()
        tokens.reset()

    def _write_samples(self, samples: list[tuple[str, str, str]]) -> None:
        epoch = self.current_epoch
        if self.samples_path is not None:
            self.samples_path.parent.mkdir(parents=True, exist_ok=True)
            with self.samples_path.open("a", encoding="utf-8") as handle:
                handle.write(f"=== epoch {epoch} (step {self.global_step}) ===\n")
                for prompt, reference, generated in samples:
                    handle.write(f"prompt:    {prompt}\nreference: {reference}\ngenerated: {generated}\n\n")
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                rows = [[epoch, *sample] for sample in samples]
                logger.log_text("val/generations", columns=["epoch", "prompt", "reference", "generated"], data=rows)
            elif isinstance(logger, TensorBoardLogger):
                table = "\n\n".join(
                    f"**prompt:** {p}  \n**reference:** {r}  \n**generated:** {g}" for p, r, g in samples
                )
                logger.experiment.add_text("val/generations", table, global_step=self.global_step)
