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
    assert metric(metrics, "maitred_requests_in_flight", endpoint="raw") == 0
    assert metric(metrics, "maitred_streams_broken_total", endpoint="raw", reason="malformed") == 1


def test_expect_100_continue_is_answered_by_the_router_and_not_forwarded(raw_backends, router):
    # curl sends `Expect: 100-continue` for bodies over 1 MiB; this backend, as some do, never sends 100.
    (raw,) = raw_backends("raw")
    r = router(quiet_table([raw], timeouts={"idleSeconds": 5}))
    data = os.urandom(2 * MIB)
    started = time.monotonic()
    resp = r.client.post("/v1/files/echo", content=data, timeout=15,
                         headers={"expect": "100-continue", "content-type": "application/octet-stream"})
    assert resp.status_code == 200, resp.text
    assert time.monotonic() - started < 3.0
    seen = resp.json()
    assert (seen["bytes"], seen["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert "expect" not in seen["headers"]
    assert raw.stats()["expects"] == 0


def test_a_backend_that_takes_none_of_the_body_fails_after_the_idle_timeout(raw_backends, router):
    (raw,) = raw_backends("raw")
    r = router(quiet_table([raw], timeouts={"idleSeconds": 1, "requestSeconds": 120}))
    started = time.monotonic()
    resp = r.client.post("/v1/files/unread", content=os.urandom(24 * MIB), timeout=15)
    took = time.monotonic() - started
    assert resp.status_code == 504 and resp.headers["x-maitred-error"] == "upstream_timeout"
    assert took < 6.0, f"{took:.1f} s"
    assert raw.stats()["requests"] == 1
    wait_for(lambda: r.endpoints()["raw"]["inFlight"] == 0, 2, "in-flight to return to 0")


def test_headers_then_silence_is_a_504_or_an_sse_timeout_and_never_tried_elsewhere(raw_backends, router):
    a, b = raw_backends("a", "b")
    r = router(quiet_table([a, b], method="round-robin", retries={"attempts": 2}, timeouts={"idleSeconds": 0.5}))
    started = time.monotonic()
    resp = r.client.post("/v1/x/silent-length", content=b"{}")
    assert resp.status_code == 504, resp.text
    assert resp.headers["x-maitred-error"] == "upstream_timeout"
    assert "timed out" in resp.json()["error"]["message"]
    assert time.monotonic() - started < 3.0
    assert a.stats()["requests"] + b.stats()["requests"] == 1, "the endpoint took the request: no second try"

    with r.client.stream("POST", "/v1/x/silent-sse", content=b"{}") as resp:
        assert resp.status_code == 200
        events = sse_events(resp)
    assert len(events) == 1 and error_event(events[0])["code"] == "upstream_timeout"
    assert a.stats()["requests"] + b.stats()["requests"] == 2
    assert metric(r.metrics(), "maitred_retries_total") == 0


def test_a_replica_that_breaks_every_stream_is_counted_and_ejected(backends, router):
    bad, good = backends(("bad", {"chunks": 5, "reset_after_chunks": 1}), ("good", {"chunks": 5}))
    r = router(table([bad, good], method="round-robin",
                     healthCheck={"path": "/health", "periodSeconds": 30, "failureThreshold": 3}))
    broken = 0
    for _ in range(8):
        with r.client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as resp:
            assert resp.status_code == 200
            events = sse_events(resp)
        if events[-1].startswith(b"event: error"):
            broken += 1
            assert resp.headers["x-backend"] == "bad"
            assert error_event(events[-1])["code"] == "upstream_reset"
        else:
            assert events[-1] == b"data: [DONE]"
    assert broken == 3, "the replica left the rotation after failureThreshold broken streams"
    state = r.endpoints()["bad"]
    assert state["live"] is False and "stream broken" in state["healthReason"]
    metrics = r.metrics()
    assert metric(metrics, "maitred_streams_broken_total", endpoint="bad") == 3
    assert metric(metrics, "maitred_streams_broken_total", endpoint="bad", reason="reset") == 3
    assert metric(metrics, "maitred_streams_broken_total", endpoint="good") == 0
    assert metric(metrics, "maitred_ejections_total", endpoint="bad") == 1
