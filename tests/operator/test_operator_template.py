"""A pool with a template, against the real control plane: the operator's Deployment, the test kubelet's real
simulator pods, the routing table in the ConfigMap, and a router reading it through the API."""

from __future__ import annotations

import collections
import json
import threading
import time

import httpx
import pytest

from operator_harness import chat, template, wait_for

pytestmark = pytest.mark.cluster


def test_a_template_pool_gets_its_pods_a_table_and_a_router_that_spreads_requests(
        pools, operator, replicas_kubelet, routers_kubelet, start_router):
    pools.apply("llama", {"replicas": 3, "selector": {"matchLabels": {"app": "llama"}}, "template": template("llama"),
                          "models": ["m1"], "balancing": {"method": "round-robin"}})

    table = pools.wait_endpoints("llama", 3)
    pods = pools.pods("app=llama")
    assert {e.id for e in table.endpoints} == {p.metadata.name for p in pods}
    assert {e.url for e in table.endpoints} == {f"http://{p.status.pod_ip}:8000" for p in pods}
    assert table.pool == f"{pools.namespace}/llama" and table.method == "round-robin" and table.models == ("m1",)

    router = start_router("llama")
    answered_by = collections.Counter(chat(router.url).headers["x-maitred-endpoint"] for _ in range(30))
    assert set(answered_by) == {p.metadata.name for p in pods}
    assert all(n == 10 for n in answered_by.values()), answered_by

    columns = pools.kubectl("get", "aisp", "llama").stdout.split("\n")
    assert columns[0].split() == ["NAME", "METHOD", "READY", "ROUTER", "ENDPOINTS", "LOAD", "AGE"]
    fields = columns[1].split()
    name, method, ready, router_column, endpoints = fields[:5]
    assert (name, method, ready, endpoints) == ("llama", "round-robin", "3/3", "3")
    assert len(fields) == 6, fields  # LOAD is blank without autoscaling
    assert router_column.endswith("/2")  # the router Deployment's pods, run by routers_kubelet
    status = pools.get("llama")["status"]
    assert (status["replicas"], status["readyReplicas"], status["selector"]) == (3, 3, "app=llama")
    wait_for(lambda: pools.condition("llama", "Ready")["status"] == "True", 60, "Ready, once a router pod is")
    assert pools.condition("llama", "Degraded")["status"] == "False"
    assert any(reason == "EndpointsAdded" for _, reason, _ in pools.events("llama"))
    # Waiting for the first pods to start is no fault: no Warning for it.
    assert not [(reason, message) for kind, reason, message in pools.events("llama") if kind == "Warning"]


def test_kubectl_scale_and_editing_replicas_change_the_endpoints(pools, operator, replicas_kubelet):
    pools.apply("llama", {"replicas": 3, "template": template("llama")})
    pools.wait_endpoints("llama", 3)

    pools.kubectl("scale", "aisp/llama", "--replicas=5")
    pools.wait_endpoints("llama", 5)
    assert pools.apps.read_namespaced_deployment("llama", pools.namespace).spec.replicas == 5

    pools.kubectl("patch", "aisp", "llama", "--type=merge", "-p", '{"spec": {"replicas": 2}}')
    table = pools.wait_endpoints("llama", 2)
    assert pools.kubectl("get", "aisp", "llama", "-o", "jsonpath={.status.ready}").stdout == "2/2"
    assert table.version >= 3
    # What a HorizontalPodAutoscaler reads: the scale subresource, with the pods' selector.
    wait_for(lambda: pools.get("llama")["status"]["replicas"] == 2, 30, "status.replicas 2")
    scale = json.loads(pools.kubectl(
        "get", "--raw", f"/apis/maitred.dev/v1alpha1/namespaces/{pools.namespace}/aiservicepools/llama/scale").stdout)
    assert (scale["kind"], scale["spec"]["replicas"]) == ("Scale", 2)
    assert scale["status"] == {"replicas": 2, "selector": "maitred.dev/pool=llama"}


def test_a_pod_that_goes_not_ready_leaves_the_table_within_a_second_and_comes_back(
        pools, operator, replicas_kubelet):
    pools.apply("llama", {"replicas": 3, "template": template("llama")})
    pools.wait_endpoints("llama", 3)
    victim = pools.pods("app=llama")[0].metadata.name

    replicas_kubelet.set_ready(victim, False)
    wait_for(lambda: pools.pod_ready(victim) is False, 10, "the pod NotReady in the API")
    not_ready_at = time.monotonic()
    wait_for(lambda: victim not in pools.endpoint_ids("llama"), 5, "the pod out of the table")
    left_after_s = time.monotonic() - not_ready_at

    replicas_kubelet.set_ready(victim, None)
    wait_for(lambda: pools.pod_ready(victim), 10, "the pod Ready again")
    ready_at = time.monotonic()
    wait_for(lambda: victim in pools.endpoint_ids("llama"), 5, "the pod back in the table")
    back_after_s = time.monotonic() - ready_at

    assert left_after_s < 1.0, f"left the table {left_after_s:.2f} s after going NotReady"
    assert back_after_s < 1.0, f"came back {back_after_s:.2f} s after going Ready"
    assert pools.kubectl("get", "aisp", "llama", "-o", "jsonpath={.status.ready}").stdout == "3/3"


def test_a_terminating_pod_gets_no_new_request_and_finishes_those_in_flight(
        pools, operator, make_kubelet, start_router):
    # The kubelet keeps a deleted pod serving for 45 s, as a real one does during its grace period.
    kubelet = make_kubelet(label_selector="!maitred.dev/router-of", stop_delay_s=45)
    pools.apply("llama", {"replicas": 3, "template": template("llama", grace_s=60), "models": ["m1"]})
    pools.wait_endpoints("llama", 3)
    router = start_router("llama")

    # A long stream (600 tokens, some seconds) that will still be running when its pod is deleted.
    stream: dict = {}
    started = threading.Event()

    def long_stream() -> None:
        body = {"model": "m1", "messages": [{"role": "user", "content": "tell a long story"}], "max_tokens": 600,
                "stream": True}
        try:
            with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=body, timeout=60) as resp:
                stream["pod"], stream["status"] = resp.headers.get("x-maitred-endpoint"), resp.status_code
                started.set()
                stream["text"] = "".join(resp.iter_text())
        except httpx.HTTPError as exc:
            stream["error"] = repr(exc)
        finally:
            stream["ended_at"] = time.monotonic()
            started.set()

    thread = threading.Thread(target=long_stream)
    thread.start()
    assert started.wait(30) and stream.get("status") == 200, f"the stream did not start: {stream}"
    victim = stream["pod"]

    pools.kubectl("delete", "pod", victim, "--wait=false")
    wait_for(lambda: victim not in pools.endpoint_ids("llama"), 5, "the terminating pod out of the table")
    assert pools.pod_ready(victim) is True, "the pod should still be Ready (terminating, not yet stopped)"
    version = pools.table("llama").version
    wait_for(lambda: router.table_version() >= version, 5, "the router on the new table")
    switched_at = time.monotonic()

    answered_by = collections.Counter(chat(router.url).headers.get("x-maitred-endpoint") for _ in range(20))
    assert victim not in answered_by and None not in answered_by, answered_by

    thread.join(60)
    assert "error" not in stream, f"the stream in flight failed: {stream['error']}"
    assert stream["text"].rstrip().endswith("data: [DONE]"), "the stream in flight was cut"
    assert stream["ended_at"] > switched_at, "the stream should still have been in flight when the table changed"
    assert kubelet.backend(victim).running, "the stream should have finished before the pod stopped"


def test_a_pod_relabelled_out_of_the_selector_leaves_the_table(pools, operator, replicas_kubelet):
    pools.apply("llama", {"replicas": 2, "selector": {"matchLabels": {"app": "llama"}}, "template": template("llama")})
    pools.wait_endpoints("llama", 2)
    victim = pools.pods("app=llama")[0].metadata.name

    pools.kubectl("label", "pod", victim, "app=retired", "--overwrite")

    wait_for(lambda: victim not in pools.endpoint_ids("llama"), 5, "the relabelled pod out of the table")
    # The Deployment replaces it (the ReplicaSet let go of it), and the replacement joins the table.
    table = pools.wait_endpoints("llama", 2)
    assert victim not in {e.id for e in table.endpoints}
