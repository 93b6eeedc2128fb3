"""Input profiles and drift flags: what the training rows looked like per column, flags on new rows outside it
(never refused), a file missing a column the model reads is one clear error, and finexp-predict / the Predictor
carry the flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import applicants_frame
from finexp.data.profile import (
    MAX_CATEGORIES,
    build_input_profile,
    check_rows,
    load_input_profile,
    require_columns,
    validate_input_profile,
)
from finexp.data.serialize import column_kinds
from finexp.data.sources import DataError
from finexp.inference import Ensemble, Predictor
from finexp.predict import predict_file
from serving_support import train_table_checkpoint

COLUMNS = ["income", "debt", "arrears", "purpose"]


def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Age": [25, 40, 61, 33, None],
            "Job": ["fixed", "freelance", "fixed", "partime", "fixed"],
            "Owner": [True, False, True, True, False],
            "Note": ["short", "a longer note", "mid note", "x" * 40, "note"],
        }
    )


def test_profile_records_type_range_categories_and_lengths():
    profile = build_input_profile(table(), ["Age", "Job", "Owner", "Note"], {"Note": "free_text"})
    assert profile == {
        "version": 1,
        "rows": 5,
        "columns": {
            "Age": {"kind": "numeric", "missing": 1, "min": 25, "max": 61},
            "Job": {"kind": "categorical", "missing": 0, "categories": ["fixed", "freelance", "partime"]},
            "Owner": {"kind": "categorical", "missing": 0, "categories": ["no", "yes"]},
            "Note": {"kind": "text", "missing": 0, "length": {"p50": 8, "p95": 40, "p99": 40, "max": 40}},
        },
    }
    assert json.loads(json.dumps(profile)) == profile  # plain JSON values only


def test_serialized_column_kinds_are_accepted_and_cardinality_decides_text():
    frame = pd.DataFrame(
        {
            "amount": [1.5, 2.25, 3.0] * 20,
            "purpose": ["car", "home", "car"] * 20,
            "employer": [f"company number {i}" for i in range(60)],  # one value per row: free text
        }
    )
    kinds = column_kinds(frame, list(frame.columns))
    assert kinds == {"amount": "number", "purpose": "text", "employer": "text"}
    columns = build_input_profile(frame, list(frame.columns), kinds)["columns"]
    assert columns["amount"] == {"kind": "numeric", "missing": 0, "min": 1.5, "max": 3}
    assert columns["purpose"]["kind"] == "categorical" and columns["purpose"]["categories"] == ["car", "home"]
    assert columns["employer"]["kind"] == "text" and columns["employer"]["length"]["max"] == 17


def test_more_categories_than_the_cap_are_text():
    at_cap = pd.DataFrame({"code": [f"c{i}" for i in range(MAX_CATEGORIES)] * 2})  # 2 rows per value
    over = pd.DataFrame({"code": [f"c{i}" for i in range(MAX_CATEGORIES + 1)] * 2})
    assert build_input_profile(at_cap, ["code"])["columns"]["code"]["kind"] == "categorical"
    assert len(build_input_profile(at_cap, ["code"])["columns"]["code"]["categories"]) == MAX_CATEGORIES
    assert build_input_profile(over, ["code"], {"code": "categorical"})["columns"]["code"]["kind"] == "text"
    assert build_input_profile(over, ["code"])["columns"]["code"]["kind"] == "text"


def test_profile_refuses_unknown_columns_and_kinds():
    with pytest.raises(DataError, match=r"column\(s\) 'Salary' are not in the training rows"):
        build_input_profile(table(), ["Age", "Salary"])
    with pytest.raises(DataError, match="unknown kind"):
        build_input_profile(table(), ["Age"], {"Age": "integer"})


def test_check_rows_flags_without_refusing():
    profile = build_input_profile(table(), ["Age", "Job", "Owner", "Note"], {"Note": "free_text"})
    new = pd.DataFrame(
        {
            "Age": [30, -5, 200, None, "41"],
            "Job": ["fixed", "astronaut", " fixed ", None, "freelance"],
            "Owner": [True, False, None, True, "yes"],
            "Note": ["ok", "y" * 41, "", "fine", "x" * 40],
        }
    )
    assert check_rows(new, profile) == [
        [],
        ["out_of_range:Age", "unseen_category:Job", "long_text:Note"],
        ["out_of_range:Age", "missing:Owner", "missing:Note"],  # Age was missing in training: not flagged
        ["missing:Job"],
        [],  # "41" reads as a number, "yes" as the category True became
    ]
    assert check_rows(new.drop(columns=["Job"]).head(2), profile) == [
        ["missing:Job"],
        ["out_of_range:Age", "missing:Job", "long_text:Note"],
    ]


def test_require_columns_names_the_file_and_every_missing_column():
    profile = build_input_profile(table(), ["Age", "Job", "Owner"])
    require_columns(table(), profile, "new.csv")  # all there: no error
    with pytest.raises(DataError) as err:
        require_columns(table().drop(columns=["Age", "Owner"]), profile, "data/new.csv")
    assert str(err.value) == "data/new.csv: missing column(s) the model reads: 'Age', 'Owner'; the file has: Job, Note"
    with pytest.raises(DataError, match=r"x\.jsonl: missing column\(s\) the model reads: 'text'"):
        require_columns(pd.DataFrame({"body": ["a"]}), ["text"], "x.jsonl")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "the profile must be a JSON object"),
        ('{"version": 9, "columns": {}}', "version is 9"),
        ('{"version": 1, "columns": {"Age": {"kind": "code", "missing": 0}}}', "columns.Age.kind is 'code'"),
        ('{"version": 1, "columns": {"Age": {"kind": "numeric", "missing": 0, "min": "0"}}}', "columns.Age.min"),
        ('{"version": 1, "columns": {"J": {"kind": "categorical", "missing": 0, "categories": [1]}}}', "categories"),
        ('{"version": 1, "columns": {"T": {"kind": "text", "missing": 0, "length": {"max": 3}}}}', "columns.T.length"),
        ("[" * 100_000, "not a JSON input profile (RecursionError"),
        ("{nope", "not a JSON input profile (JSONDecodeError"),
    ],
)
def test_a_profile_from_disk_is_checked(tmp_path, content, message):
    path = tmp_path / "input_profile.json"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_input_profile(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_load_input_profile_round_trips_and_tolerates_old_runs(tmp_path):
    profile = build_input_profile(table(), ["Age", "Job"])
    (tmp_path / "input_profile.json").write_text(json.dumps(profile))
    assert load_input_profile(tmp_path / "input_profile.json") == profile
    assert load_input_profile(tmp_path / "absent.json") is None
    assert validate_input_profile(profile, "x") is not profile


# ----------------------------------------------------------------------------------------------------------------
# Wired into prediction
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    path = train_table_checkpoint(tmp_path_factory.mktemp("profile") / "run")
    profile_path = Path(path).parent.parent / "input_profile.json"  # <run>/checkpoints/best.ckpt
    if not profile_path.exists():  # what finexp-train records (written here too while a run lacks it)
        training = applicants_frame(200)
        profile = build_input_profile(training, COLUMNS, column_kinds(training, COLUMNS))
        profile_path.write_text(json.dumps(profile))
    return path


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor.from_checkpoint(ckpt, device="cpu")


def drifted() -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "customer_id": ["A", "B", "C", "D"],
            "income": [100, -5, 120, "lots"],
            "debt": [50, 40, 30, 20],
            "arrears": ["no", "no", "no", "no"],
            "purpose": ["car", "home", "yacht", "car"],
        }
    )
    return frame


def test_predictions_carry_flags_and_stay_scored(predictor):
    assert predictor.input_profile is not None
    out = predictor.predict(drifted().to_dict("records"))
    assert [p.flags for p in out] == [(), ("out_of_range:income",), ("unseen_category:purpose",), ()]
    assert [p.label is not None for p in out] == [True, True, True, False]  # flagged rows are still answered
    assert out[3].error == "column 'income' expects a number, got 'lots'"  # an error row has no flags
    assert out[1].as_dict()["flags"] == ["out_of_range:income"]
    probs, errors = predictor.probabilities(drifted())
    flagged, same_errors, flags = predictor.probabilities_and_flags(drifted())
    np.testing.assert_array_equal(probs, flagged)
    assert errors == same_errors and flags[2] == ["unseen_category:purpose"]


def test_without_a_profile_there_are_no_flags(predictor):
    bare = Predictor(predictor.model, predictor.tokenizer, predictor.labels, predictor.spec, predictor.serializer)
    assert [p.flags for p in bare.predict(drifted().to_dict("records"))] == [()] * 4


def test_an_ensemble_flags_what_any_member_flags(predictor):
    narrow = json.loads(json.dumps(predictor.input_profile))
    narrow["columns"]["debt"]["max"] = 35
    other = Predictor(
        predictor.model,
        predictor.tokenizer,
        predictor.labels,
        predictor.spec,
        predictor.serializer,
        input_profile=narrow,
    )
    flags = [p.flags for p in Ensemble([predictor, other]).predict(drifted().to_dict("records"))]
    assert flags == [
        ("out_of_range:debt",),
        ("out_of_range:income", "out_of_range:debt"),
        ("unseen_category:purpose",),
        (),
    ]


def test_predict_file_writes_a_flags_column_and_counts(predictor, tmp_path):
    drifted().to_csv(tmp_path / "new.csv", index=False)
    summary = predict_file(predictor, tmp_path / "new.csv", tmp_path / "out.csv", progress=False)
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns[-2:]) == ["flags", "errors"]
    assert out["flags"].fillna("").tolist() == ["", "out_of_range:income", "unseen_category:purpose", ""]
    assert summary["flagged_rows"] == 2 and summary["errors"] == 1
    assert summary["flags"] == {"out_of_range:income": 1, "unseen_category:purpose": 1}


def _predict_cli(ckpt: str, source: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "finexp.predict",
            f"ckpt={ckpt}",
            f"input={source}",
            f"output={tmp_path}/out.csv",
            "progress=false",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_finexp_predict_flags_drifted_rows(ckpt, tmp_path):
    drifted().to_csv(tmp_path / "new.csv", index=False)
    result = _predict_cli(ckpt, tmp_path / "new.csv", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = pd.read_csv(tmp_path / "out.csv")
    assert out.set_index("customer_id")["flags"].dropna().to_dict() == {
        "B": "out_of_range:income",
        "C": "unseen_category:purpose",
    }
    assert out["predicted"].notna().tolist() == [True, True, True, False]
    assert "flagged        2 row(s) outside the training profile" in result.stdout
    summary = json.loads((tmp_path / "run" / "predict_summary.json").read_text())
    assert summary["flags"] == {"out_of_range:income": 1, "unseen_category:purpose": 1}


def test_finexp_predict_refuses_a_file_without_a_column_the_model_reads(ckpt, tmp_path):
    source = tmp_path / "no_debt.csv"
    drifted().drop(columns=["debt"]).to_csv(source, index=False)
    result = _predict_cli(ckpt, source, tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [
        f"finexp-predict: error: {source}: missing column(s) the model reads: 'debt'; "
        "the file has: customer_id, income, arrears, purpose"
    ]
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "run" / "predict_summary.json").exists()
