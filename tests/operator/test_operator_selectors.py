"""Label selectors: Kubernetes semantics, and the string form that the API and the scale subresource read."""

from __future__ import annotations

import pytest

from maitred.operator.models import LabelSelector
from maitred.operator.selectors import matches, to_string


def sel(**kw) -> LabelSelector:
    return LabelSelector.model_validate(kw)


@pytest.mark.parametrize("selector, labels, expected", [
    (sel(matchLabels={"app": "a"}), {"app": "a", "x": "y"}, True),
    (sel(matchLabels={"app": "a"}), {"app": "b"}, False),
    (sel(matchExpressions=[{"key": "tier", "operator": "In", "values": ["x", "y"]}]), {"tier": "y"}, True),
    (sel(matchExpressions=[{"key": "tier", "operator": "In", "values": ["x"]}]), {}, False),
    (sel(matchExpressions=[{"key": "tier", "operator": "NotIn", "values": ["x"]}]), {}, True),
    (sel(matchExpressions=[{"key": "tier", "operator": "NotIn", "values": ["x"]}]), {"tier": "x"}, False),
    (sel(matchExpressions=[{"key": "canary", "operator": "Exists"}]), {"canary": ""}, True),
    (sel(matchExpressions=[{"key": "canary", "operator": "DoesNotExist"}]), {"canary": "1"}, False),
    (sel(matchLabels={"app": "a"}, matchExpressions=[{"key": "canary", "operator": "DoesNotExist"}]),
     {"app": "a"}, True),
])
def test_a_selector_matches_as_in_kubernetes(selector, labels, expected):
    assert matches(selector, labels) is expected


def test_the_string_form_is_sorted_and_uses_the_api_syntax():
    selector = sel(matchLabels={"b": "2", "a": "1"}, matchExpressions=[
        {"key": "tier", "operator": "NotIn", "values": ["y", "x"]},
        {"key": "canary", "operator": "DoesNotExist"},
        {"key": "gpu", "operator": "Exists"},
        {"key": "zone", "operator": "In", "values": ["b", "a"]}])

    assert to_string(selector) == "a=1,b=2,!canary,gpu,tier notin (x,y),zone in (a,b)"
