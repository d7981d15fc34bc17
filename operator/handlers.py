"""The kopf handlers: tiny, they only route events to the pools' workers (:mod:`maitred.operator.workers`).

- a pool's events start, kick or stop its worker;
- a pod's changes, as the pod cache (:mod:`maitred.operator.podcache`, the operator's own watch of the
  pods) sees them, kick the pools that it belongs to, or belonged to at their last reconcile (a pod
  relabelled out of a selector must leave the table);
- a child's deletion kicks its owner, which writes it again.

kopf's timeouts, backoffs and peering lifetime are set at start-up (:mod:`maitred.operator.timing`), and
its HTTP session is the operator's own, with TCP keep-alive (:func:`login`).

The children depend on the pool's spec alone, so a worker writes them when the spec's generation (or
the router image) changed since it last wrote them all, after a restart, and when one was deleted;
pod events only rewrite the table and the status.

All of them are ``on.event`` handlers, so kopf keeps no state on the pools and adds no finalizer: the
children go with their pool through ownerReferences. With peering, kopf stops delivering events to an
operator that another one of higher priority outranks; and since a worker may still hold a retry, every
reconcile first asks the peering object whether this replica may act (:class:`~maitred.operator.peering.Standing`),
drops its retries if not, and reads the pool fresh (GET) rather than act on a body it saw earlier. On
resume, kopf lists the pools again, which kicks every worker.

Shared objects (the API client, the workers, the router image) live in kopf's ``memo``.
"""

from __future__ import annotations

import inspect
import logging

import aiohttp
import kopf

from maitred.operator import models, timing
from maitred.operator.autoscaler import DEFAULT_PERIOD_S, Autoscalers, PoolAutoscaler
from maitred.operator.children import router_name, router_pods_of
from maitred.operator.kube import Kube, object_path
from maitred.operator.peering import Standing
from maitred.operator.podcache import PodCache
from maitred.operator.reconcile import ROUTER_FAULTS, Outcome, reconcile_pool
from maitred.operator.workers import PoolWorker, Pools

log = logging.getLogger("maitred.operator")

MANAGED = {"app.kubernetes.io/managed-by": "maitred"}


class TransientFailure(Exception):
    """A reconcile failed with answers that a retry soon may not get again (5xx, 429, 409)."""


@kopf.on.login()
async def login(**kwargs):
    """kopf's own login (kubernetes_asyncio: kubeconfig or in-cluster), on an HTTP session with TCP keep-alive."""
    info = await kopf.login_via_async_client(**kwargs)
    if info is None or not hasattr(kopf, "AiohttpSession"):  # kopf < 1.38 takes no session of ours
        return info
    options: dict = {"limit": 0, "ssl": info.as_ssl_context()}
    if "socket_factory" in inspect.signature(aiohttp.TCPConnector).parameters:  # aiohttp >= 3.12
        options["socket_factory"] = timing.keepalive_socket
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(**options), headers=info.as_http_headers(),
                                    proxy=info.proxy_url, trust_env=info.trust_env)
    return kopf.AiohttpSession(server=info.server, default_namespace=info.default_namespace,
                               priority=info.priority, expiration=info.expiration, aiohttp_session=session)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    # Our own Events say what happened (Kube.post_event, which knows a terminating namespace is no error);
    # kopf would turn log lines into Events and retry them into namespaces being deleted.
    settings.posting.enabled = False
    settings.batching.batch_window = 0.05  # s: a pool's event reaches its worker fast
    timing.configure_kopf(settings)
    memo.kube = await Kube.connect(memo.get("kubeconfig"))
    peering = settings.peering
    memo.standing = None if peering.standalone else Standing(memo.kube, peering.name, peering.priority,
                                                              peering.clusterwide)
    memo.pools = Pools(lambda body, worker: _reconcile(memo, body, worker))
    memo.pods = PodCache(memo.kube, memo.get("namespaces") or (), on_change=memo.pools.kick_for_pod)
    memo.pods.start()
    # The autoscalers' own HTTP client, for the router pods' load reports (no proxy: pod IPs).
    memo.http = aiohttp.ClientSession(trust_env=False)
    memo.autoscalers = Autoscalers(lambda namespace, name: PoolAutoscaler(
        namespace, name, kube=memo.kube, http=memo.http, may_act=lambda ns: _may_act(memo, ns),
        router_pods=lambda: router_pods_of(memo.pods.pods(namespace), name),
        period_s=memo.get("autoscale_period_s") or DEFAULT_PERIOD_S))


async def _may_act(memo: kopf.Memo, namespace: str) -> bool:
    return memo.get("standing") is None or await memo.standing.may_act(namespace)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_) -> None:
    await memo.autoscalers.stop()
    await memo.http.close()
    await memo.pools.stop()
    await memo.pods.stop()
    await memo.kube.close()


@kopf.on.event(models.GROUP, models.VERSION, models.PLURAL)
async def pool_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_) -> None:
    if type == "DELETED" or body.metadata.get("deletionTimestamp"):
        await memo.pools.forget(body.metadata["namespace"], body.metadata["name"])
        await memo.autoscalers.forget(body.metadata["namespace"], body.metadata["name"])
    else:
        memo.autoscalers.sync(dict(body))
        # A MODIFIED with the same generation is a status write (most often our own): nothing to do.
        memo.pools.upsert(dict(body), kick=type != "MODIFIED" or memo.pools.generation_changed(body))


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("", "v1", "services", labels=MANAGED)
@kopf.on.event("", "v1", "configmaps", labels=MANAGED)
@kopf.on.event("", "v1", "serviceaccounts", labels=MANAGED)
@kopf.on.event("rbac.authorization.k8s.io", "v1", "roles", labels=MANAGED)
@kopf.on.event("rbac.authorization.k8s.io", "v1", "rolebindings", labels=MANAGED)
def child_event(type: str | None, namespace: str, meta: kopf.Meta, body: kopf.Body, memo: kopf.Memo, **_) -> None:
    for owner in meta.get("ownerReferences") or ():
        if owner.get("kind") != models.KIND or owner.get("apiVersion") != models.API_VERSION:
            continue
        if type == "DELETED":
            memo.pools.kick(namespace, owner["name"], with_children=True)
        elif body.get("kind") == "Deployment" and meta.get("name") == router_name(owner["name"]):
            # Its status tells of pods refused at creation (ReplicaFailure): RouterAvailable reads it.
            memo.pools.kick(namespace, owner["name"])


async def _reconcile(memo: kopf.Memo, body: dict, worker: PoolWorker) -> bool:
    """Reconcile one pool (children too if not yet written for this spec); True if done (no retry needed).

    Nothing is done (and nothing retried) while another replica outranks this one; the pool is read fresh,
    so that a retry never writes what an older spec asked for.
    """
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    if memo.get("standing") is not None and not await memo.standing.may_act(namespace):
        log.log(logging.DEBUG if worker.standing_by else logging.INFO,
                "pool %s: another operator replica acts; standing by", worker.key)
        worker.standing_by = True
        return True
    worker.standing_by = False
    await memo.pods.wait_synced(namespace)  # the pods listed once (at start-up)
    body = await memo.kube.get(object_path(models.API_VERSION, models.KIND, namespace, name))
    if body is None or body["metadata"].get("uid") != worker.body["metadata"].get("uid"):
        return True  # deleted (or deleted and created again: its events start a new worker)
    worker.body = body
    before = worker.last_status
    children_key = worker.children_key(memo.router_image)
    out = await reconcile_pool(memo.kube, body, pods=memo.pods.pods(namespace), router_image=memo.router_image,
                               router_defaults=memo.get("router_defaults"),
                               last_status=worker.last_status, known_table=worker.known_table,
                               with_children=worker.children_applied_for != children_key)
    worker.pod_names, worker.last_status, worker.known_table = out.pod_names, out.status, out.known_table
    if out.children_applied:
        worker.children_applied_for = children_key
    if not out.gone:
        await _report(memo.kube, body, worker.key, out, before)
    if out.transient and not out.ok:
        raise TransientFailure("; ".join(out.errors))
    return out.ok or out.gone or out.invalid is not None  # no retry mends an invalid spec; its next change kicks


async def _report(kube: Kube, body: dict, key: str, out: Outcome, before: dict | None) -> None:
    """Tell the user what a reconcile changed: log lines, and Kubernetes Events on the pool."""
    table = out.table
    if before is None and table is not None:  # the first reconcile of this pool in this process
        log.info("pool %s: serving routing table version %d with %d endpoint(s)", key, table.version,
                 len(table.endpoints))
    if out.added or out.removed:
        log.info("pool %s: routing table version %d, %d endpoint(s) (added: %s; removed: %s)", key,
                 table.version, len(table.endpoints), ", ".join(out.added) or "none", ", ".join(out.removed) or "none")
    if out.added:
        await kube.post_event(body, "Normal", "EndpointsAdded", f"added to the routing table: {', '.join(out.added)}")
    if out.removed:
        await kube.post_event(body, "Normal", "EndpointsRemoved",
                              f"removed from the routing table: {', '.join(out.removed)}")
    previous = before or body.get("status")
    ready, was_ready = _condition(out.status, "Ready"), _condition(previous, "Ready")
    if ready and ready["status"] != "True" and was_ready.get("reason") != ready["reason"]:
        # A new pool waits for its pods as a matter of course; losing every endpoint is worth a warning
        # (it had them if it was Ready, or Ready but for its router).
        had_endpoints = was_ready.get("status") == "True" or was_ready.get("reason") == "RouterUnavailable"
        kind = "Warning" if had_endpoints and ready["reason"] != "RouterUnavailable" else "Normal"
        await kube.post_event(body, kind, ready["reason"], ready["message"])  # e.g. NoReadyEndpoints
    degraded, was_degraded = _condition(out.status, "Degraded"), _condition(previous, "Degraded")
    router_fault = degraded.get("reason") in (*ROUTER_FAULTS, "FailedCreate")
    if (degraded.get("reason") in ("InvalidSpec", "ReconcileFailed") or router_fault) and (
            (degraded["reason"], degraded["message"]) != (was_degraded.get("reason"), was_degraded.get("message"))):
        await kube.post_event(body, "Warning", degraded["reason"], degraded["message"])
    for error in out.errors:
        log.warning("pool %s: %s", key, error)


def _condition(status: dict | None, type_: str) -> dict:
    return next((c for c in (status or {}).get("conditions", ()) if c.get("type") == type_), {})
