"""A pool's status from what the operator observed: replicas, endpoints, the router, and the conditions
Ready, Progressing, Degraded and RouterAvailable.

Pure functions of an :class:`Observation` and the previous conditions (which only lend their
``lastTransitionTime`` when a condition's status has not changed), so that the same world gives the same
status and an unchanged status is never written again.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from maitred.operator.models import Condition, EndpointStatus, PoolStatus


@dataclass(frozen=True)
class Observation:
    """What one reconcile saw and did.

    `desired`: the replicas wanted (the template's `replicas`; for a selector alone, the pods it matches);
    `managed`: the operator owns the replicas (template mode), so `desired` 0 is a choice, not a fault.
    `matched`: pods that match the selector and are not terminating; `ready`: those in the table.
    `static`: static endpoints. `table_endpoints`/`table_version`: the table in force (maybe the last good
    one, kept: `kept_last_good`). `error`: why a write failed, if one did, or why the spec cannot be served
    (`error_reason` InvalidSpec). `selector`: string form. `ignored_replicas`: a spec.replicas that a pool
    without a template ignores (its replicas are the pods the selector matches).
    """

    generation: int | None
    desired: int
    matched: int
    ready: int
    managed: bool = False
    static: int = 0
    table_endpoints: int = 0
    table_version: int = 0
    kept_last_good: bool = False
    error: str | None = None
    error_reason: str = "ReconcileFailed"
    selector: str = ""
    endpoints: tuple[EndpointStatus, ...] = field(default=())
    ignored_replicas: int | None = None
    router: RouterObservation | None = None


@dataclass(frozen=True)
class RouterObservation:
    """The pool's router Deployment as last seen: `desired` pods (spec.router.replicas), `available` ones
    (its status.availableReplicas), and `problem`: (reason, message) of what keeps its pods from running,
    if known (a pod refused by admission, an image that cannot be pulled, a crashing container).
    `seen`: False until the Deployment's status has been seen at all."""

    desired: int
    available: int = 0
    problem: tuple[str, str] | None = None
    seen: bool = True


def now_rfc3339() -> str:
    """The current UTC time, to the second, as Kubernetes writes it (2025-01-31T12:00:00Z)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def compute_conditions(obs: Observation, previous: Iterable[Mapping[str, Any]] = (),
                       now: str = "") -> tuple[Condition, ...]:
    """Ready, Progressing and Degraded for `obs`; `now` stamps the conditions whose status changed."""
    now = now or now_rfc3339()
    serving = obs.ready + obs.static
    if serving:
        ready = ("True", "EndpointsReady", f"{serving} endpoint(s) in the routing table")
    elif obs.matched:
        ready = ("False", "NoReadyEndpoints", f"{obs.matched} pod(s) match the selector, none is Ready")
    elif obs.managed and obs.desired == 0:
        ready = ("False", "ScaledToZero", "the pool has 0 replicas")
    else:
        ready = ("False", "NoMatchingPods", "no pod matches the selector" if obs.selector else "no endpoint")
    if obs.kept_last_good and not serving:
        ready = (ready[0], ready[1], ready[2] + f"; keeping the last good routing table (version {obs.table_version})")

    if obs.ready < obs.desired:
        progressing = ("True", "WaitingForPods", f"{obs.ready} of {obs.desired} replica(s) ready")
    elif obs.matched > obs.desired:
        progressing = ("True", "ScalingDown", f"{obs.matched} pod(s) for {obs.desired} replica(s)")
    else:
        progressing = ("False", "AllReplicasReady", f"{obs.ready} of {obs.desired} replica(s) ready")

    if obs.error:
        degraded = ("True", obs.error_reason, obs.error)
    elif ready[0] == "False" and ready[1] != "ScaledToZero":
        degraded = ("True", ready[1], ready[2])
    else:
        degraded = ("False", "AsExpected", "")

    router = router_available(obs.router)
    if router[0] == "False":
        if ready[0] == "True":
            ready = ("False", "RouterUnavailable", f"{serving} endpoint(s) in the routing table, but {router[2]}")
        if obs.router.problem is not None and not obs.error:
            degraded = ("True", router[1], router[2])
        elif progressing[0] == "False":
            progressing = ("True", "WaitingForRouter", router[2])
    if obs.ignored_replicas is not None:
        progressing = (progressing[0], progressing[1], progressing[2] + f"; spec.replicas ({obs.ignored_replicas})"
                       " is ignored without a template: the replicas are the pods the selector matches")

    before = {c.get("type"): c for c in previous}
    out = []
    for type_, (status, reason, message) in (("Ready", ready), ("Progressing", progressing), ("Degraded", degraded),
                                             ("RouterAvailable", router)):
        old = before.get(type_) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status and old.get("lastTransitionTime") else now
        out.append(Condition(type=type_, status=status, reason=reason, message=message,
                             observed_generation=obs.generation, last_transition_time=since))
    return tuple(out)


def router_available(router: RouterObservation | None) -> tuple[str, str, str]:
    """The RouterAvailable condition (status, reason, message): True once one router pod is available.

    A pool with `spec.router.replicas: 0` runs no router of the operator's; its table is served by routers
    the user runs, so the condition holds.
    """
    if router is None or router.desired == 0:
        return ("True", "NoRouterReplicas", "spec.router.replicas is 0: the operator runs no router for this pool")
    if router.available > 0:
        return ("True", "RouterAvailable", f"{router.available} of {router.desired} router pod(s) available")
    if router.problem is not None:
        reason, message = router.problem
        return ("False", reason, f"no router pod is available: {message}")
    if not router.seen:
        return ("False", "WaitingForRouter", "the router Deployment has not reported yet")
    return ("False", "WaitingForRouter", f"0 of {router.desired} router pod(s) available yet")


def compute_status(obs: Observation, previous: Mapping[str, Any] | None = None, now: str = "") -> PoolStatus:
    """The pool's whole ``status`` for `obs`, given the `previous` status (a dict, or None)."""
    conditions = compute_conditions(obs, (previous or {}).get("conditions") or (), now)
    return PoolStatus(
        observed_generation=obs.generation,
        replicas=obs.matched,
        ready_replicas=obs.ready,
        selector=obs.selector,
        ready=f"{obs.ready}/{obs.desired}",
        router=f"{obs.router.available}/{obs.router.desired}" if obs.router else "",
        endpoint_count=obs.table_endpoints,
        table_version=obs.table_version,
        endpoints=obs.endpoints,
        conditions=conditions,
    )


def status_patch(status: PoolStatus) -> dict:
    """`status` as the camelCase dict to write (fields that are None are left out)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)
