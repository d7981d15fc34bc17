"""The chart on a real API server: `helm install`, then a pool as a user makes one, with the operator
running under the chart's own ServiceAccount and RBAC (a token of that ServiceAccount, and the exact
args of the chart's Deployment), and what that ServiceAccount may not do."""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml
from kubernetes import client

from cluster.addresses import POOL as ADDRESSES
from cluster.kubelet import SCHEDULER_NAME
from helm_harness import (MAITRED, REPO, LocalProcess, can_i, http_ok, one, operator_container,
                          operator_from_chart, rbac_denials, service_account_kubeconfig)

from maitred.router.table import parse_table

SIM_POOL = REPO / "examples" / "sim-pool.yaml"
OPERATOR_SA = "maitred-operator"


def wait_for(check, timeout_s: float, what: str, interval_s: float = 0.1):
    import time
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
    return value


def release_manifests(cluster_helm, release: str, namespace: str) -> list[dict]:
    """What Helm applied for the release (``helm get manifest``)."""
    out = cluster_helm.run("get", "manifest", release, "--namespace", namespace).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def apply_sim_pool(kubectl, namespace: str) -> None:
    """examples/sim-pool.yaml as a user applies it; its pods go to the test kubelet (schedulerName)."""
    pool = yaml.safe_load(SIM_POOL.read_text())
    pool["spec"]["template"]["spec"]["schedulerName"] = SCHEDULER_NAME
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(pool))


def routing_table(core: client.CoreV1Api, namespace: str, pool: str):
    try:
        configmap = core.read_namespaced_config_map(f"{pool}-routing", namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return parse_table(configmap.data["table.json"])


def wait_endpoints(core, namespace: str, pool: str, count: int, timeout_s: float = 60.0):
    return wait_for(lambda: (t := routing_table(core, namespace, pool)) is not None
                    and len(t.endpoints) == count and t, timeout_s, f"{count} endpoints in {pool}'s table")


def start_operator(kubectl, kubeconfig: str, docs: list[dict], system_ns: str, tmp_path: Path) -> LocalProcess:
    """The chart's operator command, logged in as the chart's ServiceAccount."""
    token_kubeconfig = service_account_kubeconfig(kubectl, kubeconfig, system_ns, OPERATOR_SA,
                                                  tmp_path / "operator.kubeconfig")
    operator = operator_from_chart(operator_container(docs), token_kubeconfig, tmp_path / "operator.log")
    return operator.start(lambda: http_ok(operator.health_url), 60.0, "operator liveness")


def start_router(kubectl, kubeconfig: str, namespace: str, router_deployment: dict, tmp_path: Path):
    """The router Deployment's command as a local process, logged in as the router's ServiceAccount."""
    pod = router_deployment["spec"]["template"]["spec"]
    token_kubeconfig = service_account_kubeconfig(kubectl, kubeconfig, namespace, pod["serviceAccountName"],
                                                  tmp_path / "router.kubeconfig")
    args = list(pod["containers"][0]["args"])
    host = ADDRESSES.take(8080)
    args[args.index("--host") + 1] = host
    port = args[args.index("--port") + 1]
    router = LocalProcess([*MAITRED, *args, "--kubeconfig", str(token_kubeconfig)], tmp_path / "router.log")
    router.url = f"http://{host}:{port}"
    return router.start(lambda: http_ok(f"{router.url}/readyz"), 60.0, "router /readyz")


def test_install_apply_scale_and_first_request_under_the_charts_rbac(
        install_release, cluster_helm, kubectl, kubeconfig, k8s_api, namespace, make_kubelet, tmp_path):
    system = install_release("maitred", "--set", "image.tag=test")
    docs = release_manifests(cluster_helm, "maitred", system)
    make_kubelet(label_selector="!maitred.dev/router-of")  # runs the replicas; the router runs below
    core = client.CoreV1Api(k8s_api)
    operator = start_operator(kubectl, kubeconfig, docs, system, tmp_path)
    try:
        apply_sim_pool(kubectl, namespace)
        wait_endpoints(core, namespace, "demo", 2)
        router_deployment = yaml.safe_load(kubectl("get", "deployment", "demo-router", "-n", namespace,
                                                   "-o", "yaml").stdout)
        assert router_deployment["spec"]["template"]["spec"]["containers"][0]["image"] == \
            "ghcr.io/maitred/maitred:test"  # the chart's --router-image
        for read in (core.read_namespaced_service, core.read_namespaced_service_account):
            read("demo-router", namespace)
        rbac = client.RbacAuthorizationV1Api(k8s_api)
        rbac.read_namespaced_role("demo-router", namespace)
        rbac.read_namespaced_role_binding("demo-router", namespace)

        kubectl("scale", "-n", namespace, "aisp/demo", "--replicas=3")
        table = wait_endpoints(core, namespace, "demo", 3)
        pool = wait_for(lambda: (p := kubectl("get", "-n", namespace, "aisp", "demo", "-o", "yaml").stdout)
                        and yaml.safe_load(p).get("status", {}).get("ready") == "3/3" and yaml.safe_load(p),
                        30, "status ready 3/3")
        conditions = {c["type"]: (c["status"], c["reason"]) for c in pool["status"]["conditions"]}
        # No kubelet runs the router pods here (the test runs a router itself, below): the pool says so.
        assert conditions["RouterAvailable"] == ("False", "WaitingForRouter")
        assert conditions["Ready"] == ("False", "RouterUnavailable")
        events = kubectl("get", "events", "-n", namespace, "--field-selector",
                         "involvedObject.kind=AIServicePool,involvedObject.name=demo", "-o", "yaml").stdout
        assert "EndpointsAdded" in events

        router = start_router(kubectl, kubeconfig, namespace, router_deployment, tmp_path)
        try:
            answer = httpx.post(f"{router.url}/v1/chat/completions", timeout=30, json={
                "model": "demo-model", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4})
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"]
            assert answer.headers["x-maitred-endpoint"] in {e.id for e in table.endpoints}
        finally:
            router.stop()
    finally:
        operator.stop()
    assert rbac_denials(operator.log()) == []
    assert "Traceback" not in operator.log()


def test_the_charts_service_account_can_do_no_more_than_its_job(install_release, kubectl):
    system = install_release("maitred")
    sa = f"{system}:{OPERATOR_SA}"
    allowed = [("watch", "aiservicepools.maitred.dev"), ("patch", "aiservicepools.maitred.dev/status"),
               ("list", "pods"), ("patch", "deployments.apps"), ("create", "roles.rbac.authorization.k8s.io"),
               ("create", "events"), ("patch", "clusterkopfpeerings.kopf.dev")]
    refused = [("get", "secrets"), ("list", "secrets"), ("create", "pods"), ("delete", "pods"),
               ("patch", "aiservicepools.maitred.dev"), ("delete", "aiservicepools.maitred.dev"),
               ("delete", "configmaps"), ("delete", "services"), ("get", "serviceaccounts"),
               ("create", "serviceaccounts/token"), ("create", "pods/exec"), ("get", "nodes"),
               ("create", "clusterroles.rbac.authorization.k8s.io"),
               ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
               ("escalate", "roles.rbac.authorization.k8s.io"), ("bind", "roles.rbac.authorization.k8s.io"),
               ("impersonate", "serviceaccounts"), ("create", "customresourcedefinitions.apiextensions.k8s.io"),
               ("delete", "namespaces"), ("patch", "kopfpeerings.kopf.dev")]
    assert [(v, r) for v, r in allowed if not can_i(kubectl, sa, v, r)] == []
    assert [(v, r) for v, r in refused if can_i(kubectl, sa, v, r)] == []


def test_listed_namespaces_the_operator_serves_them_and_may_touch_nothing_else(
        install_release, cluster_helm, kubectl, kubeconfig, k8s_api, namespace, make_kubelet, tmp_path):
    other = f"{namespace}-other"
    kubectl("create", "namespace", other)
    try:
        # Non-default values too, applied for real: two replicas, a budget, placement, resources.
        system = install_release(
            "maitred", "--set", f"watchNamespaces={{{namespace}}},replicaCount=2,podDisruptionBudget.enabled=true",
            "--set", "nodeSelector.pool=system,tolerations[0].key=dedicated,tolerations[0].operator=Exists",
            "--set", "resources.requests.cpu=100m,logLevel=debug")
        docs = release_manifests(cluster_helm, "maitred", system)
        assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
        assert kubectl("get", "pdb,deployment", "-n", system, "-o", "name").stdout.split() == [
            "poddisruptionbudget.policy/maitred-operator", "deployment.apps/maitred-operator"]
        sa = f"{system}:{OPERATOR_SA}"
        for verb, resource in [("list", "pods"), ("patch", "deployments.apps"), ("get", "configmaps"),
                               ("patch", "aiservicepools.maitred.dev/status"), ("create", "kopfpeerings.kopf.dev")]:
            assert can_i(kubectl, sa, verb, resource, namespace), (verb, resource)
            assert not can_i(kubectl, sa, verb, resource, other), (verb, resource)
            assert not can_i(kubectl, sa, verb, resource), (verb, resource, "all namespaces")
        assert not can_i(kubectl, sa, "get", "secrets", namespace)

        make_kubelet(label_selector="!maitred.dev/router-of")
        core = client.CoreV1Api(k8s_api)
        operator = start_operator(kubectl, kubeconfig, docs, system, tmp_path)
        try:
            apply_sim_pool(kubectl, namespace)
            apply_sim_pool(kubectl, other)
            wait_endpoints(core, namespace, "demo", 2)
            assert kubectl("get", "deployment", "demo-router", "-n", namespace, "-o", "name").stdout.strip()
            # The other namespace's pool is not the operator's business: nothing was made for it.
            assert kubectl("get", "deployments,configmaps,services", "-n", other, "-o", "name",
                           "-l", "app.kubernetes.io/managed-by=maitred").stdout.strip() == ""
        finally:
            operator.stop()
        log = operator.log()
        assert rbac_denials(log) == []
        assert "Traceback" not in log
    finally:
        kubectl("delete", "namespace", other, "--wait=false", check=False)
