"""``task.serialization`` codebooks: value maps (code -> phrase), number formats, unknown codes, their checks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from finexp.config import ConfigError, validate_config
from finexp.data.serialize import NumberFormat, RowSerializer
from finexp.data.sources import DataError
from finexp.train import train

GOOD, BAD = "savings above ten thousand", "overdrawn account"


def coded_table(n: int = 120, seed: int = 0) -> tuple[pd.DataFrame, dict[str, str]]:
    """Each applicant's account code is a fresh meaningless token (``qk307``); only the codebook says what it means,
    and the label follows the meaning. One code is left out of the codebook (an unknown code)."""
    rng = random.Random(seed)
    rows, codebook = [], {}
    for i in range(n):
        bad = rng.random() < 0.5
        code = f"{rng.choice('bdfgkmpqtvz')}{rng.choice('aeiou')}{i:03d}"
        if i != 0:
            codebook[code] = BAD if bad else GOOD
        rows.append({"account": code, "amount": rng.randint(500, 20000), "default": "yes" if bad else "no"})
    return pd.DataFrame(rows), codebook


def test_a_row_reads_through_its_codebook_and_formats():
    serialize = RowSerializer(
        ["checking", "history", "amount", "rate", "age"],
        {"checking": "checking account", "history": "credit history"},
        separator="; ",
        value_map={"checking": {"A11": "below 0 DM", "A14": "no checking account"}, "history": {34: "critical"}},
        formats={
            "amount": NumberFormat(thousands=",", prefix="$"),
            "rate": {"decimals": 1, "suffix": " %"},
            "age": {"bins": [30, 60], "labels": ["young", "middle-aged", "senior"]},
        },
    )
    frame = pd.DataFrame(
        {
            "checking": ["A14", "A13", None],
            "history": [34, 34.0, 31],  # 34 and 34.0 are the same code
            "amount": [12500, -1200.5, None],
            "rate": [3.456, 10, 0.04],
            "age": [29, 30, 75],
        }
    )
    assert serialize(frame) == [
        "checking account: no checking account; credit history: critical; amount: $12,500; rate: 3.5 %; age: young",
        "checking account: A13; credit history: critical; amount: -$1,200.5; rate: 10.0 %; age: middle-aged",
        "checking account: unknown; credit history: 31; amount: unknown; rate: 0.0 %; age: senior",
    ]
    assert serialize.pop_unknown() == {
        "checking": {"cells": 1, "values": {"A13": 1}},  # missing cells are not unknown codes
        "history": {"cells": 1, "values": {"31": 1}},
    }
    assert serialize.pop_unknown() == {}  # counts restart


def test_unknown_codes_can_read_as_missing_or_fail():
    frame = pd.DataFrame({"job": ["A171", "A179"]})
    missing = RowSerializer(["job"], value_map={"job": {"A171": "unskilled"}}, unknown_values="missing")
    assert missing(frame) == ["job: unskilled", "job: unknown"]
    strict = RowSerializer(["job"], value_map={"job": {"A171": "unskilled"}}, unknown_values="error")
    with pytest.raises(DataError, match=r"'A179' is not in task.serialization.value_map.job"):
        strict(frame)


def test_a_map_of_a_column_not_serialized_names_the_key():
    with pytest.raises(DataError, match=r"task.serialization.value_map.checking_statu: no serialized column"):
        RowSerializer(["checking_status"], value_map={"checking_statu": {"A11": "below 0"}})
    with pytest.raises(DataError, match=r"task.serialization.formats.amount"):
        RowSerializer(["credit_amount"], formats={"amount": {"decimals": 0}})


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{bins:[10,5],labels:[a,b,c]}", "strictly ascending"),
        ("{bins:[10],labels:[a]}", "labels needs 2 words"),
        ("{bins:[10]}", "bins and labels go together"),
        ("{decimals:-1}", "must be a whole number >= 0"),
        ("{decimal:1}", "unknown key .decimal."),
    ],
)
def test_a_malformed_number_format_names_the_column(make_cfg, applicants_csv, rule, message):
    cfg = make_cfg(
        "task=table_classification",
        f"data.path={applicants_csv}",
        "task.label_column=default",
        f"+task.serialization.formats.income={rule}",
    )
    with pytest.raises(ConfigError, match=rf"task.serialization.formats.income: .*{message}"):
        validate_config(cfg)


def _coded_run(make_cfg, path: Path, codebook: dict[str, str] | None) -> dict:
    overrides = [
        "task=table_classification",
        f"data.path={path}",
        "task.label_column=default",
        "task.positive_label=yes",
        "+task.serialization.formats.amount={thousands: ',', prefix: $}",
        "trainer.max_epochs=2",
        "optimizer.lr=3e-3",
        "data.batch_size=16",
        "test_predictions=false",
    ]
    cfg = make_cfg(*overrides)
    if codebook is not None:  # 119 codes: what a task YAML would hold under task.serialization.value_map
        cfg.task.serialization.value_map = {"account": codebook}
    return train(cfg)


def test_the_codebook_makes_a_coded_table_learnable(make_cfg, tmp_path):
    frame, codebook = coded_table()
    path = tmp_path / "coded.csv"
    frame.to_csv(path, index=False)
    raw = _coded_run(make_cfg, path, None)
    mapped = _coded_run(make_cfg, path, codebook)
    # Without the map every code is a token seen once: nothing carries over to the test rows (chance is 0.5).
    assert raw["test/auroc"] < 0.75
    assert mapped["test/auroc"] > 0.95  # with it, two phrases say it all
    info = json.loads((Path(mapped["best_checkpoint"]).parents[1] / "run_info.json").read_text())
    record = info["serialization"]
    assert record["value_map_columns"] == ["account"] and record["formatted_columns"] == ["amount"]
    unknown = [split for split, columns in record["unknown_codes"].items() if columns]
    assert len(unknown) == 1  # the one code left out of the codebook, in whichever split it fell
    assert record["unknown_codes"][unknown[0]] == {"account": {"cells": 1, "values": {frame.account[0]: 1}}}
