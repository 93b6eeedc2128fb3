"""Generative classification (``method=generative``): a decoder writes the label's word(s) after an instruction.

Each row becomes ``prompt_template`` around its text (optionally inside the tokenizer's chat template); every class's
answer (its label words) is appended, and the class score is the answer's summed log-likelihood under the causal LM,
computed for all ``batch x classes`` sequences in one forward pass (when every answer is a single token, the ``batch``
prompts alone: the last position's next-token distribution scores them all). The vocabulary-wide LM head runs only at
the positions that predict answer tokens, not over whole sequences. The scores are the class logits, so softmax
normalises the probabilities over the label answers and every classification metric, ``finexp-eval``,
``finexp-predict`` and the reports work unchanged. Training minimises the LM loss on the right answer,
``-score[b, y_b]`` (:meth:`GenerativeClassifier.loss`).

As in :mod:`finexp.models.prompt`, the instruction is spliced in at the token level inside ``forward``, around rows
the ordinary datamodule tokenized, so truncation (``data.max_length``, the model's positions) only cuts the text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from finexp import FinexpError
from finexp.models.causal_lm import _max_positions

FINGPT_TEMPLATE = (
    "Instruction: What is the sentiment of this news? Please choose an answer from {choices}.\nInput: {text}\nAnswer: "
)
_SENTINEL = "\u241ftext\u241f"  # stands for the row's text while the template is rendered


class GenerativePrompt:
    """The instruction's token ids before and after the row's text, and each label's answer tokens.

    Args:
        tokenizer: the decoder's tokenizer.
        template: ``{text}`` once (the row), ``{choices}`` optionally (the label words, comma-separated).
        label_words: label -> its answer (a string; a list is joined by spaces); None: the label names themselves.
        system_prompt: with ``chat_template``, the system message.
        chat_template: render the instruction as the user turn of ``tokenizer.apply_chat_template``.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: str = FINGPT_TEMPLATE,
        label_words: Mapping[str, str | Sequence[str]] | None = None,
        system_prompt: str | None = None,
        chat_template: bool = False,
    ) -> None:
        if template.count("{text}") != 1:
            raise FinexpError(f"method.prompt_template={template!r} needs exactly one {{text}}")
        if chat_template and not getattr(tokenizer, "chat_template", None):
            raise FinexpError(
                "method.chat_template=true but this tokenizer has no chat template: set method.chat_template=false"
            )
        self.tokenizer = tokenizer
        self.template = template
        self.label_words = None if label_words is None else {str(k): _answer(v) for k, v in label_words.items()}
        self.system_prompt = system_prompt
        self.chat_template = chat_template
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a")["input_ids"]
        self.lead = next(i for i in range(len(full)) if full[i : i + len(plain)] == plain)  # e.g. [CLS] / <s>
        self.tail = len(full) - self.lead - len(plain)  # e.g. [SEP]
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.context = ""  # solved examples before the instruction (method.in_context_examples)

    def demonstrations(self, examples: Sequence[tuple[str, str]], label_names: Sequence[str]) -> str:
        """``examples`` (text, label name) written as solved prompts: the template around each text, then its
        answer, one blank line apart; what :meth:`render` puts before the instruction once it is ``context``."""
        words = dict(zip([str(n) for n in label_names], self.answers(label_names), strict=True))
        choices = ", ".join(words.values())
        shots = []
        for text, label in examples:
            prompt = self.template.replace("{choices}", choices).replace("{text}", text)
            space = "" if prompt.endswith((" ", "\n")) else " "
            shots.append(f"{prompt}{space}{words[str(label)]}\n\n")
        return "".join(shots)

    def render(self, label_names: Sequence[str]) -> tuple[list[int], list[int], list[list[int]]]:
        """Token ids of the instruction before the text, after it, and of each label's answer (in label order).

        Raises:
            FinexpError: ``method.label_words`` misses a label, or an answer tokenizes differently after the
                prompt than alone (so its scored tokens would not be the ones the model reads).
        """
        words = self.answers(label_names)
        text = self.context + self.template.replace("{choices}", ", ".join(words)).replace("{text}", _SENTINEL)
        if self.chat_template:
            messages = [{"role": "user", "content": text}]
            if self.system_prompt:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        before, after = text.split(_SENTINEL)
        # A trailing space belongs to the answer (" positive" is one BPE token; "Answer: " + "positive" is not).
        space = " " if after.endswith(" ") else ""
        after = after.rstrip(" ")

        def ids(piece: str) -> list[int]:
            return self.tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []

        suffix = ids(after)
        answers = []
        for label, word in zip(label_names, words, strict=True):
            alone, joined = ids(space + word), ids(after + space + word)
            if not alone or joined != suffix + alone:
                raise FinexpError(
                    f"method.label_words.{label}={word!r} tokenizes differently after the prompt "
                    f"({joined[len(suffix) :]}) than alone ({alone}): choose another word or end the template "
                    "differently"
                )
            answers.append(alone)
        return ids(before), suffix, answers

    def answers(self, label_names: Sequence[str]) -> list[str]:
        """Each label's answer text, in ``label_names`` order."""
        names = [str(n) for n in label_names]
        if self.label_words is None:
            return names
        missing = [n for n in names if n not in self.label_words]
        if missing or len(self.label_words) != len(names):
            raise FinexpError(
                f"method.label_words has answers for {sorted(self.label_words)} but the task's labels are {names}: "
                "give one entry per label, e.g. method.label_words={" + ",".join(f"{n}:word" for n in names) + "}"
            )
        return [self.label_words[n] for n in names]


def _answer(words: str | Sequence[str]) -> str:
    return str(words).strip() if isinstance(words, str) else " ".join(str(w).strip() for w in words)


class GenerativeClassifier(nn.Module):
    """``logits[b, c] = sum of log p(answer tokens of class c | prompt(text b))`` under a causal LM.

    Args:
        lm: a transformers causal LM (:func:`finexp.models.causal_lm.build_causal_lm`); its base model becomes
            ``encoder`` and its output embedding ``head``, so the adapters apply as for ``CausalLM``.
        prompt: the instruction and the answers (:class:`GenerativePrompt`).
        label_names: the logits' label order; :meth:`bind_labels` changes it.
    """

    def __init__(self, lm: PreTrainedModel, prompt: GenerativePrompt, label_names: Sequence[str]) -> None:
        super().__init__()
        self.encoder = lm.base_model
        self.head = lm.get_output_embeddings()
        self.max_positions = _max_positions(lm.config)
        self.prompt = prompt
        # the in-context examples as UTF-8 bytes: a checkpoint (even trainable-only) carries them to finexp-eval,
        # finexp-predict and finexp-serve, whose rebuilt model has no train split to draw them from
        self.register_buffer("context_bytes", torch.zeros(0, dtype=torch.uint8))
        self.bind_labels(label_names)

    def bind_labels(self, label_names: Sequence[str]) -> None:
        """Score the answers of ``label_names``, in that order (the logits' columns)."""
        self.label_names = [str(n) for n in label_names]
        self.prompt.context = bytes(self.context_bytes.tolist()).decode("utf-8")
        self.prefix, self.suffix, self.answers = self.prompt.render(self.label_names)

    def set_examples(self, examples: Sequence[tuple[str, str]]) -> None:
        """Solve ``examples`` (text, label name) in front of every prompt (few-shot in-context learning)."""
        context = self.prompt.demonstrations(examples, self.label_names).encode("utf-8")
        self.context_bytes = torch.tensor(list(context), dtype=torch.uint8, device=self.context_bytes.device)
        self.bind_labels(self.label_names)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "context_bytes")
        if saved is not None:  # the rebuilt model's buffer is empty: take the checkpoint's examples, whatever size
            self.context_bytes = saved.clone().to(torch.uint8)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if saved is not None:
            self.bind_labels(self.label_names)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The LM loss on the right answer's tokens: ``-logits[b, labels[b]]``, averaged over the batch."""
        return -logits.gather(1, labels.view(-1, 1)).mean()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        if all(len(a) == 1 for a in self.answers):  # one token each: one sequence per row, all read at its end
            ids, mask, ends = self._sequences(input_ids, attention_mask, with_answers=False)
            hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            last = hidden[torch.arange(len(ids), device=ids.device), ends - 1]  # predicts the answer's token
            log_probs = self.head(last).float().log_softmax(-1)
            return log_probs[:, [a[0] for a in self.answers]]
        ids, mask, starts = self._sequences(input_ids, attention_mask, with_answers=True)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        # The head (a vocabulary-wide projection) runs only where an answer token is predicted: position t predicts
        # token t + 1, so the answer starting at `start` is read from positions start - 1 .. length - 2.
        positions = torch.arange(ids.shape[1] - 1, device=ids.device)
        is_answer = (positions >= (starts - 1).unsqueeze(1)) & (positions < (mask.sum(1) - 1).unsqueeze(1))
        row, position = is_answer.nonzero(as_tuple=True)
        log_probs = self.head(hidden[row, position]).float().log_softmax(-1)
        picked = log_probs.gather(-1, ids[row, position + 1].unsqueeze(-1)).squeeze(-1)
        scores = picked.new_zeros(len(ids)).index_add(0, row, picked)
        return scores.view(input_ids.shape[0], len(self.answers))

    def _sequences(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, with_answers: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded rows ``[lead] prefix text suffix``, their mask and lengths; ``with_answers``: ``B x C`` rows,
        each followed by one class's answer, and the answers' starts instead of the lengths."""
        prompt = self.prompt
        lead_len = 0 if prompt.chat_template else prompt.lead  # a chat template writes its own BOS
        prefix, suffix = input_ids.new_tensor(self.prefix), input_ids.new_tensor(self.suffix)
        answers = [input_ids.new_tensor(a) for a in self.answers] if with_answers else [input_ids.new_zeros(0)]
        longest = max(len(a) for a in self.answers)
        rows, starts = [], []
        for row, length in zip(input_ids, attention_mask.sum(1).tolist(), strict=True):
            lead, text = row[:lead_len], row[prompt.lead : length - prompt.tail]
            added = lead_len + len(prefix) + len(suffix) + longest
            if self.max_positions is not None and added + len(text) > self.max_positions:
                text = text[: max(0, self.max_positions - added)]  # cut the text, never the instruction
            head = torch.cat([lead, prefix, text, suffix])
            for answer in answers:
                rows.append(torch.cat([head, answer]))
                starts.append(len(head))
        width = max(len(r) for r in rows)
        ids = input_ids.new_full((len(rows), width), prompt.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        return ids, mask, input_ids.new_tensor(starts)
