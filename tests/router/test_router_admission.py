"""Admission's pure checks, with plain values: what is refused, with which status and code."""

from __future__ import annotations

import pytest

from maitred.router.admission import Refused, check_model, parse_model_request
from maitred.router.table import RoutingTable


@pytest.mark.parametrize("body, code", [
    (b"{", "invalid_json"),
    (b"[1, 2]", "missing_model"),
    (b'{"messages": []}', "missing_model"),
    (b'{"model": ""}', "missing_model"),
    (b'{"model": 7}', "missing_model"),
])
def test_bodies_without_a_usable_model_are_refused_with_400(body, code):
    with pytest.raises(Refused) as refusal:
        parse_model_request(body)
    assert (refusal.value.status, refusal.value.code) == (400, code)


def test_a_model_the_table_does_not_list_is_404_and_an_empty_list_allows_any():
    assert parse_model_request(b'{"model": "m", "stream": true}') == {"model": "m", "stream": True}
    with pytest.raises(Refused) as refusal:
        check_model("other", RoutingTable(pool="ml/p", models=("m",)))
    assert (refusal.value.status, refusal.value.code, refusal.value.model) == (404, "model_not_found", "other")
    assert "served: m" in refusal.value.message
    check_model("anything", RoutingTable(models=()))
    check_model("anything", None)
