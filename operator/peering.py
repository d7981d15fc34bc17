"""kopf peering: the object through which operator replicas see each other, so that only one of them acts.

kopf keeps each replica's priority and a keep-alive in the ``status`` of a ClusterKopfPeering (operator
watching all namespaces) or a KopfPeering per namespace. It does not create that object, and without
it the replicas cannot see each other and would all act; so the operator creates it at start-up. The
CRDs are in ``crds/kopf-peering.yaml``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

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
