"""Fuzzing the routing-table parser (`parse_table`), in process: about 75,000 inputs.

Whatever the input (any bytes or text, any JSON value, a valid table with a few fields broken, at the
JSON or the byte level), `parse_table` either returns a table or raises :class:`TableError` with a
message, nothing else; and a table it accepts is one it can write and read back unchanged (`to_json`),
since the router republishes what it loaded (/debug/table) and the operator writes tables with the
same model. Hypothesis draws the documents and a seed; :class:`fuzzing.Mutator` derives the broken
variants from each (see fuzzing.py for the settings and for running longer).
"""

from __future__ import annotations

import json

import pytest
from fuzzing import Mutator, cases, json_values, texts
from hypothesis import given
from hypothesis import strategies as st
from router_harness import ROUTER_WORKERS

from maitred.router.table import METHODS, RoutingTable, TableError, parse_table

#: In process, so the same with any number of router workers: run in the suite's first pass only.
pytestmark = pytest.mark.skipif(ROUTER_WORKERS != 1, reason="in-process fuzzing: run once, in the one-worker pass")

#: Variants derived from each hypothesis draw (times the draws: the inputs of each test).
BYTE_VARIANTS, JSON_VARIANTS, TABLE_VARIANTS = 2, 14, 60


def check_table(raw: bytes | str) -> RoutingTable | None:
    """The property: TableError (with a message) or a table that round-trips through to_json."""
    try:
        parsed = parse_table(raw)
    except TableError as exc:
        assert str(exc)
        return None
    except Exception as exc:  # the failure names the input, whatever variant of the draw it was
        raise AssertionError(f"parse_table raised {type(exc).__name__}: {exc} on {raw!r}") from exc
    written = parsed.to_json()
    assert parse_table(written) == parsed, f"{raw!r} was accepted, and written back as {written!r}"
    return parsed


# --- valid tables, then broken a little -----------------------------------------------------------------

hosts = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True),
    texts(12).filter(lambda s: s and not any(c in s for c in "/ \t\n\r\x0b\x0c")),
)
urls = st.builds(lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
                 st.sampled_from(("http", "https")), hosts,
                 st.one_of(st.integers(0, 70000).map(lambda p: f":{p}"), st.just(""), st.just(":"),
                           st.text("0123456789", max_size=8).map(lambda p: f":{p}")),
                 st.one_of(st.just(""), st.just("/"), st.from_regex(r"(/[A-Za-z0-9%._~-]{0,8}){1,3}", fullmatch=True)))
positive = st.one_of(st.floats(0.001, 3600), st.integers(1, 3600))


@st.composite
def valid_tables(draw) -> dict:
    """A table the parser should accept (most of the time: hosts and ports are drawn loosely)."""
    ids = draw(st.lists(st.text(min_size=1, max_size=12), max_size=6, unique=True))
    endpoints = [{"id": i, "url": draw(urls), "weight": draw(st.integers(0, 5)),
                  **({"zone": draw(st.text(max_size=5))} if draw(st.booleans()) else {})} for i in ids]
    full = {
        "pool": draw(st.text(max_size=20)), "version": draw(st.integers(0, 2**64 - 1)),
        "method": draw(st.sampled_from(METHODS)), "models": draw(st.lists(st.text(max_size=20), max_size=3)),
        "endpoints": endpoints,
        "healthCheck": {"path": draw(st.from_regex(r"/[!-~]{0,12}", fullmatch=True)),
                        "periodSeconds": draw(positive), "timeoutSeconds": draw(positive),
                        "failureThreshold": draw(st.integers(1, 10)), "successThreshold": draw(st.integers(1, 10))},
        "retries": {"attempts": draw(st.integers(0, 5)), "perTryTimeoutSeconds": draw(st.none() | positive),
                    "onStatus": draw(st.lists(st.integers(400, 599), max_size=4))},
        "timeouts": {"connectSeconds": draw(positive), "idleSeconds": draw(positive),
                     "requestSeconds": draw(positive)},
        "affinity": {"sessionHeader": draw(st.from_regex(r"[a-zA-Z0-9-]{1,20}", fullmatch=True)),
                     "loadFactor": draw(st.floats(1, 10))},
    }
    keep = draw(st.sets(st.sampled_from(sorted(full))))  # every field has a default
    return {k: v for k, v in full.items() if k in keep}


def as_json(table) -> bytes:
    """`table` as JSON bytes (NaN and Infinity as Python writes them, lone surrogates raw)."""
    return json.dumps(table).encode("utf-8", "surrogatepass")


# --- the properties -------------------------------------------------------------------------------------

#: The seed corpus: inputs that broke the parser once, or that sit on an edge worth trying every run.
CORPUS = [
    b"", b"null", b"[]", b"\xef\xbb\xbf{}", "{\"pool\": \"\ud83d\"}", b'{"pool": "\\ud83d"}', b"[" * 5000 + b"]" * 5000,
    b'{"version": 1e400}', b'{"version": 18446744073709551616}', b'{"version": -1}', b'{"endpoints": {}}',
    b'{"timeouts": {"requestSeconds": "inf"}}', b'{"healthCheck": {"periodSeconds": "1e999"}}',
    b'{"retries": {"perTryTimeoutSeconds": "Infinity"}}', b'{"affinity": {"loadFactor": NaN}}',
    b'{"endpoints": [{"id": "a", "url": "http://[::1]:8000"}, {"id": "a", "url": "http://b:1"}]}',
    b'{"endpoints": [{"id": "a", "url": "http://h:0"}]}', b'{"endpoints": [{"id": "a", "url": "http://h:65536"}]}',
    b'{"endpoints": [{"id": "a", "url": "http://\xc3\xa9.example:80/"}]}',
    b'{"endpoints": [{"id": "a", "url": "http://[::1:80"}]}', b'{"endpoints": [{"id": "a", "url": "http://a@:80"}]}',
    b'{"version": "12", "affinity": {"loadFactor": "1.5", "sessionHeader": "X-Session"}}',
]


@pytest.mark.parametrize("raw", CORPUS, ids=range(len(CORPUS)))
def test_the_seed_corpus_is_tables_or_table_errors(raw):
    check_table(raw)
    mutator = Mutator(len(raw))
    for _ in range(TABLE_VARIANTS):
        check_table(mutator.bytes(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw))


@cases(6_000)
@given(st.one_of(st.binary(max_size=300), texts(100)), st.integers(0, 2**32))
def test_any_bytes_or_text_is_a_table_or_a_table_error(raw, seed):
    check_table(raw)
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    mutator = Mutator(seed)
    for _ in range(BYTE_VARIANTS):
        check_table(mutator.bytes(data))


@cases(1_200)
@given(json_values(), st.integers(0, 2**32))
def test_any_json_value_is_a_table_or_a_table_error(value, seed):
    mutator = Mutator(seed)
    check_table(mutator.encode(value))
    for _ in range(JSON_VARIANTS):
        check_table(mutator.encode(mutator.tree({"endpoints": [value]} if mutator.rng.random() < 0.3 else value)))


@cases(800)
@given(valid_tables(), st.integers(0, 2**32))
def test_a_valid_table_with_fields_broken_is_a_table_or_a_table_error(table, seed):
    mutator = Mutator(seed)
    check_table(as_json(table))
    for _ in range(TABLE_VARIANTS):
        raw = mutator.encode(mutator.tree(table))
        check_table(mutator.bytes(raw) if mutator.rng.random() < 0.25 else raw)


@pytest.mark.parametrize("field, value", [
    ("timeouts.requestSeconds", "inf"), ("timeouts.connectSeconds", "Infinity"), ("timeouts.idleSeconds", "nan"),
    ("healthCheck.periodSeconds", "1e999"), ("healthCheck.timeoutSeconds", "inf"),
    ("retries.perTryTimeoutSeconds", "inf"),
])
def test_an_infinite_or_nan_duration_is_refused_naming_the_field(field, value):
    """Found by the fuzzer: pydantic reads "inf" as a float, so such a table loaded, wrote its duration
    back as null (unreadable), and a request or connect timeout of infinity failed every request with
    OverflowError inside aiohttp (a 500 from the router)."""
    section, name = field.split(".")
    with pytest.raises(TableError, match=field.replace(".", r"\.")):
        parse_table(json.dumps({section: {name: value}}))
