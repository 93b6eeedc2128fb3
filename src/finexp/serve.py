"""``finexp-serve``: an HTTP endpoint (FastAPI + uvicorn) over a finexp checkpoint or an ensemble.

    finexp-serve ckpt=outputs/credit_scoring/runs/<date>/<time>/checkpoints/best.ckpt
    finexp-serve ckpt=a.ckpt,b.ckpt rules=credit_policy serve.port=8080 serve.max_batch=64
    finexp-serve ckpt=.../best.ckpt serve.onnx=exported/credit-onnx          # ONNX Runtime (finexp-export format=onnx)
    finexp-serve ckpt=.../best.ckpt serve.precision=bf16                     # bfloat16 weights (serving.precision)
    FINEXP_API_KEY=$(openssl rand -hex 32) finexp-serve ckpt=... serve.api_key_env=FINEXP_API_KEY

    POST /predict   {"rows": [{"Income": 129, ...}, ...]}  (table or text tasks: the columns the model reads)
                    {"texts": ["shares rally after ...", ...]}  (text tasks: the text column's values)
                 -> {"predictions": [{"label", "probabilities", "error", "flags", ["model_decision", "rule",
                     "final_decision"]}, ...], "config_sha256": ...}
    GET  /health    {"status": "ok", ...}  (never needs the API key: liveness probes)
    GET  /metadata  task, labels, input columns, checkpoint and training-config hashes, rules, limits (no file paths)
    GET  /metrics   Prometheus text: requests by route and status, rows, latency, batch sizes, queue depth

Concurrent requests are scored together: their rows queue and one worker scores up to ``serve.max_batch_size`` rows
per model call, waiting at most ``serve.max_wait_ms`` for company (:mod:`finexp.serving.batcher`; why not LitServe:
:mod:`finexp.serving`). What a request may cost is bounded before it joins a batch: the body is read in pieces and
reading stops at ``serve.max_batch`` rows' worth of bytes (413); JSON nested deeper than ``serve.max_json_depth``
or holding a string longer than ``serve.max_text_chars`` is 422; a request not answered within ``serve.timeout_s``
is 408 (its body was too slow to arrive) or 503 (the model was busy or slow). A row the model cannot score gets an
``error`` in its place and the others are answered; a scored row outside the training rows' input profile gets
``flags`` (``out_of_range:Age``). With ``serve.api_key_env`` / ``serve.api_key_file`` every route but ``/health``
needs ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (401 otherwise). Every request writes one JSON line to
the ``finexp.access`` log (method, path, status, rows, latency, client; never the body or the key).

This module is the command line only, and imports nothing heavy at the top: ``finexp-serve --help`` and a config
error answer before torch or transformers load.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from finexp import FinexpError
from finexp.config import ConfigError, config_dir, validate_serving
from finexp.config.argv import ensemble_argv

log = logging.getLogger("finexp")
access_log = logging.getLogger("finexp.access")


def _check_limits(settings: DictConfig) -> None:
    for key in ("timeout_s", "max_text_chars"):
        if not settings[key] > 0:
            raise ConfigError(f"serve.{key}={settings[key]!r} is not allowed: must be > 0")
    if settings.max_json_depth < 3:
        raise ConfigError(
            f"serve.max_json_depth={settings.max_json_depth!r} is not allowed: must be >= 3 (object, rows, row)"
        )
    if settings.max_batch_size < 1:
        raise ConfigError(
            f"serve.max_batch_size={settings.max_batch_size!r} is not allowed: must be >= 1 (1: one request per "
            "model call)"
        )
    if not settings.max_wait_ms >= 0:
        raise ConfigError(
            f"serve.max_wait_ms={settings.max_wait_ms!r} is not allowed: must be >= 0 (0: batch only the requests "
            "already waiting)"
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
    """The ``finexp-serve`` run: check the settings, load the checkpoint(s) and the rules, serve until interrupted."""
    from finexp.serving.onnx import onnx_file
    from finexp.serving.precision import check_precision
    from finexp.serving.security import read_api_keys

    validate_serving(cfg)
    settings = cfg.serve
    _check_limits(settings)
    keys = read_api_keys(settings.api_key_env, settings.api_key_file)  # before the model loads: fail fast
    check_precision(str(settings.precision), str(settings.device), onnx=bool(settings.onnx))
    onnx_path = onnx_file(settings.onnx) if settings.onnx else None
    if onnx_path is not None and str(settings.device).startswith("cuda"):
        raise ConfigError(f"serve.onnx runs on ONNX Runtime's CPU provider: serve.device={settings.device} with it")

    import torch  # the heavy stack, once the settings are known to be good
    import uvicorn

    from finexp import build
    from finexp.inference import load_predictor, trust_lines
    from finexp.predict import bind_rules, ckpt_list
    from finexp.serving.app import create_app

    checkpoints = ckpt_list(cfg.ckpt)
    if onnx_path is not None and len(checkpoints) != 1:
        raise ConfigError(f"serve.onnx serves one checkpoint's export; ckpt= names {len(checkpoints)} checkpoints")
    rules = build.rules_from(cfg)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = "cpu" if onnx_path is not None else settings.device
    model = load_predictor(checkpoints, batch_size=settings.batch_size, device=device)
    if onnx_path is not None:
        from finexp.serving.onnx import onnx_predictor

        model = onnx_predictor(model, onnx_path, settings.threads or None)
    if settings.precision == "bf16":
        from finexp.serving.precision import to_bf16

        model = to_bf16(model, float(settings.bf16_tolerance))
    bind_rules(rules, model, list(cfg.rules.extra_columns))
    app = create_app(
        model,
        rules,
        settings.max_batch,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=float(settings.max_wait_ms),
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
    backend = (
        f"onnxruntime ({onnx_path.name})" if onnx_path is not None else f"pytorch ({device}, {settings.precision})"
    )
    print(
        f"finexp-serve: {meta['task']} ({', '.join(model.labels)}), "
        f"{len(getattr(model, 'members', [model]))} checkpoint(s), backend: {backend}, "
        f"rules: {rules.name if rules else 'none'}, "
        f"API key: {'required (' + ' or '.join(sources) + ')' if keys else 'none'}, "
        f"drift flags: {'on' if model.input_profile is not None else 'off (no input profile in the run)'}, "
        f"batches: up to {settings.max_batch_size} rows, {settings.max_wait_ms:g} ms wait; "
        f"http://{settings.host}:{settings.port}  (POST /predict, GET /health, /metadata, /metrics)",
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
