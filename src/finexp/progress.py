"""Progress bars for finexp's long steps outside a Lightning ``Trainer`` (tokenizing, the report's prediction pass,
explanations, teacher labelling, SetFit embeddings).

A bar shows only where a person watches: stderr is a terminal and the ``finexp`` logger is enabled at INFO (so
``hydra/job_logging=disabled``, logs redirected to a file, CI and tests stay quiet).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def enabled() -> bool:
    """Whether bars are shown: stderr is a terminal and finexp logs at INFO."""
    logger = logging.getLogger("finexp")
    return sys.stderr.isatty() and not logger.disabled and logger.isEnabledFor(logging.INFO)


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``iterable`` with a bar (``desc``: what runs) when :func:`enabled`; the bar is removed when done."""
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, disable=not enabled(), file=sys.stderr))


def chunks(items: Sequence[T], size: int, desc: str, unit: str = "rows") -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of ``size``, with a bar counting items (``rows/s``) when :func:`enabled`."""
    with tqdm(total=len(items), desc=desc, unit=unit, leave=False, disable=not enabled(), file=sys.stderr) as bar:
        for start in range(0, len(items), size):
            piece = items[start : start + size]
            yield piece
            bar.update(len(piece))
