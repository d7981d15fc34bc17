"""Admission: the checks a request must pass before it is forwarded, each refusal in OpenAI's error format.

- headers over `MAX_HEADER_BYTES` in all: 431 `headers_too_large`;
- a body over the router's limit (by Content-Length, or counted as it arrives): 413 `request_too_large`;
- on the paths that name a model (`MODEL_PATHS`): a body that is not JSON, 400 `invalid_json`; no model
  or not a string, 400 `missing_model`; a model the table does not list, 404 `model_not_found`.

"JSON" is what Python's json module reads, as vLLM and SGLang do: orjson parses first (fast), and a
body it refuses is read again with json.loads, which also takes a lone surrogate escape (`"\\ud83d"`,
a string cut inside an emoji by a JavaScript client), NaN and Infinity. The body is forwarded as
received either way.

Bodies are parsed only on `MODEL_PATHS`; everything else under /v1/ passes unread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from maitred.router.asgi import Receive, Scope
from maitred.router.table import RoutingTable

#: Paths whose body must be JSON naming a model.
MODEL_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
#: Larger request headers in all are refused, not forwarded: NGINX's default is 4 x 8 KiB.
MAX_HEADER_BYTES = 64 * 1024


class ClientGone(Exception):
    """The client disconnected."""


class Refused(Exception):
    """A request the router answers itself with a 4xx; `code` is the OpenAI error code."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None, model: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.model = status, message, code, param, model


@dataclass(slots=True)
class Admitted:
    """A request that may be forwarded: its body (bytes), the parsed JSON on model paths (else None), its model."""

    body: bytes
    parsed: Any = None
    model: str | None = None


async def admit(scope: Scope, receive: Receive, max_body_bytes: int, table: RoutingTable | None) -> Admitted:
    """Read and check one request. Raises :class:`Refused` (answer it) or :class:`ClientGone`."""
    if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
        raise Refused(431, f"request headers are larger than {MAX_HEADER_BYTES} bytes in all", "headers_too_large")
    body = await read_body(scope, receive, max_body_bytes)
    if scope["method"] != "POST" or scope["path"] not in MODEL_PATHS:
        return Admitted(body)
    parsed = parse_model_request(body)
    check_model(parsed["model"], table)
    return Admitted(body, parsed, printable(parsed["model"]))


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, at most `limit` bytes. Raises :class:`Refused` (413) or :class:`ClientGone`."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_model_request(body: bytes) -> dict:
    """The JSON object of a model path's body, with a non-empty string `model`. Raises :class:`Refused` (400)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = _loads_as_python_does(body)
    given = parsed.get("model") if isinstance(parsed, dict) else None
    if not isinstance(given, str) or not given:
        message = ("you must provide a model parameter" if given is None
                   else f"model must be a non-empty string, not {_show(given)[:80]}")
        raise Refused(400, message, "missing_model", param="model")
    return parsed


def _loads_as_python_does(body: bytes):
    """A body orjson refused, read as the backends' json.loads does. Raises :class:`Refused` (400)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; nesting past the stack
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise Refused(400, f"request body is not valid JSON: {reason}", "invalid_json") from None


def printable(text: str) -> str:
    """`text`, with any lone surrogate (not encodable as UTF-8) written as its escape, for messages and logs."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _show(value) -> str:
    """A JSON value as short text for an error message (lone surrogates escaped)."""
    if isinstance(value, float):
        return json.dumps(value)  # NaN and Infinity as json writes them (orjson: null)
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # a lone surrogate
        return json.dumps(value)


def check_model(model: str, table: RoutingTable | None) -> None:
    """Raises :class:`Refused` (404) if the table lists models and not this one."""
    if table is not None and table.models and model not in table.models:
        model = printable(model)
        raise Refused(404, f"the model `{model}` does not exist in pool {table.pool}; served: "
                      f"{', '.join(table.models)}", "model_not_found", param="model", model=model)


def _too_large(limit: int) -> Refused:
    return Refused(413, f"request body is larger than the limit of {limit} bytes", "request_too_large")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None
