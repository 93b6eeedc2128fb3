"""Tokenizing a split into flat int32 arrays, chunk by chunk, optionally in several processes, cached on disk.

A split of ``n`` rows is two arrays: ``ids`` (every row's token ids, one after the other, int32) and ``offsets``
(``n + 1`` int64 positions; row ``i`` is ``ids[offsets[i]:offsets[i + 1]]``). No per-row Python list outlives the
chunk it was tokenized in, so a million rows take ~4 bytes per token plus 8 per row.

The cache is two NumPy files per (tokenizer, ``max_length``, texts), opened memory-mapped: a second run of the same
data starts without tokenizing or reading the tokens into memory. The files are read with ``allow_pickle=False``
(a cache directory is untrusted input) and checked for consistency before use; a damaged pair is tokenized again.

This module imports only NumPy (the tokenizer is the caller's), so worker processes start quickly.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from finexp.progress import chunks, progress

log = logging.getLogger("finexp")

CHUNK_ROWS = 8192  # rows per tokenizer call: large enough for fast tokenizers to batch, small for the bar and memory


class TokenArrays:
    """Every row's token ids, flat (``ids``, int32) with ``offsets`` (int64, one more than rows).

    Arrays read from the cache are memory-mapped read-only; pickling such arrays (DDP spawn, DataLoader workers)
    sends the two file paths, not the tokens.
    """

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, files: tuple[str, str] | None = None) -> None:
        self.ids = ids
        self.offsets = offsets
        self.files = files  # (ids.npy, offsets.npy) the arrays are mapped from, or None

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]]) -> TokenArrays:
        """Flat arrays from rows of ids (small inputs, windows, tests)."""
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
        return cls(ids, _offsets(lengths))

    @classmethod
    def concatenate(cls, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> TokenArrays:
        """Join chunks of ``(ids, lengths)``."""
        if not parts:
            return cls(np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64))
        ids = np.concatenate([p[0] for p in parts]).astype(np.int32, copy=False)
        return cls(ids, _offsets(np.concatenate([p[1] for p in parts])))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, index: int) -> np.ndarray:
        return self.ids[self.offsets[index] : self.offsets[index + 1]]

    def to_lists(self) -> list[list[int]]:
        return [self.row(i).tolist() for i in range(len(self))]

    def __getstate__(self) -> dict[str, Any]:
        if self.files is not None:
            return {"files": self.files}
        return {"ids": np.asarray(self.ids), "offsets": np.asarray(self.offsets), "files": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("files") is not None:
            loaded = _load(Path(state["files"][0]), Path(state["files"][1]))
            if loaded is None:
                raise RuntimeError(f"the token cache {state['files'][0]} changed or vanished while the run used it")
            self.ids, self.offsets, self.files = loaded.ids, loaded.offsets, loaded.files
        else:
            self.ids, self.offsets, self.files = state["ids"], state["offsets"], None


def _offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def encode_chunk(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, lengths)`` of one chunk: the tokenizer's lists are flattened into int32 right away."""
    rows = tokenizer(
        list(texts), truncation=True, max_length=max_length, return_attention_mask=False, return_token_type_ids=False
    )["input_ids"]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
    return ids, lengths


def cache_key(tokenizer: Any, texts: Sequence[str], max_length: int) -> str:
    """Hash of the tokenizer's identity (class, name, vocabulary size), ``max_length`` and every text."""
    digest = hashlib.sha256()
    digest.update(f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|{len(tokenizer)}|{max_length}".encode())
    for start in range(0, len(texts), 65536):  # the same bytes as text + \x1e per row, hashed in large pieces
        piece = texts[start : start + 65536]
        digest.update(("\x1e".join(piece) + "\x1e").encode())
    return digest.hexdigest()[:24]


def cache_files(cache_dir: str | Path, key: str) -> tuple[Path, Path]:
    base = Path(cache_dir) / f"tokens-{key}"
    return base.with_name(base.name + ".ids.npy"), base.with_name(base.name + ".offsets.npy")


def tokenize(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    chunk_rows: int = CHUNK_ROWS,
) -> TokenArrays:
    """Token ids of ``texts`` (truncated to ``max_length``) as flat arrays, from the cache when it has them.

    Args:
        tokenizer: a Hugging Face tokenizer (anything called like one, with ``name_or_path`` and ``len``).
        texts: the rows.
        max_length: truncation length in tokens.
        cache_dir: where the arrays are cached (None: no cache).
        workers: processes that tokenize chunks in parallel (``data.tokenize_workers``); 1 tokenizes here. Fast
            tokenizers already batch in threads; more processes pay for large splits (100k+ rows) and slow
            tokenizers.
        chunk_rows: rows per tokenizer call.
    """
    texts = texts if isinstance(texts, list) else list(texts)
    if not texts:
        return TokenArrays.concatenate([])
    files = None
    if cache_dir is not None:
        files = cache_files(cache_dir, cache_key(tokenizer, texts, max_length))
        cached = _load(*files, rows=len(texts))
        if cached is not None:
            return cached
    if workers > 1 and len(texts) > chunk_rows:
        parts = list(_encode_in_processes(tokenizer, texts, max_length, workers, chunk_rows))
    else:
        parts = [encode_chunk(tokenizer, piece, max_length) for piece in chunks(texts, chunk_rows, desc="tokenizing")]
    tokens = TokenArrays.concatenate(parts)
    del parts
    if files is None:
        return tokens
    _save(tokens, *files)
    return _load(*files, rows=len(texts)) or tokens  # mapped: the pages are the OS's to keep or drop


def _save(tokens: TokenArrays, ids_file: Path, offsets_file: Path) -> None:
    ids_file.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".{os.getpid()}.tmp"
    for array, target in ((tokens.ids, ids_file), (tokens.offsets, offsets_file)):  # offsets last: the commit
        tmp = target.with_name(target.name + suffix)
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
        tmp.replace(target)  # atomic: parallel sweep jobs never read a half-written file


def _load(ids_file: Path, offsets_file: Path, rows: int | None = None) -> TokenArrays | None:
    """The cached arrays, memory-mapped, or None when absent or inconsistent (then they are tokenized again)."""
    if not (ids_file.is_file() and offsets_file.is_file()):
        return None
    try:
        offsets = np.load(offsets_file, mmap_mode="r", allow_pickle=False)
        ids = np.load(ids_file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        log.warning("token cache %s is unreadable (%s); tokenizing again", ids_file, err)
        return None
    consistent = (
        ids.dtype == np.int32
        and offsets.dtype == np.int64
        and ids.ndim == 1
        and offsets.ndim == 1
        and len(offsets) >= 1
        and (rows is None or len(offsets) == rows + 1)
        and offsets[0] == 0
        and offsets[-1] == len(ids)
        and bool(np.all(np.diff(offsets) >= 0))
    )
    if not consistent:
        log.warning("token cache %s does not match its offsets; tokenizing again", ids_file)
        return None
    return TokenArrays(ids, offsets, (str(ids_file), str(offsets_file)))


# ---- several processes ----------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer: Any, max_length: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: the processes are the parallelism
    _WORKER["tokenizer"], _WORKER["max_length"] = tokenizer, max_length


def _work(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return encode_chunk(_WORKER["tokenizer"], texts, _WORKER["max_length"])


def _encode_in_processes(
    tokenizer: Any, texts: list[str], max_length: int, workers: int, chunk_rows: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    # fork (Linux): the workers inherit the imported tokenizer and start at once; they only tokenize (Rust + NumPy).
    # Elsewhere spawn, which pickles the tokenizer to each worker.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    pieces = [texts[start : start + chunk_rows] for start in range(0, len(texts), chunk_rows)]
    context = multiprocessing.get_context(method)
    with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer, max_length)) as pool:
        desc = f"tokenizing ({workers} processes)"
        yield from progress(pool.imap(_work, pieces), desc=desc, total=len(pieces), unit="chunk")
