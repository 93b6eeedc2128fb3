"""Pattern-exploiting classification (PET; Schick & Schütze, 2021): a cloze pattern and label words on a masked LM.

Each row becomes the pattern around its text, e.g. ``"{text} It was {mask}."``; the masked LM scores the label words
(the verbalizer, e.g. ``{negative: bad, neutral: okay, positive: good}``) at the mask, and those scores are the
class logits. Fine-tuning then starts from what the pre-trained LM already knows about the words, which is why the
recipe needs few labelled rows - provided the LM's prediction head was pre-trained too.

The pattern is spliced in at the token level inside :meth:`PromptClassifier.forward`, around the rows the ordinary
datamodule tokenized (its cache, length grouping and truncation stay as they are), so the text is what truncation
cuts, never the pattern or its mask.

The model keeps finexp's ``encoder`` / ``head`` layout (the LM's body, and its MLM head), so every adapter applies:
``adapter=freeze`` or ``lora`` train the MLM head and leave the body to the adapter. BERT-style heads tie their
output projection to the input embeddings, so training the head also trains those.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForMaskedLM, PreTrainedModel, PreTrainedTokenizerBase

from finexp import FinexpError
from finexp.models.backbone import LoadOptions, config_from_architecture, load_pretrained, prepare_for_training

log = logging.getLogger("finexp")

HEAD_NAMES = ("cls", "lm_head")  # BERT/DeBERTa/ALBERT... | RoBERTa/XLM-R/ModernBERT...


class PromptTemplate:
    """Token ids of a pattern (``{text}`` once, ``{mask}`` once) and how to splice them around a tokenized row."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pattern: str) -> None:
        if pattern.count("{text}") != 1 or pattern.count("{mask}") != 1:
            raise FinexpError(f"method.template={pattern!r} needs exactly one {{text}} and one {{mask}}")
        if tokenizer.mask_token_id is None:
            raise FinexpError("method=prompt needs a tokenizer with a mask token (a masked-LM vocabulary)")
        prefix, suffix = pattern.split("{text}")

        def ids(piece: str) -> list[int]:
            return tokenizer(piece.replace("{mask}", tokenizer.mask_token), add_special_tokens=False)["input_ids"]

        self.prefix, self.suffix = ids(prefix), ids(suffix)
        self.mask_token_id = tokenizer.mask_token_id
        if (self.prefix + self.suffix).count(self.mask_token_id) != 1:
            raise FinexpError(f"method.template={pattern!r}: {{mask}} must become exactly one mask token")
        self.mask_in_prefix = self.mask_token_id in self.prefix
        self.mask_offset = (self.prefix if self.mask_in_prefix else self.suffix).index(self.mask_token_id)
        self.pad_token_id = tokenizer.pad_token_id
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a")["input_ids"]
        self.lead = next(i for i in range(len(full)) if full[i : i + len(plain)] == plain)  # e.g. [CLS]
        self.tail = len(full) - self.lead - len(plain)  # e.g. [SEP]

    def apply(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_positions: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows ``[CLS] text [SEP]`` (right-padded) -> ``[CLS] prefix text suffix [SEP]``, their mask, mask positions.

        The text is cut from its end when the row would exceed ``max_positions``.
        """
        prefix = input_ids.new_tensor(self.prefix)
        suffix = input_ids.new_tensor(self.suffix)
        added = len(self.prefix) + len(self.suffix)
        rows, positions = [], []
        for row, length in zip(input_ids, attention_mask.sum(1).tolist(), strict=True):
            lead, text, tail = row[: self.lead], row[self.lead : length - self.tail], row[length - self.tail : length]
            if max_positions is not None and length + added > max_positions:
                text = text[: max(0, max_positions - added - self.lead - self.tail)]
            rows.append(torch.cat([lead, prefix, text, suffix, tail]))
            start = len(lead) + (0 if self.mask_in_prefix else len(self.prefix) + len(text))
            positions.append(start + self.mask_offset)
        width = max(len(r) for r in rows)
        ids = input_ids.new_full((len(rows), width), self.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        return ids, mask, input_ids.new_tensor(positions)


def verbalizer_ids(
    tokenizer: PreTrainedTokenizerBase, verbalizer: Mapping[str, str | Sequence[str]]
) -> dict[str, list[int]]:
    """Each label's word(s) -> one vocabulary id each; a word that is not a single token is an error naming it."""
    out: dict[str, list[int]] = {}
    for label, words in verbalizer.items():
        ids = []
        for word in [words] if isinstance(words, str) else list(words):
            pieces = tokenizer(" " + str(word).strip(), add_special_tokens=False)["input_ids"]
            if len(pieces) != 1:
                tokens = tokenizer.convert_ids_to_tokens(pieces)
                raise FinexpError(
                    f"method.verbalizer.{label}={word!r} is {len(pieces)} tokens {tokens} for this tokenizer; "
                    "label words must be single tokens (choose another word)"
                )
            ids.append(pieces[0])
        if not ids:
            raise FinexpError(f"method.verbalizer.{label} has no words")
        out[str(label)] = ids
    return out


def build_masked_lm(
    name_or_path: str | None,
    architecture: dict[str, Any] | None,
    vocab_size: int,
    local_files_only: bool,
    options: LoadOptions | None = None,
) -> PreTrainedModel:
    """A masked LM: pre-trained weights, or built from ``architecture`` (random, for tests). Says which head
    weights the checkpoint lacks (e.g. a sentence-transformers encoder has none: the pattern then starts cold)."""
    options = options or LoadOptions()
    if name_or_path is None:
        config = config_from_architecture(architecture, vocab_size, "bert", "a masked LM")
        return prepare_for_training(AutoModelForMaskedLM.from_config(config, **options.config_kwargs()), options)
    loader, kwargs = AutoModelForMaskedLM, options.pretrained_kwargs()
    lm, info = load_pretrained(loader, name_or_path, "masked LM", local_files_only, output_loading_info=True, **kwargs)
    lm = prepare_for_training(lm, options)
    head = [key for key in info.get("missing_keys", ()) if key.split(".")[0] in HEAD_NAMES]
    if head:
        log.warning(
            "method=prompt: %s has no pre-trained masked-LM head (%d head tensors newly initialized: %s); the label "
            "words are scored through an untrained transform, so PET loses its zero-shot prior on this model",
            name_or_path,
            len(head),
            ", ".join(sorted(head)[:3]) + (", ..." if len(head) > 3 else ""),
        )
    return lm


class PromptClassifier(nn.Module):
    """``logits[c] = mean over the words w of label c of MLM(pattern(text))[mask, w]``.

    Args:
        lm: a ``...ForMaskedLM`` model (its body becomes ``encoder``, its MLM head ``head``).
        template: the pattern's token ids (:class:`PromptTemplate`).
        verbalizer: label -> vocabulary ids of its words (:func:`verbalizer_ids`), in the label order of the logits;
            :meth:`bind_labels` reorders it to a datamodule's labels.
    """

    def __init__(self, lm: PreTrainedModel, template: PromptTemplate, verbalizer: Mapping[str, list[int]]) -> None:
        super().__init__()
        head_name = next((name for name in HEAD_NAMES if isinstance(getattr(lm, name, None), nn.Module)), None)
        if head_name is None:
            raise FinexpError(
                f"method=prompt supports masked LMs whose head is `cls` or `lm_head` (BERT, RoBERTa, DeBERTa ...); "
                f"{type(lm).__name__} has neither"
            )
        self.encoder = lm.base_model
        self.head = getattr(lm, head_name)
        self.config = lm.config
        self.template = template
        self.verbalizer = {label: list(ids) for label, ids in verbalizer.items()}
        self.label_names = list(self.verbalizer)
        words = max(len(ids) for ids in self.verbalizer.values())
        self.register_buffer("word_ids", torch.zeros(len(self.verbalizer), words, dtype=torch.long))
        self.register_buffer("word_weights", torch.zeros(len(self.verbalizer), words))
        self.bind_labels(self.label_names)

    def bind_labels(self, label_names: Sequence[str]) -> None:
        """Order the label words as ``label_names`` (the logits' order); a label without words is an error."""
        names = [str(n) for n in label_names]
        missing = [n for n in names if n not in self.verbalizer]
        if missing or len(names) != len(self.verbalizer):
            raise FinexpError(
                f"method.verbalizer has words for {sorted(self.verbalizer)} but the task's labels are {names}"
                + (f" (no words for {missing})" if missing else "")
                + ": give one entry per label, e.g. method.verbalizer={"
                + ",".join(f"{n}:word" for n in names)
                + "}"
            )
        self.word_ids.zero_()
        self.word_weights.zero_()
        for row, name in enumerate(names):
            ids = self.verbalizer[name]
            self.word_ids[row, : len(ids)] = torch.tensor(ids)
            self.word_weights[row, : len(ids)] = 1.0 / len(ids)
        self.label_names = names

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        max_positions = getattr(self.config, "max_position_embeddings", None)
        ids, mask, positions = self.template.apply(input_ids, attention_mask, max_positions)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        at_mask = hidden[torch.arange(hidden.size(0), device=hidden.device), positions]
        vocab_logits = self.head(at_mask)  # (batch, vocab): only the mask position goes through the head
        words = vocab_logits[:, self.word_ids]  # (batch, labels, words)
        return (words * self.word_weights).sum(-1)
