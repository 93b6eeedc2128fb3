"""What the training rows looked like, column by column, so new rows outside it can be flagged (drift flags).

    profile = build_input_profile(train_frame, ["income", "purpose"], {"income": "number", "purpose": "text"})
    check_rows(new_frame, profile)   # -> [[], ["out_of_range:income"], ["unseen_category:purpose"], ...]

``finexp-train`` records the profile of the train split in ``input_profile.json`` beside ``run_info.json``;
``finexp-predict`` and ``finexp-serve`` flag every scored row that falls outside it. Flags never refuse a row: the
model still answers, and the flag tells a reviewer the answer is an extrapolation. A profile read back from a run
directory is data from elsewhere: :func:`validate_input_profile` checks its shape before anything uses it.

Flags, per column the model reads:

- ``out_of_range:<col>``: a number below the training minimum or above the training maximum;
- ``unseen_category:<col>``: a value of a categorical column that no training row held;
- ``long_text:<col>``: a text longer (in characters) than the longest training text of that column;
- ``missing:<col>``: an empty value in a column that no training row left empty.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finexp.data.serialize import format_value
from finexp.data.sources import DataError

PROFILE_VERSION = 1
MAX_CATEGORIES = 1000  # more distinct values than this: a free-text column, profiled by its lengths
FEW_VALUES = 20  # up to this many distinct values is always categorical (if under the cap) ...
KINDS = ("numeric", "categorical", "text")
_GIVEN_KINDS = {  # what callers may pass: the profile's own kinds and finexp's serialized_column_kinds
    "numeric": "numeric",
    "number": "numeric",
    "categorical": "categorical",
    "boolean": "categorical",
    "text": None,  # non-numeric: categorical when it has few distinct values, free text otherwise
    "free_text": "text",
}


def _missing_mask(values: pd.Series) -> pd.Series:
    """Missing cells: NaN/None, and blank strings (they read as the serializer's ``missing`` word)."""
    mask = values.isna()
    if not pd.api.types.is_numeric_dtype(values.dtype):
        mask |= values.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool)
    return mask


def _category(value: object) -> str:
    """A cell as a category: the text the model reads for it (1.0 and 1 are one category, True is "yes")."""
    return format_value(value)


def _plain_number(value: float) -> int | float:
    """A JSON-able number: integral values as int, others as float."""
    number = float(value)
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def _infer_kind(values: pd.Series, given: str | None, max_categories: int) -> str:
    if given is None:
        if pd.api.types.is_bool_dtype(values.dtype):
            return "categorical"
        if pd.api.types.is_numeric_dtype(values.dtype):
            return "numeric"
    elif _GIVEN_KINDS[given] is not None:
        kind = _GIVEN_KINDS[given]
        if kind != "categorical":
            return kind
        distinct = values.dropna().map(_category).nunique()
        return "categorical" if distinct <= max_categories else "text"
    present = values[~_missing_mask(values)]
    distinct = present.map(_category).nunique()
    # a column where most training rows hold their own value (names, descriptions) is free text, not a category
    few = distinct <= FEW_VALUES or distinct * 2 <= len(present)
    return "categorical" if distinct <= max_categories and few else "text"


def build_input_profile(
    frame: pd.DataFrame,
    columns: Sequence[str],
    kinds: Mapping[str, str] | None = None,
    max_categories: int = MAX_CATEGORIES,
) -> dict[str, Any]:
    """The profile of each input column of the (raw, unserialized) training rows.

    Args:
        frame: the training rows, with the columns as read (before serialization to text).
        columns: the columns the model reads, in order.
        kinds: per column, ``number``/``numeric``, ``boolean``/``categorical``, ``text`` (non-numeric: categorical
            when it has at most ``FEW_VALUES`` distinct values or at most one per two rows, free text otherwise) or
            ``free_text`` (a text task's text column). A column without one is inferred from its dtype and values.
        max_categories: a categorical column with more distinct values is profiled as free text.

    Returns:
        Plain JSON-able values: ``{"version", "rows", "columns": {column: {"kind", "missing", ...}}}`` with
        ``min``/``max`` (numeric), ``categories`` (categorical, sorted) or ``length`` (text: ``p50``, ``p95``,
        ``p99``, ``max`` characters).

    Raises:
        DataError: a column is not in the frame, or a kind is unknown.
    """
    kinds = dict(kinds or {})
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise DataError(f"input profile: column(s) {', '.join(map(repr, absent))} are not in the training rows")
    unknown = {c: k for c, k in kinds.items() if k not in _GIVEN_KINDS}
    if unknown:
        raise DataError(f"input profile: unknown kind(s) {unknown}; use one of {', '.join(_GIVEN_KINDS)}")
    out: dict[str, Any] = {}
    for column in columns:
        values = frame[column]
        missing = _missing_mask(values)
        kind = _infer_kind(values, kinds.get(column), max_categories)
        entry: dict[str, Any] = {"kind": kind, "missing": int(missing.sum())}
        present = values[~missing]
        if kind == "numeric":
            numbers = pd.to_numeric(present, errors="coerce").astype("float64")
            numbers = numbers[np.isfinite(numbers)]
            entry["min"] = _plain_number(numbers.min()) if len(numbers) else None
            entry["max"] = _plain_number(numbers.max()) if len(numbers) else None
        elif kind == "categorical":
            entry["categories"] = sorted(set(present.map(_category)))
        else:
            lengths = present.map(lambda v: len(str(v))).to_numpy(dtype="int64")
            if len(lengths):
                p50, p95, p99 = (int(q) for q in np.quantile(lengths, [0.5, 0.95, 0.99], method="higher"))
                entry["length"] = {"p50": p50, "p95": p95, "p99": p99, "max": int(lengths.max())}
            else:
                entry["length"] = {"p50": 0, "p95": 0, "p99": 0, "max": 0}
        out[str(column)] = entry
    return {"version": PROFILE_VERSION, "rows": len(frame), "columns": out}


def check_rows(frame: pd.DataFrame, profile: Mapping[str, Any]) -> list[list[str]]:
    """The drift flags of each row (an empty list for a row inside the profile); rows are never refused.

    A column absent from ``frame`` flags ``missing:<col>`` on every row. Values that are not numbers in a numeric
    column are not flagged here (the predictor answers them with an error).
    """
    flags: list[list[str]] = [[] for _ in range(len(frame))]
    for column, entry in profile["columns"].items():
        if column not in frame.columns:
            for row in flags:
                row.append(f"missing:{column}")
            continue
        values = frame[column].reset_index(drop=True)
        missing = _missing_mask(values)
        hits: list[tuple[str, pd.Series]] = []
        if entry["missing"] == 0:
            hits.append(("missing", missing))
        kind = entry["kind"]
        if kind == "numeric":
            numbers = pd.to_numeric(values.where(~missing), errors="coerce").astype("float64")
            low, high = entry.get("min"), entry.get("max")
            outside = pd.Series(False, index=values.index)
            if low is not None:
                outside |= numbers < low
            if high is not None:
                outside |= numbers > high
            hits.append(("out_of_range", outside))
        elif kind == "categorical":
            unseen = ~values.map(_category).isin(set(entry["categories"])) & ~missing
            hits.append(("unseen_category", unseen))
        else:
            long = (values.map(lambda v: len(str(v))) > entry["length"]["max"]) & ~missing
            hits.append(("long_text", long))
        for name, mask in hits:
            for i in np.flatnonzero(mask.to_numpy(dtype=bool)):
                flags[i].append(f"{name}:{column}")
    return flags


def require_columns(frame: pd.DataFrame, profile: Mapping[str, Any] | Sequence[str], source: str) -> None:
    """Every column the model reads must be in ``frame`` (a file's header): one error naming the file and them.

    Args:
        frame: rows read from ``source`` (the first chunk is enough: its columns are the file's).
        profile: an input profile, or just the names of the columns the model reads.
        source: where the rows came from (a file path), for the message.

    Raises:
        DataError: ``<source>: missing column(s) the model reads: 'Age', 'Job'; the file has: ...``.
    """
    wanted = list(profile["columns"]) if isinstance(profile, Mapping) else list(profile)
    absent = [c for c in wanted if c not in frame.columns]
    if absent:
        have = [str(c) for c in frame.columns]
        shown = ", ".join(have[:20]) + (f", ... ({len(have)} in all)" if len(have) > 20 else "")
        raise DataError(
            f"{source}: missing column(s) the model reads: {', '.join(map(repr, absent))}; "
            f"the file has: {shown or 'no columns'}"
        )


def _number_or_none(value: object) -> bool:
    return value is None or (isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value))


def validate_input_profile(profile: object, source: str) -> dict[str, Any]:
    """Check the shape of a profile read from elsewhere (a run directory); returns it as a plain dict.

    Raises:
        DataError: naming ``source`` and the first key that is wrong.
    """

    def fail(key: str, problem: str) -> DataError:
        return DataError(f"{source}: {key} {problem}")

    if not isinstance(profile, Mapping):
        raise fail("the profile", f"must be a JSON object, got {type(profile).__name__}")
    if profile.get("version") != PROFILE_VERSION:
        raise fail("version", f"is {profile.get('version')!r}; this finexp reads version {PROFILE_VERSION}")
    columns = profile.get("columns")
    if not isinstance(columns, Mapping):
        raise fail("columns", "must be an object of column -> profile")
    for column, entry in columns.items():
        key = f"columns.{column}"
        if not isinstance(entry, Mapping):
            raise fail(key, "must be an object")
        if entry.get("kind") not in KINDS:
            raise fail(f"{key}.kind", f"is {entry.get('kind')!r}; one of {', '.join(KINDS)}")
        if not isinstance(entry.get("missing"), int) or isinstance(entry.get("missing"), bool):
            raise fail(f"{key}.missing", "must be a count (an integer)")
        if entry["kind"] == "numeric":
            for bound in ("min", "max"):
                if not _number_or_none(entry.get(bound)):
                    raise fail(f"{key}.{bound}", f"must be a finite number or null, got {entry.get(bound)!r}")
        elif entry["kind"] == "categorical":
            categories = entry.get("categories")
            if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
                raise fail(f"{key}.categories", "must be a list of strings")
        else:
            length = entry.get("length")
            if not isinstance(length, Mapping) or not all(
                isinstance(length.get(q), int) and not isinstance(length.get(q), bool)
                for q in ("p50", "p95", "p99", "max")
            ):
                raise fail(f"{key}.length", "must hold integer p50, p95, p99 and max")
    return json.loads(json.dumps(profile))  # a plain copy: nothing the caller holds is shared


def load_input_profile(path: str | Path) -> dict[str, Any] | None:
    """Read and check ``input_profile.json``; None when the file does not exist (runs saved before profiles).

    Raises:
        DataError: the file is not JSON or not a profile (naming the file and the key).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{path}: not a JSON input profile ({type(err).__name__}: {err})") from err
    return validate_input_profile(profile, str(path))
