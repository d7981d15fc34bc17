"""Backends that misbehave at the byte level (tests/router/raw_backend.py) or break every stream:
bytes after a response never answer another request, a malformed chunk ends a stream at once,
`Expect: 100-continue` is not forwarded and no wait outlasts the idle timeout, headers then silence
is a 504 not retried, and broken streams are counted and eject their replica."""

from __future__ import annotations

import hashlib
import os
import time

import orjson
import pytest
from raw_harness import raw_backends  # noqa: F401 (a fixture)
from router_harness import chat_body, metric, table, wait_for

MIB = 1024 * 1024


def quiet_table(backends, **extra) -> dict:
    """A table whose health checks stay out of the way (one at start, then every 30 s)."""
    return table(backends, healthCheck={"path": "/health", "periodSeconds": 30, "failureThreshold": 3}, **extra)


def sse_events(resp) -> list[bytes]:
    return [e for e in resp.read().split(b"\n\n") if e]


def error_event(event: bytes) -> dict:
    assert event.startswith(b"event: error\ndata: "), event
    return orjson.loads(event.split(b"data: ", 1)[1])["error"]


@pytest.mark.parametrize("misbehaviour", ["overlong", "late-second", "late-partial"])
def test_bytes_a_backend_sends_after_its_response_never_answer_the_next_request(raw_backends, router, misbehaviour):
    # overlong: a body longer than its Content-Length (a whole second response); late-second: a second
    # response 0.3 s after the first, unasked; late-partial: the first line of one. The first two would
    # be read as the next request's answer; all three make the connection one to close, not reuse.
    (raw,) = raw_backends("raw")
    r = router(quiet_table([raw]))
    first, second = (r.client.post("/v1/x/echo", content=b"{}").json() for _ in range(2))
    assert first["conn"] == second["conn"], "the router did not reuse its connection: nothing would be tested"

    answer = r.client.post(f"/v1/x/{misbehaviour}", content=b"{}")
    assert answer.status_code == 200 and answer.json()["n"] == 3
    time.sleep(0.6)  # the extra bytes have arrived
    for n in (4, 5, 6):
        resp = r.client.post("/v1/x/echo", content=b"{}")
        assert resp.status_code == 200
        assert "stolen" not in resp.json(), f"request {n} got the bytes sent after request 3's response"
        assert resp.json()["n"] == n
        assert resp.json()["conn"] != first["conn"], "the connection that carried them was used again"


def test_a_malformed_chunk_mid_stream_ends_the_stream_at_once_and_frees_its_slot(raw_backends, router):
    (raw,) = raw_backends("raw")
    r = router(quiet_table([raw], timeouts={"idleSeconds": 30, "requestSeconds": 60}))
    started = time.monotonic()
    with r.client.stream("POST", "/v1/x/bad-chunk", content=b"{}", timeout=8) as resp:
        assert resp.status_code == 200
        events = sse_events(resp)
    assert time.monotonic() - started < 3.0, "the stream waited for a timeout after the bad chunk"
    assert events[:3] == [b'data: {"i": 0}', b'data: {"i": 1}', b'data: {"i": 2}']
    assert len(events) == 4
    error = error_event(events[3])
    assert error["code"] == "upstream_protocol_error" and "malformed" in error["message"]
    wait_for(lambda: r.endpoints()["raw"]["inFlight"] == 0, 2, "in-flight to return to 0")
    metrics = r.metrics()
    assert metric(metrics, "maitred_in_flight", endpoint="raw") == 0
