"""The router accepts the JSON its backends accept (Python's json module, as in vLLM and SGLang), not
only what orjson does: a lone surrogate escape, as a JavaScript client writes when it cuts a string
inside an emoji, is valid JSON and passes byte for byte."""

from __future__ import annotations

import hashlib

from raw_harness import raw_backends  # noqa: F401 (a fixture)
from router_harness import MODEL, table, wait_for

CUT_EMOJI = ('{"model": "%s", "messages": [{"role": "user", "content": "look: \\ud83d"}], "temperature": NaN}'
             % MODEL).encode()


def test_a_lone_surrogate_escape_is_valid_json_and_reaches_the_backend_byte_for_byte(raw_backends, router):
    (raw,) = raw_backends("raw")
    r = router(table([raw]))
    resp = r.client.post("/v1/chat/completions", content=CUT_EMOJI, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["sha256"] == hashlib.sha256(CUT_EMOJI).hexdigest()

    unknown = r.client.post("/v1/chat/completions", content=b'{"model": "x\\ud83d", "messages": []}')
    assert unknown.status_code == 404, unknown.text
    error = unknown.json()["error"]
    assert error["code"] == "model_not_found" and "x\\ud83d" in error["message"]

    broken = r.client.post("/v1/chat/completions", content=b'{"model": "\\ud83d')
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"


def test_a_model_name_with_a_lone_surrogate_is_forwarded_and_logged(raw_backends, router):
    (raw,) = raw_backends("raw")
    r = router({**table([raw]), "models": []}, "--access-log", "--log-level", "info", "--log-format", "json")
    body = b'{"model": "cut\\ud83d", "messages": []}'
    resp = r.client.post("/v1/chat/completions", content=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["sha256"] == hashlib.sha256(body).hexdigest()
    # The access line is written once the response has gone: wait for it.
    wait_for(lambda: '"model":"cut\\\\ud83d"' in r.log_path.read_text(), 5, "the access log line")
