"""From a pool's spec and the live pods to its routing table: a pure function, so reconciling is level-triggered.

A pod is an endpoint when it matches the pool's selector, is Ready, has a pod IP and is not terminating:
a pod with a ``deletionTimestamp`` leaves the table at once, even while still Ready, so that no new request
reaches a replica that is shutting down (requests already in flight finish; the router keeps them).
The pool's static endpoints follow the pods. Endpoints are sorted by id, so the same inputs give the same
table whatever the order of the pods, and the version moves only when the content does.

Everything here is linear in the pods. The endpoint and status-entry models are frozen, so equal ones are
made once and shared (:func:`_endpoint`, :func:`_endpoint_status`): a pool of 1,000 pods, where an event
changes one, builds one new model rather than 2,000.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from maitred.operator.models import EndpointStatus, LabelSelector, PoolSpec, WeightRule
from maitred.operator.selectors import matches, pool_selector
from maitred.router.table import ColdStart, Endpoint, RoutingTable

ZONE_LABEL = "topology.kubernetes.io/zone"

Pod = Mapping[str, Any]  # a Pod as the API returns it (camelCase JSON)


def effective_selector(spec: PoolSpec, name: str) -> LabelSelector | None:
    """The selector of the pool's pods: its own, or for a template alone the pool's label; None for static only."""
    if spec.selector is not None:
        return spec.selector
    return pool_selector(name) if spec.template is not None else None


def selected_pods(spec: PoolSpec, name: str, pods: Iterable[Pod]) -> list[Pod]:
    """The pods that match the pool's selector and are not terminating, sorted by name."""
    selector = effective_selector(spec, name)
    if selector is None:
        return []
    chosen = [p for p in pods if not _terminating(p) and matches(selector, _meta(p).get("labels") or {})]
    return sorted(chosen, key=lambda p: _meta(p).get("name", ""))


def pod_endpoint(pod: Pod, port: int | str, rules: Iterable[WeightRule] = ()) -> Endpoint | None:
    """The pod as an endpoint, or None if it may not take requests (not Ready, no IP, terminating, no such port)."""
    if _terminating(pod) or not is_ready(pod):
        return None
    ip = (pod.get("status") or {}).get("podIP")
    number = resolve_port(pod, port)
    if not ip or number is None:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    labels = _meta(pod).get("labels") or {}
    return _endpoint(_meta(pod)["name"], f"http://{host}:{number}", weight_of(labels, rules), labels.get(ZONE_LABEL))


@lru_cache(maxsize=1 << 16, typed=True)
def _endpoint(id_: str, url: str, weight: int, zone: str | None) -> Endpoint:
    """An Endpoint, validated once for each distinct value (it is frozen, so it may be shared)."""
    return Endpoint(id=id_, url=url, weight=weight, zone=zone)


@lru_cache(maxsize=1 << 16, typed=True)
def _endpoint_status(name: str, address: str, ready: bool, weight: int) -> EndpointStatus:
    """An EndpointStatus, made once for each distinct value (it is frozen, so it may be shared)."""
    return EndpointStatus(name=name, address=address, ready=ready, weight=weight)


def is_ready(pod: Pod) -> bool:
    """The pod's Ready condition is True."""
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def resolve_port(pod: Pod, port: int | str) -> int | None:
    """A port number as is, or the number of the pod's container port of that name (None if it has none)."""
    if isinstance(port, int):
        return port
    for container in (pod.get("spec") or {}).get("containers") or ():
        for p in container.get("ports") or ():
            if p.get("name") == port:
                return p.get("containerPort")
    return None


def weight_of(labels: Mapping[str, str], rules: Iterable[WeightRule]) -> int:
    """The weight of the first rule whose selector matches `labels`; 1 if none does."""
    return next((rule.weight for rule in rules if matches(rule.selector, labels)), 1)


def build_routing_table(pool_spec: PoolSpec | Mapping[str, Any], pods: Iterable[Pod], *,
                        pool: str = "default/pool", previous: RoutingTable | None = None,
                        selected: list[Pod] | None = None) -> RoutingTable:
    """The routing table of pool `pool` ("namespace/name") whose spec is `pool_spec`, given the namespace's `pods`.

    `pool_spec` is a :class:`PoolSpec` or its camelCase dict (raises :class:`pydantic.ValidationError` if bad).
    Version: `previous.version` if the content equals `previous` (so a restart or a no-op event gives back the
    same table), else `previous.version + 1`, and 1 for a first table. `selected`: the pods
    :func:`selected_pods` chose already, if the caller has them (then `pods` is not read). Linear in the pods.
    """
    spec = pool_spec if isinstance(pool_spec, PoolSpec) else PoolSpec.model_validate(pool_spec)
    name = pool.rsplit("/", 1)[-1]
    chosen = selected if selected is not None else selected_pods(spec, name, pods)
    from_pods = (pod_endpoint(p, spec.port, spec.balancing.weights) for p in chosen)
    endpoints = sorted((e for e in from_pods if e is not None), key=lambda e: e.id)
    static = [Endpoint(id=s.url.rstrip("/"), url=s.url, weight=s.weight) for s in spec.endpoints]
    seen = {e.id for e in endpoints}
    endpoints += [e for e in static if not (e.id in seen or seen.add(e.id))]  # a URL listed twice counts once
    table = RoutingTable(pool=pool, version=1, method=spec.balancing.method, models=spec.models,
                         endpoints=tuple(endpoints), health_check=spec.health_check, retries=spec.retries,
                         timeouts=spec.timeouts, affinity=spec.balancing.affinity, **autoscaling_fields(spec))
    return versioned(table, previous)


def autoscaling_fields(spec: PoolSpec) -> dict:
    """What the routers need of `spec.autoscaling`: a cold-start hold when the pool may scale to zero, and
    load scrapes when it scales on the replicas' queue or KV cache (the in-flight counts are the router's own)."""
    rules = spec.autoscaling if spec.template is not None else None
    if rules is None:
        return {}
    fields: dict = {"scrape_load": rules.metric in ("queue", "kv-cache")}
    if rules.min_replicas == 0:
        fields["cold_start"] = ColdStart(hold_seconds=rules.hold_seconds, max_requests=rules.max_held_requests)
    return fields


def versioned(table: RoutingTable, previous: RoutingTable | None) -> RoutingTable:
    """`table` numbered after `previous`: the same version if nothing else differs, the next one if something does."""
    if previous is None:
        return table.model_copy(update={"version": 1})
    if table.model_copy(update={"version": previous.version}) == previous:
        return previous
    return table.model_copy(update={"version": previous.version + 1})


def endpoint_statuses(spec: PoolSpec, name: str, pods: Iterable[Pod], table: RoutingTable,
                      selected: list[Pod] | None = None) -> tuple[EndpointStatus, ...]:
    """Each selected pod (ready or not) and each static endpoint, for the pool's ``status.endpoints``.

    `selected`: the pods :func:`selected_pods` chose already, if the caller has them.
    """
    in_table = {e.id: e for e in table.endpoints}
    out = []
    for pod in selected if selected is not None else selected_pods(spec, name, pods):
        pod_name = _meta(pod)["name"]
        ip = (pod.get("status") or {}).get("podIP") or ""
        number = resolve_port(pod, spec.port)
        address = f"{ip}:{number}" if ip and number is not None else ip
        endpoint = in_table.pop(pod_name, None)
        out.append(_endpoint_status(pod_name, address, endpoint is not None, endpoint.weight if endpoint else
                                    weight_of(_meta(pod).get("labels") or {}, spec.balancing.weights)))
    for endpoint in in_table.values():  # static endpoints (or kept ones from the last good table)
        out.append(_endpoint_status(endpoint.id, endpoint.url.split("://", 1)[-1], True, endpoint.weight))
    return tuple(out)


def _meta(pod: Pod) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def _terminating(pod: Pod) -> bool:
    return bool(_meta(pod).get("deletionTimestamp"))
