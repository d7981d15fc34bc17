"""Plain-dict pods and pools for the operator's unit tests, shaped as the API server returns them."""

from __future__ import annotations


def pod(name: str, ip: str | None = "10.0.0.1", *, ready: bool = True, labels: dict | None = None,
        deleting: bool = False, ports: list[dict] | None = None) -> dict:
    """A pod as `kubectl get pod -o json` shows it: Ready or not, with or without an IP, maybe terminating."""
    meta = {"name": name, "namespace": "ml", "uid": f"uid-{name}", "labels": {"app": "llama", **(labels or {})}}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    status: dict = {"phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"},
                                   {"type": "PodScheduled", "status": "True"}]}
    if ip:
        status["podIP"] = ip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "model", "ports": ports or [{"containerPort": 8000}]}]},
            "status": status}


def spec(**overrides) -> dict:
    """A pool spec (camelCase dict) selecting app=llama on port 8000, with `overrides`."""
    return {"selector": {"matchLabels": {"app": "llama"}}, "port": 8000, **overrides}


def pool_body(name: str = "llama", namespace: str = "ml", **spec_overrides) -> dict:
    """An AIServicePool object as the API returns it."""
    return {"apiVersion": "maitred.dev/v1alpha1", "kind": "AIServicePool",
            "metadata": {"name": name, "namespace": namespace, "uid": "pool-uid", "generation": 3},
            "spec": spec(**spec_overrides)}
