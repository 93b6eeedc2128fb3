"""Turn table rows into text a language model can read ("monthly income: 129. job type: fixed. ...")."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real

import pandas as pd


def format_value(value: object, missing: str = "unknown", float_digits: int = 2) -> str:
    """Format one cell: integral numbers without decimals, others rounded, missing values as ``missing``."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        number = float(value)
        if number.is_integer():
            return str(int(number))
        return f"{number:.{float_digits}f}".rstrip("0").rstrip(".")
    text = str(value).strip()
    return text if text else missing


class RowSerializer:
    """Serialize table rows with a template per column.

    Args:
        columns: the columns to write, in order.
        phrases: column -> phrase shown instead of the column name (columns without one use their name).
        template: format of one piece, with ``{phrase}`` and ``{value}``.
        separator: text between pieces.
        missing: how a missing value reads.
        float_digits: decimals kept for non-integral numbers.
    """

    def __init__(
        self,
        columns: Sequence[str],
        phrases: Mapping[str, str] | None = None,
        template: str = "{phrase}: {value}",
        separator: str = ". ",
        missing: str = "unknown",
        float_digits: int = 2,
    ) -> None:
        self.columns = list(columns)
        self.phrases = {c: (phrases or {}).get(c, str(c)) for c in self.columns}
        self.template = template
        self.separator = separator
        self.missing = missing
        self.float_digits = float_digits

    def __call__(self, frame: pd.DataFrame) -> list[str]:
        # Rows as plain Python tuples: much faster than DataFrame.iterrows and keeps ints as ints.
        pieces = [self.phrases[c] for c in self.columns]
        texts = []
        for row in frame[self.columns].itertuples(index=False, name=None):
            parts = [
                self.template.format(phrase=phrase, value=format_value(v, self.missing, self.float_digits))
                for phrase, v in zip(pieces, row, strict=True)
            ]
            texts.append(self.separator.join(parts))
        return texts


def column_kinds(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, str]:
    """What each column held in ``frame``: ``number``, ``boolean`` or ``text`` (prediction checks new rows with it)."""
    kinds = {}
    for column in columns:
        dtype = frame[column].dtype
        if pd.api.types.is_bool_dtype(dtype):
            kinds[column] = "boolean"
        elif pd.api.types.is_numeric_dtype(dtype):
            kinds[column] = "number"
        else:
            kinds[column] = "text"
    return kinds
