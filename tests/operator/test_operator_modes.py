"""Selector mode (pods the user runs) and static-endpoints mode, and what a pool with nothing to route to says."""

from __future__ import annotations

import collections
import time

import pytest
import yaml

from cluster import procs
from cluster.addresses import POOL as ADDRESSES
from cluster.kubelet import SCHEDULER_NAME

from operator_harness import MAITRED, chat, wait_for

pytestmark = pytest.mark.cluster


def pod_manifest(name: str, labels: dict) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"schedulerName": SCHEDULER_NAME, "containers": [{
            "name": "model", "image": "maitred/sim:test", "args": ["--model", "m1"],
            "ports": [{"name": "serve", "containerPort": 8000}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}}}]},
    })


def test_selector_mode_routes_to_the_pods_the_user_runs_with_weights_by_label(
        pools, operator, replicas_kubelet, start_router):
    for name, labels in (("big", {"app": "sel", "gpu": "h100"}), ("small", {"app": "sel"}),
                         ("other", {"app": "unrelated"})):
        pools.kubectl("apply", "-f", "-", input=pod_manifest(name, labels))
    pools.apply("sel", {
        "selector": {"matchLabels": {"app": "sel"}}, "port": "serve",
        "balancing": {"method": "weighted", "weights": [{"selector": {"matchLabels": {"gpu": "h100"}}, "weight": 3}]},
    })

    table = pools.wait_endpoints("sel", 2)

    assert {e.id: e.weight for e in table.endpoints} == {"big": 3, "small": 1}
    assert pools.apps.list_namespaced_deployment(pools.namespace, label_selector="app.kubernetes.io/component="
                                                 "replicas").items == [], "selector mode owns no Deployment"
    router = start_router("sel")
    answered_by = collections.Counter(chat(router.url).headers["x-maitred-endpoint"] for _ in range(40))
    assert set(answered_by) == {"big", "small"}
    assert answered_by["big"] > answered_by["small"]
    assert pools.kubectl("get", "aisp", "sel", "-o", "jsonpath={.status.ready}").stdout == "2/2"


def test_static_endpoints_mode_routes_to_servers_outside_the_cluster(pools, operator, start_router, tmp_path):
    servers = []
    try:
        for i in range(2):
            host = ADDRESSES.take(8000)
            servers.append((host, procs.spawn([*MAITRED, "sim", "--host", host, "--port", "8000", "--model", "m1"],
                                              tmp_path / f"static-{i}.log")))
        urls = [f"http://{host}:8000" for host, _ in servers]
        # The test runs the router itself (start_router): the operator runs none (RouterAvailable holds).
        pools.apply("outside", {"endpoints": [{"url": urls[0]}, {"url": urls[1], "weight": 2}],
                                "router": {"replicas": 0}})

        table = pools.wait_endpoints("outside", 2)
        assert [(e.url, e.weight) for e in table.endpoints] == [(urls[0], 1), (urls[1], 2)]
        router = start_router("outside")
        assert chat(router.url).status_code == 200
        assert pools.condition("outside", "Ready")["status"] == "True"
    finally:
        for _, proc in servers:
            procs.stop(proc)


def test_a_selector_that_matches_nothing_says_so_and_keeps_the_last_good_table(pools, operator, replicas_kubelet):
    pools.kubectl("apply", "-f", "-", input=pod_manifest("only", {"app": "lonely"}))
    pools.apply("lonely", {"selector": {"matchLabels": {"app": "lonely"}}})
    good = pools.wait_endpoints("lonely", 1)

    pools.kubectl("delete", "pod", "only", "--wait=false")

    degraded = wait_for(lambda: (c := pools.condition("lonely", "Degraded")).get("status") == "True" and c, 30,
                        "Degraded=True")
    assert degraded["reason"] == "NoMatchingPods"
    ready = pools.condition("lonely", "Ready")
    assert ready["status"] == "False" and "keeping the last good routing table" in ready["message"]
    assert pools.table("lonely").endpoints == good.endpoints
    assert ("Warning", "NoMatchingPods") in {(t, r) for t, r, _ in pools.events("lonely")}


def test_one_bad_pool_does_not_stop_the_operator_from_serving_the_others(pools, operator, replicas_kubelet):
    # The template's labels break the API server's rule for a Deployment only at write time (matchExpressions).
    bad_template = {"metadata": {"labels": {"app": "bad"}},
                    "spec": {"containers": [{"name": "m", "image": "maitred/sim:test"}]}}
    pools.apply("bad", {"selector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["x"]}]},
                        "template": bad_template})
    pools.kubectl("apply", "-f", "-", input=pod_manifest("fine", {"app": "good"}))
    pools.apply("good", {"selector": {"matchLabels": {"app": "good"}}})

    pools.wait_endpoints("good", 1)
    degraded = wait_for(lambda: (c := pools.condition("bad", "Degraded")).get("reason") == "ReconcileFailed" and c,
                        30, "the bad pool Degraded")
    assert "Deployment bad" in degraded["message"]
    wait_for(lambda: ("Warning", "ReconcileFailed") in {(t, r) for t, r, _ in pools.events("bad")}, 10,
             "a Warning event ReconcileFailed")


def test_a_pool_the_crd_accepts_but_no_retry_can_serve_says_why_once(pools, operator):
    # A label key whose name part is longer than 63 characters; an IPv6 address that is none.
    pools.apply("badsel", {"selector": {"matchLabels": {"x" * 64: "v"}}})
    pools.apply("badurl", {"endpoints": [{"url": "http://[1.2]:8000"}]})

    for name, words in (("badsel", "selector"), ("badurl", "not a valid URL")):
        degraded = wait_for(lambda: (c := pools.condition(name, "Degraded")).get("reason") == "InvalidSpec" and c,
                            30, f"{name} Degraded: InvalidSpec")
        assert degraded["status"] == "True" and words in degraded["message"], degraded
        assert pools.get(name)["status"]["observedGeneration"] == 1
        wait_for(lambda: ("Warning", "InvalidSpec") in {(t, r) for t, r, _ in pools.events(name)}, 10,
                 f"a Warning event InvalidSpec on {name}")
    time.sleep(2)  # past the first retries there would be
    assert "reconcile failed" not in operator.log()
    assert [r for _, r, _ in pools.events("badurl")].count("InvalidSpec") == 1


def test_kubectl_scale_of_a_pool_without_a_template_says_replicas_are_ignored(pools, operator, replicas_kubelet):
    pools.kubectl("apply", "-f", "-", input=pod_manifest("solo", {"app": "solo"}))
    pools.apply("solo", {"selector": {"matchLabels": {"app": "solo"}}})
    pools.wait_endpoints("solo", 1)

    pools.kubectl("scale", "aisp/solo", "--replicas=5")

    progressing = wait_for(lambda: (c := pools.condition("solo", "Progressing")).get("observedGeneration") == 2
                           and c, 30, "the scaled pool's status")
    assert "spec.replicas (5) is ignored without a template" in progressing["message"]
    assert pools.get("solo")["status"]["replicas"] == 1
