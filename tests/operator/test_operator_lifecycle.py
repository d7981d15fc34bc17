"""The operator over time: a restart changes nothing, deleting a pool removes all it owned, a failing write is
retried and a deletion in between leaves nothing behind, and two replicas never both act (kopf peering)."""

from __future__ import annotations

import time

import pytest
import yaml

from operator_harness import template, wait_for

pytestmark = pytest.mark.cluster

ALL_CHILDREN = {"Deployment": ["llama", "llama-router"], "Service": ["llama-router"], "ConfigMap": ["llama-routing"],
                "ServiceAccount": ["llama-router"], "Role": ["llama-router"], "RoleBinding": ["llama-router"],
                "PodDisruptionBudget": ["llama-router"]}


def uids(pools, name: str) -> dict:
    """uid of each child of pool `name`, and of the ReplicaSets of its Deployment: a new uid is a new object."""
    replica_sets = pools.apps.list_namespaced_replica_set(pools.namespace, label_selector="app=llama").items
    return {**pools.child_uids(name), "ReplicaSet": {rs.metadata.name: rs.metadata.uid for rs in replica_sets}}


def test_after_a_restart_the_table_comes_back_identical_and_no_child_is_duplicated(
        pools, start_operator, replicas_kubelet, routers_kubelet):
    first = start_operator()
    pools.apply("llama", {"replicas": 3, "template": template("llama")})
    pools.wait_endpoints("llama", 3)
    # Settled: its replicas and its router pods (run by routers_kubelet) all up.
    wait_for(lambda: pools.condition("llama", "Progressing").get("status") == "False"
             and pools.get("llama")["status"].get("router") == "2/2", 60, "a settled pool")
    configmap = pools.core.read_namespaced_config_map("llama-routing", pools.namespace)
    before = (configmap.metadata.resource_version, configmap.data["table.json"])
    children = uids(pools, "llama")
    status = pools.get("llama")["status"]

    assert first.stop() == 0
    second = start_operator()
    wait_for(lambda: "pool " + f"{pools.namespace}/llama: serving routing table version" in second.log(), 30,
             "the new operator to reconcile the pool")

    configmap = pools.core.read_namespaced_config_map("llama-routing", pools.namespace)
    assert (configmap.metadata.resource_version, configmap.data["table.json"]) == before
    assert uids(pools, "llama") == children
    assert pools.children("llama") == ALL_CHILDREN
    assert len(pools.pods("app=llama")) == 3
    assert pools.get("llama")["status"] == status


def test_deleting_the_pool_removes_its_deployment_router_service_and_configmap(pools, operator, replicas_kubelet):
    pools.apply("llama", {"replicas": 2, "template": template("llama")})
    pools.wait_endpoints("llama", 2)
    assert pools.children("llama") == ALL_CHILDREN
    assert not pools.get("llama")["metadata"].get("finalizers"), "no cleanup needs a finalizer"

    pools.kubectl("delete", "aisp", "llama", "--timeout=30s")

    wait_for(lambda: not pools.children("llama"), 60, "every child gone")
    wait_for(lambda: not pools.pods("app=llama"), 60, "the replicas gone")


def blocking_configmap(name: str) -> str:
    """A ConfigMap that takes the pool's table name and refuses any change of its data."""
    return yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                           "immutable": True, "data": {"table.json": "not a table"}})


def test_a_write_that_fails_for_a_while_is_retried_until_it_succeeds(pools, operator):
    pools.kubectl("apply", "-f", "-", input=blocking_configmap("static-routing"))
    pools.apply("static", {"endpoints": [{"url": "http://127.0.1.250:8000"}]})
    degraded = wait_for(lambda: (c := pools.condition("static", "Degraded")).get("reason") == "ReconcileFailed" and c,
                        30, "Degraded: ReconcileFailed")
    assert "ConfigMap static-routing" in degraded["message"]

    pools.kubectl("delete", "configmap", "static-routing")

    table = wait_for(lambda: pools.table("static"), 45, "the table written on a retry")
    assert [e.url for e in table.endpoints] == ["http://127.0.1.250:8000"]
    wait_for(lambda: pools.condition("static", "Degraded").get("status") == "False", 30, "Degraded=False")


def test_a_pool_deleted_while_a_failed_create_waits_for_its_retry_leaves_nothing_behind(pools, operator):
    pools.kubectl("apply", "-f", "-", input=blocking_configmap("doomed-routing"))
    pools.apply("doomed", {"endpoints": [{"url": "http://127.0.1.250:8000"}]})
    wait_for(lambda: pools.condition("doomed", "Degraded").get("reason") == "ReconcileFailed", 30, "a failed create")
    assert pools.children("doomed"), "the other children were created meanwhile"

    pools.kubectl("delete", "aisp", "doomed", "--timeout=30s")

    wait_for(lambda: not pools.children("doomed"), 60, "every child gone")
    time.sleep(3)  # past the next retries: nothing may come back
    assert not pools.children("doomed")
    assert pools.kubectl("get", "aisp", "doomed", check=False).returncode != 0
    blocker = pools.core.read_namespaced_config_map("doomed-routing", pools.namespace)
    assert blocker.data == {"table.json": "not a table"} and not blocker.metadata.owner_references


def test_two_operators_never_both_act(pools, start_operator, replicas_kubelet):
    low = start_operator(priority=10)
    pools.apply("llama", {"replicas": 1, "template": template("llama")})
    pools.wait_endpoints("llama", 1)

    high = start_operator(priority=20)
    wait_for(lambda: "Pausing operations in favour of" in low.log(), 30, "the low-priority operator to pause")
    paused_log = low.log()
    pools.kubectl("scale", "aisp/llama", "--replicas=2")
    pools.wait_endpoints("llama", 2)
    wait_for(lambda: "2 endpoint(s)" in high.log(), 10, "the high-priority operator to write the table")
    assert "2 endpoint(s)" not in low.log()[len(paused_log):], "the paused operator acted"

    assert high.stop() == 0
    wait_for(lambda: "Resuming operations" in low.log(), 60, "the low-priority operator to resume")
    pools.kubectl("scale", "aisp/llama", "--replicas=1")
    pools.wait_endpoints("llama", 1)
    wait_for(lambda: "1 endpoint(s)" in low.log()[len(paused_log):], 10, "the resumed operator to act")


def test_a_paused_operator_drops_its_retries_and_never_writes_an_older_spec(pools, start_operator):
    # The low-priority operator alone fails to write the table (a ConfigMap in the way): it retries with backoff.
    low = start_operator(priority=5)
    pools.kubectl("apply", "-f", "-", input=blocking_configmap("static-routing"))
    pools.apply("static", {"endpoints": [{"url": "http://127.0.1.250:8000"}]})
    wait_for(lambda: pools.condition("static", "Degraded").get("reason") == "ReconcileFailed", 30, "a failed write")

    start_operator(priority=10)
    wait_for(lambda: "Pausing operations in favour of" in low.log(), 30, "the low-priority operator to pause")
    pools.apply("static", {"endpoints": [{"url": "http://127.0.1.251:8000"}]})  # generation 2
    pools.kubectl("delete", "configmap", "static-routing")
    wait_for(lambda: pools.get("static")["status"].get("observedGeneration") == 2
             and pools.condition("static", "Degraded").get("status") == "False", 45, "the high one's status")

    # The low one's next retry (at most 30 s later) finds itself outranked and stands by.
    wait_for(lambda: "standing by" in low.log(), 45, "the paused operator's retry to stand by", interval_s=0.5)
    time.sleep(1)
    status = pools.get("static")["status"]
    assert status["observedGeneration"] == 2
    assert pools.condition("static", "Degraded")["status"] == "False"
    assert [e.url for e in pools.table("static").endpoints] == ["http://127.0.1.251:8000"]
    assert "reconcile failed" not in low.log().split("Pausing operations", 1)[1].split("standing by", 1)[1]


def test_a_pod_deleted_while_the_operator_was_down_leaves_the_table_when_it_is_back(
        pools, start_operator, replicas_kubelet):
    first = start_operator()
    pools.apply("llama", {"replicas": 2, "template": template("llama", grace_s=0)})
    pools.wait_endpoints("llama", 2)
    victim = pools.pods("app=llama")[0].metadata.name
    assert first.stop() == 0

    pools.kubectl("delete", "pod", victim, "--wait=true", "--timeout=30s")
    wait_for(lambda: len([p for p in pools.pods("app=llama") if pools.pod_ready(p.metadata.name)]) == 2, 60,
             "the replacement pod Ready")
    assert victim in pools.endpoint_ids("llama"), "nothing should have changed the table meanwhile"

    start_operator()
    table = wait_for(lambda: (ids := pools.endpoint_ids("llama")) and victim not in ids and len(ids) == 2 and ids,
                     30, "the table without the deleted pod")
    assert table == {p.metadata.name for p in pools.pods("app=llama")}


@pytest.mark.parametrize("kind", ["serviceaccount", "role", "rolebinding", "service", "deployment", "configmap"])
def test_a_deleted_child_of_any_kind_is_written_again(pools, operator, kind):
    pools.apply("static", {"endpoints": [{"url": "http://127.0.1.250:8000"}]})
    name = "static-routing" if kind == "configmap" else "static-router"
    title = {"serviceaccount": "ServiceAccount", "rolebinding": "RoleBinding", "configmap": "ConfigMap"}.get(
        kind, kind.capitalize())
    before = wait_for(lambda: (uids := pools.child_uids("static")).get(title, {}).get(name) and uids, 30,
                      f"the {title}")

    pools.kubectl("delete", kind, name, "--wait=true", "--timeout=30s")

    wait_for(lambda: pools.child_uids("static").get(title, {}).get(name) not in (None, before[title][name]), 15,
             f"the {title} written again")
