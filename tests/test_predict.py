"""Inference layer and finexp-predict: same probabilities as finexp-eval, errors per row (never dropped), chunked
CSV/JSONL/Parquet in and out, ensembles = mean of members, attributions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import applicants_frame
from finexp import FinexpError
from finexp.evaluate import evaluate, load_run
from finexp.inference import Ensemble, InputSpec, Predictor, check_rows, load_predictor
from finexp.predict import ensemble_argv, predict
from serving_support import compose_in, train_table_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("predict")
    return [train_table_checkpoint(root / "run-a"), train_table_checkpoint(root / "run-b", seed=7, epochs=1)]


@pytest.fixture(scope="module")
def predictor(ckpts) -> Predictor:
    return Predictor.from_checkpoint(ckpts[0], device="cpu")


def new_rows(n: int = 12, seed: int = 3) -> pd.DataFrame:
    return applicants_frame(n, seed=seed)


def test_predictor_matches_finexp_eval(ckpts, predictor, tmp_path):
    cfg = compose_in(tmp_path / "eval", f"ckpt_path={ckpts[0]}", "analysis=none", config_name="eval", fast=False)
    cfg.trainer.accelerator, cfg.trainer.enable_progress_bar = "cpu", False
    evaluate(cfg)
    expected = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    rows = load_run(ckpts[0]).datamodule.splits.test  # the raw test rows, as a user's file would hold them
    probs, errors = predictor.probabilities(rows)
    assert errors == [None] * len(rows) == [None] * len(expected)
    np.testing.assert_allclose(probs, expected[["prob_no", "prob_yes"]].to_numpy(), atol=1e-5)
    assert [p.label for p in predictor.predict(rows)] == expected["predicted"].tolist()


def test_metadata_names_task_labels_inputs_and_hashes(predictor, ckpts):
    meta = predictor.metadata
    assert meta["labels"] == ["no", "yes"] and meta["positive_label"] == "yes"
    assert meta["input"]["columns"] == ["income", "debt", "arrears", "purpose"]  # customer_id excluded in training
    assert meta["input"]["kinds"] == {"income": "number", "debt": "number", "arrears": "text", "purpose": "text"}
    assert len(meta["config_sha256"]) == len(meta["checkpoint_sha256"]) == 64
    other = Predictor.from_checkpoint(ckpts[1], device="cpu").metadata
    assert other["config_sha256"] != meta["config_sha256"]  # seed and epochs differ


def test_invalid_rows_get_an_error_and_keep_their_place(predictor):
    rows = new_rows(6).to_dict("records")
    rows[1]["income"] = "lots"
    del rows[2]["debt"]
    rows[3] = dict.fromkeys(rows[3])  # every value missing
    rows[4] = "not a row"
    rows[5]["income"] = "130.5"  # a numeric string (JSON clients) is a number
    out = predictor.predict(rows)
    assert len(out) == 6
    assert out[0].error is None and out[0].label in ("no", "yes")
    assert sum(out[0].probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert out[1].error == "column 'income' expects a number, got 'lots'" and out[1].label is None
    assert out[2].error == "missing column(s): debt"
    assert out[3].error == "every input column is empty"
    assert "must be an object" in out[4].error
    assert out[5].error is None
    fixed = dict(rows[5], income=130.5)
    assert predictor.predict([fixed])[0].probabilities == pytest.approx(out[5].probabilities, abs=1e-6)


def test_missing_values_read_as_in_training(predictor):
    row = new_rows(1).to_dict("records")[0]
    assert predictor.texts([dict(row, income=None)])[0][0].startswith("income: unknown.")
    assert predictor.predict([dict(row, income=None)])[0].error is None


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("shares rally", None),
        (42, None),  # numbers read from a file are text, as in training
        ("   ", "column 'headline' is empty"),
        (None, "column 'headline' is empty"),
        (float("nan"), "column 'headline' is empty"),
        (["a"], "column 'headline' must be text, got list"),
    ],
)
def test_text_rows_are_checked(value, error):
    frame, errors = check_rows([{"headline": value, "other": 1}], InputSpec(text_column="headline"))
    assert errors == [error]
    assert list(frame.columns) == ["headline"]


def test_ensemble_is_the_mean_of_its_members(ckpts):
    members = [Predictor.from_checkpoint(c, device="cpu") for c in ckpts]
    ensemble = load_predictor(",".join(ckpts), device="cpu")
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 2
    rows = new_rows(20).to_dict("records")
    rows[4]["debt"] = "n/a"
    probs, errors = ensemble.probabilities(rows)
    each = [m.probabilities(rows)[0] for m in members]
    assert not np.allclose(each[0][~np.isnan(each[0])], each[1][~np.isnan(each[1])])  # really two models
    np.testing.assert_allclose(probs, (each[0] + each[1]) / 2, atol=1e-7)
    assert errors[4] == "column 'debt' expects a number, got 'n/a'" and np.isnan(probs[4]).all()
    assert [p.label for p in ensemble.predict(rows)][:3] == [["no", "yes"][int(r.argmax())] for r in probs[:3]]
    assert [m["checkpoint"] for m in ensemble.metadata["ensemble"]] == [str(Path(c).resolve()) for c in ckpts]


def test_ensemble_refuses_members_of_other_tasks(predictor):
    other = Predictor(predictor.model, predictor.tokenizer, ["yes", "no"], predictor.spec, predictor.serializer)
    with pytest.raises(FinexpError, match=r"labels \['yes', 'no'\] differ"):
        Ensemble([predictor, other])


def test_predictor_refuses_what_it_cannot_load(tmp_path):
    with pytest.raises(FinexpError, match="checkpoint not found"):
        Predictor.from_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(FinexpError, match="ckpt is empty"):
        load_predictor(" , ")


@pytest.mark.parametrize(("src", "dst"), [("csv", "parquet"), ("parquet", "jsonl"), ("jsonl", "csv")])
def test_finexp_predict_streams_files_in_chunks(ckpts, tmp_path, src, dst):
    frame = new_rows(23).astype({"income": object})
    frame.loc[5, "income"] = "lots"  # an invalid row in the middle of a chunk (the column turns to text)
    frame.loc[17, ["income", "debt", "arrears", "purpose"]] = None
    source = tmp_path / f"new.{src}"
    {
        "csv": frame.to_csv,
        "jsonl": lambda p, **k: frame.to_json(p, orient="records", lines=True),
        "parquet": lambda p, **k: frame.astype({"income": str}).to_parquet(p),
    }[src](source, index=False)
    cfg = compose_in(
        tmp_path / "run",
        f"ckpt={ckpts[0]}",
        f"input={source}",
        f"output={tmp_path}/out.{dst}",
        "chunk_rows=7",
        "progress=false",
        config_name="predict",
        fast=False,
    )
    summary = predict(cfg)
    out = {"csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True), "parquet": pd.read_parquet}[dst](
        tmp_path / f"out.{dst}"
    )
    assert len(out) == 23 and summary["rows"] == 23 and summary["errors"] == 2
    assert out["customer_id"].tolist() == frame["customer_id"].tolist()  # order and pass-through columns kept
    assert list(out.columns[-5:]) == ["predicted", "prob_no", "prob_yes", "flags", "errors"]
    assert out.loc[5, "errors"] == "column 'income' expects a number, got 'lots'"
    assert out.loc[17, "errors"] == "every input column is empty"
    assert out["errors"].isna().sum() == 21 and out["predicted"].isna().sum() == 2
    assert json.loads((tmp_path / "run" / "predict_summary.json").read_text())["metadata"]["task"]


def test_finexp_predict_attributions(ckpts, tmp_path):
    source = tmp_path / "new.csv"
    new_rows(2).to_csv(source, index=False)
    cfg = compose_in(
        tmp_path,
        f"ckpt={ckpts[0]}",
        f"input={source}",
        f"output={tmp_path}/out.csv",
        "attributions=3",
        "ig_steps=4",
        "progress=false",
        config_name="predict",
        fast=False,
    )
    predict(cfg)
    out = pd.read_csv(tmp_path / "out.csv")
    assert out["top_tokens"].str.count(r"\(").eq(3).all()  # "word (+0.123), ..." three of them
    assert set(out["top_columns"].str.extractall(r"(\w+) \(")[0]) <= {"income", "debt", "arrears", "purpose"}


def test_finexp_predict_refuses_bad_files(ckpts, tmp_path):
    cfg = compose_in(tmp_path, f"ckpt={ckpts[0]}", f"input={tmp_path}/x.xlsx", config_name="predict", fast=False)
    with pytest.raises(FinexpError, match=r"unknown input type '\.xlsx'"):
        predict(cfg)
    clash = tmp_path / "clash.csv"
    new_rows(3).assign(errors="x").to_csv(clash, index=False)
    cfg = compose_in(
        tmp_path,
        f"ckpt={ckpts[0]}",
        f"input={clash}",
        f"output={tmp_path}/o.csv",
        "progress=false",
        config_name="predict",
        fast=False,
    )
    with pytest.raises(FinexpError, match="'errors' would be overwritten"):
        predict(cfg)
    assert not (tmp_path / "o.csv").exists()  # nothing half-written


def test_ckpt_list_on_the_command_line():
    assert ensemble_argv(["x", "ckpt=a.ckpt,b/c.ckpt", "input=f.csv"]) == ["x", "ckpt=[a.ckpt,b/c.ckpt]", "input=f.csv"]
    assert ensemble_argv(["ckpt=[a,b]", "ckpt=a.ckpt"]) == ["ckpt=[a,b]", "ckpt=a.ckpt"]


def test_finexp_predict_cli_ensemble_with_rules(ckpts, tmp_path):
    source = tmp_path / "new.jsonl"
    new_rows(9).to_json(source, orient="records", lines=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "finexp.predict",
            f"ckpt={ckpts[0]},{ckpts[1]}",
            f"input={source}",
            f"output={tmp_path}/out.csv",
            "rules.rules=[{name: high_debt, when: 'debt > 100', decision: decline}]",
            "+rules.decisions.yes=decline",
            "+rules.decisions.no=approve",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = pd.read_csv(tmp_path / "out.csv")
    assert len(out) == 9 and "final decision" in result.stdout
    assert (out["rule"].notna() == (out["debt"] > 100)).all()
    assert (out.loc[out["debt"] > 100, "final_decision"] == "decline").all()
    summary = json.loads((tmp_path / "run" / "predict_summary.json").read_text())
    assert len(summary["metadata"]["ensemble"]) == 2
