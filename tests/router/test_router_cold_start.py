"""Scale from zero: with the table's `coldStart`, a request that finds no live endpoint is held until one
turns live, then routed as usual; bounded in time (`holdSeconds`) and in number (`maxRequests`).

Real routers (one or two workers, as the suite runs) in front of the purpose-built backends; the pool
"scales up" when the test rewrites the table with a backend in it, as the operator does when a replica
turns ready.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import httpx
from router_harness import ROUTER_WORKERS, SIM_MODEL, chat_body, metric, run_load, table, wait_for


def cold_table(hold_seconds: float = 60.0, max_requests: int = 1000, **extra) -> dict:
    """A table of a pool scaled to zero, that holds requests for a cold start."""
    return {**table([]), "coldStart": {"holdSeconds": hold_seconds, "maxRequests": max_requests}, **extra}


def load(r) -> dict:
    """GET /debug/load on the router's admin port."""
    return r.admin.get("/debug/load").json()


def held(r) -> tuple[int, float]:
    """Requests held now, as /debug/load and /metrics tell it."""
    return load(r)["held"], metric(r.metrics(), "maitred_requests_held")


def in_background(target, *args) -> tuple[threading.Thread, dict]:
    """Run `target(*args)` in a thread; its return value (or exception) lands in the dict."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = target(*args)
        except Exception as exc:  # reported by the test that joins
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def stream_chat(url: str) -> dict:
    """A streamed chat request: its status, its events' data and when the first one came (monotonic s)."""
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
        with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as resp:
            first_at, data = None, []
            for line in resp.iter_lines():
                if line.startswith("event: error"):
                    data.append("ERROR")
                if line.startswith("data: "):
                    first_at = first_at or time.monotonic()
                    data.append(line[6:])
            return {"status": resp.status_code, "data": data, "first_at": first_at}


def test_a_stream_held_for_a_cold_start_gets_its_first_token_once_a_replica_is_live(backends, router):
    (a,) = backends(("a", {"chunks": 5}))
    r = router(cold_table())
    # Ready with no replica at all: its pod must stay in the router Service to take (and hold) requests.
    ready = r.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["liveEndpoints"] == 0
    assert load(r) == {"pool": "test/pool", "tableVersion": 1, "endpoints": 0, "liveEndpoints": 0, "reporting": 0,
                       "waiting": None, "running": None, "kvCacheUsage": None, "inFlight": 0, "held": 0}
    thread, out = in_background(stream_chat, r.url)
    wait_for(lambda: held(r) == (1, 1.0), 10, "the stream to be held")

    scaled_at = time.monotonic()
    r.update_table(endpoints=[a.endpoint()])
    thread.join(30)
    result = out["value"]
    assert result["status"] == 200
    assert "ERROR" not in result["data"] and result["data"][-1] == "[DONE]"
    assert sum('"content"' in d for d in result["data"]) == 5
    assert result["first_at"] >= scaled_at
    assert held(r) == (0, 0.0)
    assert metric(r.metrics(), "maitred_requests_total", endpoint="a", status="200") == 1


def test_twenty_requests_held_through_a_cold_start_all_succeed(backends, router):
    (a,) = backends(("a", {}))
    r = router(cold_table())
    thread, out = in_background(lambda: run_load(r.url, requests=20, concurrency=20, timeout_s=60))
    wait_for(lambda: load(r)["held"] == 20, 15, "20 requests held")
    r.update_table(endpoints=[a.endpoint()])
    thread.join(60)
    results = out["value"]
    assert [(x.status, x.error) for x in results] == [(200, None)] * 20
    assert a.stats()["requests"] == 20
    assert load(r)["held"] == 0


def test_a_request_held_past_hold_seconds_gets_503_with_retry_after(router):
    r = router(cold_table(hold_seconds=1.5))
    started = time.monotonic()
    resp = r.client.post("/v1/chat/completions", json=chat_body())
    waited = time.monotonic() - started
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "5" and resp.headers["x-maitred-error"] == "cold_start_timeout"
    error = resp.json()["error"]
    assert error["code"] == "cold_start_timeout" and error["type"] == "service_unavailable"
    assert "1.5 s" in error["message"] and "zero" in error["message"]
    assert 1.5 <= waited < 6.5
    assert load(r)["held"] == 0
    assert metric(r.metrics(), "maitred_requests_total", endpoint="none", status="503") == 1


def test_past_max_requests_held_the_next_request_gets_503_at_once(backends, router):
    (a,) = backends(("a", {}))
    r = router(cold_table(max_requests=2))
    thread, out = in_background(lambda: run_load(r.url, requests=2, concurrency=2, timeout_s=60))
    wait_for(lambda: load(r)["held"] == 2, 10, "2 requests held")

    started = time.monotonic()
    refused = r.client.post("/v1/chat/completions", json=chat_body())
    assert time.monotonic() - started < 5  # not held: the hold is 60 s
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["code"] == "cold_start_queue_full"
    assert load(r)["held"] == 2

    r.update_table(endpoints=[a.endpoint()])
    thread.join(30)
    assert [x.status for x in out["value"]] == [200, 200]


def test_a_client_that_leaves_while_held_is_counted_no_more(router):
    r = router(cold_table())
    body = json.dumps(chat_body()).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {r.host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    clients = []
    for _ in range(3):
        sock = socket.create_connection((r.host, r.port), timeout=10)
        sock.sendall(request)
        clients.append(sock)
    wait_for(lambda: held(r) == (3, 3.0), 10, "3 requests held")
    for sock in clients:
        sock.close()
    wait_for(lambda: held(r) == (0, 0.0), 5, "the held count to drop when the clients leave")
    assert metric(r.metrics(), "maitred_requests_total", status="499") == 3
    # Still serving, and nothing went wrong on the way.
    assert r.client.get("/readyz").status_code == 200
    assert "Traceback" not in r.log()


def test_without_cold_start_no_live_endpoint_is_503_at_once(router):
    r = router(table([]))
    started = time.monotonic()
    resp = r.client.post("/v1/chat/completions", json=chat_body())
    assert time.monotonic() - started < 2
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
    assert resp.json()["error"]["code"] == "no_endpoint_available"
    assert load(r)["held"] == 0
    assert r.client.get("/readyz").status_code == 503


def test_held_requests_are_summed_over_the_workers(router):
    r = router(cold_table())
    thread, out = in_background(lambda: run_load(r.url, requests=8, concurrency=8, timeout_s=60))
    wait_for(lambda: held(r) == (8, 8.0), 10, "8 requests held")
    if ROUTER_WORKERS > 1:
        # Each worker answers /debug/load for the router as a whole: on new connections (spread over the
        # workers by the kernel), every answer agrees.
        answers = {httpx.get(r.admin_url + "/debug/load", trust_env=False).json()["held"] for _ in range(10)}
        assert answers == {8}
    r.update_table(coldStart=None)  # no more holding: the held requests get the 503 of today
    thread.join(30)
    assert [x.status for x in out["value"]] == [503] * 8
    assert all(json.loads(x.body)["error"]["code"] == "no_endpoint_available" for x in out["value"])


def test_a_request_held_while_the_only_replica_fails_its_checks_goes_to_it_once_it_passes(fleet, router):
    (sim,) = fleet.sims("s")
    assert httpx.post(sim.url + "/admin/faults", json={"unhealthy": True}, trust_env=False).status_code == 200
    r = router({**cold_table(), "models": [SIM_MODEL], "endpoints": [sim.endpoint()],
                "healthCheck": {"path": "/health", "periodSeconds": 0.5, "timeoutSeconds": 1, "failureThreshold": 1}})
    wait_for(lambda: load(r)["liveEndpoints"] == 0, 10, "the replica to fail its health check")
    # Endpoints, none live: this router leaves its Service (another may reach them), though it holds.
    assert r.client.get("/readyz").status_code == 503
    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    thread, out = in_background(lambda: httpx.post(r.url + "/v1/chat/completions", json=body, timeout=60,
                                                   trust_env=False))
    wait_for(lambda: load(r)["held"] == 1, 10, "the request to be held")
    # The replica turns ready: the next health check passes, and the held request goes to it.
    assert httpx.post(sim.url + "/admin/faults", json={"unhealthy": False}, trust_env=False).status_code == 200
    thread.join(30)
    resp = out["value"]
    assert resp.status_code == 200 and resp.headers["x-maitred-endpoint"] == "s"
    assert load(r)["held"] == 0 and load(r)["liveEndpoints"] == 1


def test_held_requests_are_answered_at_once_when_the_router_shuts_down(router):
    r = router(cold_table(), "--drain-seconds", "20")
    work = [in_background(lambda: httpx.post(r.url + "/v1/chat/completions", json=chat_body(), timeout=60,
                                             trust_env=False)) for _ in range(2)]
    wait_for(lambda: load(r)["held"] == 2, 10, "2 requests held")
    started = time.monotonic()
    r.proc.send_signal(signal.SIGTERM)
    for thread, _ in work:
        thread.join(15)
    answered_s = time.monotonic() - started
    for _, out in work:
        resp = out["value"]
        assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
        assert resp.json()["error"]["code"] == "router_shutting_down"
    assert answered_s < 10, f"answered {answered_s:.1f} s after SIGTERM: they waited for the drain bound (20 s)"
    assert r.proc.wait(timeout=15) in (0, -signal.SIGTERM)
    assert "Traceback" not in r.log()
