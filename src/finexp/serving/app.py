"""The FastAPI application: routes, the micro-batcher behind ``/predict``, the gate around every route."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from finexp import FinexpError
from finexp.serving.batcher import BatcherClosed, MicroBatcher
from finexp.serving.limits import ROW_BYTES, PredictRequest, Refused, parse, problem, read_body
from finexp.serving.metrics import CONTENT_TYPE, ServingMetrics
from finexp.serving.security import Gate, public_metadata

if TYPE_CHECKING:
    from finexp.inference import Ensemble, Predictor
    from finexp.rules import RuleSet

log = logging.getLogger("finexp")
ROUTES = ("/predict", "/health", "/metadata", "/metrics", "/docs", "/redoc", "/openapi.json")


def score_rows(model: Predictor | Ensemble, rules: RuleSet | None, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Answer a list of rows: the model's prediction (label, probabilities, error, flags) and the rules' decision.

    This is the only place rows meet the model, and it knows nothing of requests: the micro-batcher calls it once on
    the rows of several requests and hands each request its slice. Rows are independent: a bad row gets its
    ``error`` and does not change any other row's answer.
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


def create_app(
    model: Predictor | Ensemble,
    rules: RuleSet | None = None,
    max_batch: int = 256,
    *,
    max_batch_size: int = 64,
    max_wait_ms: float = 5.0,
    timeout_s: float = 30.0,
    max_json_depth: int = 16,
    max_text_chars: int = 100_000,
    docs: bool = False,
    api_keys: Sequence[str] = (),
    log_requests: bool = True,
) -> FastAPI:
    """The FastAPI application serving ``model`` (and ``rules`` after it).

    Args:
        model: a :class:`~finexp.inference.Predictor` or :class:`~finexp.inference.Ensemble` (any object with
            ``predict(rows)``, ``labels``, ``spec`` and ``metadata``).
        rules: business rules applied to each scored row (None: none).
        max_batch: the most rows one request may hold (more: 413); the body may hold ``max_batch * ROW_BYTES``
            bytes plus 64 KiB.
        max_batch_size: the most rows one model call gathers across waiting requests (1: one request at a time).
        max_wait_ms: the longest a request waits for others to join its batch (0: only those already waiting).
        timeout_s: the most seconds a request may take, from its arrival: reading its body (else 408), waiting for
            the model and being scored (else 503).
        max_json_depth: the deepest JSON nesting accepted (deeper: 422); a request needs 3 (object, rows, row).
        max_text_chars: the longest JSON string accepted (longer: 422).
        docs: serve ``/docs``, ``/redoc`` and ``/openapi.json``.
        api_keys: keys accepted in ``Authorization: Bearer`` or ``X-API-Key`` (none: no key needed).
        log_requests: one JSON line per request on the ``finexp.access`` logger.

    The batcher and the metrics are ``app.state.batcher`` and ``app.state.metrics``.
    """
    max_body = max_batch * ROW_BYTES + 64 * 1024
    spec = model.spec
    stats = {"requests": 0, "rows": 0, "started": time.time()}
    metrics = ServingMetrics(ROUTES)
    batcher = MicroBatcher(
        lambda rows: score_rows(model, rules, rows), max_batch_size, max_wait_ms / 1000, observe=metrics.batch
    )
    metrics.queue_depth = batcher.depth

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.close(timeout_s)  # after the server stopped taking connections: score what is queued, stop

    app = FastAPI(
        title="finexp",
        description="finexp model server",
        version=str(model.metadata.get("finexp_version")),
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        lifespan=lifespan,
    )
    app.state.batcher, app.state.metrics = batcher, metrics
    about = public_metadata(
        {
            **model.metadata,
            "rules": rules.describe() if rules is not None else None,
            "max_batch": max_batch,
            "batching": {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms},
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

    @app.get("/metrics")
    async def prometheus() -> Response:  # async: read on the event loop, where every counter is updated
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    def rows_of(batch: PredictRequest) -> list[dict[str, Any]]:
        if (batch.rows is None) == (batch.texts is None):
            raise Refused(422, 'give exactly one of "rows" (objects of column values) and "texts"')
        if batch.texts is not None:
            if spec.text_column is None:
                columns = ", ".join(spec.columns)
                raise Refused(422, f'this model reads table columns ({columns}): send "rows", not "texts"')
            rows = [{spec.text_column: t} for t in batch.texts]
        else:
            rows = batch.rows
        if not rows:
            raise Refused(422, "the batch is empty")
        if len(rows) > max_batch:
            raise Refused(413, f"{len(rows)} rows in one request; at most {max_batch} (serve.max_batch)")
        return rows

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:  # everything that can refuse a request happens before it joins a batch shared with others
            try:
                body = await asyncio.wait_for(read_body(request, max_body), timeout_s)
            except TimeoutError as err:
                raise Refused(408, f"the request body did not arrive within {timeout_s:g} s (serve.timeout_s)") from err
            rows = rows_of(parse(body, max_json_depth, max_text_chars))
        except Refused as refused:
            return problem(refused.status, refused.detail, refused.headers)
        request.state.rows = len(rows)
        try:
            answers = await batcher.run(rows, deadline)
        except BatcherClosed:
            return problem(503, "the server is shutting down; retry on another instance", {"Retry-After": "1"})
        except FinexpError as err:
            return problem(422, str(err))
        except Exception as err:  # the model failed on these rows (memory, a bug): 500 for this request only
            log.exception("finexp-serve: a request of %d rows failed", len(rows))
            return problem(500, f"internal error: {type(err).__name__}: {err}")
        if answers is None:
            retry = str(max(1, round(timeout_s)))
            detail = f"the model did not answer within {timeout_s:g} s (serve.timeout_s): busy or slow; retry later"
            return problem(503, detail, {"Retry-After": retry})
        stats["requests"] += 1
        stats["rows"] += len(rows)
        metrics.answered(len(rows), sum(a["error"] is not None for a in answers))
        return JSONResponse({"predictions": answers, "config_sha256": model.metadata.get("config_sha256")})

    app.add_middleware(Gate, keys=list(api_keys), log_requests=log_requests, metrics=metrics)
    return app


def start_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Any:
    """Start ``app`` on ``host:port`` (0: a free port) in a daemon thread; returns the uvicorn server with
    ``.url`` set. Stop it with ``server.should_exit = True`` then ``server.thread.join()`` (tests, benchmarks,
    notebooks): the lifespan shutdown scores what is queued and stops the batcher."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", ws="none", access_log=False, server_header=False)
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
