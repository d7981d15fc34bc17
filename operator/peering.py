"""kopf peering: the object through which operator replicas see each other, so that only one of them acts.

kopf keeps each replica's priority and a keep-alive in the ``status`` of a ClusterKopfPeering (operator
watching all namespaces) or a KopfPeering per namespace. It does not create that object, and without
it the replicas cannot see each other and would all act; so the operator creates it at start-up. The
CRDs are in ``crds/kopf-peering.yaml``.

kopf pauses an outranked replica by stopping its watches, but the pools' workers are our own tasks:
a retry already scheduled would still run, with what it knew before the pause. So a worker asks
:class:`Standing` before each reconcile whether this replica may act, by the same rule as kopf.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable, Mapping

from maitred.operator.kube import ApiError, Kube

log = logging.getLogger("maitred.operator")

PEERING_API = "/apis/kopf.dev/v1"


def peering_objects(name: str, namespaces: Iterable[str]) -> list[tuple[str, dict]]:
    """(collection path, object) of each peering object: one cluster-wide one, or one per namespace."""
    namespaces = list(namespaces)
    if not namespaces:
        return [(f"{PEERING_API}/clusterkopfpeerings",
                 {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}})]
    return [(f"{PEERING_API}/namespaces/{ns}/kopfpeerings",
             {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": name, "namespace": ns}})
            for ns in namespaces]


async def ensure_peering(kube: Kube, name: str, namespaces: Iterable[str] = ()) -> None:
    """Create the peering object(s) `name` if missing. Raises :class:`ApiError` if the CRDs are not installed."""
    for collection, obj in peering_objects(name, namespaces):
        try:
            await kube.request("POST", collection, body=obj)
            log.info("created %s %s", obj["kind"], name)
        except ApiError as exc:
            if exc.status == 409:
                continue  # exists already: the usual case
            if exc.status == 404:
                raise ApiError(404, "NotFound", f"no {obj['kind']} resource: apply crds/kopf-peering.yaml, "
                                                "or run with --standalone") from None
            raise


def outranked(peers: Mapping[str, Mapping], priority: int, now: datetime.datetime | None = None) -> bool:
    """True if, by kopf's rule, the replica of `priority` must pause, given the peering object's ``status``.

    `peers` maps a replica's id to ``{"priority", "lifetime" (s), "lastseen" (ISO 8601)}``; a peer whose
    ``lastseen + lifetime`` has passed is dead. The replica pauses when a live peer has a higher priority,
    or when another live peer has the same one (kopf then pauses both): two or more live entries of its
    own priority, since its own entry is among them.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    same = 0
    for info in peers.values():
        seen = info.get("lastseen")
        lastseen = datetime.datetime.fromisoformat(seen) if seen else now
        if lastseen.tzinfo is None:
            lastseen = lastseen.replace(tzinfo=datetime.timezone.utc)
        if lastseen + datetime.timedelta(seconds=int(info.get("lifetime", 60))) <= now:
            continue  # dead
        peer_priority = int(info.get("priority", 0))
        if peer_priority > priority:
            return True
        same += peer_priority == priority
    return same >= 2


class Standing:
    """Whether this replica may act now: reads the peering object (a LIST, which the chart's RBAC allows).

    `name`: the peering object; `clusterwide`: a ClusterKopfPeering, else the KopfPeering of the pool's
    namespace; `priority`: this replica's. A missing peering object means no acting (kopf pauses then too).
    """

    def __init__(self, kube: Kube, name: str, priority: int, clusterwide: bool) -> None:
        self.kube, self.name, self.priority, self.clusterwide = kube, name, priority, clusterwide

    async def may_act(self, namespace: str) -> bool:
        """False if another live replica outranks this one (or the peering object is missing)."""
        collection = (f"{PEERING_API}/clusterkopfpeerings" if self.clusterwide
                      else f"{PEERING_API}/namespaces/{namespace}/kopfpeerings")
        listing = await self.kube.request("GET", collection, query=[("fieldSelector", f"metadata.name={self.name}")])
        items = listing.get("items") or []
        return bool(items) and not outranked(items[0].get("status") or {}, self.priority)
