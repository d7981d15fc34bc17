"""Invalid pools are refused by the API server itself (the CRD's schema and CEL rules), naming the field."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.cluster

SELECTOR = {"selector": {"matchLabels": {"app": "x"}}}
TEMPLATE_SPEC = {"containers": [{"name": "m", "image": "maitred/sim:test"}]}

INVALID = [
    ("nothing to route to", {}, "spec", "at least one of selector, template or endpoints"),
    ("an empty selector", {"selector": {}}, "spec.selector", "must not be empty"),
    ("an unknown method", {**SELECTOR, "balancing": {"method": "fastest"}}, "spec.balancing.method",
     'Unsupported value: "fastest"'),
    ("template labels that miss the selector",
     {**SELECTOR, "template": {"metadata": {"labels": {"app": "other"}}, "spec": TEMPLATE_SPEC}},
     "spec.template.metadata.labels", "must include every label of selector.matchLabels"),
    ("a negative weight",
     {**SELECTOR, "balancing": {"weights": [{"selector": {"matchLabels": {"a": "b"}}, "weight": -1}]}},
     "spec.balancing.weights[0].weight", "greater than or equal to 0"),
    ("a port out of range", {**SELECTOR, "port": 70000}, "spec.port", "1..65535 or the name of a container port"
     " (an IANA service name), not 70000"),
    ("a retry status that is no error", {**SELECTOR, "retries": {"onStatus": [200, 999]}},
     "spec.retries.onStatus[0]", "greater than or equal to 400"),
    ("a retry status above 599", {**SELECTOR, "retries": {"onStatus": [502, 999]}},
     "spec.retries.onStatus[1]", "less than or equal to 599"),
    ("a port name that is no IANA name", {**SELECTOR, "port": "Not_A_Name"}, "spec.port", "IANA service name"),
    ("a static endpoint that is no HTTP URL", {"endpoints": [{"url": "ftp://x"}]}, "spec.endpoints[0].url",
     "should match"),
    ("a static endpoint port out of range", {"endpoints": [{"url": "http://host:99999"}]}, "spec.endpoints[0].url",
     "should match"),
    ("a static endpoint port that is no number", {"endpoints": [{"url": "http://host:abc/"}]},
     "spec.endpoints[0].url", "should match"),
    ("a label value with a space", {"selector": {"matchLabels": {"a": "b c"}}}, "spec.selector.matchLabels.a",
     "should match"),
    ("a label key that is no label key", {"selector": {"matchLabels": {"bad key!": "b"}}},
     "spec.selector.matchLabels", "keys must be label keys"),
    ("an expression value that is no label value",
     {"selector": {"matchExpressions": [{"key": "a", "operator": "In", "values": ["x/y"]}]}},
     "spec.selector.matchExpressions[0].values[0]", "should match"),
    ("template labels that are no labels",
     {"template": {"metadata": {"labels": {"app": "-x"}}, "spec": TEMPLATE_SPEC}},
     "spec.template.metadata.labels.app", "should match"),
    ("In without values", {"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
     "spec.selector.matchExpressions[0].values", "must be non-empty for In and NotIn"),
    ("negative replicas", {**SELECTOR, "replicas": -1}, "spec.replicas", "greater than or equal to 0"),
    ("an unknown Service type", {**SELECTOR, "router": {"serviceType": "Ingress"}}, "spec.router.serviceType",
     'Unsupported value: "Ingress"'),
    ("a zero health-check period", {**SELECTOR, "healthCheck": {"periodSeconds": 0}},
     "spec.healthCheck.periodSeconds", "greater than 0"),
    ("an affinity load factor below 1", {**SELECTOR, "balancing": {"affinity": {"loadFactor": 0.5}}},
     "spec.balancing.affinity.loadFactor", "greater than or equal to 1"),
    ("a session header that is no header name",
     {**SELECTOR, "balancing": {"method": "session-affinity", "affinity": {"sessionHeader": "x session"}}},
     "spec.balancing.affinity.sessionHeader", "should match"),
]


@pytest.mark.parametrize("name", ["has.dots", "9starts-with-a-digit", "x" * 57])
def test_a_pool_name_that_cannot_name_its_router_service_is_refused(pools, name):
    done = pools.apply(name, SELECTOR, check=False)

    assert done.returncode != 0
    assert "metadata.name" in done.stderr and "DNS label" in done.stderr, done.stderr


@pytest.mark.parametrize("what, spec, field, message", INVALID, ids=[case[0] for case in INVALID])
def test_an_invalid_pool_is_refused_with_a_message_naming_the_field(pools, what, spec, field, message):
    done = pools.apply("bad", spec, check=False)

    assert done.returncode != 0, f"{what} was accepted"
    assert f"{field}:" in done.stderr, done.stderr
    assert message in done.stderr, done.stderr
    assert pools.kubectl("get", "aisp", "bad", check=False).returncode != 0


def test_a_valid_pool_gets_its_defaults_from_the_api_server(pools):
    pools.apply("ok", SELECTOR)

    spec = pools.get("ok")["spec"]

    assert spec["replicas"] == 1 and spec["port"] == 8000
    assert spec["balancing"]["method"] == "least-connections"
    assert spec["balancing"]["affinity"] == {"sessionHeader": "x-session-id", "loadFactor": 1.25}
    assert spec["healthCheck"] == {"path": "/health", "periodSeconds": 5, "timeoutSeconds": 2,
                                   "failureThreshold": 3, "successThreshold": 1}
    assert spec["router"] == {"replicas": 2, "port": 8080, "serviceType": "ClusterIP", "drainSeconds": 30}


def test_the_selector_of_a_pool_with_a_template_cannot_change(pools):
    template = {"metadata": {"labels": {"app": "x", "v": "1"}}, "spec": TEMPLATE_SPEC}
    pools.apply("fixed", {**SELECTOR, "template": template})

    done = pools.apply("fixed", {"selector": {"matchLabels": {"app": "x", "v": "1"}}, "template": template},
                       check=False)

    assert done.returncode != 0, "the selector changed"
    assert "spec.selector:" in done.stderr and "immutable while the pool has a template" in done.stderr, done.stderr
    assert pools.get("fixed")["spec"]["selector"]["matchLabels"] == {"app": "x"}
    # Without a template, a selector is free to change (no Deployment holds it).
    pools.apply("free", SELECTOR)
    pools.apply("free", {"selector": {"matchLabels": {"app": "z"}}})
    assert pools.get("free")["spec"]["selector"]["matchLabels"] == {"app": "z"}
