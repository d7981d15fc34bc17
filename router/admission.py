"""Admission: the checks a request must pass before it is forwarded, each refusal in OpenAI's error format.

- headers over `MAX_HEADER_BYTES` in all: 431 `headers_too_large`;
- a body over the router's limit (by Content-Length, or counted as it arrives): 413 `request_too_large`;
- on the paths that name a model (`MODEL_PATHS`): a body that is not JSON, 400 `invalid_json`; no model
  or not a string, 400 `missing_model`; a model the table does not list, 404 `model_not_found`.

Bodies are parsed only on `MODEL_PATHS`; everything else under /v1/ passes unread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from maitred.router.asgi import Receive, Scope
from maitred.router.table import RoutingTable

#: Paths whose body must be JSON naming a model.
MODEL_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
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
    return Admitted(body, parsed, parsed["model"])


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, at most `limit` bytes. Raises :class:`Refused` (413) or :class:`ClientGone`."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
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
    except orjson.JSONDecodeError as exc:
        raise Refused(400, f"request body is not valid JSON: {exc}", "invalid_json") from None
    given = parsed.get("model") if isinstance(parsed, dict) else None
    if not isinstance(given, str) or not given:
        message = ("you must provide a model parameter" if given is None
                   else f"model must be a non-empty string, not {orjson.dumps(given).decode()[:80]}")
        raise Refused(400, message, "missing_model", param="model")
    return parsed


def check_model(model: str, table: RoutingTable | None) -> None:
    """Raises :class:`Refused` (404) if the table lists models and not this one."""
    if table is not None and table.models and model not in table.models:
        raise Refused(404, f"the model `{model}` does not exist in pool {table.pool}; served: "
                      f"{', '.join(table.models)}", "model_not_found", param="model", model=model)


def _too_large(limit: int) -> Refused:
    return Refused(413, f"request body is larger than the limit of {limit} bytes", "request_too_large")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None
