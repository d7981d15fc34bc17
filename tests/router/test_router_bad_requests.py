"""The router's own answers: bad requests get a clear OpenAI-format error and never reach a backend;
the control paths say whether the router can serve."""

from __future__ import annotations

import pytest
from router_harness import MODEL, table


@pytest.fixture(scope="module")
def guarded(module_fleet):
    (a,) = module_fleet.backends(("a", {}))
    return module_fleet.router(table([a])), a


def own_error(resp, status: int, code: str) -> dict:
    """The router's own error: status, x-maitred-error header, OpenAI error body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["x-maitred-error"] == code
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    return error


def test_malformed_json_is_400_invalid_json(guarded):
    r, a = guarded
    before = a.stats()["requests"]
    resp = r.client.post("/v1/chat/completions", content=b'{"model": "test-model", "messages": [',
                         headers={"content-type": "application/json"})
    error = own_error(resp, 400, "invalid_json")
    assert "not valid JSON" in error["message"]
    assert a.stats()["requests"] == before


@pytest.mark.parametrize("body", [{"messages": []}, {"model": "", "messages": []}, {"model": 7, "prompt": "x"}, []],
                         ids=["absent", "empty", "not a string", "not an object"])
def test_missing_model_is_400_missing_model(guarded, body):
    r, a = guarded
    before = a.stats()["requests"]
    error = own_error(r.client.post("/v1/chat/completions", json=body), 400, "missing_model")
    assert error["param"] == "model"
    assert a.stats()["requests"] == before


def test_unknown_model_is_404_model_not_found_naming_the_served_ones(guarded):
    r, a = guarded
    before = a.stats()["requests"]
    error = own_error(r.client.post("/v1/completions", json={"model": "gpt-9", "prompt": "hi"}), 404, "model_not_found")
    assert "gpt-9" in error["message"] and MODEL in error["message"]
    assert error["param"] == "model"
    assert a.stats()["requests"] == before
    assert r.client.post("/v1/completions", json={"model": MODEL, "prompt": "hi"}).status_code == 200


def test_models_list_comes_from_the_table(guarded):
    r, _ = guarded
    resp = r.client.get("/v1/models")
    assert resp.status_code == 200
    assert [m["id"] for m in resp.json()["data"]] == [MODEL]


def test_unknown_router_path_is_an_openai_format_404(guarded):
    r, _ = guarded
    resp = r.client.get("/nope")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_readyz_is_503_until_the_table_has_a_live_endpoint(backends, router):
    (a,) = backends(("a", {}))
    r = router({**table([]), "endpoints": []})
    assert r.client.get("/healthz").status_code == 200
    ready = r.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["reason"] == "no live endpoint"
    own_error(r.client.post("/v1/chat/completions", json={"model": MODEL, "messages": []}), 503,
              "no_endpoint_available")

    r.update_table(endpoints=[a.endpoint()])
    assert r.client.get("/readyz").status_code == 200
    r.update_table(endpoints=[a.endpoint(weight=0)])
    assert r.client.get("/readyz").status_code == 503, "an endpoint of weight 0 takes no traffic"
