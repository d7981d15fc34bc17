"""Smoke tests of the test cluster: what a user checks with kubectl and curl.

They run against the control plane started by the fixtures, or against any
cluster given with ``--kubeconfig`` (scripts/kind-test.sh runs them on kind).
"""

from __future__ import annotations

import ipaddress
import json
import os

import httpx
import pytest
import yaml

from .kubelet import SCHEDULER_NAME
from .procs import wait_until

pytestmark = pytest.mark.cluster

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.maitred.dev}
spec:
  group: smoke.maitred.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string, default: blue}
"""


def deployment(name: str, replicas: int, model: str) -> str:
    """A Deployment of simulator pods, in YAML, for the test kubelet to run."""
    return yaml.safe_dump({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    # A real scheduler (kind's) leaves these pods to the test kubelet.
                    "schedulerName": SCHEDULER_NAME,
                    "containers": [{
                        "name": "model",
                        "image": "maitred/sim:test",
                        "args": ["--model", model],
                        "ports": [{"containerPort": 8000}],
                        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}},
                    }],
                },
            },
        },
    })


def pods_of(kubectl, namespace: str, app: str) -> list[dict]:
    out = kubectl("get", "pods", "-n", namespace, "-l", f"app={app}", "-o", "json").stdout
    return json.loads(out)["items"]


def is_ready(pod: dict) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_custom_resource_round_trip(kubectl, namespace):
    kubectl("apply", "-f", "-", input=CRD)
    try:
        kubectl("wait", "--for=condition=Established", "crd/widgets.smoke.maitred.dev", "--timeout=60s")
        kubectl("apply", "-n", namespace, "-f", "-",
                input="apiVersion: smoke.maitred.dev/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n")

        widget = json.loads(kubectl("get", "widget", "w1", "-n", namespace, "-o", "json").stdout)
        assert widget["spec"] == {"size": 3, "color": "blue"}  # the schema's default applied

        bad = kubectl("apply", "-n", namespace, "-f", "-", check=False,
                      input="apiVersion: smoke.maitred.dev/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 0}\n")
        assert bad.returncode != 0
        assert "spec.size" in bad.stderr and "greater than or equal to 1" in bad.stderr
    finally:
        kubectl("delete", "crd", "widgets.smoke.maitred.dev", "--wait=false", check=False)


def test_deployment_pods_become_ready_and_answer_on_their_pod_ip(kubectl, namespace, kubelet):
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("web", 2, "smoke-model"))
    kubectl("rollout", "status", "-n", namespace, "deployment/web", "--timeout=120s", timeout_s=130)

    pods = pods_of(kubectl, namespace, "web")
    assert len(pods) == 2 and all(is_ready(p) for p in pods)
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2, "each pod has its own address"
    for pod in pods:
        ip = pod["status"]["podIP"]
        assert ipaddress.ip_address(ip).is_loopback
        assert pod["status"]["podIPs"] == [{"ip": ip}]
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        models = httpx.get(f"http://{ip}:8000/v1/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["smoke-model"]


def test_deleting_a_deployment_removes_its_replicaset_pods_and_processes(kubectl, namespace, kubelet):
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment("gone", 2, "m"))
    kubectl("rollout", "status", "-n", namespace, "deployment/gone", "--timeout=120s", timeout_s=130)
    backends = list(kubelet.backends().values())
    assert len(backends) == 2 and all(b.running for b in backends)

    kubectl("delete", "-n", namespace, "deployment", "gone")  # the garbage collector does the rest

    def all_gone() -> bool:
        left = kubectl("get", "replicasets,pods", "-n", namespace, "-l", "app=gone", "-o", "name").stdout
        return left.strip() == ""

    wait_until(all_gone, 60, "ReplicaSet and pods removed")
    wait_until(lambda: not kubelet.backends(), 10, "test kubelet dropped its backends")
    for backend in backends:
        assert not backend.running
        assert not os.path.exists(f"/proc/{backend.pid}"), "process reaped"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{backend.url}/health", timeout=2)
