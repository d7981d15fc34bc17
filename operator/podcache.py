"""The pods of the watched namespaces, kept in memory by a LIST and then a WATCH, so that a reconcile reads
its pool's pods from memory instead of listing them from the API server on every pod event.

One reflector per watched namespace (or one for all namespaces), as client-go's informers do:

- LIST (in pages), which replaces what the cache held for that scope: a pod deleted while nobody watched
  is gone from the cache then, and its pools are kicked;
- WATCH from the list's resourceVersion; the API server ends each watch after a few seconds and the
  reflector watches again from the last resourceVersion it saw (bookmarks keep that current); a 410 Gone
  (history expired) means LIST again;
- LIST again every :data:`~maitred.operator.timing.RELIST_S` whatever the watch said, so that nothing a
  watch may have missed lingers;
- on any error, the same again after a backoff of 0.1 s doubling to 1 s, without end; a watch that went
  silent (a frozen connection) is cut after :data:`~maitred.operator.timing.WATCH_CLIENT_TIMEOUT_S`.

The cache holds a slim copy of each pod (:func:`slim_pod`: the fields the routing table and the status
read), and calls `on_change(namespace, name, labels)` for every pod that was added, changed or removed
(`labels`: its labels, the last known ones for a removed pod). The reflectors keep running while kopf
pauses this replica (a standby), so a replica that takes over has a current cache at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from maitred.operator.kube import ApiError, Kube
from maitred.operator.timing import RELIST_S, Backoff

log = logging.getLogger("maitred.operator")

OnChange = Callable[[str, str, Mapping[str, str]], None]


def slim_pod(pod: Mapping[str, Any]) -> dict:
    """The fields of a pod that the routing table and the status read, shaped as the API returns them."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    slim_meta = {key: meta[key] for key in ("name", "namespace", "uid", "labels", "deletionTimestamp") if key in meta}
    containers = [{"ports": [{key: p[key] for key in ("name", "containerPort") if key in p}
                             for p in c.get("ports") or ()]} for c in spec.get("containers") or ()]
    conditions = [{"type": "Ready", "status": c.get("status")} for c in status.get("conditions") or ()
                  if c.get("type") == "Ready"]
    slim_status: dict[str, Any] = {"conditions": conditions}
    if status.get("podIP"):
        slim_status["podIP"] = status["podIP"]
    # Why a container is not running (ImagePullBackOff, CrashLoopBackOff...), for the RouterAvailable condition.
    waiting = [{"state": {"waiting": {key: w[key] for key in ("reason", "message") if key in w}}}
               for c in status.get("containerStatuses") or () if (w := (c.get("state") or {}).get("waiting"))]
    if waiting:
        slim_status["containerStatuses"] = waiting
    return {"metadata": slim_meta, "spec": {"containers": containers}, "status": slim_status}


class PodCache:
    """Pods of `namespaces` (all namespaces if empty), fed by a reflector per scope. Start, then stop it.

    `on_change` is called (in the event loop, never concurrently) for every pod that changed.
    """

    def __init__(self, kube: Kube, namespaces: Iterable[str] = (), on_change: OnChange | None = None) -> None:
        self.kube = kube
        self.scopes: list[str | None] = list(namespaces) or [None]
        self.on_change = on_change
        self._pods: dict[str, dict[str, dict]] = {}  # namespace -> pod name -> slim pod
        self._synced = {scope: asyncio.Event() for scope in self.scopes}
        self._tasks: list[asyncio.Task] = []
        self.lists = 0  # LISTs done, for the tests and the logs
        self.watches = 0  # watch requests made

    def start(self) -> None:
        for scope in self.scopes:
            self._tasks.append(asyncio.create_task(self._run(scope), name=f"pod reflector {scope or '(all)'}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def pods(self, namespace: str) -> list[dict]:
        """The pods of `namespace` as last seen (slim copies; do not modify them)."""
        return list(self._pods.get(namespace, {}).values())

    async def wait_synced(self, namespace: str) -> None:
        """Wait until the scope of `namespace` has been listed once."""
        event = self._synced.get(namespace) or self._synced.get(None)
        if event is not None:
            await event.wait()

    # -- the reflector -------------------------------------------------------------------------------------

    def _path(self, scope: str | None) -> str:
        return f"/api/v1/namespaces/{scope}/pods" if scope else "/api/v1/pods"

    async def _run(self, scope: str | None) -> None:
        where = f"namespace {scope}" if scope else "all namespaces"
        backoff, failures = Backoff(), 0
        version: str | None = None
        listed_at = 0.0
        while True:
            try:
                if version is None or time.monotonic() - listed_at > RELIST_S:
                    version = await self._relist(scope)
                    listed_at = time.monotonic()
                    self._synced[scope].set()
                version = await self._watch(scope, version)
                if failures:
                    log.info("watching the pods of %s again", where)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API server down or refusing: again, soon, without end
                failures += 1
                delay = backoff.delay(failures)
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "pods of %s: %s: %s; again in %.1f s", where, type(exc).__name__,
                        str(exc).strip().splitlines()[0] if str(exc).strip() else "", delay)
                await asyncio.sleep(delay)

    async def _relist(self, scope: str | None) -> str:
        items, version = await self.kube.list_all(self._path(scope))
        self.lists += 1
        fresh: dict[str, dict[str, dict]] = {}
        for pod in items:
            slim = slim_pod(pod)
            fresh.setdefault(slim["metadata"].get("namespace", scope or ""), {})[slim["metadata"]["name"]] = slim
        namespaces = [scope] if scope else list(set(self._pods) | set(fresh))
        for namespace in namespaces:
            old, new = self._pods.get(namespace, {}), fresh.get(namespace, {})
            if new:
                self._pods[namespace] = new
            else:
                self._pods.pop(namespace, None)
            for name in sorted(old.keys() | new.keys()):
                before, after = old.get(name), new.get(name)
                if before != after:
                    self._changed(namespace, name, (after or before)["metadata"].get("labels") or {})
        return version

    async def _watch(self, scope: str | None, version: str) -> str | None:
        """Follow the watch from `version`; return where to go on from, or None to list again."""
        self.watches += 1
        async for event in self.kube.watch(self._path(scope), version):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:  # history expired: list again
                    return None
                raise ApiError(obj.get("code") or 500, obj.get("reason", ""), obj.get("message", ""))
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self._apply(kind, obj)
        return version

    def _apply(self, kind: str, pod: dict) -> None:
        meta = pod.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        store = self._pods.setdefault(namespace, {})
        if kind == "DELETED":
            before = store.pop(name, None)
            if not store:
                self._pods.pop(namespace, None)
            if before is not None:
                self._changed(namespace, name, before["metadata"].get("labels") or {})
            return
        slim = slim_pod(pod)
        if store.get(name) != slim:
            store[name] = slim
            self._changed(namespace, name, slim["metadata"].get("labels") or {})

    def _changed(self, namespace: str, name: str, labels: Mapping[str, str]) -> None:
        if self.on_change is not None:
            try:
                self.on_change(namespace, name, labels)
            except Exception:  # a bug in the callback must not stop the reflector
                log.exception("pod %s/%s: handling its change failed", namespace, name)
