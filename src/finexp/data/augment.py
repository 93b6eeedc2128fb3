"""Training-data augmentation: EDA-style word operations for text, numeric jitter for table rows.

EDA (Wei & Zou, 2019, "Easy Data Augmentation"): random deletion, random swap and synonym replacement, each touching
about ``probability`` of a row's words. Synonyms come from a word list (finexp ships a small financial one,
``financial_synonyms.txt``), never from a model. For table tasks, ``jitter`` multiplies every numeric feature by
``1 + N(0, jitter_scale)`` (integers stay integers) before the row is serialized to text.

Only the training split is augmented (the datamodule applies it after the split and the few-shot sample); each row
gets ``copies`` augmented copies beside the original. The same seed gives the same copies.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finexp.data.sources import DataError

WORD_OPS = ("delete", "swap", "synonym")
OPS = (*WORD_OPS, "jitter")
DEFAULT_SYNONYMS = Path(__file__).with_name("financial_synonyms.txt")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")


def load_synonyms(path: str | Path | None = None) -> dict[str, list[str]]:
    """Word -> its synonyms, from a file of comma-separated groups (one per line, ``#`` comments; lower case)."""
    path = Path(path) if path is not None else DEFAULT_SYNONYMS
    if not path.is_file():
        raise DataError(f"data.augment.synonyms={str(path)!r}: no such file (one comma-separated group per line)")
    table: dict[str, set[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        words = [w.strip().lower() for w in line.split(",") if w.strip()]
        for word in words:
            table.setdefault(word, set()).update(w for w in words if w != word)
    return {word: sorted(others) for word, others in table.items() if others}


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


@dataclass
class Augmenter:
    """Adds ``copies`` augmented copies of every training row.

    Attributes:
        copies: augmented copies per row (0: off).
        ops: operations applied to each copy, in this order: ``delete``, ``swap``, ``synonym`` (text), ``jitter``
            (numbers: numeric feature columns of table rows, numbers written in a text).
        probability: share of a text's words each word operation touches (at least one word for swap).
        synonyms: word -> synonyms (:func:`load_synonyms`).
        jitter_scale: relative standard deviation of the numeric noise.
        seed: seed of every random choice.
    """

    copies: int = 1
    ops: Sequence[str] = WORD_OPS
    probability: float = 0.1
    synonyms: dict[str, list[str]] = field(default_factory=load_synonyms)
    jitter_scale: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [op for op in self.ops if op not in OPS]
        if unknown:
            raise ValueError(f"data.augment.ops: unknown operation(s) {unknown}; choose from {', '.join(OPS)}")

    # ------------------------------------------------------------------------------------------------------------
    # One text
    # ------------------------------------------------------------------------------------------------------------
    def augment_text(self, text: str, rng: np.random.Generator) -> str:
        """One augmented version of ``text`` (word operations, then numeric jitter of numbers in it)."""
        words = text.split()
        if "delete" in self.ops and len(words) > 1:
            kept = [w for w in words if rng.random() >= self.probability]
            words = kept or [words[int(rng.integers(len(words)))]]
        if "swap" in self.ops and len(words) > 1:
            for _ in range(max(1, round(self.probability * len(words)))):
                i, j = rng.choice(len(words), size=2, replace=False)
                words[i], words[j] = words[j], words[i]
        if "synonym" in self.ops:
            words = [self._synonym(w, rng) for w in words]
        text = " ".join(words)
        if "jitter" in self.ops:
            text = _NUMBER.sub(lambda m: self._jitter_literal(m.group(0), rng), text)
        return text

    def _synonym(self, word: str, rng: np.random.Generator) -> str:
        core = word.strip(".,;:!?\"'()")
        choices = self.synonyms.get(core.lower())
        if not choices or rng.random() >= self.probability:
            return word
        return word.replace(core, _match_case(choices[int(rng.integers(len(choices)))], core), 1)

    def _jitter_literal(self, literal: str, rng: np.random.Generator) -> str:
        value = float(literal) * (1 + rng.normal(0.0, self.jitter_scale))
        if "." not in literal:
            return str(round(value))
        return f"{value:.{len(literal.split('.')[1])}f}"

    # ------------------------------------------------------------------------------------------------------------
    # A training split
    # ------------------------------------------------------------------------------------------------------------
    def __call__(
        self, frame: pd.DataFrame, text_column: str | None, numeric_columns: Sequence[str] = ()
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The rows of ``frame`` followed by ``copies`` augmented copies of each.

        Args:
            frame: the training split.
            text_column: the text of a text task (word operations and jitter apply to it); None for a table task.
            numeric_columns: a table task's numeric feature columns (jitter applies to them).

        Returns:
            The augmented split and a record for ``run_info.json``.

        Raises:
            DataError: word operations asked of a table task (its cells are values, not sentences).
        """
        word_ops = [op for op in self.ops if op in WORD_OPS]
        if text_column is None and word_ops:
            raise DataError(
                f"data.augment.ops={list(self.ops)}: {', '.join(word_ops)} need a text task (task.text_column); "
                "a table task can use ops=[jitter]"
            )
        if self.copies == 0 or frame.empty:
            return frame, {"copies": 0, "rows_added": 0}
        rng = np.random.default_rng(self.seed)
        parts = [frame]
        changed = 0
        for _ in range(self.copies):
            copy = frame.copy()
            if text_column is not None:
                originals = copy[text_column].astype(str).tolist()
                copy[text_column] = [self.augment_text(text, rng) for text in originals]
                changed += sum(a != b for a, b in zip(originals, copy[text_column], strict=True))
            elif "jitter" in self.ops:
                for column in numeric_columns:
                    copy[column] = self._jitter_column(copy[column], rng)
                changed += len(copy)
            parts.append(copy)
        augmented = pd.concat(parts, ignore_index=True)
        record = {"copies": self.copies, "ops": list(self.ops), "rows_added": len(augmented) - len(frame)}
        record["rows_changed"] = changed  # copies that differ from their original
        return augmented, record

    def _jitter_column(self, values: pd.Series, rng: np.random.Generator) -> pd.Series:
        noise = 1 + rng.normal(0.0, self.jitter_scale, size=len(values))
        jittered = values.astype(float) * noise
        if pd.api.types.is_integer_dtype(values) or (values.dropna() % 1 == 0).all():
            jittered = jittered.round()
            if pd.api.types.is_integer_dtype(values):
                return jittered.astype(values.dtype)
        return jittered.where(values.notna())
