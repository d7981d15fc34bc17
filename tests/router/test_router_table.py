"""The routing-table contract: what it accepts, and errors that name the field at fault."""

from __future__ import annotations

import orjson
import pytest

from maitred.router.table import RoutingTable, TableError, parse_table


def test_a_minimal_table_gets_the_documented_defaults():
    t = parse_table(b'{"endpoints": [{"id": "a", "url": "http://127.0.0.11:8000/"}]}')
    assert t.method == "least-connections"
    assert t.endpoints[0].url == "http://127.0.0.11:8000"  # trailing slash dropped
    assert t.endpoints[0].weight == 1
    assert (t.health_check.path, t.health_check.period_seconds, t.health_check.failure_threshold) == ("/health", 5.0, 3)
    assert (t.retries.attempts, t.retries.on_status) == (2, (502, 503))


def test_the_table_round_trips_through_its_camel_case_json():
    t = parse_table(orjson.dumps({"pool": "ml/llama", "version": 3, "method": "weighted", "models": ["m"],
                                  "endpoints": [{"id": "a", "url": "http://10.0.0.1:8000", "weight": 3, "zone": "z"}],
                                  "healthCheck": {"periodSeconds": 0.2}, "retries": {"perTryTimeoutSeconds": 5}}))
    doc = orjson.loads(t.to_json())
    assert doc["healthCheck"]["periodSeconds"] == 0.2 and doc["retries"]["perTryTimeoutSeconds"] == 5
    assert parse_table(t.to_json()) == t


@pytest.mark.parametrize(("doc", "field", "says"), [
    ({"endpoints": [{"id": "a", "url": "ftp://x"}]}, "endpoints.0.url", "should match pattern"),
    ({"endpoints": [{"id": "a", "url": "http://x", "weight": -1}]}, "endpoints.0.weight", "greater than or equal to 0"),
    ({"endpoints": [{"id": "", "url": "http://x"}]}, "endpoints.0.id", "at least 1 character"),
    ({"method": "random"}, "method", "'round-robin'"),
    ({"healthCheck": {"periodSeconds": 0}}, "healthCheck.periodSeconds", "greater than 0"),
    ({"timeouts": {"idleSeconds": "soon"}}, "timeouts.idleSeconds", "valid number"),
    ({"retries": {"attempts": -1}}, "retries.attempts", "greater than or equal to 0"),
    ({"endpiont": []}, "endpiont", "Extra inputs are not permitted"),
    ({"endpoints": [{"id": "a", "url": "http://x"}, {"id": "a", "url": "http://y"}]}, "endpoints", "repeated: a"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_validation_errors_name_the_field_as_written(doc, field, says):
    with pytest.raises(TableError) as err:
        parse_table(orjson.dumps(doc))
    assert f"{field}: " in str(err.value)
    assert says in str(err.value)


def test_not_json_says_so():
    with pytest.raises(TableError, match="not valid JSON"):
        parse_table(b"{endpoints:")
    with pytest.raises(TableError, match=r"\(root\)"):
        parse_table(b"[]")


def test_the_table_is_immutable():
    t = RoutingTable()
    with pytest.raises(Exception):
        t.version = 2
