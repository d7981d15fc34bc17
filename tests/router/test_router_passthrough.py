"""A backend's own answers (400, 429 with Retry-After, 503) reach the client unchanged, and a
client's error never counts against the replica."""

from __future__ import annotations

import httpx
from router_harness import chat_body, metric, run_load, table, wait_for


def direct(backend, body: dict) -> httpx.Response:
    """The backend's answer to `body` when asked directly, without the router."""
    return httpx.post(backend.url + "/v1/chat/completions", json=body, timeout=10, trust_env=False)


def test_oversized_prompts_get_the_backends_400_and_nobody_is_ejected(backends, router):
    a, b = backends(("a", {"max_prompt_chars": 1000}), ("b", {"max_prompt_chars": 1000}))
    r = router(table([a, b], healthCheck={"periodSeconds": 0.5, "failureThreshold": 3}))
    too_big = chat_body("word " * 2000)
    expected = {x.name: direct(x, too_big) for x in (a, b)}
    assert {x.status_code for x in expected.values()} == {400}

    for _ in range(10):
        resp = r.client.post("/v1/chat/completions", json=too_big)
        assert resp.status_code == 400
        assert resp.content == expected[resp.headers["x-backend"]].content
        assert resp.json()["error"]["code"] == "context_length_exceeded"
        assert "x-maitred-error" not in resp.headers

    normal = run_load(r.url, requests=10, concurrency=2)
    assert [x.status for x in normal] == [200] * 10
    for endpoint in r.endpoints().values():
        assert endpoint["healthy"] and endpoint["live"], endpoint
        assert (endpoint["ejectionsTotal"], endpoint["consecutiveFailures"], endpoint["failuresTotal"]) == (0, 0, 0)
    assert a.stats()["requests"] + b.stats()["requests"] == 2 + 20  # 2 asked directly, 20 through the router
    metrics = r.metrics()
    assert metric(metrics, "maitred_requests_total", status="400") == 10
    assert metric(metrics, "maitred_requests_total", status="200") == 10


def test_backend_429_503_and_400_pass_through_unchanged(backends, router):
    limited, overloaded, refusing = backends(("limited", {"status": 429, "retry_after": 7}),
                                             ("overloaded", {"status": 503}),
                                             ("refusing", {"status": 400}))
    r = router(table([limited]))
    for backend, status in ((limited, 429), (overloaded, 503), (refusing, 400)):
        r.update_table(endpoints=[backend.endpoint()])
        expected = direct(backend, chat_body())
        resp = r.client.post("/v1/chat/completions", json=chat_body())
        assert resp.status_code == status == expected.status_code
        assert resp.content == expected.content
        assert resp.headers["content-type"] == expected.headers["content-type"]
        assert resp.headers.get("retry-after") == ("7" if status == 429 else None)
        assert "x-maitred-error" not in resp.headers, "the backend's answer must not look like the router's own"
        assert resp.headers["x-maitred-endpoint"] == backend.name


def test_when_every_endpoint_answers_503_the_client_gets_the_last_backends_503(backends, router):
    one, two = backends(("one", {"status": 503}), ("two", {"status": 503}))
    r = router(table([one, two], retries={"attempts": 2}, healthCheck={"periodSeconds": 5, "failureThreshold": 10}))
    resp = r.client.post("/v1/chat/completions", json=chat_body())
    assert resp.status_code == 503
    assert "x-maitred-error" not in resp.headers
    assert resp.json()["error"]["code"] == "overloaded"
    # Tried once on each: 503 is retriable on another endpoint, never twice on one.
    assert one.stats()["requests"] + two.stats()["requests"] == 2


def test_with_every_endpoint_down_the_router_says_no_endpoint_is_available(backends, router):
    a, b = backends(("a", {}), ("b", {}))
    r = router(table([a, b], healthCheck={"periodSeconds": 0.2, "timeoutSeconds": 0.5, "failureThreshold": 2}))
    assert r.client.get("/readyz").status_code == 200
    a.kill()
    b.kill()

    # Before the health checks notice, the router tries both and then answers itself.
    for _ in range(2):
        resp = r.client.post("/v1/chat/completions", json=chat_body())
        assert resp.status_code == 503
        assert resp.headers["x-maitred-error"] == "no_endpoint_available"
        assert "no endpoint is available" in resp.json()["error"]["message"]

    ready = r.client.get("/readyz")
    if ready.status_code == 200:  # not yet ejected by the checks: wait for them
        wait_for(lambda: r.client.get("/readyz").status_code == 503, 10, "/readyz to turn 503")
    resp = r.client.post("/v1/chat/completions", json=chat_body())
    assert resp.status_code == 503
    assert resp.headers["x-maitred-error"] == "no_endpoint_available"
    error = resp.json()["error"]
    assert "no endpoint is available" in error["message"]
    assert error["code"] == "no_endpoint_available" and error["type"] == "service_unavailable"
    assert not any(e["live"] for e in r.endpoints().values())
    metrics = r.metrics()
    assert metric(metrics, "maitred_endpoint_healthy", endpoint="a") == metric(metrics, "maitred_endpoint_healthy",
                                                                                endpoint="b") == 0


def test_models_behind_api_keys_are_listed_with_the_clients_key_and_a_wrong_key_gets_the_401(backends, router):
    a, b = backends(("a", {"api_key": "sk-good"}), ("b", {"api_key": "sk-good"}))
    r = router({**table([a, b]), "models": []})

    listed = r.client.get("/v1/models", headers={"Authorization": "Bearer sk-good"})
    assert listed.status_code == 200
    assert [m["id"] for m in listed.json()["data"]] == ["model-of-a", "model-of-b"]

    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        refused = r.client.get("/v1/models", headers=headers)
        assert refused.status_code == 401, refused.text  # never 200 with an empty list
        assert refused.json()["error"]["message"] == "Unauthorized"
