"""RouterAvailable: a pool is Ready only when one of its router pods is, and a router that cannot run (an image
that does not exist, pods refused at creation) says why in the pool's status."""

from __future__ import annotations

import pytest

from conftest import MISSING_IMAGE
from operator_harness import chat, template, wait_for

pytestmark = pytest.mark.cluster


def settled(pools, name: str, type_: str, status: str) -> dict:
    return wait_for(lambda: (c := pools.condition(name, type_)).get("status") == status and c, 60,
                    f"{type_}={status} on {name}")


def test_a_pool_is_ready_once_its_router_pod_serves(pools, operator, replicas_kubelet, routers_kubelet):
    pools.apply("llama", {"replicas": 2, "template": template("llama"), "router": {"replicas": 1}})
    pools.wait_endpoints("llama", 2)

    available = settled(pools, "llama", "RouterAvailable", "True")
    assert available["reason"] == "RouterAvailable"
    assert settled(pools, "llama", "Ready", "True")["reason"] == "EndpointsReady"
    assert pools.get("llama")["status"]["router"] == "1/1"
    (router_pod,) = pools.pods("maitred.dev/router-of=llama")
    assert chat(routers_kubelet.backend(router_pod.metadata.name).url).status_code == 200


def test_a_router_image_that_does_not_exist_is_not_ready_and_says_why(pools, operator, replicas_kubelet,
                                                                      routers_kubelet):
    pools.apply("llama", {"replicas": 1, "template": template("llama"),
                          "router": {"replicas": 1, "image": MISSING_IMAGE}})
    pools.wait_endpoints("llama", 1)  # the replicas serve: the table is fine, the router is not

    router = settled(pools, "llama", "RouterAvailable", "False")
    assert router["reason"] == "ImagePullBackOff" and MISSING_IMAGE in router["message"]
    # The table is written before the status: the status that follows it says why the pool is not Ready.
    ready = wait_for(lambda: (c := pools.condition("llama", "Ready")).get("reason") == "RouterUnavailable" and c,
                     30, "Ready to blame the router")
    assert ready["status"] == "False"
    assert settled(pools, "llama", "Degraded", "True")["reason"] == "ImagePullBackOff"
    assert pools.get("llama")["status"]["router"] == "0/1"


def test_router_pods_refused_at_creation_are_not_ready_and_say_why(pools, operator, replicas_kubelet,
                                                                   routers_kubelet):
    # A CPU quota: admission refuses pods that request no CPU, as the router's do here; the replicas request some.
    pools.kubectl("create", "quota", "cpu", "--hard=requests.cpu=10")
    wait_for(lambda: pools.kubectl("get", "quota", "cpu", "-o", "jsonpath={.status.hard}").stdout, 30,
             "the quota controller to take the quota up")  # before that, admission does not enforce it
    replicas = template("llama")
    replicas["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "100m"}}
    pools.apply("llama", {"replicas": 1, "template": replicas, "router": {"replicas": 1}})
    pools.wait_endpoints("llama", 1)

    router = wait_for(lambda: (c := pools.condition("llama", "RouterAvailable")).get("reason") == "FailedCreate" and c,
                      60, "RouterAvailable to name the refusal")
    assert router["status"] == "False" and "quota" in router["message"], router
    assert pools.pods("maitred.dev/router-of=llama") == []
    assert pools.condition("llama", "Ready")["reason"] == "RouterUnavailable"
