"""Streaming through the router: chunks keep their timing, a broken stream is never retried,
and a client that leaves cancels the upstream request."""

from __future__ import annotations

import statistics
import time

import orjson
from router_harness import chat_body, metric, table, wait_for


def read_sse(resp) -> list[tuple[float, bytes]]:
    """The SSE events of a streamed response, each with the time its read completed it (s, monotonic)."""
    events, buffer = [], b""
    for piece in resp.iter_raw():
        now = time.monotonic()
        buffer += piece
        *complete, buffer = buffer.split(b"\n\n")
        events += [(now, e) for e in complete if e]
    return events


def content_of(event: bytes) -> str | None:
    """The text of a chat chunk event, or None for [DONE], a finish chunk or an error event."""
    if not event.startswith(b"data: {"):
        return None
    choices = orjson.loads(event[6:])["choices"]
    return choices[0]["delta"].get("content") or None


def test_sse_chunks_pass_through_as_they_come_with_their_spacing(backends, router):
    (slow,) = backends(("a", {"chunks": 60, "interval_s": 0.25, "first_delay_s": 0.5}))
    r = router(table([slow]))

    sent = time.monotonic()
    with r.client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as resp:
        assert resp.status_code == 200
        assert "content-length" not in resp.headers
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = read_sse(resp)

    arrivals = [t for t, e in events if content_of(e)]
    assert [content_of(e) for _, e in events if content_of(e)] == [f"t{i} " for i in range(60)]
    assert events[-1][1] == b"data: [DONE]"
    first_s = arrivals[0] - sent
    assert first_s < 0.7, f"first chunk took {first_s:.3f} s (backend sends it at 0.5 s)"
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert 0.2 <= statistics.median(gaps) <= 0.3, f"median gap {statistics.median(gaps):.3f} s"
    # Batching would show as chunks arriving together; the backend's 250 ms spacing must survive.
    separate = 1 + sum(1 for g in gaps if g > 0.03)
    assert separate >= 55, f"only {separate} of 60 chunks arrived in reads of their own"
    assert arrivals[-1] - arrivals[0] > 59 * 0.25 * 0.9

    metrics = r.metrics()
    assert metric(metrics, "maitred_requests_total", endpoint="a", status="200") == 1
    assert metric(metrics, "maitred_ttft_seconds_count", endpoint="a") == 1
    assert 0.5 <= metric(metrics, "maitred_ttft_seconds_sum", endpoint="a") < 0.7
    assert metric(metrics, "maitred_upstream_latency_seconds_sum", endpoint="a") > 14.0


def test_stream_broken_after_first_bytes_is_not_retried_and_ends_with_an_sse_error(backends, router):
    bad, good = backends(("bad", {"chunks": 10, "interval_s": 0.05, "reset_after_chunks": 3}),
                         ("good", {"chunks": 10, "interval_s": 0.01}))
    r = router(table([bad, good], method="round-robin", retries={"attempts": 2},
                     healthCheck={"periodSeconds": 0.5, "failureThreshold": 10}))

    broken = whole = 0
    for _ in range(4):
        with r.client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as resp:
            assert resp.status_code == 200
            answered_by = resp.headers["x-backend"]
            events = [e for _, e in read_sse(resp)]
        if answered_by == "bad":
            broken += 1
            assert [content_of(e) for e in events[:3]] == ["t0 ", "t1 ", "t2 "]
            assert len(events) == 4, events
            assert events[3].startswith(b"event: error\ndata: ")
            error = orjson.loads(events[3].split(b"data: ", 1)[1])["error"]
            assert error["code"] == "upstream_reset"
            assert "bad" in error["message"]
        else:
            whole += 1
            assert [content_of(e) for e in events if content_of(e)] == [f"t{i} " for i in range(10)]
            assert events[-1] == b"data: [DONE]"

    assert broken == 2 and whole == 2
    # No second response: each request reached exactly one backend.
    assert bad.stats()["requests"] == 2
    assert good.stats()["requests"] == 2
    assert metric(r.metrics(), "maitred_retries_total") == 0


def test_client_leaving_mid_stream_cancels_the_upstream_request(backends, router):
    (endless,) = backends(("a", {}))
    r = router(table([endless]))

    with r.client.stream("GET", "/v1/endless") as resp:
        assert resp.status_code == 200
        # Keep the iterator: dropping it (as `break` out of a for loop does) closes the connection.
        pieces = resp.iter_raw()
        received = b""
        while received.count(b"\n\n") < 3:
            received += next(pieces)
        assert r.endpoints()["a"]["inFlight"] == 1
    left = time.time()

    disconnects = wait_for(lambda: endless.stats()["disconnects"], 5, "the backend to see the disconnect")
    assert disconnects[0] - left < 1.0, f"upstream kept streaming {disconnects[0] - left:.2f} s after the client left"
    wait_for(lambda: r.endpoints()["a"]["inFlight"] == 0, 2, "in-flight to return to 0")
    metrics = r.metrics()
    assert metric(metrics, "maitred_requests_in_flight", endpoint="a") == 0
    assert metric(metrics, "maitred_requests_total", endpoint="a", status="499") == 1  # "client closed request"
