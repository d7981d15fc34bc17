"""In a namespace that enforces the `restricted` Pod Security Standard (the API server's own Pod Security
admission), the operator's router pods are admitted, and so are a template's replicas written to pass."""

from __future__ import annotations

import copy

import pytest

from operator_harness import template, wait_for

pytestmark = pytest.mark.cluster

RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def restricted_template(app: str) -> dict:
    t = copy.deepcopy(template(app))
    t["spec"]["securityContext"] = RESTRICTED_POD
    for container in t["spec"]["containers"]:
        container["securityContext"] = RESTRICTED_CONTAINER
    return t


def test_router_and_replica_pods_are_admitted_where_pod_security_is_restricted(pools, operator, replicas_kubelet,
                                                                              routers_kubelet):
    pools.kubectl("label", "namespace", pools.namespace, "pod-security.kubernetes.io/enforce=restricted",
                  "--overwrite")
    pools.apply("llama", {"replicas": 2, "template": restricted_template("llama"), "router": {"replicas": 2}})
    # A pool whose template ignores the standard: its pods are refused, which shows the namespace enforces it.
    pools.apply("loose", {"replicas": 1, "template": template("loose"), "router": {"replicas": 0}})

    pools.wait_endpoints("llama", 2)
    wait_for(lambda: len(pools.pods("maitred.dev/router-of=llama")) == 2, 60, "both router pods to be admitted")
    wait_for(lambda: pools.condition("llama", "RouterAvailable").get("status") == "True"
             and pools.condition("llama", "Ready").get("status") == "True", 60, "RouterAvailable and Ready")

    def refused() -> bool:
        deployment = pools.apps.read_namespaced_deployment("loose", pools.namespace)
        return any(c.type == "ReplicaFailure" and "forbidden" in (c.message or "")
                   for c in deployment.status.conditions or [])

    wait_for(refused, 60, "the loose pool's pods to be refused by Pod Security admission")
    assert pools.pods("app=loose") == []
