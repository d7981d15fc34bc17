"""Errors the router answers itself, in OpenAI's error format.

Body: ``{"error": {"message": str, "type": str, "param": str | None, "code": str | None}}``. The
router's own errors also carry the header ``x-maitred-error: <code>``, so a client or a dashboard can
tell them from a backend's answer with the same status (a backend's own 503 has no such header).
"""

from __future__ import annotations

import orjson

from maitred.router.asgi import Send


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    """An OpenAI-format error document as JSON bytes."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def sse_error_event(message: str, code: str) -> bytes:
    """An SSE error event for a stream that fails after it has started (the OpenAI SDK raises on it)."""
    return b"event: error\ndata: " + error_body(message, "upstream_error", code) + b"\n\n"


async def send_error(
    send: Send,
    status: int,
    message: str,
    type_: str,
    code: str,
    param: str | None = None,
    request_id: bytes = b"",
    retry_after_s: int = 1,
) -> None:
    """Answer a request with the router's own error; a 503 carries `Retry-After: retry_after_s` (s)."""
    body = error_body(message, type_, code, param)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-maitred-error", code.encode()),
    ]
    if request_id:
        headers.append((b"x-request-id", request_id))
    if status == 503:
        # No endpoint now; health checks may bring one back soon (a cold start takes longer).
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
