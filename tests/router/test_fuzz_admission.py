"""Fuzzing request admission (`admit`, `read_body`, `parse_model_request`, `check_model`), in process: about
64,000 requests.

Each request is an ASGI scope (method, path, any header list) and a body that a fake `receive` hands
over in random chunks (sometimes ending in a disconnect). The property: `admit` either admits the
request or raises :class:`Refused` with a 4xx status and an OpenAI error code (or :class:`ClientGone`
when the client left), and never anything else; its answer is the one the rules in admission.py's
docstring give (a reference model below); a refusal can be sent as the router's error response; and
what the hot path reads next of an admitted request (the request id, the upstream headers, the
affinity keys of the balancers) takes it without raising.

Faking `receive` fakes one thing to test another: the same paths run behind a real uvicorn in
test_fuzz_router.py.
"""

from __future__ import annotations

import json

import orjson
import pytest
from fuzzing import MODEL, Mutator, cases, deep, json_values, request_objects, texts
from hypothesis import given
from hypothesis import strategies as st
from router_harness import ROUTER_WORKERS

from maitred.router.admission import (MAX_HEADER_BYTES, MODEL_PATHS, Admitted, ClientGone, Refused, admit,
                                      printable)
from maitred.router.balancing import RequestView
from maitred.router.balancing.keys import affinity_key, prefix_key, session_key
from maitred.router.errors import send_error
from maitred.router.proxy import _REQUEST_DROP, _request_id, _upstream_headers
from maitred.router.table import RoutingTable

#: In process, so the same with any number of router workers: run in the suite's first pass only.
pytestmark = pytest.mark.skipif(ROUTER_WORKERS != 1, reason="in-process fuzzing: run once, in the one-worker pass")

#: Variants derived from each hypothesis draw.
HEADER_VARIANTS, BODY_VARIANTS, BYTES_VARIANTS = 5, 30, 5

TABLES = (None, RoutingTable(), RoutingTable(pool="p", models=(MODEL, "other/model")),
          RoutingTable(models=("\u00e9",), method="session-affinity", affinity={"sessionHeader": "x-user"}))
LIMITS = (0, 16, 1024, 32 * 1024 * 1024)
REFUSALS = {431: "headers_too_large", 413: "request_too_large", 400: ("invalid_json", "missing_model"),
            404: "model_not_found"}
#: Bodies the byte-level test starts from, besides any bytes: the edges of what JSON parsers take.
SEED_BODIES = (b"", b"{}", b"[]", b"null", b'{"model": "test-model"}', b'{"model": "\\ud83d"}', b'{"model": "m\\udfff"}',
               b'{"model": "test-model", "messages": [{"role": "user", "content": "\\ud83d"}]}',
               b'{"model": "test-model", "max_tokens": 1e400}', b'{"model": "test-model", "n": ' + b"9" * 4301 + b"}",
               b'{"model": "test-model", "t": NaN, "u": -Infinity}', b'\xef\xbb\xbf{"model": "test-model"}',
               '{"model": "test-model"}'.encode("utf-16"), b'{"model": "test-model", "model": 1}',
               b'{"model": "test-model", "prompt": "' + "\u00e9".encode() * 100 + b'"}',
               deep(1023), deep(1025), deep(100_000), b'{"model": "test-model", "m": ' + b'{"a":' * 5000 + b"1" + b"}" * 5001)
OTHER_PATHS = ("/v1/models", "/v1/responses", "/v1/chat/completions/", "/v1/", "/v1/audio/speech")

# --- requests ---------------------------------------------------------------------------------------

#: Values of the headers admission reads, as clients get them wrong: digits a latin-1 decode calls
#: digits (superscripts), signs, spaces, lists, numbers past 64 bits.
CONTENT_LENGTHS = (b"0", b"1", b"10", b"1024", b"99999999999999999999999999", b"-1", b"+5", b" 5", b"5 ", b"5, 5",
                   b"0x10", b"1e3", b"\xb2", b"\xb9\xb3", b"\xbd", b"", b"\x00", b"nan")
header_names = st.one_of(
    st.sampled_from((b"content-length", b"content-type", b"transfer-encoding", b"expect", b"x-request-id",
                     b"x-session-id", b"x-user", b"x-forwarded-for", b"authorization", b"host", b"connection")),
    st.binary(max_size=12).map(bytes.lower))
header_values = st.one_of(st.sampled_from(CONTENT_LENGTHS), st.binary(max_size=40),
                          st.sampled_from((b"application/json", b"100-continue", b"chunked", b"gzip, chunked")))
header_lists = st.lists(st.tuples(header_names, header_values), max_size=8)
methods = st.sampled_from(("POST", "POST", "POST", "GET", "PUT", "HEAD", "DELETE", "OPTIONS", "post", "FOO"))
paths = st.one_of(st.sampled_from(sorted(MODEL_PATHS)), st.sampled_from(OTHER_PATHS))


def scope(method: str, path: str, headers: list) -> dict:
    """An HTTP scope as uvicorn builds it."""
    return {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
            "headers": headers, "client": ("127.0.0.1", 5000)}


def messages(body: bytes, mutator: Mutator, disconnect: bool) -> list[dict]:
    """`body` as http.request messages cut at random places (empty ones too), or ending in a disconnect."""
    rng = mutator.rng
    cuts = sorted(rng.randint(0, len(body)) for _ in range(rng.choice((0, 0, 1, 2, 5))))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]
    out = [{"type": "http.request", "body": piece, "more_body": True} for piece in pieces]
    out[-1]["more_body"] = False
    if not out[-1]["body"] and rng.random() < 0.2:
        del out[-1]["body"]  # ASGI allows the key to be left out
    if disconnect:
        out = out[:rng.randint(0, len(out) - 1)] + [{"type": "http.disconnect"}]
    return out


def run(coro):
    """Run a coroutine that never waits (the fakes answer at once) to its end, with no event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("admission waited on something other than receive()")


# --- the reference model and the property ------------------------------------------------------------


def expected(scope_: dict, stream: list[dict], limit: int, table: RoutingTable | None) -> tuple:
    """What admission.py's docstring says the request comes to: ("admit", body), ("refuse", status, code),
    or ("gone",)."""
    if sum(len(k) + len(v) for k, v in scope_["headers"]) > MAX_HEADER_BYTES:
        return ("refuse", 431, "headers_too_large")
    declared = next((v for k, v in scope_["headers"] if k == b"content-length"), None)
    if declared is not None and declared.isdigit() and int(declared) > limit:  # bytes.isdigit: ASCII only
        return ("refuse", 413, "request_too_large")
    body = b""
    for message in stream:
        if message["type"] == "http.disconnect":
            return ("gone",)
        body += message.get("body", b"")
        if len(body) > limit:
            return ("refuse", 413, "request_too_large")
    if scope_["method"] != "POST" or scope_["path"] not in MODEL_PATHS:
        return ("admit", body)
    try:
        parsed = json.loads(body)  # what the backends read
    except (ValueError, RecursionError):
        return ("refuse", 400, "invalid_json")
    model = parsed.get("model") if isinstance(parsed, dict) else None
    if not isinstance(model, str) or not model:
        return ("refuse", 400, "missing_model")
    if table is not None and table.models and model not in table.models:
        return ("refuse", 404, "model_not_found")
    return ("admit", body)


def check_admission(scope_: dict, stream: list[dict], limit: int, table: RoutingTable | None) -> None:
    """The property, for one request (the failure names the request, whichever variant it was)."""
    pending = iter(stream)

    async def receive() -> dict:
        return next(pending)

    want = expected(scope_, stream, limit, table)
    where = f"{scope_['method']} {scope_['path']} headers={scope_['headers']!r:.300} limit={limit} " \
            f"table models={table and table.models} messages={stream!r:.500}"
    try:
        got = run(admit(scope_, receive, limit, table))
    except Refused as refusal:
        assert want[0] == "refuse" and (refusal.status, refusal.code) == want[1:], \
            f"refused {refusal.status} {refusal.code} ({refusal.message}), expected {want[:3]}: {where}"
        check_refusal(refusal)
        return
    except ClientGone:
        assert want == ("gone",), f"ClientGone, expected {want[:3]}: {where}"
        return
    except Exception as exc:
        raise AssertionError(f"admit raised {type(exc).__name__}: {exc}: {where}") from exc
    assert want[0] == "admit", f"admitted, expected {want}: {where}"
    assert isinstance(got, Admitted) and got.body == want[1], where
    check_admitted(scope_, got, table)


def check_refusal(refusal: Refused) -> None:
    """A 4xx with its OpenAI code, that the proxy can send as the router's own error."""
    assert 400 <= refusal.status < 500 and refusal.code in (
        REFUSALS[refusal.status] if isinstance(REFUSALS[refusal.status], tuple) else (REFUSALS[refusal.status],))
    assert refusal.message and isinstance(refusal.message, str)
    sent = []

    async def send(message: dict) -> None:
        sent.append(message)

    run(send_error(send, refusal.status, refusal.message, "invalid_request_error", refusal.code,
                   param=refusal.param, request_id=b"id"))
    assert sent[0]["status"] == refusal.status
    assert (b"x-maitred-error", refusal.code.encode()) in sent[0]["headers"]
    error = orjson.loads(sent[1]["body"])["error"]
    assert error["code"] == refusal.code and error["message"] == refusal.message
    if refusal.model is not None:
        refusal.model.encode()  # logged as JSON: no lone surrogate


def check_admitted(scope_: dict, admitted: Admitted, table: RoutingTable | None) -> None:
    """What the hot path reads of an admitted request, read without error."""
    if scope_["path"] in MODEL_PATHS and scope_["method"] == "POST":
        assert isinstance(admitted.parsed, dict) and admitted.model
        assert admitted.model == printable(admitted.parsed["model"])
        orjson.dumps({"model": admitted.model})  # the access log line
    else:
        assert admitted.parsed is None and admitted.model is None
    request_id = _request_id(scope_)
    assert isinstance(request_id, bytes) and request_id
    forwarded = _upstream_headers(scope_, request_id)
    for name, value in forwarded:
        assert isinstance(name, str) and isinstance(value, str)
    for key, value in scope_["headers"]:  # UTF-8 values go out as the client sent them (aiohttp writes UTF-8)
        if key not in _REQUEST_DROP and key != b"x-forwarded-for" and _is_utf8(value):
            assert (key.decode("latin-1"), value.decode()) in forwarded, (key, value, forwarded)
    view = RequestView(admitted.parsed, scope_["headers"], (table or RoutingTable()).affinity)
    for key in (affinity_key(admitted.parsed), prefix_key(admitted.parsed), session_key(view)):
        assert key is None or 0 <= key < 2**64


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


# --- the tests ----------------------------------------------------------------------------------------


@cases(3_000)
@given(methods, paths, header_lists, st.integers(0, 2**32))
def test_any_headers_are_admitted_or_refused_with_a_4xx(method, path, headers, seed):
    mutator = Mutator(seed)
    rng = mutator.rng
    for _ in range(HEADER_VARIANTS):
        variant = list(headers)
        if rng.random() < 0.5:
            variant.insert(rng.randint(0, len(variant)), (b"content-length", rng.choice(CONTENT_LENGTHS)))
        if rng.random() < 0.05:
            variant.append((b"x-big", b"v" * rng.choice((MAX_HEADER_BYTES - 20, MAX_HEADER_BYTES, 70_000))))
        body = rng.choice((b"", b'{"model": "test-model"}', b'{"model": "' + "\u00e9".encode() + b'"}', b"x" * 2000))
        check_admission(scope(method, path, variant), messages(body, mutator, rng.random() < 0.05),
                        rng.choice(LIMITS), rng.choice(TABLES))


@cases(1_000)
@given(st.one_of(request_objects(), request_objects(), json_values(8)), header_lists, st.integers(0, 2**32))
def test_any_json_body_is_admitted_or_refused_with_a_4xx(document, headers, seed):
    mutator = Mutator(seed)
    rng = mutator.rng
    for i in range(BODY_VARIANTS + 1):
        variant = document if i == 0 else mutator.tree(document)
        body = mutator.encode(variant)
        if rng.random() < 0.2:
            body = mutator.bytes(body)
        elif rng.random() < 0.02:
            body = b'{"model": "test-model", "messages": ' + deep(rng.choice((100, 1100, 100_000))) + b"}"
        path = rng.choice(sorted(MODEL_PATHS)) if rng.random() < 0.9 else rng.choice(OTHER_PATHS)
        method = "POST" if rng.random() < 0.95 else "PUT"
        check_admission(scope(method, path, headers if rng.random() < 0.3 else []),
                        messages(body, mutator, rng.random() < 0.03), rng.choice(LIMITS[2:]), rng.choice(TABLES))


@cases(3_000)
@given(st.one_of(st.sampled_from(SEED_BODIES), st.binary(max_size=300),
                 texts(60).map(lambda t: t.encode("utf-8", "surrogatepass"))), st.integers(0, 2**32))
def test_any_bytes_are_admitted_or_refused_with_a_4xx(body, seed):
    mutator = Mutator(seed)
    for i in range(BYTES_VARIANTS + 1):
        variant = body if i == 0 else mutator.bytes(body)
        check_admission(scope("POST", mutator.rng.choice(sorted(MODEL_PATHS)), [(b"content-type", b"application/json")]),
                        messages(variant, mutator, False), mutator.rng.choice(LIMITS[1:]),
                        mutator.rng.choice(TABLES))


def test_a_content_length_of_superscript_digits_is_not_a_crash():
    """Found by the fuzzer: b"\\xb2" decoded as latin-1 is "²", which str.isdigit() takes for a digit and
    int() refuses, so the size check raised ValueError (the router's 500, had the HTTP parser let it in);
    such a header is no declared size, and the body is counted as it arrives."""
    for value in (b"\xb2", b"\xb9\xb3", b"1\xb2"):
        headers = [(b"content-length", value)]
        assert run(admit(scope("POST", "/v1/completions", headers), _once(b'{"model": "m"}'), 100, None)).model == "m"
        check_admission(scope("POST", "/v1/completions", headers),
                        [{"type": "http.request", "body": b"x" * 20}], 10, None)


def _once(body: bytes):
    """A receive() that hands over `body` in one message."""
    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}
    return receive
