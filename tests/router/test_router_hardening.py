"""What a careless or hostile user found: hung replicas leave the rotation, busy ones do not, huge headers
are refused, every error of the router is in OpenAI's format, and table mistakes are caught early."""

from __future__ import annotations

import pytest
from router_harness import chat_body, table, wait_for

from maitred.router.table import TableError, parse_table


def test_a_replica_that_hangs_before_answering_leaves_the_rotation(backends, router):
    hung, fine = backends(("hung", {"delay_s": 30}), ("fine", {}))
    r = router(table([hung, fine], method="round-robin", timeouts={"idleSeconds": 0.3},
                     healthCheck={"path": "/health", "periodSeconds": 30, "failureThreshold": 2}))
    statuses = [r.client.post("/v1/chat/completions", json=chat_body()).status_code for _ in range(6)]
    assert statuses.count(504) == 2, statuses  # its /health still passes, as a wedged vLLM's does
    assert r.endpoints()["hung"]["live"] is False
    assert "timed out" in r.endpoints()["hung"]["healthReason"]
    assert all(r.client.post("/v1/chat/completions", json=chat_body()).status_code == 200 for _ in range(4))


def test_a_busy_replica_shedding_load_with_retry_after_is_not_ejected(backends, router):
    (busy,) = backends(("busy", {"status": 503, "retry_after": "2"}))
    r = router(table([busy], healthCheck={"path": "/health", "periodSeconds": 30, "failureThreshold": 2}))
    for _ in range(5):
        resp = r.client.post("/v1/chat/completions", json=chat_body())
        assert resp.status_code == 503 and resp.headers["retry-after"] == "2"
        assert "x-maitred-error" not in resp.headers  # the backend's own answer, passed through
    assert r.endpoints()["busy"]["live"] is True


def test_a_request_turned_away_by_a_busy_replica_is_retried_on_another(backends, router):
    busy, free = backends(("busy", {"status": 503, "retry_after": "2"}), ("free", {}))
    r = router(table([busy, free], method="round-robin"))
    for _ in range(6):
        resp = r.client.post("/v1/chat/completions", json=chat_body())
        assert resp.status_code == 200 and resp.headers["x-maitred-endpoint"] == "free"
    assert busy.stats()["requests"] >= 1  # it was tried, and turned the request away
    assert r.endpoints()["busy"]["live"] is True


def test_the_routers_own_503_tells_clients_when_to_retry(backends, router):
    (a,) = backends(("a", {}))
    r = router(table([a]))
    a.kill()
    wait_for(lambda: r.client.post("/v1/chat/completions", json=chat_body()).status_code == 503, 10, "503")
    resp = r.client.post("/v1/chat/completions", json=chat_body())
    assert resp.headers["x-maitred-error"] == "no_endpoint_available"
    assert resp.headers["retry-after"] == "1"


def test_huge_request_headers_are_refused_not_forwarded(backends, router):
    (a,) = backends(("a", {}))
    r = router(table([a]))
    resp = r.client.post("/v1/chat/completions", json=chat_body(), headers={"x-big": "x" * 100_000})
    assert resp.status_code == 431
    assert resp.json()["error"]["code"] == "headers_too_large"
    assert a.stats()["requests"] == 0


def test_errors_on_the_routers_own_paths_are_in_openai_format(backends, router):
    (a,) = backends(("a", {}))
    r = router(table([a]))
    for method, path, status in (("POST", "/healthz", 405), ("DELETE", "/readyz", 405), ("GET", "/nowhere", 404)):
        resp = r.client.request(method, path)
        assert resp.status_code == status
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
        assert resp.headers["x-maitred-error"]
    assert r.client.head("/v1/models").status_code == 200
    resp = r.client.post("/v1/chat/completions", json={"model": 123, "messages": []})
    assert resp.status_code == 400 and "non-empty string" in resp.json()["error"]["message"]


@pytest.mark.parametrize("document, field", [
    ('{"endpoints": [{"id": "a", "url": "http://127.0.0.1:99999"}]}', "endpoints.0.url"),
    ('{"endpoints": [{"id": "a", "url": "http://127.0.0.1:8000", "weight": true}]}', "endpoints.0.weight"),
    ('{"healthCheck": {"path": "health"}}', "healthCheck.path"),
])
def test_table_mistakes_that_would_only_fail_at_request_time_are_refused_at_load(document, field):
    with pytest.raises(TableError, match=field.replace(".", r"\.")):
        parse_table(document)
