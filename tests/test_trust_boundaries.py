"""Trust boundaries (issue 20): the battery of hostile and mistaken inputs, each refused with one line or handled.

A run directory is data someone may have edited: every entry point that opens one (finexp-eval, -predict, -serve,
-export, -explain, ``model.init_from``, ``distill.teacher``) must refuse a ``config.yaml`` naming a ``_target_`` off
finexp's allow-list, an interpolation or a key outside the run schema, and a checkpoint holding pickled code, before
anything runs. Each payload below would create a file if it ran (a control test proves it does, when loaded the
unsafe way), so "nothing created" is asserted, not assumed. The mistaken inputs of a new user (blank texts, a label
of " ", a duplicated header, an absurd ``data.max_length``, a misspelt argument, a 5 MB text cell ...) end in one line
naming the file/column/key, or train as they should.

Speed: one tiny run is trained per module (``shared``) and hard-linked per tampering case; the cases run in-process
and only the exit-code cases (a CLI refusal, the TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD resume, the multirun) are
subprocesses. Covered elsewhere, not repeated here: the serving cases (tests/test_serve_security.py), drift flags
and finexp-predict on a file lacking a column (tests/test_profile.py), exports without remote code
(tests/test_export.py), the allow-list against conf/ (tests/test_targets.py).
"""

from __future__ import annotations

import builtins
import copy
import csv
import importlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from conftest import FAST, applicants_frame, sentiment_frame, text_task
from finexp import FinexpError, build
from finexp.config import config_dir
from finexp.evaluate import evaluate
from finexp.explain import explain
from finexp.export import export
from finexp.inference import Predictor, load_predictor
from finexp.predict import predict
from finexp.resume import check_resume_checkpoint
from finexp.rules import MAX_CONDITION_CHARS, MAX_CONDITION_DEPTH, RuleError, parse_condition
from finexp.runs import TrainedRun, open_teacher
from finexp.train import train

# FAST without `callbacks.progress_bar=null`: the shared run keeps the progress-bar callback while
# trainer.enable_progress_bar=false (before issue 20 that combination failed to instantiate the Trainer).
FAST_WITH_BAR_CALLBACK = [o for o in FAST if o != "callbacks.progress_bar=null"]
MAX_LENGTH = 32
LONG_CELL_CHARS = 5_000_000  # a 5 MB text cell: clipped to 100 chars per token before tokenizing, with a warning
SHARED_OVERRIDES = [
    "trainer.max_epochs=2",
    f"data.max_length={MAX_LENGTH}",
    "data.batch_size=16",
    "callbacks.early_stopping=null",
    "seed=5",
]
ENV_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


# ----------------------------------------------------------------------------------------------------------------
# Payloads: each would create ``pwned`` if it ran
# ----------------------------------------------------------------------------------------------------------------
class FileCreatingPickle:
    """Unpickling this calls ``open(path, "w")``: the file appears if a loader runs pickled code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return builtins.open, (str(self.path), "w")


def pickle_payload(dest: Path, pwned: Path) -> Path:
    """A torch.save file whose unpickling (``weights_only=False``) creates ``pwned``."""
    torch.save({"state_dict": {}, "hook": FileCreatingPickle(pwned)}, dest)
    return dest


def evil_checkpoint(source: Path, dest: Path, pwned: Path) -> Path:
    """A real checkpoint with one extra object whose unpickling creates ``pwned`` (what a tampered last.ckpt is)."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    checkpoint["finexp"]["hook"] = FileCreatingPickle(pwned)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, dest)
    return dest


PAYLOADS: dict[str, Callable[[Path], dict[str, Any]]] = {  # id -> node given the case directory
    "builtins.open": lambda d: {"_target_": "builtins.open", "file": str(d / "pwned"), "mode": "w"},
    "os.system": lambda d: {"_target_": "os.system", "command": f"touch {d / 'pwned'}"},
    "subprocess.run": lambda d: {"_target_": "subprocess.run", "args": ["touch", str(d / "pwned")]},
    "torch.load": lambda d: {
        "_target_": "torch.load",
        "f": str(pickle_payload(d / "payload.pt", d / "pwned")),
        "weights_only": False,
    },
    "torch.optim.sgd.torch.load": lambda d: {  # starts like an optimizer class, resolves to torch.load
        "_target_": "torch.optim.sgd.torch.load",
        "f": str(pickle_payload(d / "payload.pt", d / "pwned")),
        "weights_only": False,
    },
    "finexp.records.write_json": lambda d: {  # a finexp callable, but not one a config may name
        "_target_": "finexp.records.write_json",
        "path": str(d / "pwned"),
        "data": {"owned": True},
    },
    "_io.open": lambda d: {"_target_": "_io.open", "file": str(d / "pwned"), "mode": "w"},  # a private name
}
WHY = {
    "torch.optim.sgd.torch.load": "not a subclass of torch.optim.Optimizer",
    "_io.open": "private or dunder names are never called",
}


def _set(tree: dict[str, Any], key: str, node: Any) -> None:
    """Put ``node`` at dotted ``key``; ``a.b[0]`` makes ``b`` a one-element list."""
    *parents, leaf = key.split(".")
    for name in parents:
        tree = tree.setdefault(name, {})
    if leaf.endswith("[0]"):
        tree[leaf[:-3]] = [node]
    else:
        tree[leaf] = node


PAYLOAD_KEYS = ["adapter", "optimizer", "logger.x", "trainer.plugins[0]"]  # a group, a partial, nested, in a list


def locate(target: str) -> Any:
    """``a.b.c`` as Hydra's instantiate resolves it: the longest importable module, then attributes."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(target)


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_each_payload_creates_its_file_when_called(payload, tmp_path):
    """The control: calling what the node names with its arguments (what instantiating it does) runs the payload,
    so the refusals below are what keeps the file from appearing. (Hydra's own instantiate now blocklists a few of
    these, e.g. os.system, but not builtins.open, torch.load or finexp's own callables.)"""
    node = PAYLOADS[payload](tmp_path)
    result = locate(node.pop("_target_"))(**node)
    if hasattr(result, "close"):
        result.close()
    assert (tmp_path / "pwned").exists()


def test_a_pickled_checkpoint_payload_is_live_without_weights_only(shared, tmp_path):
    evil = evil_checkpoint(shared.ckpt, tmp_path / "evil.ckpt", tmp_path / "pwned")
    torch.load(evil, weights_only=False)  # what torch < 2.6 or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 did by default
    assert (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------------------------------------------
# The shared run
# ----------------------------------------------------------------------------------------------------------------
class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class Shared:
    root: Path
    data: Path
    run_dir: Path
    ckpt: Path
    metrics: dict[str, Any]
    warnings: list[str]
    cfgs: dict[str, DictConfig] = field(default_factory=dict)


def compose_cfg(config_name: str, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


def place(cfg: DictConfig, out: Path, cache: Path) -> DictConfig:
    with open_dict(cfg):
        cfg.paths.log_dir = str(out.parent / "outputs")
        cfg.paths.output_dir = str(out)
        cfg.paths.cache_dir = str(cache)
    return cfg


def headlines_with_a_long_cell(path: Path) -> Path:
    frame = sentiment_frame(120, seed=2)
    frame.loc[7, "headline"] = ("ACME profit beats forecast " * (LONG_CELL_CHARS // 27 + 1))[:LONG_CELL_CHARS]
    frame.to_csv(path, index=False)
    return path


def shared_train_cfg(data: Path, out: Path, cache: Path, *extra: str) -> DictConfig:
    overrides = [*FAST_WITH_BAR_CALLBACK, *text_task(data), *SHARED_OVERRIDES, *extra]
    return place(compose_cfg("train", overrides), out, cache)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Shared:
    """One 2-epoch tiny_bert run with the progress-bar callback on, enable_progress_bar=false and a 5 MB text cell."""
    root = tmp_path_factory.mktemp("trust")
    data = headlines_with_a_long_cell(root / "headlines.csv")
    cfg = shared_train_cfg(data, root / "run", root / "cache")
    handler = _Collect()
    logger = logging.getLogger("finexp")
    logger.addHandler(handler)
    try:
        metrics = train(cfg)
    finally:
        logger.removeHandler(handler)
    run_dir = root / "run"
    new_rows = root / "new.csv"
    sentiment_frame(6, seed=9).to_csv(new_rows, index=False)
    shared = Shared(root, data, run_dir, Path(metrics["best_checkpoint"]), metrics, handler.messages)
    eval_overrides = ["ckpt_path=x", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "analysis=none"]
    shared.cfgs = {
        "eval": place(compose_cfg("eval", eval_overrides), root / "eval", root / "cache"),
        "explain": place(compose_cfg("explain", ["ckpt_path=x", "analysis.ig_steps=2"]), root / "x", root / "cache"),
        "predict": place(
            compose_cfg("predict", ["ckpt=x", f"input={new_rows}", "progress=false"]), root / "p", root / "cache"
        ),
        "train": place(compose_cfg("train", [*FAST, *text_task(data), "trainer.max_epochs=1"]), root / "t", root),
    }
    return shared


def test_progress_bar_callback_with_enable_progress_bar_false_trains(shared):
    assert shared.metrics["status"] == "completed" and shared.metrics["epochs"] == 2
    assert json.loads((shared.run_dir / "metrics.json").read_text())["status"] == "completed"
    saved = yaml.safe_load((shared.run_dir / "config.yaml").read_text())
    assert saved["callbacks"]["progress_bar"]["_target_"] == "pytorch_lightning.callbacks.TQDMProgressBar"
    assert saved["trainer"]["enable_progress_bar"] is False


def test_a_5mb_text_cell_trains_and_warns_how_many_characters_are_cut(shared):
    cut = LONG_CELL_CHARS - 100 * MAX_LENGTH  # clipped to CHARS_PER_TOKEN_BOUND * max_length before tokenizing
    warned = [m for m in shared.warnings if "far longer than data.max_length" in m]
    assert len(warned) == 1, shared.warnings
    assert re.match(r"1 (train|val|test) row\(s\) are far longer", warned[0]), warned[0]
    assert f"longest {LONG_CELL_CHARS:,} characters" in warned[0]
    assert f"at least {cut:,} characters are cut" in warned[0] and f"data.max_length={MAX_LENGTH}" in warned[0]


# ----------------------------------------------------------------------------------------------------------------
# Tampered config.yaml
# ----------------------------------------------------------------------------------------------------------------
def tampered_run(shared: Shared, case_dir: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the shared run (checkpoints hard-linked) whose config.yaml ``edit`` changed; returns best.ckpt."""
    run = case_dir / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("best.ckpt", "last.ckpt"):
        os.link(shared.run_dir / "checkpoints" / name, run / "checkpoints" / name)
    for name in ("run_info.json", "input_profile.json"):
        shutil.copy(shared.run_dir / name, run / name)
    config = yaml.safe_load((shared.run_dir / "config.yaml").read_text())
    edit(config)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return run / "checkpoints" / "best.ckpt"


def with_payload(case_dir: Path, payload: str, key: str) -> Callable[[dict[str, Any]], None]:
    return lambda config: _set(config, key, PAYLOADS[payload](case_dir))


def assert_one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def assert_refused_target(err: pytest.ExceptionInfo, ckpt: Path, key: str, target: str) -> None:
    config = ckpt.resolve().parent.parent / "config.yaml"
    why = WHY.get(target, "not on the allow-list")
    assert_one_line(err, f"{config}: {key}._target_={target!r} is refused ({why})")


@pytest.mark.parametrize("key", PAYLOAD_KEYS)
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_trained_run_refuses_a_config_naming_an_untrusted_target(shared, tmp_path, payload, key):
    ckpt = tampered_run(shared, tmp_path, with_payload(tmp_path, payload, key))
    with pytest.raises(FinexpError) as err:
        TrainedRun.open(ckpt)
    assert_refused_target(err, ckpt, key, payload)
    assert not (tmp_path / "pwned").exists()


def _eval(shared: Shared, ckpt: Path, out: Path) -> None:
    cfg = copy.deepcopy(shared.cfgs["eval"])
    cfg.ckpt_path, cfg.paths.output_dir = str(ckpt), str(out)
    evaluate(cfg)


def _predict(shared: Shared, ckpt: Path, out: Path) -> None:
    cfg = copy.deepcopy(shared.cfgs["predict"])
    cfg.ckpt, cfg.output, cfg.paths.output_dir = str(ckpt), str(out / "predictions.csv"), str(out)
    predict(cfg)


def _explain(shared: Shared, ckpt: Path, out: Path) -> None:
    cfg = copy.deepcopy(shared.cfgs["explain"])
    cfg.ckpt_path, cfg.paths.output_dir = str(ckpt), str(out)
    explain(cfg)


def _init_from(shared: Shared, ckpt: Path, out: Path) -> None:
    cfg = copy.deepcopy(shared.cfgs["train"])
    with open_dict(cfg):
        cfg.model.init_from, cfg.paths.output_dir = str(ckpt), str(out)
    train(cfg)


ENTRY_POINTS: dict[str, Callable[[Shared, Path, Path], Any]] = {
    "finexp-eval": _eval,
    "finexp-predict": _predict,
    "Predictor.from_checkpoint": lambda s, ckpt, out: Predictor.from_checkpoint(ckpt, device="cpu"),
    "finexp-serve (load_predictor)": lambda s, ckpt, out: load_predictor(str(ckpt), device="cpu"),
    "finexp-export": lambda s, ckpt, out: export(ckpt, out / "export"),
    "finexp-explain": _explain,
    "model.init_from": _init_from,
    "distill.teacher": lambda s, ckpt, out: open_teacher(ckpt),
}


def assert_nothing_written(out: Path) -> None:
    written = sorted(p.name for p in out.rglob("*") if p.is_file()) if out.exists() else []
    assert "metrics.json" not in written and "predictions.csv" not in written and "explanations.json" not in written
    assert not (out / "export").exists(), written


@pytest.mark.parametrize(("payload", "key"), [("builtins.open", "adapter"), ("os.system", "logger.x")])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_entry_point_refuses_a_tampered_config_before_anything_runs(shared, tmp_path, entry, payload, key):
    ckpt = tampered_run(shared, tmp_path, with_payload(tmp_path, payload, key))
    out = tmp_path / "out"
    with pytest.raises(FinexpError) as err:
        ENTRY_POINTS[entry](shared, ckpt, out)
    assert_refused_target(err, ckpt, key, payload)
    assert not (tmp_path / "pwned").exists()
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("task.name", "${oc.env:HOME}", "task.name='${oc.env:HOME}' is an interpolation"),
        ("trainer.plugins[0]", "${oc.env:HOME}", "trainer.plugins[0]='${oc.env:HOME}' is an interpolation"),
        ("data.max_lenght", 64, "key data.max_lenght does not fit finexp's run schema"),
        ("evil", 1, "key evil does not fit finexp's run schema"),
    ],
)
@pytest.mark.parametrize("entry", ["finexp-eval", "Predictor.from_checkpoint"])
def test_interpolations_and_keys_outside_the_schema_are_refused(shared, tmp_path, entry, key, value, message):
    ckpt = tampered_run(shared, tmp_path, lambda config: _set(config, key, value))
    out = tmp_path / "out"
    with pytest.raises(FinexpError) as err:
        ENTRY_POINTS[entry](shared, ckpt, out)
    assert_one_line(err, f"{ckpt.resolve().parent.parent / 'config.yaml'}: ", message)
    assert_nothing_written(out)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: pickled code, resume from another task
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evil_last(shared) -> Path:
    """A run directory whose checkpoints/last.ckpt holds pickled code (config.yaml untouched)."""
    run = shared.root / "evil_run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "run_info.json", "input_profile.json"):
        shutil.copy(shared.run_dir / name, run / name)
    return evil_checkpoint(
        shared.run_dir / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt", run / "pwned"
    )


@pytest.mark.parametrize("force_unsafe", [False, True], ids=["default", ENV_NO_WEIGHTS_ONLY])
def test_a_malicious_last_ckpt_is_refused_on_resume_and_by_finexp_eval(
    shared, evil_last, tmp_path, monkeypatch, force_unsafe
):
    if force_unsafe:  # torch reads it at each torch.load; finexp passes weights_only=True explicitly
        monkeypatch.setenv(ENV_NO_WEIGHTS_ONLY, "1")
    resumed = shared_train_cfg(shared.data, tmp_path / "resumed", shared.root / "cache", f"ckpt_path={evil_last}")
    with pytest.raises(FinexpError) as err:
        train(resumed)
    assert_one_line(err, f"{evil_last}: not a loadable finexp checkpoint (UnpicklingError")
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    with pytest.raises(FinexpError) as err:
        _eval(shared, evil_last, tmp_path / "eval")
    assert_one_line(err, f"{evil_last}: not a loadable finexp checkpoint (UnpicklingError")
    assert_nothing_written(tmp_path / "eval")
    assert not (evil_last.parent.parent / "pwned").exists()


@pytest.fixture
def other_labels_csv(tmp_path) -> Path:
    path = tmp_path / "other_labels.csv"
    frame = sentiment_frame(60)
    frame["sentiment"] = frame["sentiment"].map({"bullish": "up", "bearish": "down"})
    frame.to_csv(path, index=False)
    return path


def test_resume_from_a_checkpoint_of_another_label_set_or_task_is_refused(make_cfg, shared, other_labels_csv, tmp_path):
    last = shared.run_dir / "checkpoints" / "last.ckpt"
    cfg = make_cfg(*text_task(other_labels_csv), f"ckpt_path={last}")
    with pytest.raises(FinexpError) as err:
        train(cfg)
    assert_one_line(
        err,
        f"ckpt_path={last}: a checkpoint of labels ['bearish', 'bullish'], this run's are ['down', 'up']",
        "use model.init_from=<ckpt> (or resume_check=false to force it)",
    )
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()

    table = tmp_path / "applicants.csv"
    applicants_frame(60).to_csv(table, index=False)
    cfg = make_cfg("task=table_classification", f"data.path={table}", "task.label_column=default", f"ckpt_path={last}")
    with pytest.raises(FinexpError) as err:
        train(cfg)
    assert_one_line(err, f"a checkpoint of task 'text_classification', this run's is '{cfg.task.name}'", "init_from")
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()
    # resume_check=false: the check steps aside (the user asked for it)
    assert "state_dict" in check_resume_checkpoint(str(last), cfg.task.name, ["no", "yes"], allow_other_task=True)


# ----------------------------------------------------------------------------------------------------------------
# Kill and resume keeps the CSV log
# ----------------------------------------------------------------------------------------------------------------
class Interrupt(RuntimeError):
    pass


class _StopAfterFirstEpoch(pl.Callback):
    """Stands in for a crash once epoch 0 is checkpointed."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            raise Interrupt("killed after epoch 0")


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_kill_and_resume_keeps_the_csv_rows_of_an_uninterrupted_run(shared, tmp_path, monkeypatch):
    run = tmp_path / "killed"
    real_callbacks = build.callbacks_from
    with monkeypatch.context() as patch:
        patch.setattr(build, "callbacks_from", lambda cfg: [*real_callbacks(cfg), _StopAfterFirstEpoch()])
        with pytest.raises(Interrupt):
            train(shared_train_cfg(shared.data, run, shared.root / "cache"))
    assert {row["epoch"] for row in csv_rows(run)} >= {"0"}
    assert not (run / "metrics.json").exists()
    train(shared_train_cfg(shared.data, run, shared.root / "cache", "ckpt_path=last"))

    whole, resumed = csv_rows(shared.run_dir), csv_rows(run)
    assert len(resumed) == len(whole)
    assert Counter(row["epoch"] for row in resumed) == Counter(row["epoch"] for row in whole)
    assert sum(1 for row in resumed if row.get("val/loss")) == sum(1 for row in whole if row.get("val/loss"))


# ----------------------------------------------------------------------------------------------------------------
# Data and config mistakes of a new user: one line naming the file, column or key, before training
# ----------------------------------------------------------------------------------------------------------------
def _write(frame: pd.DataFrame, path: Path) -> Path:
    {".csv": lambda: frame.to_csv(path, index=False), ".parquet": lambda: frame.to_parquet(path, index=False)}.get(
        path.suffix, lambda: frame.to_json(path, orient="records", lines=True)
    )()
    return path


def blank_frame(column: str, dtype: str) -> pd.DataFrame:
    """60 headlines; 3 whitespace-only cells and 2 missing in ``column``, in the given pandas dtype."""
    frame = sentiment_frame(60)
    frame.loc[[3, 10, 20], column] = ["   ", "\t", " "]
    frame.loc[[30, 41], column] = None
    if dtype == "object":  # a number among the strings: JSON gives the column object dtype
        frame[column] = frame[column].astype(object)
        frame.loc[50, column] = 7
    elif dtype == "string":
        frame[column] = frame[column].astype("string")
    return frame


@pytest.mark.parametrize(
    ("what", "column", "dtype", "suffix"),
    [
        ("text", "headline", "str", ".csv"),  # pandas >= 3 reads CSV text as str
        ("text", "headline", "string", ".parquet"),  # pandas "string" dtype, kept by Parquet
        ("text", "headline", "object", ".jsonl"),
        ("label", "sentiment", "str", ".csv"),  # a label of " " is not a class
        ("label", "sentiment", "string", ".parquet"),
    ],
)
def test_blank_texts_and_labels_are_refused_counting_every_bad_row(make_cfg, tmp_path, what, column, dtype, suffix):
    path = _write(blank_frame(column, dtype), tmp_path / f"data{suffix}")
    if dtype != "str":
        read = pd.read_parquet(path) if suffix == ".parquet" else pd.read_json(path, lines=True)
        assert str(read[column].dtype) == dtype  # the case tests the dtype it names
    cfg = make_cfg(*text_task(path))
    with pytest.raises(FinexpError) as err:
        train(cfg)
    assert_one_line(err, f"column {column!r} ({what}) is empty or NaN in 5 row(s), e.g. rows [3, 10, 20, 30, 41]")
    assert str(path) in str(err.value)
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_a_duplicated_column_name_in_a_csv_header_is_refused(make_cfg, tmp_path):
    path = tmp_path / "dup.csv"
    frame = sentiment_frame(40)
    frame.insert(2, "headline_copy", frame["headline"])
    frame.to_csv(path, index=False, header=["id", "headline", "headline", "sentiment"])
    cfg = make_cfg(*text_task(path))
    with pytest.raises(FinexpError) as err:
        train(cfg)
    assert_one_line(err, f"{path}: the header names column(s) more than once: 'headline' (2x); rename them")
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.max_length=100000", "data.max_length=100000 exceeds the 512 positions of model=tiny_bert"),
        ("+optimizer.lrr=1", "optimizer.lrr is not an argument of finexp.optim.adamw"),
    ],
)
def test_config_mistakes_fail_before_the_data_loads(make_cfg, shared, tmp_path, monkeypatch, override, message):
    def no_data(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the data was loaded before the config was checked")

    cfg = make_cfg(*text_task(shared.data), override)
    monkeypatch.setattr(build, "datamodule_from", no_data)
    with pytest.raises(FinexpError) as err:
        train(cfg)
    assert_one_line(err, message)
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("-" * 1000 + "Debt > 1", f"longer than {MAX_CONDITION_CHARS} characters"),
        ("not " * 1000 + "Debt > 1", f"longer than {MAX_CONDITION_CHARS} characters"),
        ("-" * 200 + "Debt > 1", f"nested more than {MAX_CONDITION_DEPTH} levels deep"),
        ("not " * 200 + "Debt > 1", f"nested more than {MAX_CONDITION_DEPTH} levels deep"),
    ],
    ids=["1000-minus", "1000-not", "200-minus", "200-not"],
)
def test_deeply_nested_rules_are_refused_without_a_recursion_error(condition, message):
    with pytest.raises(RuleError) as err:
        parse_condition(condition, "deep")
    assert_one_line(err, "rule 'deep': ", message)


# ----------------------------------------------------------------------------------------------------------------
# Command lines: exit status, one error line, no traceback. Each is a fresh interpreter (~10 s of imports), so the
# selected ones start together once the shared run exists and run while the in-process cases above do.
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Cli:
    process: subprocess.Popen
    where: dict[str, Path]

    def result(self) -> subprocess.CompletedProcess:
        stdout, stderr = self.process.communicate(timeout=600)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, stdout, stderr)


def start_cli(module: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _eval_tampered_config(shared: Shared, evil_last: Path, root: Path) -> Cli:
    ckpt = tampered_run(shared, root, with_payload(root, "builtins.open", "adapter"))
    out = root / "eval"
    process = start_cli("finexp.evaluate", f"ckpt_path={ckpt}", f"hydra.run.dir={out}", cwd=root)
    return Cli(process, {"ckpt": ckpt, "out": out, "pwned": root / "pwned"})


def _resume_evil_last_forcing_unsafe_loads(shared: Shared, evil_last: Path, root: Path) -> Cli:
    process = start_cli(
        "finexp.train",
        *FAST,
        *text_task(shared.data),
        "trainer.max_epochs=2",
        f"data.max_length={MAX_LENGTH}",
        f"ckpt_path={evil_last}",  # hydra.run.dir follows the checkpoint: the evil run's directory
        f"paths.cache_dir={root / 'cache'}",
        cwd=root,
        env={ENV_NO_WEIGHTS_ONLY: "1"},
    )
    return Cli(process, {"run": evil_last.parent.parent})


def _multirun_with_a_failing_job(shared: Shared, evil_last: Path, root: Path) -> Cli:
    sweep = root / "sweep"
    process = start_cli(
        "finexp.train",
        "-m",
        *FAST,
        "task=text_classification",
        f"data.path={shared.data}",
        "task.text_column=headline",
        "task.label_column=sentiment,no_such_column",  # job 1 fails on its data
        "data.max_rows=200",
        "trainer.max_epochs=1",
        f"data.max_length={MAX_LENGTH}",
        f"paths.cache_dir={root / 'cache'}",
        f"hydra.sweep.dir={sweep}",
        cwd=root,
    )
    return Cli(process, {"sweep": sweep})


CLI_CASES: dict[str, Callable[[Shared, Path, Path], Cli]] = {
    "test_finexp_eval_cli_refuses_a_tampered_config_with_exit_2_and_one_line": _eval_tampered_config,
    "test_resume_cli_refuses_a_malicious_last_ckpt_even_with_torch_force_no_weights_only": (
        _resume_evil_last_forcing_unsafe_loads
    ),
    "test_a_multirun_with_a_failed_job_exits_1_with_a_summary_line": _multirun_with_a_failing_job,
}


@pytest.fixture(scope="module", autouse=True)
def clis(request, tmp_path_factory) -> Iterator[dict[str, Cli]]:
    """The selected command-line cases, started in the background (nothing starts when none is selected)."""
    selected = {item.originalname for item in request.session.items if item.module is request.module}
    wanted = [name for name in CLI_CASES if name in selected]
    started: dict[str, Cli] = {}
    if wanted:
        shared, evil_last = request.getfixturevalue("shared"), request.getfixturevalue("evil_last")
        for name in wanted:
            started[name] = CLI_CASES[name](shared, evil_last, tmp_path_factory.mktemp("cli"))
    yield started
    for cli in started.values():
        if cli.process.poll() is None:
            cli.process.kill()
            cli.process.communicate()


def assert_cli_refused(result: subprocess.CompletedProcess, prog: str, rc: int, *parts: str) -> None:
    """Exit ``rc``, no traceback, exactly one ``<prog>: error:`` line on stderr, holding ``parts``."""
    assert result.returncode == rc, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for part in parts:
        assert part in errors[0], errors[0]


def test_finexp_eval_cli_refuses_a_tampered_config_with_exit_2_and_one_line(clis):
    cli = clis["test_finexp_eval_cli_refuses_a_tampered_config_with_exit_2_and_one_line"]
    config = cli.where["ckpt"].resolve().parent.parent / "config.yaml"
    assert_cli_refused(cli.result(), "finexp-eval", 2, f"{config}: adapter._target_='builtins.open' is refused")
    assert not cli.where["pwned"].exists() and not (cli.where["out"] / "metrics.json").exists()


def test_resume_cli_refuses_a_malicious_last_ckpt_even_with_torch_force_no_weights_only(clis, evil_last):
    cli = clis["test_resume_cli_refuses_a_malicious_last_ckpt_even_with_torch_force_no_weights_only"]
    message = f"{evil_last}: not a loadable finexp checkpoint (UnpicklingError"
    assert_cli_refused(cli.result(), "finexp-train", 2, message)
    run = cli.where["run"]
    assert not (run / "pwned").exists() and not (run / "metrics.json").exists()
    assert json.loads((run / "error.json").read_text())["status"] == "failed"


def test_a_multirun_with_a_failed_job_exits_1_with_a_summary_line(clis):
    cli = clis["test_a_multirun_with_a_failed_job_exits_1_with_a_summary_line"]
    result, sweep = cli.result(), cli.where["sweep"]
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    summary = [line for line in result.stdout.splitlines() if line.startswith("finexp multirun:")]
    assert summary == [
        f"finexp multirun: 1 completed, 0 skipped (done before), 1 failed (job(s) 1: see {sweep}/<job>/error.json)"
    ]
    assert json.loads((sweep / "multirun_summary.json").read_text())["failed"] == ["1"]
    assert (sweep / "0" / "metrics.json").is_file() and not (sweep / "1" / "metrics.json").exists()
    error = json.loads((sweep / "1" / "error.json").read_text())
    assert "no_such_column" in error["error"] and "\n" not in error["error"]
