"""``finexp-serve``: an HTTP endpoint (FastAPI + uvicorn) over a finexp checkpoint or an ensemble.

    finexp-serve ckpt=outputs/credit_scoring/runs/<date>/<time>/checkpoints/best.ckpt
    finexp-serve ckpt=a.ckpt,b.ckpt rules=credit_policy serve.port=8080 serve.max_batch=64
    FINEXP_API_KEY=$(openssl rand -hex 32) finexp-serve ckpt=... serve.api_key_env=FINEXP_API_KEY

    POST /predict   {"rows": [{"Income": 129, ...}, ...]}  (table or text tasks: the columns the model reads)
                    {"texts": ["shares rally after ...", ...]}  (text tasks: the text column's values)
                 -> {"predictions": [{"label", "probabilities", "error", "flags", ["model_decision", "rule",
                     "final_decision"]}, ...], "config_sha256": ...}
    GET  /health    {"status": "ok", ...}  (never needs the API key: liveness probes)
    GET  /metadata  task, labels, input columns, checkpoint and training-config hashes, rules, limits (no file paths)

What a request may cost is bounded before the model sees it: the body is read in pieces and reading stops at
``serve.max_batch`` rows' worth of bytes (413, with or without a Content-Length: a chunked body is never held
whole); JSON nested deeper than ``serve.max_json_depth`` or holding a string longer than ``serve.max_text_chars`` is
422; a request not answered within ``serve.timeout_s`` is 408 (its body was too slow to arrive) or 503 (the model
was busy or slow). A request that is not JSON of the shape above gets 422 with the reason; a row the model cannot
score gets an ``error`` in its place and the others are answered; a scored row outside the training rows' input
profile gets ``flags`` (``out_of_range:Age``). With ``serve.api_key_env`` / ``serve.api_key_file`` every route but
``/health`` needs ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (401 otherwise). Every request writes one
JSON line to the ``finexp.access`` log (method, path, status, rows, latency, client; never the body or the key).
``/docs``, ``/redoc`` and ``/openapi.json`` exist only with ``serve.docs=true``.

Scoring runs in a worker thread, one request at a time, so ``/health`` answers while a batch is scored; an
unexpected failure answers 500 for that request and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import socket
import stat
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import hydra
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from omegaconf import DictConfig
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool

from finexp import FinexpError, build
from finexp.config import ConfigError, config_dir, validate_serving
from finexp.inference import Ensemble, Predictor, load_predictor, trust_lines
from finexp.predict import bind_rules, ckpt_list, ensemble_argv
from finexp.rules import RuleSet

log = logging.getLogger("finexp")
access_log = logging.getLogger("finexp.access")  # one JSON line per request

ROW_BYTES = 64 * 1024  # a request body may hold up to this much per allowed row (plus 64 KiB): larger is 413
MIN_KEY_CHARS = 16  # a shorter API key is refused at start-up: it could be guessed
OPEN_PATHS = ("/health",)  # answered without the API key (liveness probes)
PRIVATE_METADATA = ("checkpoint", "run_dir", "config_path", "path")  # server paths: never in /metadata
Scorer = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


class PredictRequest(BaseModel):
    """A batch: ``rows`` (objects of column values) or ``texts`` (a text task's text column)."""

    model_config = ConfigDict(extra="forbid")

    rows: list[dict[str, Any]] | None = None
    texts: list[Any] | None = None


class _Refused(Exception):
    """A request refused before scoring: its status, the reason, and extra headers."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, dict(headers or {})


def _problem(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail}, headers=dict(headers or {}))


def _reason(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Scoring: one function over a list of rows, one call at a time
# ----------------------------------------------------------------------------------------------------------------
def score_rows(model: Predictor | Ensemble, rules: RuleSet | None, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Answer a list of rows: the model's prediction (label, probabilities, error, flags) and the rules' decision.

    This is the only place a request's rows meet the model, and it knows nothing of requests: a cross-request
    micro-batcher (its own issue) gathers the rows of several waiting requests, calls this once on all of them and
    hands each request its slice back, in place of :class:`_OneAtATime`.
    """
    predictions = model.predict(rows)
    answers = [p.as_dict() for p in predictions]
    if rules is not None:
        decisions = rules.decide(rows, [p.label for p in predictions])
        for answer, decision in zip(answers, decisions, strict=True):
            answer |= {
                "model_decision": decision.model_decision,
                "rule": decision.rule,
                "final_decision": decision.final_decision,
            }
            answer["error"] = answer["error"] or decision.error
    return answers


class _OneAtATime:
    """Runs the scorer in a worker thread, one batch at a time, in arrival order, within each request's deadline.

    Requests wait in the event loop (an ``asyncio.Lock``), not in threads, so a request whose deadline passes
    while it waits leaves without costing a thread. A batch that overruns its deadline keeps the model until it
    finishes (a thread cannot be stopped); its request is answered 503 at once. The future micro-batcher takes
    this class's place with the same ``await run(rows, deadline)`` contract.
    """

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.lock = asyncio.Lock()

    async def run(self, rows: list[dict[str, Any]], deadline: float) -> list[dict[str, Any]] | None:
        """The answers, or None when ``deadline`` (``loop.time()``) passed first."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self.lock.acquire(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            return None
        task = asyncio.ensure_future(run_in_threadpool(self.scorer, rows))
        task.add_done_callback(self._finished)
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - loop.time()))
        except TimeoutError:
            return None

    def _finished(self, task: asyncio.Future) -> None:
        self.lock.release()
        if not task.cancelled() and task.exception() is not None:
            log.debug("finexp-serve: a batch failed: %r", task.exception())  # retrieved: its request got a 500


# ----------------------------------------------------------------------------------------------------------------
# Reading a request: bounded bytes, bounded time, bounded JSON
# ----------------------------------------------------------------------------------------------------------------
async def _read_body(request: Request, max_body: int) -> bytes:
    """The body, read piece by piece; stops (413) as soon as it passes ``max_body`` bytes, whatever the headers."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body:
        raise _Refused(413, f"request body of {length} bytes is larger than {max_body} (serve.max_batch)")
    pieces, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > max_body:
            raise _Refused(
                413, f"request body larger than {max_body} bytes (serve.max_batch); stopped reading at {size} bytes"
            )
        pieces.append(piece)
    return b"".join(pieces)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON (use null for a missing value)")


def _check_json(payload: object, max_depth: int, max_text_chars: int) -> None:
    """Depth and string-length limits, walked without recursion (a deep payload cannot exhaust the stack)."""
    stack: list[tuple[object, int, str]] = [(payload, 1, "body")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, str):
            if len(value) > max_text_chars:
                raise _Refused(
                    422, f"{where}: a text of {len(value)} characters; at most {max_text_chars} (serve.max_text_chars)"
                )
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > max_depth:
            raise _Refused(422, f"{where}: JSON nested deeper than {max_depth} levels (serve.max_json_depth)")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            if isinstance(key, str) and len(key) > max_text_chars:
                raise _Refused(422, f"{where}: a key of {len(key)} characters (serve.max_text_chars)")
            if isinstance(child, (dict, list, str)):
                stack.append((child, depth + 1, f"{where}.{key}" if where != "body" else str(key)))


def _parse(body: bytes, max_depth: int, max_text_chars: int) -> PredictRequest:
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except RecursionError as err:  # deeper than the interpreter's recursion limit: far past max_depth
        raise _Refused(422, f"body: JSON nested deeper than {max_depth} levels (serve.max_json_depth)") from err
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, too many digits, NaN/Infinity
        raise _Refused(422, f"the body is not JSON: {err}") from err
    if not isinstance(payload, dict):
        raise _Refused(422, 'the body must be a JSON object: {"rows": [...]} or {"texts": [...]}')
    _check_json(payload, max_depth, max_text_chars)
    try:
        return PredictRequest.model_validate(payload)
    except ValidationError as err:
        raise _Refused(422, _reason(err)) from err


# ----------------------------------------------------------------------------------------------------------------
# What the server tells about itself
# ----------------------------------------------------------------------------------------------------------------
def _is_server_path(text: str) -> bool:
    return (
        PurePosixPath(text).is_absolute()
        or PureWindowsPath(text).is_absolute()
        or text.startswith(("~", "file:"))
        or re.match(r"^[A-Za-z]:[\\/]", text) is not None
    )


def public_metadata(value: Any) -> Any:
    """``metadata`` without server file paths: path keys dropped, path-like strings cut to their file name."""
    if isinstance(value, Mapping):
        return {k: public_metadata(v) for k, v in value.items() if k not in PRIVATE_METADATA}
    if isinstance(value, (list, tuple)):
        return [public_metadata(v) for v in value]
    if isinstance(value, str) and _is_server_path(value):
        return PureWindowsPath(value).name if "\\" in value else PurePosixPath(value).name
    return value


# ----------------------------------------------------------------------------------------------------------------
# API key and access log: an ASGI layer around every route
# ----------------------------------------------------------------------------------------------------------------
def read_api_keys(env: str | None = None, file: str | Path | None = None) -> list[str]:
    """The accepted API keys: the value of the environment variable named ``env`` and/or the content of ``file``.

    The key itself never appears in a config, a message or a log line: errors name the variable or the file.

    Raises:
        ConfigError: the variable is unset or empty, the file is missing or empty, or a key is shorter than
            ``MIN_KEY_CHARS``.
    """
    keys = []
    if env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
            raise ConfigError(
                "serve.api_key_env must name an environment variable (letters, digits, _), not hold a key"
            )
        key = os.environ.get(env, "").strip()
        if not key:
            raise ConfigError(f"serve.api_key_env={env}: the environment variable {env} is not set or is empty")
        if len(key) < MIN_KEY_CHARS:
            raise ConfigError(f"serve.api_key_env={env}: the key is shorter than {MIN_KEY_CHARS} characters")
        keys.append(key)
    if file:
        path = Path(file).expanduser()
        if not path.is_file():
            raise ConfigError(f"serve.api_key_file={file}: no such file")
        key = path.read_text(encoding="utf-8").strip()
        if not key:
            raise ConfigError(f"serve.api_key_file={file}: the file is empty")
        if len(key) < MIN_KEY_CHARS:
            raise ConfigError(f"serve.api_key_file={file}: the key is shorter than {MIN_KEY_CHARS} characters")
        if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("finexp-serve: %s is readable by other users; chmod 600 it", path)
        keys.append(key)
    return keys


class _Gate:
    """Checks the API key (constant-time, before the body is read) and writes one access-log line per request."""

    def __init__(self, app: Callable[..., Awaitable[None]], keys: Sequence[str], log_requests: bool) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.log_requests = log_requests

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        given = b""
        for name, value in headers:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            elif name == b"x-api-key":
                given = value.strip()
        ok = False
        for key in self.keys:  # every key compared, each in constant time
            ok |= hmac.compare_digest(given, key)
        return ok

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status = 500  # unless a response starts: an exception escaped

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.keys and scope["path"] not in OPEN_PATHS and not self._authorized(scope["headers"]):
                refusal = _problem(
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                    {"WWW-Authenticate": "Bearer"},
                )
                await refusal(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            if self.log_requests:
                client = scope.get("client")
                line = {
                    "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "method": scope["method"],
                    "path": scope["path"],  # without the query string: it is not ours to log
                    "status": status,
                    "rows": state.get("rows"),
                    "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": f"{client[0]}:{client[1]}" if client else None,
                }
                access_log.info("%s", json.dumps(line))


def create_app(
    model: Predictor | Ensemble,
    rules: RuleSet | None = None,
    max_batch: int = 256,
    *,
    timeout_s: float = 30.0,
    max_json_depth: int = 16,
    max_text_chars: int = 100_000,
    docs: bool = False,
    api_keys: Sequence[str] = (),
    log_requests: bool = True,
) -> FastAPI:
    """The FastAPI application serving ``model`` (and ``rules`` after it).

    Args:
        model: a :class:`~finexp.inference.Predictor` or :class:`~finexp.inference.Ensemble`.
        rules: business rules applied to each scored row (None: none).
        max_batch: the most rows one request may hold (more: 413); the body may hold ``max_batch * ROW_BYTES``
            bytes plus 64 KiB.
        timeout_s: the most seconds a request may take, from its arrival: reading its body (else 408), waiting for
            the model and being scored (else 503).
        max_json_depth: the deepest JSON nesting accepted (deeper: 422); a request needs 3 (object, rows, row).
        max_text_chars: the longest JSON string accepted (longer: 422).
        docs: serve ``/docs``, ``/redoc`` and ``/openapi.json``.
        api_keys: keys accepted in ``Authorization: Bearer`` or ``X-API-Key`` (none: no key needed).
        log_requests: one JSON line per request on the ``finexp.access`` logger.
    """
    app = FastAPI(
        title="finexp",
        description="finexp model server",
        version=str(model.metadata.get("finexp_version")),
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    max_body = max_batch * ROW_BYTES + 64 * 1024
    spec = model.spec
    stats = {"requests": 0, "rows": 0, "started": time.time()}
    stats_lock = threading.Lock()

    def score(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        answers = score_rows(model, rules, rows)
        with stats_lock:
            stats["requests"] += 1
            stats["rows"] += len(rows)
        return answers

    scorer = _OneAtATime(score)
    about = public_metadata(
        {
            **model.metadata,
            "rules": rules.describe() if rules is not None else None,
            "max_batch": max_batch,
            "drift_flags": getattr(model, "input_profile", None) is not None,
            "limits": {
                "max_body_bytes": max_body,
                "timeout_s": timeout_s,
                "max_json_depth": max_json_depth,
                "max_text_chars": max_text_chars,
            },
        }
    )

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - stats["started"], 1), **stats}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        return about

    def rows_of(batch: PredictRequest) -> list[dict[str, Any]]:
        if (batch.rows is None) == (batch.texts is None):
            raise _Refused(422, 'give exactly one of "rows" (objects of column values) and "texts"')
        if batch.texts is not None:
            if spec.text_column is None:
                columns = ", ".join(spec.columns)
                raise _Refused(422, f'this model reads table columns ({columns}): send "rows", not "texts"')
            rows = [{spec.text_column: t} for t in batch.texts]
        else:
            rows = batch.rows
        if not rows:
            raise _Refused(422, "the batch is empty")
        if len(rows) > max_batch:
            raise _Refused(413, f"{len(rows)} rows in one request; at most {max_batch} (serve.max_batch)")
        return rows

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            try:
                body = await asyncio.wait_for(_read_body(request, max_body), timeout_s)
            except TimeoutError as err:
                raise _Refused(
                    408, f"the request body did not arrive within {timeout_s:g} s (serve.timeout_s)"
                ) from err
            rows = rows_of(_parse(body, max_json_depth, max_text_chars))
        except _Refused as refused:
            return _problem(refused.status, refused.detail, refused.headers)
        request.state.rows = len(rows)
        try:
            answers = await scorer.run(rows, deadline)
        except FinexpError as err:
            return _problem(422, str(err))
        except Exception as err:  # the model failed (memory, a bug): answer 500 for this request, keep serving
            log.exception("finexp-serve: a batch of %d rows failed", len(rows))
            return _problem(500, f"internal error: {type(err).__name__}: {err}")
        if answers is None:
            retry = str(max(1, round(timeout_s)))
            detail = f"the model did not answer within {timeout_s:g} s (serve.timeout_s): busy or slow; retry later"
            return _problem(503, detail, {"Retry-After": retry})
        return JSONResponse({"predictions": answers, "config_sha256": model.metadata.get("config_sha256")})

    app.add_middleware(_Gate, keys=list(api_keys), log_requests=log_requests)
    return app


def start_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Any:
    """Start ``app`` on ``host:port`` (0: a free port) in a daemon thread; returns the uvicorn server with
    ``.url`` set. Stop it with ``server.should_exit = True`` (tests, benchmarks, notebooks)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level=log_level, lifespan="off", ws="none", access_log=False, server_header=False)
    server = uvicorn.Server(config)
    server.url = f"http://{host}:{sock.getsockname()[1]}"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on {server.url} did not start")
        time.sleep(0.02)
    server.thread = thread
    return server


def _check_limits(settings: DictConfig) -> None:
    for key in ("timeout_s", "max_text_chars"):
        if not settings[key] > 0:
            raise ConfigError(f"serve.{key}={settings[key]!r} is not allowed: must be > 0")
    if settings.max_json_depth < 3:
        raise ConfigError(
            f"serve.max_json_depth={settings.max_json_depth!r} is not allowed: must be >= 3 (object, rows, row)"
        )


def _log_access_to_stdout() -> None:
    """Access-log lines as bare JSON on stdout (not through Hydra's formatted log): one object per line."""
    if not any(getattr(h, "_finexp_access", False) for h in access_log.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._finexp_access = True  # type: ignore[attr-defined]
        access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def serve(cfg: DictConfig) -> None:
    """The ``finexp-serve`` run: load the checkpoint(s) and the rules, then serve until interrupted."""
    import uvicorn

    validate_serving(cfg)
    settings = cfg.serve
    _check_limits(settings)
    keys = read_api_keys(settings.api_key_env, settings.api_key_file)  # before the model loads: fail fast
    rules = build.rules_from(cfg)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = load_predictor(ckpt_list(cfg.ckpt), batch_size=settings.batch_size, device=settings.device)
    bind_rules(rules, model, list(cfg.rules.extra_columns))
    app = create_app(
        model,
        rules,
        settings.max_batch,
        timeout_s=float(settings.timeout_s),
        max_json_depth=settings.max_json_depth,
        max_text_chars=settings.max_text_chars,
        docs=settings.docs,
        api_keys=keys,
        log_requests=settings.access_log,
    )
    if settings.access_log:
        _log_access_to_stdout()
    if not keys and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("finexp-serve: listening on %s without an API key (serve.api_key_env/api_key_file)", settings.host)
    meta = model.metadata
    print("\n".join(trust_lines(model, "finexp-serve")), flush=True)
    sources = [f"serve.{k}={settings[k]}" for k in ("api_key_env", "api_key_file") if settings[k]]
    print(
        f"finexp-serve: {meta['task']} ({', '.join(model.labels)}), "
        f"{len(getattr(model, 'members', [model]))} checkpoint(s), rules: {rules.name if rules else 'none'}, "
        f"API key: {'required (' + ' or '.join(sources) + ')' if keys else 'none'}, "
        f"drift flags: {'on' if model.input_profile is not None else 'off (no input profile in the run)'}; "
        f"http://{settings.host}:{settings.port}  (POST /predict, GET /health, GET /metadata)",
        flush=True,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ws="none",
        access_log=False,  # ours (finexp.access) has the row count and no query string
        server_header=False,
    )


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="serve")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        serve(cfg)
    except FinexpError as err:
        log.error("%s", err)
        print(f"finexp-serve: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def main() -> None:
    """Console-script entry point (``finexp-serve``)."""
    sys.argv = ensemble_argv(sys.argv)
    _hydra_main()


if __name__ == "__main__":
    main()
