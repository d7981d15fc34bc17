"""SIGTERM: open streams may finish within the drain bound, a stream that never ends is cut at it,
and the router then exits (in one process or several)."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from router_harness import chat_body, table, wait_for


def stream_in_background(url: str, body: dict, path: str = "/v1/chat/completions", method: str = "POST"):
    """Read one streamed response in a thread; returns (thread, result) with result filled in at the end."""
    result: dict = {}

    def read() -> None:
        try:
            with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
                with client.stream(method, path, json=body if method == "POST" else None) as resp:
                    result["status"] = resp.status_code
                    result["body"] = b"".join(resp.iter_raw())
        except httpx.HTTPError as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=read)
    thread.start()
    return thread, result


def test_a_stream_that_ends_within_the_drain_bound_finishes_after_sigterm(backends, router):
    (a,) = backends(("a", {"chunks": 20, "interval_s": 0.1}))  # a 2 s stream
    r = router(table([a]), "--drain-seconds", "20")
    thread, result = stream_in_background(r.url, chat_body(stream=True))
    wait_for(lambda: r.endpoints()["a"]["inFlight"] == 1, 10, "the stream to start")
    r.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    assert result.get("status") == 200, result
    assert result["body"].endswith(b"data: [DONE]\n\n"), result["body"][-200:]
    # uvicorn ends a graceful shutdown by re-raising the signal, so "killed by SIGTERM" is a clean exit too.
    assert r.proc.wait(timeout=15) in (0, -signal.SIGTERM)


def test_a_stream_that_never_ends_is_cut_at_the_drain_bound_and_the_router_exits(backends, router):
    (a,) = backends(("a", {}))
    r = router(table([a]), "--drain-seconds", "1")
    thread, result = stream_in_background(r.url, None, path="/v1/endless", method="GET")
    wait_for(lambda: r.endpoints()["a"]["inFlight"] == 1, 10, "the endless stream to start")
    sent = time.monotonic()
    r.proc.send_signal(signal.SIGTERM)
    r.proc.wait(timeout=15)  # without a bound the router would wait for the stream forever
    thread.join(15)
    assert time.monotonic() - sent < 15
    assert "error" in result or result.get("status") == 200, result  # the client saw the stream end
