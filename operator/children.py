"""The objects a pool owns, as plain manifests: pure functions of the pool, ready for server-side apply.

Per pool ``<name>``:

- Deployment ``<name>`` of the pool's template (template mode only), with ``spec.replicas`` replicas;
- ConfigMap ``<name>-routing``, key ``table.json``: the routing table;
- Deployment and Service ``<name>-router``: ``maitred router --configmap <ns>/<name>-routing``, and a
  PodDisruptionBudget ``<name>-router`` (maxUnavailable 1);
- ServiceAccount, Role and RoleBinding ``<name>-router``: the router may read its one ConfigMap, nothing else.

Every child carries an ownerReference to its pool (controller, blockOwnerDeletion), so that deleting the
pool lets the garbage collector remove them all; no finalizer is needed for that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from maitred.operator import models
from maitred.operator.models import LabelSelector, PoolSpec
from maitred.operator.routing import effective_selector
from maitred.operator.selectors import POOL_LABEL
from maitred.router.table import RoutingTable

DEFAULT_ROUTER_IMAGE = "ghcr.io/maitred/maitred:0.1.0"
TABLE_KEY = "table.json"
MANAGED_BY = {"app.kubernetes.io/managed-by": "maitred"}
#: Labels the router's pods carry; never POOL_LABEL, which may be the pool's own selector.
ROUTER_LABEL = "maitred.dev/router-of"


@dataclass(frozen=True)
class PoolRef:
    """Which pool: namespace, name, uid (for ownerReferences) and generation."""

    namespace: str
    name: str
    uid: str
    generation: int | None = None

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_body(cls, body: dict) -> "PoolRef":
        """From a pool object as the API returns it."""
        meta = body["metadata"]
        return cls(meta["namespace"], meta["name"], meta.get("uid", ""), meta.get("generation"))


def routing_configmap_name(pool: str) -> str:
    """Name of the pool's routing-table ConfigMap."""
    return f"{pool}-routing"


def router_pods_of(pods: Iterable[Mapping], pool: str) -> list:
    """The router pods of pool `pool` (its name) among `pods`, by the label the operator gives them."""
    return [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(ROUTER_LABEL) == pool]


def router_name(pool: str) -> str:
    """Name of the pool's router Deployment, Service, ServiceAccount, Role and RoleBinding."""
    return f"{pool}-router"


def owner_reference(pool: PoolRef) -> dict:
    """The ownerReference that ties a child to `pool` (the garbage collector deletes the child with it)."""
    return {"apiVersion": models.API_VERSION, "kind": models.KIND, "name": pool.name, "uid": pool.uid,
            "controller": True, "blockOwnerDeletion": True}


def _metadata(pool: PoolRef, name: str, component: str, **extra: Any) -> dict:
    labels = {**MANAGED_BY, "app.kubernetes.io/name": "maitred", "app.kubernetes.io/instance": pool.name,
              "app.kubernetes.io/component": component}
    return {"name": name, "namespace": pool.namespace, "labels": labels,
            "ownerReferences": [owner_reference(pool)], **extra}


def selector_dict(selector: LabelSelector) -> dict:
    """A selector as the Kubernetes API spells it (empty parts left out)."""
    return selector.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def build_deployment(pool: PoolRef, spec: PoolSpec) -> dict | None:
    """The Deployment of the pool's template (None without a template).

    The pods get the selector's matchLabels and ``maitred.dev/pool: <name>``, so that the selector matches
    them; the API server refuses the Deployment if matchExpressions still do not (the pool says so).
    """
    if spec.template is None:
        return None
    selector = effective_selector(spec, pool.name)
    template = spec.template.model_dump(mode="json", by_alias=True, exclude_none=True)
    meta = template.setdefault("metadata", {})
    meta["labels"] = {**meta.get("labels", {}), **selector.match_labels, POOL_LABEL: pool.name}
    if not meta.get("annotations"):
        meta.pop("annotations", None)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(pool, pool.name, "replicas"),
        "spec": {"replicas": spec.replicas, "selector": selector_dict(selector), "template": template},
    }


def build_configmap(pool: PoolRef, table: RoutingTable, table_json: str | None = None) -> dict:
    """The ConfigMap ``<name>-routing`` holding `table` under ``table.json`` (`table_json`: its JSON, if made already)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(pool, routing_configmap_name(pool.name), "routing-table"),
        "data": {TABLE_KEY: table_json if table_json is not None else table.to_json().decode()},
    }


def _router_labels(pool: PoolRef) -> dict:
    return {ROUTER_LABEL: pool.name, "app.kubernetes.io/component": "router"}


#: The router pods pass the `restricted` Pod Security Standard: not root (the image's user, 65532), no
#: privilege escalation, no capabilities, the runtime's default seccomp profile, a read-only root filesystem.
ROUTER_POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                       "seccompProfile": {"type": "RuntimeDefault"}}
ROUTER_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                             "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
#: Pause before a router pod gets SIGTERM, in s, so that traffic stops arriving first.
PRESTOP_PAUSE_S = 5
#: Time past the drain bound (s) a router pod has to exit before the kubelet kills it.
STOP_MARGIN_S = 5
#: Router worker processes when the pod names neither a CPU request nor a limit.
DEFAULT_ROUTER_WORKERS = 2
#: The router's admin port (/metrics, /debug/table): container port `admin`, never in the Service.
ROUTER_ADMIN_PORT = 9091


def router_admin_port(port: int) -> int:
    """The admin port of a router whose traffic port is `port`: `ROUTER_ADMIN_PORT`, or the next if that is `port`."""
    return ROUTER_ADMIN_PORT if port != ROUTER_ADMIN_PORT else ROUTER_ADMIN_PORT + 1


def router_workers(resources) -> int:
    """Worker processes for a router pod: its CPU request rounded up, else its CPU limit rounded down,
    else `DEFAULT_ROUTER_WORKERS`; at least 1. `resources`: a :class:`Resources` or None.

    >>> router_workers(models.Resources(requests={"cpu": "1500m"}))
    2

    A quantity that is not plain cores or millicores (the API server checks it on the pod) counts as none.
    """
    for kind, rounding in (("requests", math.ceil), ("limits", math.floor)):
        quantity = getattr(resources, kind, {}).get("cpu") if resources is not None else None
        if quantity is not None:
            try:
                return max(1, min(64, rounding(cpu_cores(quantity))))
            except ValueError:
                continue
    return DEFAULT_ROUTER_WORKERS


def cpu_cores(quantity: int | str) -> float:
    """A Kubernetes CPU quantity in cores: 2, "1.5", "500m". Raises ValueError on anything else."""
    text = str(quantity).strip()
    if text.endswith("m"):
        return float(text[:-1]) / 1000.0
    return float(text)


def build_router_deployment(pool: PoolRef, spec: PoolSpec, image: str = DEFAULT_ROUTER_IMAGE,
                            defaults: models.RouterPodSettings | None = None) -> dict:
    """The router Deployment ``<name>-router``: reads the table from the API, probes on /healthz and /readyz.

    `defaults`: the operator's router pod settings (the chart's `router:` values); the pool's own
    `spec.router` fields win, one by one.
    """
    router = spec.router
    pod = router.over(defaults or models.RouterPodSettings())
    admin_port = router_admin_port(router.port)
    container: dict[str, Any] = {
        "name": "router",
        "image": router.image or image,
        "command": ["maitred"],
        "args": ["router", "--configmap", f"{pool.namespace}/{routing_configmap_name(pool.name)}",
                 "--host", "0.0.0.0", "--port", str(router.port),
                 "--workers", str(router.workers or router_workers(pod.resources)),
                 "--log-level", pod.log_level or "info", "--log-format", pod.log_format or "text",
                 "--drain-seconds", str(router.drain_seconds), "--admin-port", str(admin_port)],
        "ports": [{"name": "http", "containerPort": router.port, "protocol": "TCP"},
                  {"name": "admin", "containerPort": admin_port, "protocol": "TCP"}],
        # Alive as soon as it serves; ready only with a table that has a live endpoint.
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2, "failureThreshold": 2},
        # A terminating pod leaves its Service's endpoints at once, but kube-proxies and load balancers
        # learn it a moment later: keep serving new connections that long before SIGTERM.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_PAUSE_S}}},
        "securityContext": ROUTER_CONTAINER_SECURITY,
        # The root filesystem is read-only; the router keeps its run folder (shared worker state, metric
        # files) in /tmp, in memory.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if pod.resources is not None:
        container["resources"] = pod.resources.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    labels = _router_labels(pool)
    placement = {key: value for key, value in (
        ("nodeSelector", pod.node_selector), ("tolerations", pod.tolerations), ("affinity", pod.affinity),
        ("topologySpreadConstraints", pod.topology_spread_constraints),
        ("priorityClassName", pod.priority_class_name), ("imagePullSecrets", pod.image_pull_secrets),
    ) if value is not None}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(pool, router_name(pool.name), "router"),
        "spec": {
            "replicas": router.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, "app.kubernetes.io/name": "maitred"},
                             **({"annotations": pod.pod_annotations} if pod.pod_annotations else {})},
                "spec": {"serviceAccountName": router_name(pool.name), "containers": [container], **placement,
                         "securityContext": ROUTER_POD_SECURITY,
                         "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}],
                         # SIGTERM comes after the preStop pause; then open streams get drainSeconds.
                         "terminationGracePeriodSeconds": PRESTOP_PAUSE_S + router.drain_seconds + STOP_MARGIN_S},
            },
        },
    }


def build_service(pool: PoolRef, spec: PoolSpec) -> dict:
    """The Service ``<name>-router`` in front of the router's pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(pool, router_name(pool.name), "router"),
        "spec": {
            "type": spec.router.service_type,
            "selector": _router_labels(pool),
            "ports": [{"name": "http", "port": spec.router.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_router_rbac(pool: PoolRef) -> list[dict]:
    """ServiceAccount, Role and RoleBinding ``<name>-router``: get/list/watch of the one routing ConfigMap."""
    name = router_name(pool.name)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(pool, name, "router")},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _metadata(pool, name, "router"),
         "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                    "resourceNames": [routing_configmap_name(pool.name)], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _metadata(pool, name, "router"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": pool.namespace}]},
    ]


def build_router_pdb(pool: PoolRef) -> dict:
    """The PodDisruptionBudget ``<name>-router``: a node drain takes the pool's router pods one at a time.

    maxUnavailable 1 rather than minAvailable: with one router pod (or none) it blocks no drain, and with
    several it keeps all but one serving.
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(pool, router_name(pool.name), "router"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _router_labels(pool)}},
    }


def build_children(pool: PoolRef, spec: PoolSpec, image: str = DEFAULT_ROUTER_IMAGE,
                   router_defaults: models.RouterPodSettings | None = None) -> list[dict]:
    """Every child but the ConfigMap, in the order to apply them (RBAC before the pods that use it)."""
    children = [*build_router_rbac(pool), build_router_deployment(pool, spec, image, router_defaults),
                build_service(pool, spec),
                build_router_pdb(pool)]
    deployment = build_deployment(pool, spec)
    return ([deployment] if deployment else []) + children
