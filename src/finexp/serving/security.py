"""Access control and what the server tells about itself: API keys, the gate every request passes, /metadata
without server paths.

With keys configured, every route but ``/health`` needs ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``
(compared in constant time, before the body is read; 401 otherwise). The key itself never appears in a config, a
message or a log line: a config names the environment variable or the file that holds it (a literal key in the
config would be written to the run directory's ``.hydra/config.yaml``).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import stat
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from finexp.config import ConfigError
from finexp.serving.limits import problem
from finexp.serving.metrics import ServingMetrics

log = logging.getLogger("finexp")
access_log = logging.getLogger("finexp.access")  # one JSON line per request

MIN_KEY_CHARS = 16  # a shorter API key is refused at start-up: it could be guessed
OPEN_PATHS = ("/health",)  # answered without the API key (liveness probes)
PRIVATE_METADATA = ("checkpoint", "run_dir", "config_path", "path")  # server paths: never in /metadata


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


class Gate:
    """Checks the API key (constant-time, before the body is read), writes one access-log line per request and
    counts it in ``metrics``."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        keys: Sequence[str],
        log_requests: bool,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.log_requests = log_requests
        self.metrics = metrics

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
                refusal = problem(
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                    {"WWW-Authenticate": "Bearer"},
                )
                await refusal(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            if self.metrics is not None:
                self.metrics.request(scope["path"], status, time.perf_counter() - started)
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
