"""Upstreams that are slow, stalled or unreachable: the router's own 502/504 and SSE errors, retries
before the first byte, and clients that give up."""

from __future__ import annotations

import time

import httpx
import orjson
from router_harness import chat_body, free_port, next_host, table, wait_for


def test_no_response_headers_within_the_idle_timeout_is_504_upstream_timeout(backends, router):
    (slow,) = backends(("slow", {"delay_s": 5}))
    r = router(table([slow], timeouts={"idleSeconds": 0.5}))
    started = time.monotonic()
    resp = r.client.post("/v1/chat/completions", json=chat_body())
    took = time.monotonic() - started
    assert resp.status_code == 504
    assert resp.headers["x-maitred-error"] == "upstream_timeout"
    assert "timed out" in resp.json()["error"]["message"]
    assert 0.4 < took < 3.0
    assert slow.stats()["requests"] == 1, "a request the endpoint took is not tried again elsewhere"


def test_a_stream_that_stalls_past_the_idle_timeout_ends_with_an_sse_timeout_error(backends, router):
    (stalling,) = backends(("stalling", {"chunks": 3, "interval_s": 5}))
    r = router(table([stalling], timeouts={"idleSeconds": 0.5}))
    started = time.monotonic()
    with r.client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as resp:
        assert resp.status_code == 200
        events = resp.read().split(b"\n\n")
    assert time.monotonic() - started < 3.0
    assert events[0].startswith(b"data: {")
    assert events[1].startswith(b"event: error\ndata: ")
    assert orjson.loads(events[1].split(b"data: ", 1)[1])["error"]["code"] == "upstream_timeout"
    wait_for(lambda: r.endpoints()["stalling"]["inFlight"] == 0, 2, "in-flight to drain")


def test_per_try_timeout_moves_a_slow_request_to_another_endpoint(backends, router):
    slow, quick = backends(("slow", {"delay_s": 5}), ("quick", {}))
    r = router(table([slow, quick], method="round-robin", retries={"attempts": 1, "perTryTimeoutSeconds": 0.5}))
    for _ in range(4):
        started = time.monotonic()
        resp = r.client.post("/v1/chat/completions", json=chat_body())
        assert resp.status_code == 200 and resp.headers["x-backend"] == "quick"
        assert time.monotonic() - started < 3.0
    assert slow.stats()["requests"] >= 1


def test_with_retries_off_an_unreachable_endpoint_is_502_upstream_connect_error(backends, router):
    (up,) = backends(("up", {}))
    host = next_host()
    down = {"id": "down", "url": f"http://{host}:{free_port(host)}", "weight": 1}  # nothing listens there
    r = router({**table([up], method="round-robin", retries={"attempts": 0},
                        healthCheck={"periodSeconds": 30, "failureThreshold": 100}),
                "endpoints": [up.endpoint(), down]})
    statuses = {}
    for _ in range(4):
        resp = r.client.post("/v1/chat/completions", json=chat_body())
        statuses[resp.headers.get("x-maitred-error", resp.headers.get("x-backend"))] = resp.status_code
        if resp.status_code == 502:
            assert "cannot connect" in resp.json()["error"]["message"]
    assert statuses == {"up": 200, "upstream_connect_error": 502}


def test_a_pooled_connection_closed_by_the_endpoint_is_not_a_failed_request(backends, router):
    # uvicorn (so vLLM) closes idle keep-alive connections after 5 s; a request sent on one just
    # then meets a closed connection. This backend does that to every reused connection.
    (closing,) = backends(("closing", {"close_reused": 1}))
    r = router(table([closing], healthCheck={"periodSeconds": 0.3, "failureThreshold": 3}))
    statuses = [r.client.post("/v1/chat/completions", json=chat_body()).status_code for _ in range(10)]
    assert statuses == [200] * 10
    assert closing.stats()["staleCloses"] >= 5, "the router did not reuse connections: nothing was tested"
    state = r.endpoints()["closing"]
    assert state["healthy"] and state["failuresTotal"] == 0 and state["ejectionsTotal"] == 0


def test_a_client_that_gives_up_on_a_slow_answer_frees_its_slot(backends, router):
    (slow,) = backends(("slow", {"delay_s": 3}))
    r = router(table([slow]))
    try:
        r.client.post("/v1/chat/completions", json=chat_body(), timeout=0.5)
    except httpx.ReadTimeout:
        pass
    else:
        raise AssertionError("the backend answered faster than its delay")
    wait_for(lambda: r.endpoints()["slow"]["inFlight"] == 0, 1.5, "in-flight to drop when the client left")
    requests = r.metrics()
    assert any(name == "maitred_requests_total" and ("status", "499") in labels for name, labels in requests)


def test_headers_and_query_reach_the_backend_and_hop_by_hop_ones_do_not(backends, router):
    (echo,) = backends(("echo", {}))
    r = router(table([echo]))
    resp = r.client.post("/v1/upload?purpose=fine-tune&x=%2F", content=b"{}", headers={
        "authorization": "Bearer sk-secret", "openai-organization": "org-1", "x-request-id": "req-42",
        "connection": "keep-alive, x-private", "te": "trailers", "x-forwarded-for": "10.9.8.7"})
    assert resp.status_code == 200
    assert resp.headers["x-request-id"] == "req-42"
    seen = resp.json()
    headers = dict(seen["headers"])
    assert seen["path_qs"] == "/v1/upload?purpose=fine-tune&x=%2F"
    assert headers["authorization"] == "Bearer sk-secret"
    assert headers["openai-organization"] == "org-1"
    assert headers["x-request-id"] == "req-42"
    assert headers["x-forwarded-for"] == "10.9.8.7, 127.0.0.1"
    assert "te" not in headers
    assert headers.get("connection", "keep-alive").lower() == "keep-alive"

    get = r.client.get("/v1/files/abc")
    assert get.status_code == 200 and get.json()["method"] == "GET" and get.json()["bytes"] == 0
    generated = r.client.post("/v1/upload", content=b"x").headers["x-request-id"]
    assert len(generated) >= 16, "the router gives each request an id when the client did not"
