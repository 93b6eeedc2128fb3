"""``finexp-predict``: batch prediction over a file with one checkpoint or an ensemble.

    finexp-predict ckpt=outputs/credit_scoring/runs/<date>/<time>/checkpoints/best.ckpt input=new.csv output=preds.csv
    finexp-predict ckpt=a.ckpt,b.ckpt,c.ckpt input=new.parquet output=preds.parquet      # mean of the probabilities
    finexp-predict ckpt=... input=new.jsonl output=decisions.jsonl rules=credit_policy attributions=5

The input (CSV, TSV, JSONL or Parquet) is read, scored and written ``chunk_rows`` rows at a time, so a file larger
than memory streams through. Every input row comes out, in order, with its columns, ``predicted``, ``prob_<class>``
per class, the business-rule columns when rules are configured, the top attribution tokens when asked, ``flags``
(where a scored row lies outside the training rows' input profile: ``out_of_range:Age; unseen_category:Job``; empty
inside it or when the run recorded no profile) and ``errors`` (empty for a scored row; the reason for a row that
could not be scored). A file that lacks a column the model reads is refused before any row is scored.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm.auto import tqdm

from finexp import FinexpError
from finexp.config import config_dir, validate_serving
from finexp.config.argv import ensemble_argv
from finexp.data.profile import require_columns
from finexp.data.sources import DataError
from finexp.records import write_json
from finexp.rules import RuleError, RuleSet

if TYPE_CHECKING:  # torch and the model stack load inside predict(): finexp-predict --help answers without them
    from finexp.inference import Ensemble, Predictor

log = logging.getLogger("finexp")

INPUT_FORMATS = (".csv", ".tsv", ".jsonl", ".parquet", ".pq")
OUTPUT_FORMATS = (".csv", ".jsonl", ".parquet", ".pq")


def ckpt_list(ckpt: Any) -> list[str]:
    """``ckpt`` as given on the command line or in a config: a path, ``a,b,c`` or a list."""
    if isinstance(ckpt, str):
        return [p.strip() for p in ckpt.split(",") if p.strip()]
    return [str(p) for p in ckpt]


def bind_rules(rules: RuleSet | None, model: Predictor | Ensemble, extra_columns: Sequence[str] = ()) -> None:
    """Check rules against a model before any row is scored: columns the rows will hold, labels the model has.

    Raises:
        RuleError: naming the rule and what is available.
    """
    if rules is None:
        return
    rules.check_columns([*model.spec.required, *extra_columns])
    rules.check_labels(model.labels)


def read_chunks(path: Path, chunk_rows: int) -> tuple[Iterator[pd.DataFrame], int | None]:
    """Chunks of a CSV/TSV/JSONL/Parquet file and its row count (None when counting would mean reading it twice).

    Raises:
        DataError: a missing file or an unknown format.
    """
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        handle = pq.ParquetFile(path)
        batches = handle.iter_batches(batch_size=chunk_rows)
        return (b.to_pandas() for b in batches), handle.metadata.num_rows
    if suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        return pd.read_csv(path, sep=sep, chunksize=chunk_rows), max(0, _count_lines(path) - 1)
    if suffix == ".jsonl":
        return pd.read_json(path, lines=True, chunksize=chunk_rows), _count_lines(path)
    raise DataError(f"{path}: unknown input type '{path.suffix}'; use one of {', '.join(INPUT_FORMATS)}")


def _count_lines(path: Path) -> int:
    """Lines of a text file (CSV rows with quoted line breaks make it an estimate: it only sizes the progress bar)."""
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


class ChunkWriter:
    """Append chunks to a CSV, JSONL or Parquet file (chosen by extension), written to a temporary file first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.format = path.suffix.lower()
        if self.format not in OUTPUT_FORMATS:
            raise FinexpError(
                f"output={path}: unknown output type '{path.suffix}'; use one of {', '.join(OUTPUT_FORMATS)}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.partial")
        self.rows = 0
        self._parquet = None
        self._schema = None

    def write(self, frame: pd.DataFrame) -> None:
        if self.format == ".csv":
            frame.to_csv(self.tmp, mode="a" if self.rows else "w", header=not self.rows, index=False)
        elif self.format == ".jsonl":
            with open(self.tmp, "a" if self.rows else "w") as handle:
                if len(frame):
                    handle.write(frame.to_json(orient="records", lines=True, force_ascii=False).rstrip("\n") + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                self._schema = table.schema
                self._parquet = pq.ParquetWriter(self.tmp, self._schema)
            elif table.schema != self._schema:
                try:
                    table = table.cast(self._schema)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
                    raise FinexpError(
                        f"{self.path}: rows {self.rows}-{self.rows + len(frame)} have other column types than the "
                        f"first chunk ({err}); raise chunk_rows or write CSV/JSONL"
                    ) from err
            self._parquet.write_table(table)
        self.rows += len(frame)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if not self.tmp.exists():  # an input without rows still gets an output file
            self.tmp.write_text("")
        self.tmp.replace(self.path)

    def abort(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        self.tmp.unlink(missing_ok=True)


def _format_attributions(pairs: Sequence[tuple[str, float]]) -> str:
    return ", ".join(f"{name} ({value:+.3f})" for name, value in pairs)


def prediction_frame(
    rows: pd.DataFrame,
    model: Predictor | Ensemble,
    rules: RuleSet | None = None,
    attributions: int = 0,
    ig_steps: int = 32,
) -> pd.DataFrame:
    """``rows`` with the prediction columns appended (see the module docstring for their names).

    Raises:
        FinexpError: an input column would be overwritten by a prediction column.
    """
    records = rows.to_dict("records")
    probs, errors, flags = model.probabilities_and_flags(records)
    added: dict[str, Any] = {}
    predicted = [None if e is not None else model.labels[int(p.argmax())] for p, e in zip(probs, errors, strict=True)]
    added["predicted"] = pd.array(predicted, dtype="string")
    for i, name in enumerate(model.labels):
        added[f"prob_{name}"] = probs[:, i].astype(np.float64)
    if rules is not None:
        decisions = rules.decide(records, predicted)
        for key in ("model_decision", "rule", "final_decision"):
            added[key] = pd.array([getattr(d, key) for d in decisions], dtype="string")
        errors = [e or d.error for e, d in zip(errors, decisions, strict=True)]  # a rule that failed on the row
    if attributions > 0:
        explained = model.explain(records, top_k=attributions, n_steps=ig_steps)
        added["top_tokens"] = pd.array([_format_attributions(e["words"]) if e else None for e in explained], "string")
        if model.spec.text_column is None:
            tops = [_format_attributions(e["columns"]) if e else None for e in explained]
            added["top_columns"] = pd.array(tops, dtype="string")
    added["flags"] = pd.array(["; ".join(f) or None for f in flags], dtype="string")
    added["errors"] = pd.array(errors, dtype="string")
    clash = [c for c in added if c in rows.columns]
    if clash:
        raise FinexpError(
            f"input column(s) {', '.join(map(repr, clash))} would be overwritten by prediction columns; rename them"
        )
    return pd.concat([rows.reset_index(drop=True), pd.DataFrame(added)], axis=1)


def predict_file(
    model: Predictor | Ensemble,
    input_path: str | Path,
    output_path: str | Path,
    rules: RuleSet | None = None,
    chunk_rows: int = 10000,
    attributions: int = 0,
    ig_steps: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every row of ``input_path`` into ``output_path``, chunk by chunk. Returns a summary (counts)."""
    input_path, output_path = Path(input_path).expanduser(), Path(output_path).expanduser()
    if input_path.resolve() == output_path.resolve():
        raise FinexpError(f"output={output_path} is the input file; write somewhere else")
    chunks, total = read_chunks(input_path, chunk_rows)
    writer = ChunkWriter(output_path)
    labels, decisions, fired, flagged = Counter(), Counter(), Counter(), Counter()
    errors, flagged_rows, started = 0, 0, time.perf_counter()
    bar = tqdm(total=total, unit="rows", desc="finexp-predict", disable=not progress, file=sys.stderr)
    try:
        for number, chunk in enumerate(chunks):
            if number == 0:  # a CSV/Parquet header (a JSONL file's first rows) without a column the model reads
                require_columns(chunk, model.input_profile or model.spec.required, str(input_path))
            frame = prediction_frame(chunk, model, rules, attributions, ig_steps)
            writer.write(frame)
            errors += int(frame["errors"].notna().sum())
            flagged_rows += int(frame["flags"].notna().sum())
            flagged.update(f for row in frame["flags"].dropna() for f in row.split("; "))
            labels.update(frame["predicted"].dropna())
            if rules is not None:
                decisions.update(frame["final_decision"].dropna())
                fired.update(frame["rule"].dropna())
            bar.update(len(frame))
    except Exception as err:
        writer.abort()
        if isinstance(err, (ValueError, UnicodeDecodeError)) and not isinstance(err, FinexpError):
            raise DataError(f"{input_path}: could not be read ({type(err).__name__}: {err})") from err
        raise
    finally:
        bar.close()
    writer.close()
    seconds = time.perf_counter() - started
    return {
        "input": str(input_path),
        "output": str(output_path),
        "rows": writer.rows,
        "errors": errors,
        "flagged_rows": flagged_rows,  # scored rows outside the training rows' input profile
        "flags": dict(flagged),
        "predicted": dict(labels),
        **({"final_decision": dict(decisions), "rules_fired": dict(fired)} if rules is not None else {}),
        "seconds": seconds,
        "rows_per_s": writer.rows / seconds if seconds > 0 else None,
    }


def predict(cfg: DictConfig) -> dict[str, Any]:
    """The ``finexp-predict`` run: load the checkpoint(s) and the rules, score the file. Returns the summary."""
    validate_serving(cfg)
    import torch

    from finexp import build
    from finexp.inference import load_predictor, trust_lines

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rules = build.rules_from(cfg)
    input_path = Path(cfg.input).expanduser()
    suffix = input_path.suffix.lower()
    if suffix not in INPUT_FORMATS:  # before the model loads
        raise DataError(f"input={cfg.input}: unknown input type '{input_path.suffix}'; use {', '.join(INPUT_FORMATS)}")
    output = cfg.output or str(Path(cfg.paths.output_dir) / f"predictions{'.csv' if suffix == '.tsv' else suffix}")
    model = load_predictor(ckpt_list(cfg.ckpt), batch_size=cfg.batch_size, device=cfg.device)
    bind_rules(rules, model, list(cfg.rules.extra_columns))
    summary = predict_file(
        model, input_path, output, rules, cfg.chunk_rows, cfg.attributions, cfg.ig_steps, cfg.progress
    )
    summary["metadata"] = model.metadata
    summary["trusted"] = [  # the checkpoint(s) and config(s) this run rebuilt its model from
        {k: m.metadata.get(k) for k in ("checkpoint", "checkpoint_sha256", "config_file_sha256")}
        for m in getattr(model, "members", [model])
    ]
    summary["rules"] = rules.describe() if rules is not None else None
    write_json(Path(cfg.paths.output_dir) / "predict_summary.json", summary)
    lines = [
        "",
        "finexp predictions",
        *(f"  {line}" for line in trust_lines(model, "finexp-predict")),
        f"  rows           {summary['rows']} ({summary['errors']} with errors)",
        "  predicted      " + ", ".join(f"{k}: {v}" for k, v in sorted(summary["predicted"].items())),
    ]
    if model.input_profile is None:
        lines.append("  flagged        (the run recorded no input profile: no drift flags)")
    else:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary["flags"].items()))
        detail = f" ({counts})" if counts else ""
        lines.append(f"  flagged        {summary['flagged_rows']} row(s) outside the training profile{detail}")
    if rules is not None:
        lines.append("  final decision " + ", ".join(f"{k}: {v}" for k, v in sorted(summary["final_decision"].items())))
    lines.append(f"  written to: {summary['output']}")
    print("\n".join(lines), flush=True)
    return summary


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        predict(cfg)
    except (FinexpError, RuleError) as err:
        log.error("%s", err)
        print(f"finexp-predict: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def main() -> None:
    """Console-script entry point (``finexp-predict``)."""
    sys.argv = ensemble_argv(sys.argv)
    _hydra_main()


if __name__ == "__main__":
    main()
