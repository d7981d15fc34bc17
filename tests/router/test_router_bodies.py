"""Request bodies reach the backend byte for byte, whatever their size or framing; past the limit
the router answers 413 itself."""

from __future__ import annotations

import hashlib
import os

import pytest
from router_harness import MODEL, table

KIB, MIB = 1024, 1024 * 1024


@pytest.fixture(scope="module")
def upload(module_fleet):
    """A router (default limit) over one backend that answers with the sha256 of the body it got."""
    (echo,) = module_fleet.backends(("echo", {}))
    return module_fleet.router(table([echo]))


def pieces(data: bytes, size: int):
    """`data` as a generator of `size`-byte pieces: httpx sends it with Transfer-Encoding: chunked."""
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("size", [16 * KIB, 32 * KIB + 1, 1 * MIB, 10 * MIB], ids=["16KiB", "32KiB+1", "1MiB", "10MiB"])
def test_body_reaches_the_backend_byte_for_byte(upload, size):
    data = os.urandom(size)
    resp = upload.client.post("/v1/upload", content=data, headers={"content-type": "application/octet-stream"})
    assert resp.status_code == 200
    assert resp.json()["bytes"] == size
    assert resp.json()["sha256"] == hashlib.sha256(data).hexdigest()


def test_chunked_upload_reaches_the_backend_byte_for_byte(upload):
    data = os.urandom(3 * MIB + 12345)
    resp = upload.client.post("/v1/upload", content=pieces(data, 64 * KIB))
    assert resp.status_code == 200
    assert (resp.json()["bytes"], resp.json()["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


def test_json_body_on_a_model_path_is_forwarded_as_sent_not_re_encoded(upload):
    # Odd spacing, key order and escapes that a parse-and-dump would change.
    text = "x" * MIB
    body = ('{ "input" : "%s\\u00e9",\n  "model":"%s" , "encoding_format":"float" }' % (text, MODEL)).encode()
    resp = upload.client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 200
    assert resp.json()["sha256"] == hashlib.sha256(body).hexdigest()


def assert_too_large(resp, limit: int) -> None:
    assert resp.status_code == 413
    assert resp.headers["x-maitred-error"] == "request_too_large"
    error = resp.json()["error"]
    assert error["code"] == "request_too_large"
    assert str(limit) in error["message"]


def test_body_over_a_configured_limit_gets_413(backends, router):
    (echo,) = backends(("echo", {}))
    r = router(table([echo]), "--max-body-bytes", "2000000")
    data = os.urandom(3_000_000)
    assert_too_large(r.client.post("/v1/upload", content=data), 2_000_000)
    assert_too_large(r.client.post("/v1/upload", content=pieces(data, 64 * KIB)), 2_000_000)
    ok = r.client.post("/v1/upload", content=data[:2_000_000])
    assert ok.status_code == 200 and ok.json()["bytes"] == 2_000_000
    assert echo.stats()["requests"] == 1, "a refused body must not reach the backend"


def test_default_limit_is_32_mib(upload):
    data = os.urandom(33 * MIB)
    assert_too_large(upload.client.post("/v1/upload", content=data), 32 * MIB)
    resp = upload.client.post("/v1/upload", content=memoryview(data)[:32 * MIB].tobytes())
    assert resp.status_code == 200
    assert resp.json()["sha256"] == hashlib.sha256(data[:32 * MIB]).hexdigest()
