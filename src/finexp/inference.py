"""Predict with trained finexp checkpoints: rows in, a label and a probability per class out.

    predictor = Predictor.from_checkpoint("outputs/credit_scoring/runs/<date>/<time>/checkpoints/best.ckpt")
    predictor.predict([{"Income": 129, "Debt": 0, "Records": "no", ...}])   # -> [Prediction(label="good", ...)]

A predictor rebuilds the run's model, tokenizer and row serializer from the ``config.yaml`` and ``run_info.json`` beside
the checkpoint (weights read with ``torch.load(weights_only=True)``, like ``finexp-eval``), so new rows become text
exactly as the training rows did: the raw table columns of a table task, or the text column of a text task. A row that
cannot be scored (a missing column, empty text, a word where a number belongs) gets a :class:`Prediction` with an
``error`` and no label; rows are never dropped, so outputs line up with inputs.

:class:`Ensemble` averages the probabilities of several predictors (one per seed or per fold). Both classes expose the
same small surface (``labels``, ``metadata``, ``probabilities``, ``predict``), and :class:`Predictor` takes any callable
``(input_ids, attention_mask) -> logits`` as its model, so a quantized or exported model plugs in unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Number
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

import finexp
from finexp import FinexpError, build
from finexp.data.profile import check_rows as profile_flags
from finexp.data.profile import validate_input_profile
from finexp.data.serialize import RowSerializer
from finexp.runs import TrainedRun

Rows = pd.DataFrame | Sequence[Mapping[str, Any]]
LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one row; ``error`` set (and ``label`` None) when the row could not be scored;
    ``flags`` name where a scored row lies outside the training rows' input profile (``out_of_range:Age``)."""

    label: str | None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    flags: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probabilities": self.probabilities,
            "error": self.error,
            "flags": list(self.flags),
        }


@dataclass(frozen=True)
class InputSpec:
    """What a model reads from a row: one text column, or table columns serialized to text.

    Attributes:
        text_column: the text column of a text task (None for a table task).
        columns: a table task's columns, in serialization order.
        kinds: a table task's column kinds seen in training (``number``, ``boolean`` or ``text``); a column without
            one (runs saved before kinds were recorded) accepts any scalar.
    """

    text_column: str | None = None
    columns: tuple[str, ...] = ()
    kinds: Mapping[str, str] = field(default_factory=dict)

    @property
    def required(self) -> list[str]:
        return [self.text_column] if self.text_column is not None else list(self.columns)


def _is_missing(value: object) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _check_value(column: str, kind: str | None, value: object) -> tuple[object, str | None]:
    """A table cell as the serializer should see it, or an error. Missing values are allowed (they read as the
    serializer's ``missing`` word, as in training); numeric strings in a number column become numbers."""
    if _is_missing(value):
        return None, None
    if isinstance(value, (list, tuple, dict, set)):
        return None, f"column {column!r} must be a single value, got {type(value).__name__}"
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (Number, str, np.generic)):
            return None, f"column {column!r} expects a number, got {value!r}"
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                return None, f"column {column!r} expects a number, got {value!r}"
            return (int(number) if number.is_integer() else number), None
        if isinstance(value, float) and math.isinf(value):
            return None, f"column {column!r} expects a finite number, got {value!r}"
        return value, None
    if kind == "boolean" and not isinstance(value, (bool, np.bool_)):
        return None, f"column {column!r} expects true or false, got {value!r}"
    return value, None


def check_rows(rows: Rows, spec: InputSpec) -> tuple[pd.DataFrame, list[str | None]]:
    """Validate rows against what the model reads.

    Returns:
        A frame of the model's columns for every row (invalid rows hold missing values) and one error per row (None
        for a valid row).
    """
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    clean: list[dict[str, object]] = []
    errors: list[str | None] = []
    required = spec.required
    for record in records:
        if not isinstance(record, Mapping):
            clean.append({})
            errors.append(f"a row must be an object of column values, got {type(record).__name__}")
            continue
        missing = [c for c in required if c not in record]
        if missing:
            clean.append({})
            errors.append(f"missing column(s): {', '.join(missing)}")
            continue
        if spec.text_column is not None:
            value, problem = _check_text(spec.text_column, record[spec.text_column])
            clean.append(value)
            errors.append(problem)
            continue
        values, problems = {}, []
        for column in spec.columns:
            values[column], problem = _check_value(column, spec.kinds.get(column), record[column])
            if problem:
                problems.append(problem)
        if not problems and all(v is None for v in values.values()):
            problems.append("every input column is empty")
        clean.append({} if problems else values)
        errors.append("; ".join(problems) or None)
    frame = pd.DataFrame.from_records(clean, columns=required) if clean else pd.DataFrame(columns=required)
    return frame, errors


def _check_text(column: str, value: object) -> tuple[dict[str, object], str | None]:
    if _is_missing(value):
        return {}, f"column {column!r} is empty"
    if isinstance(value, (list, tuple, dict, set, bytes)):
        return {}, f"column {column!r} must be text, got {type(value).__name__}"
    text = str(value)  # numbers read from a file are text too, as in training
    if not text.strip():
        return {}, f"column {column!r} is empty"
    return {column: text}, None


def config_hash(cfg: DictConfig | Mapping[str, Any]) -> str:
    """SHA-256 of a run's resolved config, without ``paths`` (where a run wrote, not what it did)."""
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    plain.pop("paths", None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


def predictions_from(
    probs: np.ndarray,
    errors: Sequence[str | None],
    labels: Sequence[str],
    flags: Sequence[Sequence[str]] | None = None,
) -> list[Prediction]:
    """Rows of class probabilities (NaN rows for errors) and drift flags -> predictions."""
    out = []
    flags = flags if flags is not None else [()] * len(errors)
    for row, error, row_flags in zip(probs, errors, flags, strict=True):
        if error is not None:
            out.append(Prediction(None, {}, error))
        else:
            scores = {k: float(p) for k, p in zip(labels, row, strict=True)}
            out.append(Prediction(labels[int(row.argmax())], scores, None, tuple(row_flags)))
    return out


class Predictor:
    """A trained classifier with what it needs to read raw rows.

    Args:
        model: ``(input_ids, attention_mask) -> logits``; an ``nn.Module`` is put in eval mode.
        tokenizer: the run's tokenizer.
        labels: class names by output index.
        spec: what the model reads from a row.
        serializer: a table task's row serializer (None for a text task).
        max_length: truncation length in tokens (the run's ``data.max_length``).
        metadata: what ``/metadata`` and output files report (task, labels, config hash, ...).
        batch_size: rows per forward pass.
        preprocess: applied to the frame of valid rows before serialization (the run's PII masking).
        device: where the model runs.
        input_profile: the training rows' input profile (``input_profile.json``, see
            :mod:`finexp.data.profile`); scored rows outside it get drift ``flags``. None: no flags.
    """

    def __init__(
        self,
        model: LogitsFn,
        tokenizer: Any,
        labels: Sequence[str],
        spec: InputSpec,
        serializer: RowSerializer | None = None,
        max_length: int = 128,
        metadata: Mapping[str, Any] | None = None,
        batch_size: int = 64,
        preprocess: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
        device: str | torch.device = "cpu",
        input_profile: Mapping[str, Any] | None = None,
    ) -> None:
        if spec.text_column is None and serializer is None:
            raise ValueError("a table task needs a row serializer")
        # checked here too: a profile is read from a run directory, which is data from elsewhere
        self.input_profile = None if input_profile is None else validate_input_profile(input_profile, "input_profile")
        self.model = model
        if isinstance(model, torch.nn.Module):
            model.eval()
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.spec = spec
        self.serializer = serializer
        self.max_length = max_length
        self.metadata = dict(metadata or {})
        self.batch_size = batch_size
        self.preprocess = preprocess
        self.device = torch.device(device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # Fast tokenizers refuse concurrent use ("Already borrowed"), and two forward passes at once only fight over
        # the same cores: a server's threads take turns.
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, ckpt_path: str | Path, batch_size: int = 64, device: str = "auto") -> Predictor:
        """Rebuild a finexp-train run's classifier from its checkpoint and the records beside it.

        Raises:
            FinexpError: the checkpoint is missing or unsafe, the run is not a transformer classifier, or its
                records are incomplete.
        """
        run = TrainedRun.open(ckpt_path)  # weights_only, config checked and read onto the schema
        run.require("predict")
        cfg, info, labels, info_path = run.config, run.info, run.labels, run.run_dir / "run_info.json"
        if not labels:
            raise FinexpError(f"{run.ckpt}: holds no label names and {info_path} is missing")

        task = cfg.task
        if task.text_column is not None:
            spec, serializer = InputSpec(text_column=task.text_column), None
        else:
            columns = info.get("serialized_columns")
            if not columns:
                raise FinexpError(f"{info_path}: no serialized_columns; cannot tell which columns the model reads")
            options = OmegaConf.to_container(task.serialization, resolve=True)
            phrases = options.pop("columns")
            serializer = RowSerializer(columns, phrases, **options)
            spec = InputSpec(columns=tuple(columns), kinds=info.get("serialized_column_kinds") or {})
        preprocess = build.privacy_from(cfg).mask if cfg.privacy.mask_pii else None
        model, tokenizer = run.classifier()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        metadata = {
            "task": task.name,
            "problem": run.problem,
            "labels": list(labels),
            "positive_label": task.positive_label,
            "input": {"text_column": task.text_column}
            if spec.text_column
            else {"columns": list(spec.columns), "kinds": dict(spec.kinds)},
            "model": cfg.model.name,
            "adapter": run.adapter,
            "max_length": int(cfg.data.max_length),
            "checkpoint": str(run.ckpt),
            "checkpoint_sha256": run.checkpoint_sha256,
            "config_sha256": config_hash(cfg),  # of the resolved config without paths: same experiment, same hash
            "config_file_sha256": run.config_sha256,  # of the config.yaml trusted
            "data_fingerprint": info.get("data_fingerprint"),
            "finexp_version": finexp.__version__,
        }
        return cls(
            model,
            tokenizer,
            labels,
            spec,
            serializer,
            int(cfg.data.max_length),
            metadata,
            batch_size,
            preprocess,
            device,
            input_profile=run.input_profile,
        )

    # ----------------------------------------------------------------------------------------------------------
    def texts(self, rows: Rows) -> tuple[list[str | None], list[str | None]]:
        """The text the model reads for each row (None for an invalid row) and each row's error."""
        texts, errors, _ = self._read_rows(rows, with_flags=False)
        return texts, errors

    def _read_rows(self, rows: Rows, with_flags: bool) -> tuple[list[str | None], list[str | None], list[list[str]]]:
        """Texts, errors and (``with_flags`` and a profile) drift flags of each row; invalid rows get no flags."""
        frame, errors = check_rows(rows, self.spec)
        valid = [i for i, e in enumerate(errors) if e is None]
        texts: list[str | None] = [None] * len(errors)
        flags: list[list[str]] = [[] for _ in errors]
        if valid:
            good = frame.iloc[valid].reset_index(drop=True)
            if self.preprocess is not None:
                good = self.preprocess(good)
            if with_flags and self.input_profile is not None:
                # the validated, preprocessed values: what the profile of the (masked) training rows describes
                for i, row_flags in zip(valid, profile_flags(good, self.input_profile), strict=True):
                    flags[i] = row_flags
            if self.serializer is not None:
                made = self.serializer(good)
            else:
                made = good[self.spec.text_column].astype(str).tolist()
            for i, text in zip(valid, made, strict=True):
                texts[i] = text
        return texts, errors, flags

    def probabilities_of_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities ``(len(texts), num_labels)`` of already serialized texts."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        with self._lock:
            ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: little padding
            probs = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start : start + self.batch_size]
                    longest = max(len(ids[i]) for i in chunk)
                    input_ids = torch.full((len(chunk), longest), self.pad_id, dtype=torch.long)
                    mask = torch.zeros((len(chunk), longest), dtype=torch.long)
                    for row, i in enumerate(chunk):  # right padding, as in training
                        input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                        mask[row, : len(ids[i])] = 1
                    logits = self.model(input_ids.to(self.device), mask.to(self.device))
                    probs[chunk] = logits.float().softmax(-1).cpu().numpy()
        return probs

    def probabilities(self, rows: Rows) -> tuple[np.ndarray, list[str | None]]:
        """Class probabilities per row (a row of NaN for an invalid row) and each row's error."""
        probs, errors, _ = self._score(rows, with_flags=False)
        return probs, errors

    def probabilities_and_flags(self, rows: Rows) -> tuple[np.ndarray, list[str | None], list[list[str]]]:
        """:meth:`probabilities` and each row's drift flags (``out_of_range:Age``, ...; empty without a profile)."""
        return self._score(rows, with_flags=True)

    def _score(self, rows: Rows, with_flags: bool) -> tuple[np.ndarray, list[str | None], list[list[str]]]:
        texts, errors, flags = self._read_rows(rows, with_flags)
        probs = np.full((len(texts), len(self.labels)), np.nan, dtype=np.float32)
        valid = [i for i, t in enumerate(texts) if t is not None]
        if valid:
            probs[valid] = self.probabilities_of_texts([texts[i] for i in valid])
        return probs, errors, flags

    def predict(self, rows: Rows) -> list[Prediction]:
        """One :class:`Prediction` per row, in order, with its drift flags."""
        probs, errors, flags = self.probabilities_and_flags(rows)
        return predictions_from(probs, errors, self.labels, flags)

    def explain(self, rows: Rows, top_k: int = 5, n_steps: int = 32) -> list[dict[str, Any] | None]:
        """Integrated-gradients attributions (finexp.analysis.attributions) of each valid row: its ``top_k`` words
        by absolute attribution and, for table tasks, its ``top_k`` columns. None for an invalid row.

        Attributions explain the positive class of a binary task (positive values push towards it) and the
        predicted class otherwise.
        """
        from finexp.analysis import attributions as attr

        if not isinstance(self.model, torch.nn.Module):
            raise FinexpError("attributions need the PyTorch model (its embedding layer); this predictor has none")
        texts, _ = self.texts(rows)
        valid = [i for i, t in enumerate(texts) if t is not None]
        separator = self.serializer.separator if self.serializer is not None else ". "
        with self._lock:
            try:
                explanations = attr.integrated_gradients(
                    self.model,
                    self.tokenizer,
                    [texts[i] for i in valid],
                    self.labels,
                    None,
                    self.max_length,
                    n_steps,
                    list(self.spec.columns),
                    separator,
                )
            except ValueError as err:  # a tokenizer without offsets, a model without an embedding layer
                raise FinexpError(f"cannot compute attributions: {err}") from err
        out: list[dict[str, Any] | None] = [None] * len(texts)
        for i, e in zip(valid, explanations, strict=True):
            words = [(e.text[s:t], v) for s, t, v in e.words if any(ch.isalnum() for ch in e.text[s:t])]
            out[i] = {
                "target": e.target,
                "words": sorted(words, key=lambda w: -abs(w[1]))[:top_k],
                "columns": sorted(e.features.items(), key=lambda c: -abs(c[1]))[:top_k],
            }
        return out


class Ensemble:
    """Averages the class probabilities of several predictors of the same task (one per seed or fold).

    Args:
        members: predictors with the same labels in the same order and the same input columns.

    Raises:
        FinexpError: the members disagree on labels or inputs.
    """

    def __init__(self, members: Sequence[Predictor]) -> None:
        if not members:
            raise FinexpError("an ensemble needs at least one checkpoint")
        first = members[0]
        for other in members[1:]:
            where = other.metadata.get("checkpoint", "a member")
            if other.labels != first.labels:
                raise FinexpError(f"{where}: labels {other.labels} differ from the first member's {first.labels}")
            if other.spec.required != first.spec.required:
                raise FinexpError(
                    f"{where}: reads columns {other.spec.required}, the first member {first.spec.required}"
                )
        self.members = list(members)
        self.labels = first.labels
        self.spec = first.spec
        self.input_profile = first.input_profile
        self.metadata = {
            **{k: v for k, v in first.metadata.items() if k not in ("checkpoint", "checkpoint_sha256")},
            "ensemble": [
                {k: m.metadata.get(k) for k in ("checkpoint", "checkpoint_sha256", "config_sha256")} for m in members
            ],
        }

    def probabilities(self, rows: Rows) -> tuple[np.ndarray, list[str | None]]:
        """The members' mean class probabilities per row, and each row's error (the first member's reason)."""
        probs, errors, _ = self._score(rows, with_flags=False)
        return probs, errors

    def probabilities_and_flags(self, rows: Rows) -> tuple[np.ndarray, list[str | None], list[list[str]]]:
        """:meth:`probabilities` and each row's drift flags: those of any member (in the members' order)."""
        return self._score(rows, with_flags=True)

    def _score(self, rows: Rows, with_flags: bool) -> tuple[np.ndarray, list[str | None], list[list[str]]]:
        records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
        outputs = [m._score(records, with_flags) for m in self.members]
        probs = np.mean([p for p, _, _ in outputs], axis=0)
        errors = [next((e[i] for _, e, _ in outputs if e[i] is not None), None) for i in range(len(records))]
        probs[[i for i, e in enumerate(errors) if e is not None]] = np.nan
        flags = [
            [] if errors[i] is not None else list(dict.fromkeys(f for _, _, fl in outputs for f in fl[i]))
            for i in range(len(records))
        ]
        return probs, errors, flags

    def predict(self, rows: Rows) -> list[Prediction]:
        probs, errors, flags = self.probabilities_and_flags(rows)
        return predictions_from(probs, errors, self.labels, flags)

    def explain(self, rows: Rows, top_k: int = 5, n_steps: int = 32) -> list[dict[str, Any] | None]:
        """The members' attributions averaged per word and per column (a word absent from a member counts 0)."""
        records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
        per_member = [m.explain(records, top_k=10**6, n_steps=n_steps) for m in self.members]
        out: list[dict[str, Any] | None] = []
        for row in zip(*per_member, strict=True):
            if row[0] is None:
                out.append(None)
                continue
            merged = {}
            for part in ("words", "columns"):
                total: dict[str, float] = {}
                for member in row:
                    for key, value in member[part]:
                        total[key] = total.get(key, 0.0) + value / len(row)
                merged[part] = sorted(total.items(), key=lambda kv: -abs(kv[1]))[:top_k]
            out.append({"target": row[0]["target"], **merged})
        return out


def load_predictor(ckpt_paths: str | Iterable[str], batch_size: int = 64, device: str = "auto") -> Predictor | Ensemble:
    """One checkpoint -> a :class:`Predictor`; several (a list, or ``"a.ckpt,b.ckpt"``) -> an :class:`Ensemble`."""
    paths = [p.strip() for p in ckpt_paths.split(",")] if isinstance(ckpt_paths, str) else [str(p) for p in ckpt_paths]
    paths = [p for p in paths if p]
    if not paths:
        raise FinexpError("ckpt is empty: give a checkpoint path (or several, comma-separated, for an ensemble)")
    members = [Predictor.from_checkpoint(p, batch_size=batch_size, device=device) for p in paths]
    return members[0] if len(members) == 1 else Ensemble(members)


def trust_lines(model: Predictor | Ensemble, command: str) -> list[str]:
    """One line per checkpoint a command trusts: the checkpoint and the config.yaml it was rebuilt from, with their
    SHA-256 (the full hashes are in the command's records: ``metadata`` of predict_summary.json, GET /metadata)."""
    members = getattr(model, "members", [model])
    return [
        f"{command}: trusting {m.metadata.get('checkpoint')} sha256={str(m.metadata.get('checkpoint_sha256'))[:16]}… "
        f"(config.yaml sha256={str(m.metadata.get('config_file_sha256'))[:16]}…)"
        for m in members
    ]
