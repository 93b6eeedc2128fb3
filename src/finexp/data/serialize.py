"""Turn table rows into text a language model can read ("monthly income: 129. job type: fixed. ...").

Coded tables read through a codebook: ``value_map`` replaces each column's codes with phrases (``A14`` -> "no
checking account"), and ``formats`` writes a column's numbers with its own decimals, thousands separator, prefix or
suffix ("$12,500", "3.5 %"), or as words by bin ("low" / "medium" / "high"). Both are plain data from the config.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from numbers import Integral, Real
from typing import Any

import pandas as pd

from finexp.data.sources import DataError

log = logging.getLogger("finexp")

UNKNOWN_POLICIES = ("keep", "missing", "error")  # what a code absent from its column's value_map reads as


def format_value(value: object, missing: str = "unknown", float_digits: int = 2) -> str:
    """Format one cell: integral numbers without decimals, others rounded, missing values as ``missing``."""
    if _is_missing(value):
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


def _is_missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def code_of(value: object) -> str:
    """The key a cell is looked up by in a value map: ``A14``, ``3`` (3, 3.0 and "3" alike), ``yes`` (True)."""
    return format_value(value, missing="", float_digits=12)


@dataclass(frozen=True)
class NumberFormat:
    """How one numeric column reads.

    Args:
        decimals: digits after the point (trailing zeros kept); None: the serializer's ``float_digits``, integral
            numbers without decimals.
        thousands: thousands separator ("," -> 12,500); "" for none.
        prefix: written before the number ("$"); a negative number reads "-$1,200".
        suffix: written after it (" %", " months").
        bins: ascending edges; with ``labels``, a number reads as the word of its bin instead: ``labels[i]`` for
            ``bins[i-1] <= x < bins[i]`` (``labels[0]`` below ``bins[0]``, the last label from ``bins[-1]`` up).
        labels: one word more than there are edges.
    """

    decimals: int | None = None
    thousands: str = ""
    prefix: str = ""
    suffix: str = ""
    bins: Sequence[float] | None = None
    labels: Sequence[str] | None = None

    def __post_init__(self) -> None:
        problem = format_problem(self)
        if problem:
            raise ValueError(problem)

    def __call__(self, number: float, float_digits: int) -> str:
        if self.bins is not None:
            assert self.labels is not None
            return str(self.labels[sum(number >= edge for edge in self.bins)])
        magnitude = abs(number)
        if self.decimals is None:
            digits = 0 if float(magnitude).is_integer() else float_digits
            text = f"{magnitude:,.{digits}f}"
            if digits:
                text = text.rstrip("0").rstrip(".")
        else:
            text = f"{magnitude:,.{self.decimals}f}"
        text = text.replace(",", self.thousands)
        sign = "-" if number < 0 and text.strip("0.,") else ""
        return f"{sign}{self.prefix}{text}{self.suffix}"


def format_problem(rule: NumberFormat | Mapping[str, Any]) -> str | None:
    """What is wrong with a number format (None: nothing), for :class:`NumberFormat` and the config checks."""
    if isinstance(rule, Mapping):
        unknown = sorted(set(rule) - set(NumberFormat.__dataclass_fields__))
        if unknown:
            return f"unknown key {unknown[0]!r} (keys: {', '.join(NumberFormat.__dataclass_fields__)})"
    get = rule.get if isinstance(rule, Mapping) else lambda key: getattr(rule, key)
    decimals, bins, labels = get("decimals"), get("bins"), get("labels")
    if decimals is not None and (not isinstance(decimals, int) or decimals < 0):
        return f"decimals={decimals!r} must be a whole number >= 0 (or null)"
    if (bins is None) != (labels is None):
        return "bins and labels go together: give both (labels: one more than bins) or neither"
    if bins is not None:
        edges = list(bins)
        if not edges or any(not isinstance(e, Real) or isinstance(e, bool) for e in edges):
            return f"bins={edges!r} must be a non-empty list of numbers"
        if any(b <= a for a, b in pairwise(edges)):
            return f"bins={edges!r} must be strictly ascending"
        if len(list(labels)) != len(edges) + 1:
            return f"labels needs {len(edges) + 1} words for {len(edges)} bin edge(s), got {len(list(labels))}"
    return None


class RowSerializer:
    """Serialize table rows with a template per column.

    Args:
        columns: the columns to write, in order.
        phrases: column -> phrase shown instead of the column name (columns without one use their name).
        template: format of one piece, with ``{phrase}`` and ``{value}``.
        separator: text between pieces.
        missing: how a missing value reads.
        float_digits: decimals kept for non-integral numbers.
        value_map: column -> {code: phrase}; a cell is looked up by :func:`code_of` (so ``1`` and ``"1"`` match).
        formats: column -> :class:`NumberFormat` (or its fields as a mapping) for that column's numbers.
        unknown_values: a code of a mapped column that its map lacks: ``keep`` (the raw value is written),
            ``missing`` (reads as ``missing``) or ``error``. Either way it is counted (:meth:`pop_unknown`).

    Raises:
        DataError: a value map or format names a column that is not serialized (the config key is named).
    """

    def __init__(
        self,
        columns: Sequence[str],
        phrases: Mapping[str, str] | None = None,
        template: str = "{phrase}: {value}",
        separator: str = ". ",
        missing: str = "unknown",
        float_digits: int = 2,
        value_map: Mapping[str, Mapping[Any, str]] | None = None,
        formats: Mapping[str, NumberFormat | Mapping[str, Any]] | None = None,
        unknown_values: str = "keep",
    ) -> None:
        self.columns = list(columns)
        self.phrases = {c: (phrases or {}).get(c, str(c)) for c in self.columns}
        self.template = template
        self.separator = separator
        self.missing = missing
        self.float_digits = float_digits
        if unknown_values not in UNKNOWN_POLICIES:
            raise ValueError(
                f"task.serialization.unknown_values={unknown_values!r}: choose one of {', '.join(UNKNOWN_POLICIES)}"
            )
        self.unknown_values = unknown_values
        for key, entries in (("value_map", value_map), ("formats", formats)):
            stray = [c for c in entries or {} if c not in self.columns]
            if stray:
                raise DataError(
                    f"task.serialization.{key}.{stray[0]}: no serialized column {stray[0]!r} (serialized: "
                    f"{', '.join(map(str, self.columns))}); fix the name or drop the entry"
                )
        self.value_map = {c: {code_of(k): str(v) for k, v in m.items()} for c, m in (value_map or {}).items()}
        self.formats = {
            c: f if isinstance(f, NumberFormat) else NumberFormat(**dict(f)) for c, f in (formats or {}).items()
        }
        self._unknown: dict[str, Counter[str]] = {}

    def _cell(self, column: str, value: object) -> str:
        if _is_missing(value):
            return self.missing
        codes = self.value_map.get(column)
        if codes is not None:
            code = code_of(value)
            if code in codes:
                return codes[code]
            self._unknown.setdefault(column, Counter())[code] += 1
            if self.unknown_values == "error":
                raise DataError(
                    f"column {column!r}: value {code!r} is not in task.serialization.value_map.{column} "
                    f"(codes: {', '.join(list(codes)[:10])}); add it, or set task.serialization.unknown_values=keep"
                )
            if self.unknown_values == "missing":
                return self.missing
        rule = self.formats.get(column)
        if rule is not None and isinstance(value, Real) and not isinstance(value, bool):
            return rule(float(value), self.float_digits)
        return format_value(value, self.missing, self.float_digits)

    def __call__(self, frame: pd.DataFrame) -> list[str]:
        # Rows as plain Python tuples: much faster than DataFrame.iterrows and keeps ints as ints.
        pieces = [self.phrases[c] for c in self.columns]
        plain = not self.value_map and not self.formats
        texts = []
        for row in frame[self.columns].itertuples(index=False, name=None):
            if plain:
                values = [format_value(v, self.missing, self.float_digits) for v in row]
            else:
                values = [self._cell(c, v) for c, v in zip(self.columns, row, strict=True)]
            parts = [self.template.format(phrase=p, value=v) for p, v in zip(pieces, values, strict=True)]
            texts.append(self.separator.join(parts))
        return texts

    def pop_unknown(self, examples: int = 5) -> dict[str, dict[str, Any]]:
        """Codes missing from their column's value map since the last call: ``{column: {"cells": n, "values":
        {code: count}}}`` (the ``examples`` most frequent codes), then the counts restart."""
        out = {
            column: {"cells": sum(counts.values()), "values": dict(counts.most_common(examples))}
            for column, counts in self._unknown.items()
        }
        self._unknown = {}
        return out


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


def codebook_record(serializer: RowSerializer, unknown: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What ``run_info.json`` says about a codebook: the mapped and formatted columns, the unknown-code policy and,
    per split, the codes their maps lacked (logged as a warning too: a typo in a map reads as raw codes)."""
    for split, columns in unknown.items():
        if columns:  # one line per split: a table of decoded values would otherwise warn once per column
            log.warning(
                "%s split: %d cell(s) hold codes missing from task.serialization.value_map (%s), %s",
                split,
                sum(seen["cells"] for seen in columns.values()),
                "; ".join(f"{c}: {', '.join(map(repr, seen['values']))}" for c, seen in list(columns.items())[:5]),
                "written as read" if serializer.unknown_values == "keep" else "read as the missing word",
            )
    return {
        "value_map_columns": list(serializer.value_map),
        "formatted_columns": list(serializer.formats),
        "unknown_values": serializer.unknown_values,
        "unknown_codes": {split: dict(columns) for split, columns in unknown.items()},
    }
