"""``finexp-serve``: an HTTP endpoint (FastAPI + uvicorn) over a finexp checkpoint or an ensemble.

    finexp-serve ckpt=outputs/credit_scoring/runs/<date>/<time>/checkpoints/best.ckpt
    finexp-serve ckpt=a.ckpt,b.ckpt rules=credit_policy serve.port=8080 serve.max_batch=64

    POST /predict   {"rows": [{"Income": 129, ...}, ...]}  (table or text tasks: the columns the model reads)
                    {"texts": ["shares rally after ...", ...]}  (text tasks: the text column's values)
                 -> {"predictions": [{"label", "probabilities", "error", ["model_decision", "rule",
                     "final_decision"]}, ...], "config_sha256": ...}
    GET  /health    {"status": "ok"}
    GET  /metadata  task, labels, input columns, checkpoint and training-config hashes, rules, limits

A request that is not JSON of that shape gets 422 with the reason; more than ``serve.max_batch`` rows (or a body too
large to hold them) gets 413. A row the model cannot score gets an ``error`` in its place and the others are
answered. Scoring runs in a worker thread, so ``/health`` answers while a batch is being scored; an unexpected
failure answers 500 for that request and the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from typing import Any

import hydra
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from omegaconf import DictConfig
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool

from finexp import FinexpError, build
from finexp.config import config_dir, validate_serving
from finexp.inference import Ensemble, Predictor, load_predictor
from finexp.predict import bind_rules, ckpt_list, ensemble_argv
from finexp.rules import RuleSet

log = logging.getLogger("finexp")

ROW_BYTES = 64 * 1024  # a request body may hold up to this much per allowed row (plus 64 KiB): larger is 413


class PredictRequest(BaseModel):
    """A batch: ``rows`` (objects of column values) or ``texts`` (a text task's text column)."""

    model_config = ConfigDict(extra="forbid")

    rows: list[dict[str, Any]] | None = None
    texts: list[Any] | None = None


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


def _reason(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def create_app(model: Predictor | Ensemble, rules: RuleSet | None = None, max_batch: int = 256) -> FastAPI:
    """The FastAPI application serving ``model`` (and ``rules`` after it).

    Args:
        model: a :class:`~finexp.inference.Predictor` or :class:`~finexp.inference.Ensemble`.
        rules: business rules applied to each scored row (None: none).
        max_batch: the most rows one request may hold (more: 413).
    """
    app = FastAPI(title="finexp", description="finexp model server", version=str(model.metadata.get("finexp_version")))
    max_body = max_batch * ROW_BYTES + 64 * 1024
    spec = model.spec
    stats = {"requests": 0, "rows": 0, "started": time.time()}
    stats_lock = threading.Lock()

    def score(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
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
        with stats_lock:
            stats["requests"] += 1
            stats["rows"] += len(rows)
        return answers

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - stats["started"], 1), **stats}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        return {
            **model.metadata,
            "rules": rules.describe() if rules is not None else None,
            "max_batch": max_batch,
        }

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            return _problem(413, f"request body of {length} bytes is larger than {max_body} (serve.max_batch)")
        body = await request.body()
        if len(body) > max_body:
            return _problem(413, f"request body of {len(body)} bytes is larger than {max_body} (serve.max_batch)")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return _problem(422, f"the body is not JSON: {err}")
        if not isinstance(payload, dict):
            return _problem(422, 'the body must be a JSON object: {"rows": [...]} or {"texts": [...]}')
        try:
            batch = PredictRequest.model_validate(payload)
        except ValidationError as err:
            return _problem(422, _reason(err))
        if (batch.rows is None) == (batch.texts is None):
            return _problem(422, 'give exactly one of "rows" (objects of column values) and "texts"')
        if batch.texts is not None:
            if spec.text_column is None:
                columns = ", ".join(spec.columns)
                return _problem(422, f'this model reads table columns ({columns}): send "rows", not "texts"')
            rows = [{spec.text_column: t} for t in batch.texts]
        else:
            rows = batch.rows
        if not rows:
            return _problem(422, "the batch is empty")
        if len(rows) > max_batch:
            return _problem(413, f"{len(rows)} rows in one request; at most {max_batch} (serve.max_batch)")
        try:
            answers = await run_in_threadpool(score, rows)
        except FinexpError as err:
            return _problem(422, str(err))
        except Exception as err:  # the model failed (memory, a bug): answer 500 for this request, keep serving
            log.exception("finexp-serve: a batch of %d rows failed", len(rows))
            return _problem(500, f"internal error: {type(err).__name__}: {err}")
        return JSONResponse({"predictions": answers, "config_sha256": model.metadata.get("config_sha256")})

    return app


def start_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Any:
    """Start ``app`` on ``host:port`` (0: a free port) in a daemon thread; returns the uvicorn server with
    ``.url`` set. Stop it with ``server.should_exit = True`` (tests, benchmarks, notebooks)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off", ws="none"))
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


def serve(cfg: DictConfig) -> None:
    """The ``finexp-serve`` run: load the checkpoint(s) and the rules, then serve until interrupted."""
    import uvicorn

    validate_serving(cfg)
    rules = build.rules_from(cfg)
    settings = cfg.serve
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = load_predictor(ckpt_list(cfg.ckpt), batch_size=settings.batch_size, device=settings.device)
    bind_rules(rules, model, list(cfg.rules.extra_columns))
    app = create_app(model, rules, settings.max_batch)
    meta = model.metadata
    print(
        f"finexp-serve: {meta['task']} ({', '.join(model.labels)}), "
        f"{len(getattr(model, 'members', [model]))} checkpoint(s), rules: {rules.name if rules else 'none'}; "
        f"http://{settings.host}:{settings.port}  (POST /predict, GET /health, GET /metadata)",
        flush=True,
    )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, ws="none")


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
