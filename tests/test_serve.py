"""finexp-serve, started for real on a loopback port and called over HTTP: predictions equal the Predictor's,
rules decide after the model, 422 with a reason on malformed requests, 413 on oversize batches, and the server
keeps answering after bad input and concurrent load."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import applicants_frame
from finexp.inference import InputSpec, Predictor
from finexp.rules import RuleSet
from finexp.serving import create_app, start_in_thread
from finexp.testing.loopback import free_ports, wait_for_health
from serving_support import train_table_checkpoint

RULES = RuleSet.from_specs(
    [
        {"name": "over_indebted", "when": "debt / income > 0.8", "decision": "decline"},
        {"name": "arrears", "when": "arrears == 'yes'", "decision": "refer"},
    ],
    decisions={"yes": "decline", "no": "approve"},
    name="test_policy",
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return train_table_checkpoint(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor.from_checkpoint(ckpt, device="cpu")


@pytest.fixture(scope="module")
def server(predictor):
    server = start_in_thread(create_app(predictor, RULES, max_batch=16))
    yield server
    server.should_exit = True
    server.thread.join(timeout=10)


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def rows(n: int = 6, seed: int = 11) -> list[dict]:
    frame = applicants_frame(n, seed=seed).drop(columns=["default"]).astype(object)
    return frame.where(frame.notna(), None).to_dict("records")  # JSON has null, not NaN


def test_health_and_metadata(client, predictor):
    assert client.get("/health").json()["status"] == "ok"
    meta = client.get("/metadata").json()
    assert meta["task"] == "table_classification" and meta["labels"] == ["no", "yes"]
    assert meta["config_sha256"] == predictor.metadata["config_sha256"]
    assert meta["input"]["columns"] == ["income", "debt", "arrears", "purpose"]
    assert meta["rules"]["name"] == "test_policy" and meta["max_batch"] == 16


def test_predict_answers_like_the_predictor_with_rule_decisions(client, predictor):
    batch = rows(8)
    batch[0] |= {"debt": 150, "income": 100, "arrears": "yes"}  # both rules match: the first listed wins
    batch[1] |= {"debt": 10, "income": 100, "arrears": "yes"}
    batch[2] |= {"debt": 10, "income": None, "arrears": "no"}  # a missing income: ratio missing, no rule fires
    response = client.post("/predict", json={"rows": batch})
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    expected = predictor.predict(batch)
    assert [a["label"] for a in answers] == [p.label for p in expected]
    for answer, prediction in zip(answers, expected, strict=True):
        assert answer["probabilities"] == pytest.approx(prediction.probabilities, abs=1e-6)
        assert answer["model_decision"] == {"yes": "decline", "no": "approve"}[prediction.label]
    assert (answers[0]["rule"], answers[0]["final_decision"]) == ("over_indebted", "decline")
    assert (answers[1]["rule"], answers[1]["final_decision"]) == ("arrears", "refer")
    assert answers[2]["rule"] is None and answers[2]["final_decision"] == answers[2]["model_decision"]


def test_bad_rows_are_answered_in_place(client):
    batch = rows(3)
    batch[1]["income"] = "plenty"
    batch[2]["debt"] = [1, 2]
    answers = client.post("/predict", json={"rows": batch}).json()["predictions"]
    assert answers[0]["error"] is None and answers[0]["final_decision"] is not None
    assert answers[1] == {
        "label": None,
        "probabilities": {},
        "error": "column 'income' expects a number, got 'plenty'",
        "flags": [],
        "model_decision": None,
        "rule": None,
        "final_decision": None,
    }
    assert answers[2]["error"] == "column 'debt' must be a single value, got list"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "the body is not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"rows": "abc"}', "rows: Input should be a valid list"),
        (b'{"rows": [1]}', "rows.0: Input should be a valid dictionary"),
        (b'{"rowz": []}', "rowz: Extra inputs are not permitted"),
        (b"{}", 'give exactly one of "rows"'),
        (b'{"rows": []}', "the batch is empty"),
        (b'{"texts": ["a"]}', 'this model reads table columns (income, debt, arrears, purpose): send "rows"'),
    ],
)
def test_malformed_requests_get_422_with_a_reason(client, body, reason):
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert reason in response.json()["detail"]


def test_oversize_batches_get_413_and_the_server_carries_on(client):
    response = client.post("/predict", json={"rows": rows(17)})
    assert response.status_code == 413 and "at most 16 (serve.max_batch)" in response.json()["detail"]
    huge = b'{"rows": [{"purpose": "' + b"x" * (16 * 64 * 1024 + 70 * 1024) + b'"}]}'
    assert client.post("/predict", content=huge).status_code == 413  # refused by size before parsing
    assert client.post("/predict", json={"rows": rows(16)}).status_code == 200


def test_concurrent_clients_all_get_answers(server):
    def call(i: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return sum(c.post("/predict", json={"rows": rows(4, seed=i)}).status_code == 200 for _ in range(3))

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(call, range(8))) == 24


def test_finexp_serve_cli(ckpt, tmp_path):
    (port,) = free_ports()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "finexp.serve",
            f"ckpt={ckpt}",
            f"serve.port={port}",
            "rules=none",
            "serve.log_level=warning",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for_health(f"http://127.0.0.1:{port}", process, seconds=120)
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"rows": rows(2)}, timeout=30).json()
        assert len(answer["predictions"]) == 2 and "final_decision" not in answer["predictions"][0]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_text_models_take_texts(predictor):
    # the tiny model reads any text: reuse it behind a text task's input spec
    text_model = Predictor(predictor.model, predictor.tokenizer, predictor.labels, InputSpec(text_column="headline"))
    server = start_in_thread(create_app(text_model, max_batch=4))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answers = client.post("/predict", json={"texts": ["profit beats forecast", "  ", 7]}).json()["predictions"]
            assert answers[0]["label"] in ("no", "yes") and answers[0]["error"] is None
            assert answers[1]["error"] == "column 'headline' is empty" and answers[2]["error"] is None
            same = client.post("/predict", json={"rows": [{"headline": "profit beats forecast", "id": 3}]}).json()
            # the same text scored alone or padded beside another: equal up to float summation order
            assert same["predictions"][0]["probabilities"] == pytest.approx(answers[0]["probabilities"], abs=1e-6)
            assert "final_decision" not in answers[0]  # no rules configured
    finally:
        server.should_exit = True
        server.thread.join(timeout=10)


class _Broken:
    """A model that fails on every batch: the server answers 500 for the request and keeps serving."""

    def __init__(self) -> None:
        self.labels, self.spec, self.metadata = ["no", "yes"], InputSpec(text_column="text"), {"task": "broken"}

    def predict(self, rows):
        raise RuntimeError("out of memory")


def test_an_unexpected_failure_is_a_500_not_a_crash():
    server = start_in_thread(create_app(_Broken()))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            response = client.post("/predict", json={"texts": ["a"]})
            assert response.status_code == 500
            assert response.json()["detail"] == "internal error: RuntimeError: out of memory"
            assert client.get("/health").status_code == 200
    finally:
        server.should_exit = True
        server.thread.join(timeout=10)
