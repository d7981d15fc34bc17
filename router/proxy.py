"""The hot path: forward one OpenAI request to an endpoint and stream its answer back.

Raw ASGI rather than FastAPI, because the framework's per-request work would double the router's
added latency. Per request:

1. admit it (:mod:`maitred.router.admission`: 431, 413, 400, 404);
2. pick an endpoint with the table's method, count it in flight, send upstream over a pooled
   keep-alive connection (none live and the table has `coldStart`: hold it until one is,
   :mod:`maitred.router.hold`);
3. before anything reached the client, a connection failure (or a status the table lists) is
   retried on another endpoint; after that, a failure ends an SSE stream with an error event;
4. pass status, headers and body through unchanged, chunk by chunk for streams;
5. a client that leaves cancels the upstream request at once.

In-flight counts are released in `finally`, exactly once, whatever happens. An endpoint's
consecutive-failure count is reset only by a response whose body completed: a stream cut off after
its headers counts as a failure (and in `maitred_streams_broken`).

What a request costs beyond forwarding it: its metrics (a few additions, see
:mod:`maitred.router.metrics`), for an SSE stream a count of `data:` per chunk, and at the end a look
for `usage` in the body's last few KiB or the stream's last two chunks (:mod:`maitred.router.usage`);
bodies are never parsed or buffered for it.

Upstream connections use :class:`UpstreamProtocol`, aiohttp's protocol made strict about what a
pooled keep-alive connection may carry (see there).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from dataclasses import dataclass

import aiohttp
from aiohttp.client_proto import ResponseHandler
from yarl import URL

from maitred.router.admission import ClientGone, Refused, admit
from maitred.router.asgi import Receive, Scope, Send
from maitred.router.balancing import RequestView
from maitred.router.endpoints import EndpointState, monotonic_s
from maitred.router.errors import send_error, sse_error_event
from maitred.router.health import describe
from maitred.router.hold import RETRY_AFTER_S
from maitred.router.metrics import NO_ENDPOINT
from maitred.router.usage import Usage, usage_of_body, usage_of_tail

access_log = logging.getLogger("maitred.access")
log = logging.getLogger("maitred.router.proxy")

#: Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus those the client
#: library recomputes (host, content-length).
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
     b"host", b"content-length", b"proxy-authenticate", b"proxy-authorization"}
)
_RESPONSE_DROP = HOP_BY_HOP - {b"content-length"}
#: Not forwarded either: `expect` (100-continue), since the router has read the whole body before it
#: sends the request, and a backend that never answers 100 would leave it waiting (NGINX and Envoy
#: drop it too, answering the client's 100 themselves, as uvicorn does here).
_REQUEST_DROP = HOP_BY_HOP | {b"expect"}


@dataclass(slots=True)
class Outcome:
    """What one request came to, for the access log and metrics (times in s, perf_counter)."""

    status: int = 0
    endpoint: str = NO_ENDPOINT
    attempts: int = 0
    stream: bool = False  # the answer was an SSE stream
    ttft_s: float | None = None  # streams only: arrival to the first chunk
    itl_s: float | None = None  # streams of 2+ tokens: mean time per token after the first
    error: str | None = None
    started: float = 0.0
    bytes: int = 0  # body bytes sent to the client (the router's own errors not counted)
    usage: Usage | None = None


@dataclass(slots=True)
class _Retry:
    """An attempt that failed before anything reached the client."""

    reason: str
    code: str
    status: int = 502


class MalformedBody(aiohttp.ClientPayloadError):
    """The response body broke HTTP's framing (a chunk-size line that is not hex, say)."""


class UpstreamProtocol(ResponseHandler):
    """aiohttp's client protocol, strict about what a pooled keep-alive connection may carry.

    - **Bytes nobody asked for close the connection.** A response parsed after the current request's
      final response (a second response in the same read, a body longer than its Content-Length),
      or any byte that arrives while the connection waits in the pool, would otherwise be read as
      the answer to the next request sent on it: one user's completion handed to another. The
      connection is closed instead, never reused, as NGINX's upstream keepalive does with an idle
      connection that turns readable.
    - **A malformed body fails at once.** aiohttp closes the connection on a framing error in the
      body but leaves the body's reader waiting for data that never comes (the idle timer stopped
      too), so a stream hung until the request timeout. The reader now gets :class:`MalformedBody`.
    - **The idle timeout runs while the request is sent**, not only once the whole body is written:
      a backend that takes no more of the body (or waits for a `100 Continue` nobody sends) fails
      after `idleSeconds` instead of holding the request until `requestSeconds`.
    """

    _answered = False  # the current request's final (non-1xx) response has been parsed
    _idle = False  # ... and its body has ended: nothing more may arrive before the next request

    def set_response_params(self, **kwargs) -> None:  # a request is about to be sent on this connection
        self._answered = self._idle = False
        super().set_response_params(**kwargs)
        self.start_timeout()

    def feed_data(self, data, size: int = 0) -> None:  # one parsed response: (message, payload)
        message, payload = data
        if self._answered:
            return self._unrequested("another response")
        if message.code >= 200 or message.code == 101:
            self._answered = True
            payload.on_eof(self._body_ended)
        super().feed_data(data, size)

    def data_received(self, data: bytes) -> None:
        if self._idle:
            if data:
                self._unrequested(f"{len(data)} bytes")
            return
        payload = self._payload
        super().data_received(data)
        if (self._exception is not None and payload is not None and not payload.is_eof()
                and payload.exception() is None):
            detail = str(getattr(self._exception, "message", self._exception)).strip().split("\n", 1)[0]
            payload.set_exception(MalformedBody(f"malformed response body ({detail.rstrip(':')})"))

    def _body_ended(self) -> None:
        self._idle = True

    def _unrequested(self, what: str) -> None:
        transport = self.transport
        if transport is None:
            return
        log.warning("upstream %s sent %s after its response, unasked: connection closed, not reused",
                    transport.get_extra_info("peername"), what)
        self._should_close = True
        transport.close()


def use_upstream_protocol(session: aiohttp.ClientSession) -> None:
    """Make `session`'s new connections :class:`UpstreamProtocol`, and close its idle ones.

    The proxy calls it before its first request on a session (built in :mod:`~maitred.router.core`);
    connections made until then (health checks) are closed, so that none carries a request unguarded.
    """
    connector = session.connector
    factory = getattr(connector, "_factory", None)
    if isinstance(factory, functools.partial) and factory.func is UpstreamProtocol:
        return
    if not isinstance(factory, functools.partial) or factory.func is not ResponseHandler:
        log.warning("aiohttp %s: cannot install the strict upstream protocol", aiohttp.__version__)
        return
    connector._factory = functools.partial(UpstreamProtocol, *factory.args, **factory.keywords)
    for idle in list(getattr(connector, "_conns", {}).values()):
        for protocol, _ in idle:
            protocol.close()


class Proxy:
    """ASGI app for the proxied `/v1/*` paths of one :class:`~maitred.router.core.Router`."""

    def __init__(self, router) -> None:  # router: maitred.router.core.Router (import cycle avoided)
        self.router = router
        self._session: aiohttp.ClientSession | None = None  # the router's session, once strict (UpstreamProtocol)
        self._active = 0  # requests in this process, for when metrics are flushed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = _request_id(scope)
        outcome = Outcome(started=started)
        model = None
        self._active += 1
        try:
            request = await admit(scope, receive, self.router.max_body_bytes, self.router.endpoints.table)
            model = request.model
            await self._forward_until_disconnect(scope, receive, send, request.body, request.parsed, request_id,
                                                 outcome)
        except Refused as refusal:
            outcome.status, model = refusal.status, refusal.model
            await send_error(send, refusal.status, refusal.message, "invalid_request_error", refusal.code,
                             param=refusal.param, request_id=request_id[:64])
        except ClientGone:
            outcome.status, outcome.error = 499, "client disconnected"
        finally:
            self._active -= 1
            self._log(scope, request_id, model, outcome, time.perf_counter() - started)

    async def _forward_until_disconnect(self, scope, receive, send, body, parsed, request_id, outcome) -> None:
        """Forward, while a watcher cancels the forwarding the moment the client disconnects."""
        task = asyncio.current_task()
        finished = False

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not finished:
                task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await self._forward(scope, send, body, parsed, request_id, outcome)
        except asyncio.CancelledError:
            if finished or not watcher.done() or watcher.cancelled():
                raise
            task.uncancel()
            raise ClientGone from None
        finally:
            finished = True
            watcher.cancel()

    async def _forward(self, scope, send, body, parsed, request_id, outcome) -> None:
        """Try endpoints until one answers or retries run out."""
        endpoints = self.router.endpoints
        table = endpoints.table
        tried: list[EndpointState] = []
        retry: _Retry | None = None
        view = RequestView(parsed, scope["headers"], table.affinity) if table is not None else None
        hold_until = None
        while True:
            live = endpoints.live
            candidates = [e for e in live if e not in tried] if tried else live
            if not candidates:
                if tried or table is None or table.cold_start is None:
                    return await self._no_endpoint(send, request_id, outcome, table, tried, retry)
                # A cold start: wait for a replica (once the deadline is set, a live set that emptied again
                # between two looks waits only for what is left of it).
                hold_until = hold_until or time.monotonic() + table.cold_start.hold_seconds
                refused = await self._hold(table.cold_start, hold_until - time.monotonic())
                if refused is not None:
                    return await self._cold_start_refused(send, request_id, outcome, table, refused)
                table = endpoints.table
                view = RequestView(parsed, scope["headers"], table.affinity)
                continue
            if retry is not None and len(tried) > table.retries.attempts:
                return await self._fail(send, retry.status, retry.reason, retry.code, request_id, outcome)
            endpoint = self.router.balancer.pick(candidates, view)
            can_retry = len(tried) < table.retries.attempts and len(candidates) > 1
            tried.append(endpoint)
            outcome.attempts = len(tried)
            outcome.endpoint = endpoint.id
            endpoint.acquire()
            try:
                retry = await self._attempt(endpoint, scope, send, body, request_id, outcome, can_retry)
            finally:
                endpoint.release()
            if retry is None:
                return
            self.router.metrics.retries.labels(endpoint.id, retry.code).inc()

    async def _hold(self, cold_start, timeout_s: float) -> str | None:
        """Hold the request until an endpoint is live, at most `timeout_s` (s), within the table's bound
        on requests held. None once one is live (or the table holds no more); else the refusal's code."""
        hold, endpoints = self.router.hold, self.router.endpoints
        if hold.closing:
            return "router_shutting_down"
        if not hold.enter(cold_start.max_requests):
            return "cold_start_queue_full"
        try:
            ready = await hold.wait(lambda: bool(endpoints.live) or endpoints.table.cold_start is None, timeout_s)
        finally:
            hold.leave()
        return None if ready else "router_shutting_down" if hold.closing else "cold_start_timeout"

    async def _cold_start_refused(self, send, request_id, outcome, table, code) -> None:
        cold_start, retry_after_s = table.cold_start, RETRY_AFTER_S
        if code == "router_shutting_down":
            message = (f"this router of pool {table.pool} is shutting down while the pool scales up from zero"
                       " replicas; retry (another router holds the request)")
            retry_after_s = 1
        elif code == "cold_start_queue_full":
            message = (f"pool {table.pool} is scaling up from zero replicas and {cold_start.max_requests} requests "
                       f"already wait for one; retry later")
        else:
            message = (f"no replica of pool {table.pool} became ready within {cold_start.hold_seconds:g} s "
                       f"while the pool scales up from zero; retry later")
        outcome.status, outcome.error = 503, message
        await send_error(send, 503, message, "service_unavailable", code, request_id=request_id,
                         retry_after_s=retry_after_s)

    async def _no_endpoint(self, send, request_id, outcome, table, tried, retry) -> None:
        outcome.status = 503
        if table is None:
            message = "no endpoint is available: the router has no routing table yet"
        elif not tried:
            message = f"no endpoint is available in pool {table.pool}: none of its {len(table.endpoints)} endpoints is live"
        else:
            message = (f"no endpoint is available in pool {table.pool}: every live endpoint failed "
                       f"({len(tried)} tried; last: {retry.reason})")
        outcome.error = message
        await send_error(send, 503, message, "service_unavailable", "no_endpoint_available", request_id=request_id)

    async def _attempt(self, endpoint, scope, send, body, request_id, outcome, can_retry) -> _Retry | None:
        """One try on `endpoint`. Returns a :class:`_Retry` if it failed before anything reached the client."""
        router = self.router
        health = router.health
        table = router.endpoints.table
        sent_at = time.perf_counter()
        try:
            resp = await self._send_upstream(endpoint, scope, body, request_id)
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                reason = "connect timed out"
            elif getattr(exc, "per_try", False):
                reason = f"no response headers within the per-try timeout ({table.retries.per_try_timeout_seconds:g} s)"
            else:
                # The idle or overall timeout: the endpoint took the request, so another try would double
                # the work; but a replica that hangs must still leave the rotation.
                reason = "timed out sending the request or waiting for response headers (idle or request timeout)"
                health.request_failed(endpoint, reason)
                return await self._fail(send, 504, reason, "upstream_timeout", request_id, outcome)
            health.request_failed(endpoint, reason)
            return _Retry(reason, "upstream_timeout", 504)
        except aiohttp.ClientError as exc:
            # Nothing came back: safe to try another endpoint; _forward decides whether one is left.
            reason = describe(exc)
            health.request_failed(endpoint, reason)
            return _Retry(reason, "upstream_connect_error")
        try:
            status = resp.status
            # A 5xx counts against the endpoint at once; any other answer counts for it once its body
            # has come whole (in the relays): a response cut off after its headers is a failure.
            answered = status < 500 or _sheds_load(resp)
            if not answered:
                health.request_failed(endpoint, f"HTTP {status}")
            if can_retry and status in table.retries.on_status:
                if answered:
                    health.request_succeeded(endpoint)
                return _Retry(f"HTTP {status}", f"upstream_{status}", status)
            outcome.status = status
            headers = [(k, v) for k, v in resp.raw_headers if k.lower() not in _RESPONSE_DROP]
            if not any(k.lower() == b"x-request-id" for k, _ in headers):
                headers.append((b"x-request-id", request_id))
            # Which replica answered: for debugging and for clients that measure per replica.
            headers.append((b"x-maitred-endpoint", endpoint.id.encode()))
            if resp.content_length is not None:
                return await self._relay_whole(resp, endpoint, headers, send, sent_at, outcome, answered, request_id)
            await self._relay_stream(resp, endpoint, headers, send, sent_at, outcome, answered)
            return None
        finally:
            resp.close()

    async def _send_upstream(self, endpoint, scope, body, request_id) -> aiohttp.ClientResponse:
        """Send the request and wait for response headers (per-try timeout applies here).

        A disconnect before any response is most often a pooled keep-alive connection that the
        endpoint closed while it sat idle (uvicorn, so vLLM, closes them after 5 s), met just as it
        was reused. The request is then sent once more, which takes a fresh connection, as HTTP
        clients do for reused connections (RFC 9112 §9.3.1) and aiohttp does for idempotent methods
        only. Without it, a request that met such a connection failed: a 503 when the pool has one
        endpoint, and a failure counted towards ejecting a healthy endpoint. A failure to connect is
        not resent: the endpoint is down.
        """
        url = URL(endpoint.url + scope["raw_path"].decode("latin-1")
                  + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else ""), encoded=True)
        headers = _upstream_headers(scope, request_id)
        if self.router.session is not self._session:
            self._session = self.router.session
            use_upstream_protocol(self._session)
        try:
            return await self._send_once(url, scope["method"], body, headers)
        except aiohttp.ClientConnectorError:
            raise
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            return await self._send_once(url, scope["method"], body, headers)

    async def _send_once(self, url, method, body, headers) -> aiohttp.ClientResponse:
        router = self.router
        request = router.session.request(method, url, data=body or None, headers=headers,
                                         timeout=router.client_timeout, allow_redirects=False)
        per_try = router.endpoints.table.retries.per_try_timeout_seconds
        if per_try is None:
            return await request
        try:
            async with asyncio.timeout(per_try):
                return await request
        except TimeoutError as exc:
            exc.per_try = True
            raise

    async def _relay_whole(self, resp, endpoint, headers, send, sent_at, outcome, answered,
                           request_id) -> _Retry | None:
        """A response with a Content-Length: read it whole, so that a reset can still be retried.

        Headers and then silence past the idle timeout is a 504, not retried: the endpoint took the
        request, and another try would double the work (as with no headers at all).
        """
        health = self.router.health
        try:
            data = await resp.read()
        except TimeoutError:
            reason = "timed out waiting for the response body (idle or request timeout)"
            health.request_failed(endpoint, reason)
            await self._fail(send, 504, reason, "upstream_timeout", request_id, outcome)
            return None
        except aiohttp.ClientError as exc:
            reason = describe(exc)
            health.request_failed(endpoint, reason)
            return _Retry(reason, "upstream_reset")
        if answered:
            health.request_succeeded(endpoint)
        self._observe(endpoint, sent_at)
        outcome.bytes = len(data)
        if 200 <= resp.status < 300:
            outcome.usage = usage_of_body(data)
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": data})
        self._record(endpoint, sent_at)
        return None

    async def _relay_stream(self, resp, endpoint, headers, send, sent_at, outcome, answered) -> None:
        """A streamed response: pass each chunk on as it arrives; on failure end SSE with an error event.

        Of an SSE stream, the time to its first chunk is its TTFT, and its inter-token latency is
        (last chunk - first chunk) / (tokens - 1), the tokens being the usage's completion tokens,
        else the `data:` events less `[DONE]`.
        """
        outcome.stream = is_sse = (resp.content_type or "").startswith("text/event-stream")
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        first_at = 0.0
        events = sent = 0
        previous = last = b""
        try:
            async for chunk in resp.content.iter_any():
                if not first_at:
                    first_at = self._observe(endpoint, sent_at)
                    if is_sse:
                        outcome.ttft_s = first_at - outcome.started
                if is_sse:
                    events += chunk.count(b"data:")
                sent += len(chunk)
                previous, last = last, chunk
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome.bytes = sent
            if isinstance(exc, TimeoutError):
                kind, code, reason = "timeout", "upstream_timeout", "idle timeout: no data from the endpoint"
            elif isinstance(exc, MalformedBody):
                kind, code, reason = "malformed", "upstream_protocol_error", str(exc)
            else:
                kind, code, reason = "reset", "upstream_reset", describe(exc)
            outcome.error = reason
            self.router.metrics.streams_broken.labels(endpoint.id, kind).inc()
            self.router.health.request_failed(endpoint, f"stream broken: {reason}")
            self._record(endpoint, sent_at)
            if not is_sse:
                # No way to signal the error inside an arbitrary body: close the connection instead
                # (returning without finishing the response makes the server do so).
                return
            message = f"the stream from endpoint {endpoint.id} broke after it had started: {reason}"
            await send({"type": "http.response.body", "body": sse_error_event(message, code), "more_body": False})
            return
        ended = time.perf_counter()
        if answered:
            self.router.health.request_succeeded(endpoint)
        outcome.bytes = sent
        if 200 <= resp.status < 300 and first_at:
            usage = outcome.usage = usage_of_tail(previous, last)
            if is_sse:
                tokens = usage.completion if usage is not None and usage.completion else (
                    events - (b"[DONE]" in last or b"[DONE]" in previous))
                if tokens >= 2:
                    outcome.itl_s = (ended - first_at) / (tokens - 1)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._record(endpoint, sent_at)

    def _observe(self, endpoint: EndpointState, sent_at: float) -> float:
        """The endpoint's first byte is here: its latency for the balancers. Returns now (perf_counter, s)."""
        now = time.perf_counter()
        endpoint.observe_latency((now - sent_at) * 1000.0, monotonic_s())
        return now

    def _record(self, endpoint: EndpointState, sent_at: float) -> None:
        self.router.metrics.record_upstream(endpoint.id, time.perf_counter() - sent_at)

    async def _fail(self, send, status, reason, code, request_id, outcome) -> None:
        outcome.status, outcome.error = status, reason
        await send_error(send, status, f"upstream {outcome.endpoint} failed: {reason}", "upstream_error", code,
                         request_id=request_id)

    def _log(self, scope, request_id: bytes, model, outcome: Outcome, duration_s: float) -> None:
        """Metrics, and the access line (never the prompt, the body or a header but the request id)."""
        metrics = self.router.metrics
        # The duration of requests that reached an endpoint and were answered (not of the router's own
        # refusals, nor of clients that left).
        answered = outcome.endpoint != NO_ENDPOINT and outcome.status != 499
        metrics.record_request(outcome.endpoint, metrics.model_label(model), outcome.status,
                               duration_s if answered else None, outcome.ttft_s, outcome.itl_s, outcome.usage)
        metrics.maybe_flush(self._active)
        if access_log.isEnabledFor(logging.INFO):
            usage = outcome.usage
            access_log.info("%s %s %d", scope["method"], scope["path"], outcome.status, extra={"fields": {
                "requestId": request_id.decode("latin-1"), "method": scope["method"], "path": scope["path"],
                "model": model, "endpoint": outcome.endpoint, "status": outcome.status,
                "attempts": outcome.attempts, "stream": outcome.stream,
                "ttftMs": None if outcome.ttft_s is None else round(outcome.ttft_s * 1000.0, 2),
                "itlMs": None if outcome.itl_s is None else round(outcome.itl_s * 1000.0, 3),
                "durationMs": round(duration_s * 1000.0, 2), "bytes": outcome.bytes,
                "promptTokens": usage.prompt if usage else None,
                "completionTokens": usage.completion if usage else None,
                "cachedTokens": usage.cached if usage else None,
                "error": outcome.error,
            }})


def _sheds_load(resp: aiohttp.ClientResponse) -> bool:
    """A 503 with Retry-After: a replica turning work away while busy (vLLM, the simulator), not failing.

    It may be retried elsewhere, but it does not count towards ejection: ejecting a busy replica
    pushes its load onto the others, and a whole pool can go down that way.
    """
    return resp.status == 503 and "Retry-After" in resp.headers


_ids = random.Random()


def _request_id(scope: Scope) -> bytes:
    for key, value in scope["headers"]:
        if key == b"x-request-id" and value:
            return value
    # Unique, not secret: a PRNG is ten times cheaper than the OS's entropy pool on the hot path.
    return b"%024x" % _ids.getrandbits(96)


def _header_text(value: bytes) -> str:
    """A header value as text that aiohttp, which writes header text as UTF-8, sends as the client's bytes.

    Latin-1 for a value that is not UTF-8 (its bytes 0x80-0xff then go out as two bytes each; aiohttp
    takes no bytes). Decoding every value as latin-1 garbled each non-ASCII UTF-8 one ("é" arrived as "Ã©").
    """
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _upstream_headers(scope: Scope, request_id: bytes) -> list[tuple[str, str]]:
    """The client's headers less hop-by-hop ones, with x-request-id and x-forwarded-for added."""
    headers = []
    has_id = False
    forwarded_for = None
    for key, value in scope["headers"]:
        if key in _REQUEST_DROP:
            continue
        if key == b"x-request-id":
            has_id = True
        elif key == b"x-forwarded-for":
            forwarded_for = value.decode("latin-1")
            continue
        headers.append((key.decode("latin-1"), _header_text(value)))
    if not has_id:
        headers.append(("x-request-id", request_id.decode("latin-1")))
    client = scope.get("client")
    if client:
        headers.append(("x-forwarded-for", f"{forwarded_for}, {client[0]}" if forwarded_for else client[0]))
    return headers
