"""Injected faults, by CLI flag and through /admin/faults, as a client sees them."""

from __future__ import annotations

import socket
import time

import httpx
import openai
import pytest

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def special(start_module_sim):
    """The simulators with their own flags, started together: name -> SimProcess."""
    flags = {
        "errors": ["--error-rate", "1.0", "--error-status", "429", "--retry-after", "7", "--unhealthy"],
        "reset": ["--reset-after-chunks", "3"],
        "refuse": [],
        "zero": ["--zero-latency"],
    }
    return dict(zip(flags, start_module_sim.many(*flags.values())))


@pytest.fixture(scope="module")
def http(sim):
    """An httpx client of the shared default simulator."""
    with httpx.Client(base_url=sim.base_url) as client:
        yield client


@pytest.fixture
def faults(http):
    """POST /admin/faults on the shared simulator; every field is put back after the test."""
    defaults = http.get("/admin/faults").json()

    def post(**fields) -> dict:
        response = http.post("/admin/faults", json=fields)
        assert response.status_code == 200, response.text
        return response.json()

    yield post
    assert http.post("/admin/faults", json=defaults).status_code == 200


def test_cli_flags_error_rate_429_keeps_retry_after_and_unhealthy(special):
    sim = special["errors"]
    with openai.OpenAI(base_url=f"{sim.base_url}/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(**CHAT)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.body["message"]
    assert httpx.get(f"{sim.base_url}/health").status_code == 503
    assert httpx.get(f"{sim.base_url}/admin/faults").json()["error_rate"] == 1.0


def test_admin_error_rate_503_then_back_to_normal(http, faults):
    assert faults(error_rate=1.0, error_status=503, retry_after_s=3)["error_status"] == 503
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", {"prompt": "x"}),
                       ("/v1/embeddings", {"input": "x"})):
        response = http.post(path, json=body)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "3"
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    faults(error_rate=0.5, error_status=500)
    responses = [http.post("/v1/chat/completions", json=CHAT) for _ in range(40)]
    assert {r.status_code for r in responses} == {200, 500}
    assert not any("retry-after" in r.headers for r in responses)  # only 429 and 503 carry it
    faults(error_rate=0.0)
    assert http.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_admin_merges_fields_and_rejects_bad_ones(http, faults):
    merged = faults(extra_latency_ms=5)
    assert merged["extra_latency_ms"] == 5 and merged["error_rate"] == 0.0
    assert http.get("/admin/faults").json() == merged
    for bad in ({"error_rate": 2}, {"no_such_fault": 1}, {"error_status": 200}):
        response = http.post("/admin/faults", json=bad)
        assert response.status_code == 400 and response.json()["error"]["message"]
    assert http.post("/admin/faults", content=b"{").status_code == 400
    assert http.get("/admin/faults").json() == merged


def test_extra_latency_comes_before_the_first_token(http, faults):
    faults(extra_latency_ms=400)
    start = time.perf_counter()
    with http.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 2, "stream": True}) as response:
        first = next(line for line in response.iter_lines() if line)
        ttft = time.perf_counter() - start
    assert first.startswith("data: ")
    assert ttft >= 0.4


def test_unhealthy_at_run_time(http, faults):
    faults(unhealthy=True)
    response = http.get("/health")
    assert response.status_code == 503 and response.json()["error"]["message"]
    faults(unhealthy=False)
    assert http.get("/health").status_code == 200


def test_reset_after_three_chunks_gives_three_chunks_then_a_broken_stream(special):
    sim = special["reset"]
    events = []
    body = {"model": "sim-model", "prompt": "x", "max_tokens": 10, "stream": True}
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        with httpx.stream("POST", f"{sim.base_url}/v1/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line:
                    events.append(line)
    assert len(events) == 3 and all(e.startswith("data: {") for e in events)
    # The same through the openai SDK: three chunks, then an error, never a silent end.
    chunks = []
    with openai.OpenAI(base_url=f"{sim.base_url}/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.APIError):
            for chunk in client.completions.create(**body):
                chunks.append(chunk)
    assert len(chunks) == 3
    # Non-streamed answers are not cut, and the server lives on.
    assert httpx.post(f"{sim.base_url}/v1/completions", json={**body, "stream": False}).status_code == 200


def test_refusing_connections_keeps_the_process_alive(special):
    sim = special["refuse"]
    with httpx.Client(base_url=sim.base_url) as client:
        assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200
        response = client.post("/admin/faults", json={"refuse_connections": True})
        assert response.status_code == 200 and response.json()["refuse_connections"] is True
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{sim.base_url}/health")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((sim.host, sim.port), timeout=2).close()
    time.sleep(0.3)
    assert sim.alive


def test_zero_latency_answers_as_fast_as_it_can(special):
    sim = special["zero"]
    body = {"model": "sim-model", "prompt": "x", "max_tokens": 2000}
    with httpx.Client(base_url=sim.base_url) as client:
        start = time.perf_counter()
        reply = client.post("/v1/completions", json=body)
        elapsed = time.perf_counter() - start
        # At the default speed, 2,000 steps would take at least 2,000 x 5.75 ms = 11.5 s.
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 2000
        assert elapsed < 3.0
        with client.stream("POST", "/v1/completions", json={**body, "max_tokens": 500, "stream": True}) as stream:
            events = [line for line in stream.iter_lines() if line]
        assert len(events) == 501 and events[-1] == "data: [DONE]"
