"""build_routing_table: the pool's spec and its pods in, the routing table out; no cluster needed."""

from __future__ import annotations

import random

import pydantic
import pytest

from maitred.operator.reconcile import keep_last_good
from maitred.operator.models import PoolSpec
from maitred.operator.routing import build_routing_table
from maitred.router.table import parse_table

from operator_objects import pod, spec


def ids(table) -> list[str]:
    return [e.id for e in table.endpoints]


def test_ready_pods_with_an_ip_become_endpoints_on_the_pool_port():
    table = build_routing_table(spec(), [pod("a", "10.0.0.1"), pod("b", "10.0.0.2")], pool="ml/llama")

    assert table.pool == "ml/llama"
    assert [(e.id, e.url, e.weight) for e in table.endpoints] == [
        ("a", "http://10.0.0.1:8000", 1), ("b", "http://10.0.0.2:8000", 1)]


@pytest.mark.parametrize("left_out, why", [
    (pod("x", ready=False), "not Ready"),
    (pod("x", ip=None), "no pod IP yet"),
    (pod("x", deleting=True), "terminating, though still Ready"),
    (pod("x", labels={"app": "other"}), "not matched by the selector"),
])
def test_a_pod_that_may_not_take_requests_is_left_out(left_out, why):
    table = build_routing_table(spec(), [pod("a"), left_out])

    assert ids(table) == ["a"], why


def test_the_table_is_the_same_whatever_the_order_of_the_pods():
    pods = [pod(f"p{i}", f"10.0.0.{i}") for i in range(8)]
    first = build_routing_table(spec(), pods)
    shuffled = pods[:]
    random.Random(7).shuffle(shuffled)

    assert build_routing_table(spec(), shuffled) == first


def test_the_version_moves_only_when_the_content_does():
    v1 = build_routing_table(spec(), [pod("a")])
    same = build_routing_table(spec(), [pod("a")], previous=v1)
    more = build_routing_table(spec(), [pod("a"), pod("b", "10.0.0.2")], previous=same)
    method_changed = build_routing_table(spec(balancing={"method": "round-robin"}), [pod("a"), pod("b", "10.0.0.2")],
                                         previous=more)

    assert (v1.version, same.version, more.version, method_changed.version) == (1, 1, 2, 3)


def test_a_table_read_back_from_its_json_keeps_its_version():
    """What an operator restart does: the previous table comes from the ConfigMap's JSON."""
    first = build_routing_table(spec(), [pod("a"), pod("b", "10.0.0.2")])
    moved = build_routing_table(spec(), [pod("a")], previous=first)

    again = build_routing_table(spec(), [pod("a")], previous=parse_table(moved.to_json()))

    assert again.version == moved.version == 2
    assert again.to_json() == moved.to_json()


def test_a_named_port_is_looked_up_in_the_pod_containers():
    named = pod("a", ports=[{"name": "metrics", "containerPort": 9000}, {"name": "http", "containerPort": 8001}])
    unnamed = pod("b", "10.0.0.2")

    table = build_routing_table(spec(port="http"), [named, unnamed])

    assert [(e.id, e.url) for e in table.endpoints] == [("a", "http://10.0.0.1:8001")]


def test_weights_come_from_the_first_rule_that_matches_and_default_to_1():
    rules = [{"selector": {"matchLabels": {"gpu": "h100"}}, "weight": 3},
             {"selector": {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, "weight": 2},
             {"selector": {"matchLabels": {"drain": "yes"}}, "weight": 0}]
    pods = [pod("h100", "10.0.0.1", labels={"gpu": "h100"}), pod("a10", "10.0.0.2", labels={"gpu": "a10"}),
            pod("plain", "10.0.0.3"), pod("drained", "10.0.0.4", labels={"drain": "yes"})]

    table = build_routing_table(spec(balancing={"method": "weighted", "weights": rules}), pods)

    assert {e.id: e.weight for e in table.endpoints} == {"h100": 3, "a10": 2, "plain": 1, "drained": 0}
    assert table.method == "weighted"


def test_static_endpoints_follow_the_pods_and_count_once():
    table = build_routing_table(
        spec(endpoints=[{"url": "http://203.0.113.9:8000/", "weight": 2}, {"url": "http://203.0.113.9:8000"}]),
        [pod("a")])

    assert [(e.id, e.url, e.weight) for e in table.endpoints] == [
        ("a", "http://10.0.0.1:8000", 1), ("http://203.0.113.9:8000", "http://203.0.113.9:8000", 2)]


def test_a_pool_of_static_endpoints_alone_ignores_every_pod():
    static_only = {"endpoints": [{"url": "http://198.51.100.1:9000"}]}

    table = build_routing_table(static_only, [pod("a")])

    assert ids(table) == ["http://198.51.100.1:9000"]


def test_a_template_without_selector_selects_the_pool_label():
    template = {"metadata": {"labels": {"app": "llama"}}, "spec": {"containers": [{"name": "m", "image": "x"}]}}
    mine = pod("mine", labels={"maitred.dev/pool": "llama"})

    table = build_routing_table({"template": template}, [mine, pod("stranger", "10.0.0.2")], pool="ml/llama")

    assert ids(table) == ["mine"]


def test_the_pool_settings_reach_the_table_unchanged():
    table = build_routing_table(spec(models=["m1"], healthCheck={"path": "/ping", "periodSeconds": 1},
                                     retries={"attempts": 0}, timeouts={"requestSeconds": 60}), [pod("a")])

    assert table.models == ("m1",)
    assert (table.health_check.path, table.health_check.period_seconds) == ("/ping", 1)
    assert table.retries.attempts == 0 and table.timeouts.request_seconds == 60


def test_the_affinity_method_and_settings_reach_the_table():
    table = build_routing_table(spec(balancing={"method": "session-affinity",
                                                "affinity": {"sessionHeader": "X-Chat-Id", "loadFactor": 2}}),
                                [pod("a")])

    assert table.method == "session-affinity"
    assert (table.affinity.session_header, table.affinity.load_factor) == ("x-chat-id", 2.0)
    assert parse_table(table.to_json()).affinity == table.affinity
    assert build_routing_table(spec(), [pod("a")]).affinity.load_factor == 1.25


def test_ipv6_pod_addresses_are_bracketed():
    table = build_routing_table(spec(), [pod("a", "fd00::5")])

    assert table.endpoints[0].url == "http://[fd00::5]:8000"


def test_a_bad_spec_raises_naming_the_field():
    with pytest.raises(pydantic.ValidationError, match="balancing.method"):
        build_routing_table(spec(balancing={"method": "fastest"}), [])


def test_an_empty_table_keeps_the_last_good_one_unless_the_pool_was_scaled_to_zero():
    good = build_routing_table(spec(), [pod("a")])
    empty = build_routing_table(spec(), [pod("a", ready=False)], previous=good)
    template = {"template": {"spec": {"containers": [{"name": "m", "image": "x"}]}}}

    assert keep_last_good(empty, good, PoolSpec.model_validate(spec()))
    assert not keep_last_good(empty, None, PoolSpec.model_validate(spec()))
    assert not keep_last_good(empty, good, PoolSpec.model_validate({**template, "replicas": 0}))
    assert keep_last_good(empty, good, PoolSpec.model_validate({**template, "replicas": 2}))
