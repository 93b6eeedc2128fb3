"""finexp-serve under hostile input, on a real loopback port: bodies are read in bounded pieces (413 before a 20 MB
chunked body is read whole), JSON depth and string limits (422, never 500), request timeouts (408 / 503), an
optional API key (401), /metadata without server paths, /docs off by default, and one JSON access-log line per
request without the body or the key."""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path, PurePosixPath, PureWindowsPath

import httpx
import pytest

from conftest import applicants_frame
from finexp.config import ConfigError
from finexp.inference import InputSpec, Prediction, Predictor
from finexp.serve import serve
from finexp.serving import create_app, public_metadata, read_api_keys, start_in_thread
from finexp.testing.loopback import free_ports, wait_for_health
from serving_support import compose_in, train_table_checkpoint

KEY = "k3y-for-tests-0123456789abcdef"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return train_table_checkpoint(tmp_path_factory.mktemp("serve-security") / "run")


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor.from_checkpoint(ckpt, device="cpu")


def running(app):
    """A context manager: ``app`` on a free loopback port, stopped at the end."""

    class _Running:
        def __enter__(self):
            self.server = start_in_thread(app)
            return self.server

        def __exit__(self, *exc):
            self.server.should_exit = True
            self.server.thread.join(timeout=10)

    return _Running()


@pytest.fixture(scope="module")
def guarded(predictor):
    """The real model behind small limits and an API key."""
    app = create_app(predictor, max_batch=16, max_json_depth=8, max_text_chars=1000, api_keys=[KEY])
    with running(app) as server:
        yield server


def rows(n: int = 2) -> list[dict]:
    frame = applicants_frame(n, seed=5).drop(columns=["default"]).astype(object)
    return frame.where(frame.notna(), None).to_dict("records")


def _address(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _read_response(sock: socket.socket, deadline: float) -> tuple[int, dict]:
    """Status and JSON body of one HTTP response read from a raw socket (bounded by ``deadline``)."""
    data = b""
    while time.monotonic() < deadline:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            if len(rest) >= length:
                return int(head.split()[1]), json.loads(rest[:length])
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    raise AssertionError(f"no complete response: {data[:200]!r}")


def test_a_chunked_20mb_body_is_refused_before_it_is_read_whole(guarded):
    total, piece = 20 * 1024 * 1024, 64 * 1024
    max_body = 16 * 64 * 1024 + 64 * 1024
    chunk = f"{piece:x}\r\n".encode() + b"x" * piece + b"\r\n"
    sock = socket.create_connection(_address(guarded), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # the client's kernel holds little of it
    try:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + f"X-API-Key: {KEY}\r\n".encode()
            + b"Transfer-Encoding: chunked\r\n\r\n"
        )
        sent, deadline = 0, time.monotonic() + 60
        while sent < total and time.monotonic() < deadline:
            if select.select([sock], [], [], 0)[0]:  # the answer is there: stop sending
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += piece
        status, body = _read_response(sock, time.monotonic() + 30)
    finally:
        sock.close()
    assert status == 413
    assert sent < total  # the answer came while the client was still sending
    read = int(body["detail"].rsplit("stopped reading at ", 1)[1].split()[0])
    # uvicorn hands the app what it has buffered: up to its 64 KiB high-water mark plus one socket read (256 KiB)
    assert max_body < read <= max_body + 512 * 1024  # the server held ~1 MB of the 20 MB, then stopped reading
    with httpx.Client(base_url=guarded.url, timeout=30, headers={"X-API-Key": KEY}) as client:
        assert client.post("/predict", json={"rows": rows()}).status_code == 200  # and carries on


def test_a_declared_oversize_body_is_refused_from_its_header(guarded):
    sock = socket.create_connection(_address(guarded), timeout=10)
    try:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: 20000000\r\n\r\n".encode()
        )  # not one byte of the body sent
        status, body = _read_response(sock, time.monotonic() + 30)
    finally:
        sock.close()
    assert status == 413 and body["detail"].startswith("request body of 20000000 bytes is larger than")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "JSON nested deeper than 8 levels"),
        (b'{"rows": [{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}", "JSON nested deeper than 8 levels"),
        (b'{"rows": [{"income": [[[[[[[[1]]]]]]]]}]}', "rows.0.income.0.0.0.0.0: JSON nested deeper than 8 levels"),
        (b'{"rows": [{"purpose": "' + b"x" * 1001 + b'"}]}', "rows.0.purpose: a text of 1001 characters; at most 1000"),
        (b'{"rows": [{"income": NaN}]}', "NaN is not JSON"),
        (b'{"rows": [{"income": ' + b"9" * 5000 + b"}]}", "the body is not JSON"),
        (b"\xff\xfe\x00garbage", "the body is not JSON"),
        (b'{"rows": [{"purpose": "\\ud800"}]', "the body is not JSON"),
    ],
)
def test_hostile_json_gets_422_not_500(guarded, body, reason):
    with httpx.Client(base_url=guarded.url, timeout=30, headers={"X-API-Key": KEY}) as client:
        response = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        assert reason in response.json()["detail"]
        assert client.get("/health").status_code == 200


def test_the_api_key_is_required_except_for_health(guarded):
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        refused = client.post("/predict", json={"rows": rows()})
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "API key" in refused.json()["detail"] and KEY not in refused.text
        assert client.post("/predict", json={"rows": rows()}, headers={"X-API-Key": KEY[:-1]}).status_code == 401
        assert (
            client.post("/predict", json={"rows": rows()}, headers={"Authorization": "Basic " + KEY}).status_code == 401
        )
        assert client.get("/metadata").status_code == 401
        assert client.get("/health").status_code == 200
        with_bearer = client.post("/predict", json={"rows": rows()}, headers={"Authorization": f"Bearer {KEY}"})
        assert with_bearer.status_code == 200 and len(with_bearer.json()["predictions"]) == 2
        assert client.post("/predict", json={"rows": rows()}, headers={"X-API-Key": KEY}).status_code == 200


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_metadata_shows_hashes_not_server_paths(guarded, predictor, ckpt):
    assert predictor.metadata["checkpoint"] == str(Path(ckpt).resolve())  # the predictor knows the path ...
    response = httpx.get(f"{guarded.url}/metadata", headers={"X-API-Key": KEY}, timeout=30)
    meta = response.json()
    assert str(Path(ckpt).parent.parent) not in response.text  # ... the server does not tell it
    assert not [s for s in _strings(meta) if PurePosixPath(s).is_absolute() or PureWindowsPath(s).is_absolute()]
    assert "checkpoint" not in meta and meta["checkpoint_sha256"] == predictor.metadata["checkpoint_sha256"]
    assert meta["config_sha256"] == predictor.metadata["config_sha256"]
    assert meta["limits"] == {
        "max_body_bytes": 16 * 65536 + 65536,
        "timeout_s": 30.0,
        "max_json_depth": 8,
        "max_text_chars": 1000,
    }


def test_public_metadata_drops_path_keys_and_cuts_paths():
    meta = {
        "checkpoint": "/srv/runs/a/best.ckpt",
        "model": "/models/minilm",
        "tokenizer": "C:\\models\\tok",
        "ensemble": [{"checkpoint": "/x/y.ckpt", "checkpoint_sha256": "ab"}],
        "note": "~/secret/place",
        "task": "credit_scoring",
    }
    assert public_metadata(meta) == {
        "model": "minilm",
        "tokenizer": "tok",
        "ensemble": [{"checkpoint_sha256": "ab"}],
        "note": "place",
        "task": "credit_scoring",
    }


def test_docs_are_off_unless_enabled(predictor):
    for docs, expected in ((False, 404), (True, 200)):
        with running(create_app(predictor, docs=docs)) as server, httpx.Client(base_url=server.url) as client:
            assert [client.get(p).status_code for p in ("/docs", "/redoc", "/openapi.json")] == [expected] * 3


class _Gated:
    """A model whose first batch waits for ``release`` (a slow forward pass); later batches answer at once."""

    def __init__(self) -> None:
        self.labels, self.spec, self.metadata = ["no", "yes"], InputSpec(text_column="text"), {"task": "gated"}
        self.input_profile = None
        self.release = threading.Event()
        self.calls = 0

    def predict(self, rows):
        self.calls += 1
        if self.calls == 1:
            assert self.release.wait(timeout=30)
        return [Prediction("yes", {"no": 0.1, "yes": 0.9}) for _ in rows]


def test_a_slow_model_answers_503_in_time_and_the_server_recovers():
    model = _Gated()
    with running(create_app(model, timeout_s=0.5)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        started = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=30) as other:
            first = threading.Thread(target=lambda: results.append(other.post("/predict", json={"texts": ["a"]})))
            results: list[httpx.Response] = []
            first.start()
            time.sleep(0.1)
            queued = client.post("/predict", json={"texts": ["b"]})  # waits behind the slow batch, then gives up
            first.join(timeout=10)
        assert time.monotonic() - started < 5
        for response in (results[0], queued):
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert "did not answer within 0.5 s (serve.timeout_s)" in response.json()["detail"]
        assert model.calls == 1  # the queued request left without reaching the model
        assert client.get("/health").status_code == 200  # answered while the slow batch still runs
        model.release.set()
        deadline = time.monotonic() + 10
        while (answer := client.post("/predict", json={"texts": ["c"]})).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "yes"


def test_a_body_that_does_not_arrive_in_time_gets_408():
    with running(create_app(_Gated(), timeout_s=0.5)) as server:
        sock = socket.create_connection(_address(server), timeout=10)
        try:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n" + b'{"texts": ')
            started = time.monotonic()
            status, body = _read_response(sock, time.monotonic() + 10)
        finally:
            sock.close()
    assert status == 408 and "did not arrive within 0.5 s" in body["detail"]
    assert time.monotonic() - started < 5


def test_one_json_access_log_line_per_request(guarded):
    lines: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = _Keep()
    logger = logging.getLogger("finexp.access")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with httpx.Client(base_url=guarded.url, timeout=30) as client:
            client.post("/predict?token=abc", json={"rows": rows(3)}, headers={"X-API-Key": KEY})
            client.post("/predict", json={"rows": rows(1)})
            client.get("/health")
            deadline = time.monotonic() + 5
            while len(lines) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    records = [json.loads(line) for line in lines]
    assert [(r["method"], r["path"], r["status"], r["rows"]) for r in records] == [
        ("POST", "/predict", 200, 3),
        ("POST", "/predict", 401, None),
        ("GET", "/health", 200, None),
    ]
    assert all(r["client"].startswith("127.0.0.1:") and r["latency_ms"] > 0 for r in records)
    assert set(records[0]) == {"ts", "method", "path", "status", "rows", "latency_ms", "client"}
    text = "\n".join(lines)
    assert KEY not in text and "token=abc" not in text and "income" not in text  # no key, query or body


def test_api_keys_come_from_an_environment_variable_or_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEXP_TEST_KEY", KEY)
    (tmp_path / "key").write_text(KEY[::-1] + "\n")
    (tmp_path / "key").chmod(0o600)
    assert read_api_keys("FINEXP_TEST_KEY", tmp_path / "key") == [KEY, KEY[::-1]]
    monkeypatch.setenv("FINEXP_SHORT", "abc")
    (tmp_path / "empty").write_text("\n")
    for env, file, message in [
        ("FINEXP_UNSET_KEY", None, "serve.api_key_env=FINEXP_UNSET_KEY: the environment variable FINEXP_UNSET_KEY"),
        ("FINEXP_SHORT", None, "serve.api_key_env=FINEXP_SHORT: the key is shorter than 16 characters"),
        (KEY, None, "must name an environment variable"),
        (None, tmp_path / "missing", "serve.api_key_file="),
        (None, tmp_path / "empty", "the file is empty"),
    ]:
        with pytest.raises(ConfigError, match=r"serve\.api_key") as err:
            read_api_keys(env, file)
        assert message in str(err.value) and KEY not in str(err.value)


def test_finexp_serve_cli_with_an_api_key_and_access_log(ckpt, tmp_path):
    (port,) = free_ports()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FINEXP_SERVE_KEY": KEY}
    command = [sys.executable, "-m", "finexp.serve", f"ckpt={ckpt}", f"serve.port={port}", "serve.log_level=warning"]
    missing = subprocess.run(
        [*command, "serve.api_key_env=FINEXP_NOT_SET", f"hydra.run.dir={tmp_path}/bad"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "serve.api_key_env=FINEXP_NOT_SET: the environment variable FINEXP_NOT_SET is not set" in missing.stderr
    process = subprocess.Popen(
        [*command, "serve.api_key_env=FINEXP_SERVE_KEY", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        wait_for_health(f"http://127.0.0.1:{port}", process, seconds=120)
        url = f"http://127.0.0.1:{port}"
        assert httpx.post(f"{url}/predict", json={"rows": rows(2)}, timeout=30).status_code == 401
        ok = httpx.post(f"{url}/predict", json={"rows": rows(2)}, headers={"X-API-Key": KEY}, timeout=30)
        assert ok.status_code == 200
        assert httpx.get(f"{url}/docs", headers={"X-API-Key": KEY}, timeout=30).status_code == 404
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    access = [json.loads(line) for line in output.splitlines() if line.startswith('{"ts"')]
    assert [(a["path"], a["status"]) for a in access] == [
        ("/health", 200),
        ("/predict", 401),
        ("/predict", 200),
        ("/docs", 404),
    ]
    assert "API key: required (serve.api_key_env=FINEXP_SERVE_KEY)" in output and KEY not in output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("serve.timeout_s=0", "serve.timeout_s=0.0 is not allowed: must be > 0"),
        ("serve.max_json_depth=2", "serve.max_json_depth=2 is not allowed: must be >= 3"),
        ("serve.max_text_chars=0", "serve.max_text_chars=0 is not allowed"),
        ("serve.api_key_env=sk-live-123", "serve.api_key_env must name an environment variable"),
    ],
)
def test_serving_limits_are_checked_before_the_model_loads(tmp_path, override, message):
    cfg = compose_in(tmp_path, f"ckpt={tmp_path}/absent.ckpt", override, config_name="serve", fast=False)
    with pytest.raises(ConfigError) as err:
        serve(cfg)
    assert message in str(err.value) and "sk-live-123" not in str(err.value)
