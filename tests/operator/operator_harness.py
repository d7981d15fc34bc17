"""Real processes and API reads for the operator's cluster tests.

``OperatorProcess`` runs ``maitred operator`` (kopf) for one namespace, ``RouterProcess`` runs ``maitred
router --configmap``; both with the test cluster's kubeconfig, each in its own process group and stopped
by the fixtures. The reads go through the ``kubernetes`` client (fast enough to poll every 20 ms), the
writes mostly through kubectl, as a user would make them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml
from kubernetes import client

from cluster import procs
from cluster.addresses import POOL as ADDRESSES
from cluster.kubelet import SCHEDULER_NAME

from maitred.router.table import RoutingTable, parse_table

GROUP, VERSION, PLURAL = "maitred.dev", "v1alpha1", "aiservicepools"
MAITRED = [sys.executable, "-m", "maitred.cli.main"]


def wait_for(check: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.02):
    """Poll `check` until it returns something truthy, and return that. AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def serving(pools: "Pools", pool: str, pod: str, ready: bool, timeout_s: float = 60.0) -> float:
    """Wait until pod `pod` is (`ready`) or is not in the table of `pool`; return when (time.monotonic())."""
    return wait_for(lambda: (pod in pools.endpoint_ids(pool)) == ready and time.monotonic(), timeout_s,
                    f"{pod} {'in' if ready else 'out of'} the table of {pool}")


def pod_is(pools: "Pools", pod: str, ready: bool, timeout_s: float = 60.0) -> float:
    """Wait until the pod's Ready condition in the API is `ready`; return when (time.monotonic())."""
    return wait_for(lambda: pools.pod_ready(pod) == ready and time.monotonic(), timeout_s, f"{pod} Ready={ready}")


class OperatorProcess:
    """``maitred operator --namespace NS`` with peering (KopfPeering in NS) unless `standalone`."""

    def __init__(self, kubeconfig: str, namespace: str, log_path: Path, *, priority: int | None = None,
                 standalone: bool = False, router_image: str = "registry.test/maitred:test",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.kubeconfig, self.namespace, self.log_path = kubeconfig, namespace, log_path
        self.health_port = procs.free_port()
        self.argv = [*MAITRED, "operator", "--namespace", namespace, "--kubeconfig", kubeconfig,
                     "--router-image", router_image, "--liveness", f"http://127.0.0.1:{self.health_port}/healthz"]
        if standalone:
            self.argv.append("--standalone")
        if priority is not None:
            self.argv += ["--priority", str(priority)]
        self.argv += list(extra_args)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> "OperatorProcess":
        """Start it and wait until kopf serves its liveness probe (start-up handlers done)."""
        self.proc = procs.spawn(self.argv, self.log_path)
        procs.wait_until(self._alive, timeout_s, "operator liveness", alive=[self.proc])
        return self

    def _alive(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> int | None:
        """SIGTERM (kopf's graceful exit), SIGKILL after 10 s; the exit code."""
        if self.proc is None:
            return None
        code = procs.stop(self.proc, grace_s=10.0)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to leave the peering object."""
        if self.proc is not None:
            procs.kill(self.proc)
            self.proc = None

    def restart(self, timeout_s: float = 30.0) -> "OperatorProcess":
        """Start the same command again (same priority flag, log appended): a restart in place."""
        return self.start(timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def kubeconfig_via(kubeconfig: str, address: str, path: Path) -> str:
    """A copy of `kubeconfig` at `path` that reaches the API server at `address` (host:port, e.g. a proxy)."""
    config = yaml.safe_load(Path(kubeconfig).read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://{address}"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return str(path)


class RouterProcess:
    """``maitred router --configmap NS/NAME`` on a fresh loopback address."""

    def __init__(self, kubeconfig: str, configmap: str, log_path: Path) -> None:
        self.port = 8080
        self.host = ADDRESSES.take(self.port)
        self.url = f"http://{self.host}:{self.port}"
        self.admin_url = f"http://{self.host}:9091"  # the router's default --admin-port: /debug/table
        self.log_path = log_path
        self.argv = [*MAITRED, "router", "--configmap", configmap, "--kubeconfig", kubeconfig,
                     "--host", self.host, "--port", str(self.port), "--no-access-log",
                     "--workers", "1"]  # one process: round-robin's exact turns are what some tests check
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> "RouterProcess":
        """Start it and wait until it has a table with a live endpoint (/readyz)."""
        self.proc = procs.spawn(self.argv, self.log_path)
        procs.wait_until(lambda: self.ready(), timeout_s, "router /readyz", alive=[self.proc])
        return self

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def debug(self) -> dict:
        """The router's /debug/table: {"table", "tableError", "endpoints"}."""
        return httpx.get(f"{self.admin_url}/debug/table", timeout=2).json()

    def table_version(self) -> int | None:
        table = self.debug()["table"]
        return table["version"] if table else None

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, grace_s=5.0)
            self.proc = None


class Pools:
    """Reads of a namespace's pools and of what the operator made of them."""

    def __init__(self, api: client.ApiClient, kubectl, namespace: str) -> None:
        self.core, self.apps = client.CoreV1Api(api), client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.kubectl, self.namespace = kubectl, namespace

    def apply(self, name: str, spec: dict, check: bool = True) -> subprocess.CompletedProcess:
        """`kubectl apply` a pool `name` with `spec`."""
        manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AIServicePool",
                    "metadata": {"name": name, "namespace": self.namespace}, "spec": spec}
        return self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), check=check)

    def get(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def table(self, name: str) -> RoutingTable | None:
        """The routing table in ConfigMap `<name>-routing`, or None if there is none."""
        try:
            configmap = self.core.read_namespaced_config_map(f"{name}-routing", self.namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return parse_table(configmap.data["table.json"])

    def endpoint_ids(self, name: str) -> set[str]:
        table = self.table(name)
        return {e.id for e in table.endpoints} if table else set()

    def wait_endpoints(self, name: str, count: int, timeout_s: float = 60.0) -> RoutingTable:
        """Wait until the table lists `count` endpoints; return it."""
        return wait_for(lambda: (t := self.table(name)) is not None and len(t.endpoints) == count and t,
                        timeout_s, f"{count} endpoints in the table of {name}")

    def pods(self, label_selector: str) -> list:
        return self.core.list_namespaced_pod(self.namespace, label_selector=label_selector).items

    def pod_ready(self, name: str) -> bool | None:
        """The pod's Ready condition (None if the pod is gone)."""
        try:
            pod = self.core.read_namespaced_pod(name, self.namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ())

    def apiserver_requests(self, verb: str, resource: str, scope: str = "") -> int:
        """How many `verb` requests (LIST, WATCH, GET, ...) for `resource` the API server has served (its
        apiserver_request_total metric, summed over codes; `scope`: only "namespace" or "cluster" ones)."""
        api = self.core.api_client
        resp = api.call_api(*api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"]))
        resp.read()
        text = resp.data.decode()
        total = 0
        for line in text.splitlines():
            if line.startswith("apiserver_request_total{") and f'verb="{verb}"' in line \
                    and f'resource="{resource}"' in line and 'subresource=""' in line \
                    and (not scope or f'scope="{scope}"' in line):
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def condition(self, name: str, type_: str) -> dict:
        status = self.get(name).get("status") or {}
        return next((c for c in status.get("conditions", ()) if c["type"] == type_), {})

    def events(self, name: str) -> list[tuple[str, str, str]]:
        """(type, reason, message) of the Events about pool `name`."""
        listing = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.kind=AIServicePool,involvedObject.name={name}")
        return [(e.type, e.reason, e.message) for e in listing.items]

    def children(self, name: str) -> dict[str, list[str]]:
        """Names of the pool's children by kind (those carrying the pool's instance label)."""
        return {kind: sorted(objs) for kind, objs in self.child_uids(name).items()}

    def child_uids(self, name: str) -> dict[str, dict[str, str]]:
        """uid of each of the pool's children, by kind and name."""
        selector = f"app.kubernetes.io/managed-by=maitred,app.kubernetes.io/instance={name}"
        ns = self.namespace
        rbac = client.RbacAuthorizationV1Api(self.core.api_client)
        found = {
            "Deployment": self.apps.list_namespaced_deployment(ns, label_selector=selector).items,
            "Service": self.core.list_namespaced_service(ns, label_selector=selector).items,
            "ConfigMap": self.core.list_namespaced_config_map(ns, label_selector=selector).items,
            "ServiceAccount": self.core.list_namespaced_service_account(ns, label_selector=selector).items,
            "Role": rbac.list_namespaced_role(ns, label_selector=selector).items,
            "RoleBinding": rbac.list_namespaced_role_binding(ns, label_selector=selector).items,
            "PodDisruptionBudget": client.PolicyV1Api(self.core.api_client).list_namespaced_pod_disruption_budget(
                ns, label_selector=selector).items,
        }
        return {kind: {o.metadata.name: o.metadata.uid for o in objs} for kind, objs in found.items() if objs}


def template(app: str, model: str = "m1", grace_s: int = 30) -> dict:
    """A pod template the test kubelet runs as `maitred sim` (port 8000, readiness on /health)."""
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {
            "schedulerName": SCHEDULER_NAME,
            "terminationGracePeriodSeconds": grace_s,
            "containers": [{"name": "model", "image": "maitred/sim:test", "args": ["--model", model],
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}}}],
        },
    }


def chat(url: str, model: str = "m1", max_tokens: int = 2, timeout_s: float = 30.0) -> httpx.Response:
    """One chat completion through the router at `url`."""
    return httpx.post(f"{url}/v1/chat/completions", timeout=timeout_s,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": max_tokens})


def as_json(obj) -> str:
    return json.dumps(obj, sort_keys=True)
