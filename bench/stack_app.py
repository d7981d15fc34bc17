"""A minimal raw-ASGI proxy for bench/http_stack.py: the router's hot path without its policy.

Per request: read the body, forward it with the client's headers (less hop-by-hop ones) to the
next upstream in turn, relay status, headers and body; a response without Content-Length is relayed
chunk by chunk as it arrives (SSE). No admission, balancing, metrics or retries, so what is left is
the cost of the ASGI server and of the upstream client.

Configured from the environment, so that any ASGI server can load `stack_app:app`:

- `STACK_CLIENT`: `aiohttp` or `pyreqwest` (Rust reqwest/hyper under Python);
- `STACK_UPSTREAMS`: comma-separated base URLs, e.g. `http://127.0.0.1:8001,http://127.0.0.1:8002`.
"""

from __future__ import annotations

import gc
import itertools
import os

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
                        b"upgrade", b"host", b"content-length", b"proxy-authenticate", b"proxy-authorization"})
_RESPONSE_DROP_B = HOP_BY_HOP - {b"content-length"}
_RESPONSE_DROP = {h.decode() for h in _RESPONSE_DROP_B}

CLIENT = os.environ.get("STACK_CLIENT", "aiohttp")
UPSTREAMS = [u.rstrip("/") for u in os.environ.get("STACK_UPSTREAMS", "http://127.0.0.1:8000").split(",")]
_next_upstream = itertools.cycle(UPSTREAMS).__next__


async def _read_body(receive) -> bytes:
    """The whole request body (ASGI `http.request` messages until `more_body` is false)."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


def _headers(scope) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in HOP_BY_HOP]


def _url(scope) -> str:
    query = scope["query_string"]
    return _next_upstream() + scope["raw_path"].decode("latin-1") + ("?" + query.decode("latin-1") if query else "")


class AiohttpForwarder:
    """Upstream requests over one aiohttp session (pooled keep-alive connections, no connection limit)."""

    def __init__(self) -> None:
        import aiohttp
        from yarl import URL
        self.URL = URL
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60), auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=None))

    async def __call__(self, scope, body: bytes, send) -> None:
        async with self.session.request(scope["method"], self.URL(_url(scope), encoded=True),
                                        data=body or None, headers=_headers(scope), allow_redirects=False) as resp:
            headers = [(k, v) for k, v in resp.raw_headers if k.lower() not in _RESPONSE_DROP_B]
            if resp.content_length is not None:
                data = await resp.read()
                await send({"type": "http.response.start", "status": resp.status, "headers": headers})
                await send({"type": "http.response.body", "body": data})
                return
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    async def close(self) -> None:
        await self.session.close()


class PyreqwestForwarder:
    """Upstream requests over one pyreqwest client (Rust reqwest on a Tokio runtime thread)."""

    def __init__(self) -> None:
        from pyreqwest.client import ClientBuilder
        self.client = (ClientBuilder().gzip(False).brotli(False).zstd(False).deflate(False)
                       .follow_redirects(False).referer(False).build())

    async def __call__(self, scope, body: bytes, send) -> None:
        # A streamed request's __aenter__ waits until `streamed_read_buffer_limit` bytes (default 64 KiB)
        # or the whole body arrived: an SSE stream's first events would wait. 1 byte: it returns with
        # the first chunk.
        builder = (self.client.request(scope["method"], _url(scope)).headers(_headers(scope))
                   .streamed_read_buffer_limit(1))
        if body:
            builder = builder.body_bytes(body)
        async with builder.build_streamed() as resp:
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.items()
                       if k not in _RESPONSE_DROP]
            if resp.get_header("content-length") is not None:
                data = (await resp.body_reader.bytes()).to_bytes()
                await send({"type": "http.response.start", "status": resp.status, "headers": headers})
                await send({"type": "http.response.body", "body": data})
                return
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            reader = resp.body_reader
            while (chunk := await reader.read_chunk()) is not None:
                await send({"type": "http.response.body", "body": chunk.to_bytes(), "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    async def close(self) -> None:
        await self.client.close()


_forwarder = None


def _get_forwarder():
    global _forwarder
    if _forwarder is None:
        _forwarder = PyreqwestForwarder() if CLIENT == "pyreqwest" else AiohttpForwarder()
    return _forwarder


async def app(scope, receive, send) -> None:
    """The ASGI app: lifespan (client made at start-up, `gc.freeze()` as the router does) and the proxy."""
    kind = scope["type"]
    if kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _get_forwarder()
                gc.collect()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _forwarder is not None:
                    await _forwarder.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if kind != "http":
        return
    if scope["path"] == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"OK"})
        return
    body = await _read_body(receive)
    await _get_forwarder()(scope, body, send)
