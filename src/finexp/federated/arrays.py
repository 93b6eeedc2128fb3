"""Trainable parameters on the wire: NumPy arrays by name <-> Flower ``ArrayRecord``s, and what a message weighs.

Shared by the ClientApp (:mod:`.app`), the coordinator (:mod:`.server`), the grids and secure aggregation, below
all of them so none imports another for these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from finexp import FinexpError


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Trainable parameters (by name) as an ``ArrayRecord`` (NumPy ``.npy`` buffers, never pickles)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ``ArrayRecord`` back to NumPy arrays by name."""
    return {name: array.numpy() for name, array in record.items()}


def ordered(record: ArrayRecord, names: Sequence[str]) -> list[np.ndarray]:
    """The record's arrays in the order of ``names`` (the module's trainable parameters)."""
    arrays = from_record(record)
    missing = [n for n in names if n not in arrays]
    if missing or len(arrays) != len(names):
        raise FinexpError(f"the aggregate holds {len(arrays)} arrays for {len(names)} trainable parameters")
    return [arrays[n] for n in names]


def record_bytes(content: RecordDict) -> int:
    """Bytes of the parameters a message carries: the ``.npy`` buffers of its ``ArrayRecord``s, and the bytes in its
    ``ConfigRecord``s (where SecAgg+ carries masked vectors, keys and key shares)."""
    arrays = sum(len(a.data) for record in content.array_records.values() for a in record.values())
    blobs = 0
    for record in content.config_records.values():
        for value in record.values():
            items = value if isinstance(value, list) else [value]
            blobs += sum(len(v) for v in items if isinstance(v, bytes))
    return arrays + blobs
