"""Reading a request under bounds: bytes (413), time (408, by the caller), JSON depth and string length (422).

Everything here runs before a request is queued for the model, so a malformed or hostile request is answered on its
own and never reaches a batch shared with other requests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

ROW_BYTES = 64 * 1024  # a request body may hold up to this much per allowed row (plus 64 KiB): larger is 413


class PredictRequest(BaseModel):
    """A request's rows: ``rows`` (objects of column values) or ``texts`` (a text task's text column)."""

    model_config = ConfigDict(extra="forbid")

    rows: list[dict[str, Any]] | None = None
    texts: list[Any] | None = None


class Refused(Exception):
    """A request refused before scoring: its status, the reason, and extra headers."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, dict(headers or {})


def problem(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A JSON error answer: ``{"detail": ...}``."""
    return JSONResponse(status_code=status, content={"detail": detail}, headers=dict(headers or {}))


def _reason(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


async def read_body(request: Request, max_body: int) -> bytes:
    """The body, read piece by piece; stops (413) as soon as it passes ``max_body`` bytes, whatever the headers."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body:
        raise Refused(413, f"request body of {length} bytes is larger than {max_body} (serve.max_batch)")
    pieces, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > max_body:
            raise Refused(
                413, f"request body larger than {max_body} bytes (serve.max_batch); stopped reading at {size} bytes"
            )
        pieces.append(piece)
    return b"".join(pieces)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON (use null for a missing value)")


def check_json(payload: object, max_depth: int, max_text_chars: int) -> None:
    """Depth and string-length limits, walked without recursion (a deep payload cannot exhaust the stack)."""
    stack: list[tuple[object, int, str]] = [(payload, 1, "body")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, str):
            if len(value) > max_text_chars:
                raise Refused(
                    422, f"{where}: a text of {len(value)} characters; at most {max_text_chars} (serve.max_text_chars)"
                )
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > max_depth:
            raise Refused(422, f"{where}: JSON nested deeper than {max_depth} levels (serve.max_json_depth)")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            if isinstance(key, str) and len(key) > max_text_chars:
                raise Refused(422, f"{where}: a key of {len(key)} characters (serve.max_text_chars)")
            if isinstance(child, (dict, list, str)):
                stack.append((child, depth + 1, f"{where}.{key}" if where != "body" else str(key)))


def parse(body: bytes, max_depth: int, max_text_chars: int) -> PredictRequest:
    """A body as a :class:`PredictRequest`, or :class:`Refused` (422) with the reason."""
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except RecursionError as err:  # deeper than the interpreter's recursion limit: far past max_depth
        raise Refused(422, f"body: JSON nested deeper than {max_depth} levels (serve.max_json_depth)") from err
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, too many digits, NaN/Infinity
        raise Refused(422, f"the body is not JSON: {err}") from err
    if not isinstance(payload, dict):
        raise Refused(422, 'the body must be a JSON object: {"rows": [...]} or {"texts": [...]}')
    check_json(payload, max_depth, max_text_chars)
    try:
        return PredictRequest.model_validate(payload)
    except ValidationError as err:
        raise Refused(422, _reason(err)) from err
