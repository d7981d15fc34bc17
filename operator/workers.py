"""One worker per pool: runs reconciles one at a time, coalescing the kicks that arrive meanwhile, retrying on failure.

Events only *kick* a pool; the worker then reconciles from the current state of the world (level-triggered).
Ten pod events during one reconcile cause one more reconcile, not ten. A reconcile the API server refused
is tried again after a backoff that doubles (0.5 s to 30 s); one that failed on the network, a timeout or
an answer that may not come again (it raised) after 0.2 s doubling to 2 s; either at once on the next
kick. With no kick at all, a pool is reconciled again every ``RESYNC_S`` (60 s, give or take 10 %), so
that whatever an event did not say is mended. Workers of different pools are independent tasks, so one
bad pool never stops the operator from serving the others.
The reconcile function reads the pool fresh before it writes (`body` only names the pool), and reports
success when another operator replica outranks this one, which drops the pending retries.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping

from maitred.operator.children import ROUTER_LABEL
from maitred.operator.models import LabelSelector, PoolSpec
from maitred.operator.routing import effective_selector
from maitred.operator.selectors import matches
from maitred.operator.timing import RESYNC_S, TRANSIENT_RETRY_CAP_S, TRANSIENT_RETRY_FIRST_S, Backoff

log = logging.getLogger("maitred.operator")

#: Backoff after a reconcile the API server refused, in s: from the first, doubling, to the last.
RETRY_BACKOFF_S = (0.5, 30.0)
#: Backoff after a reconcile that raised (network, timeouts, 5xx), in s: from the first, doubling, to the last.
TRANSIENT_BACKOFF_S = (TRANSIENT_RETRY_FIRST_S, TRANSIENT_RETRY_CAP_S)

#: reconcile(body, worker) -> True if it succeeded, False if refused; raises for a transient failure.
Reconcile = Callable[[dict, "PoolWorker"], Awaitable[bool]]


class PoolWorker:
    """The worker of one pool (`key` = namespace/name). `body` is the newest pool object seen.

    `pod_names` (the pods the last reconcile selected) and `last_status` (the status it wrote) are kept so
    that a pod's event kicks only the pools it belongs or belonged to, and an unchanged status is not
    written twice.
    """

    def __init__(self, key: str, body: dict, reconcile: Reconcile) -> None:
        self.key = key
        self.body = body
        self.pod_names: frozenset[str] = frozenset()
        self.last_status: dict | None = None
        self.children_applied_for: tuple | None = None  # the children_key they were last all written for
        self.children_requests = 0  # bumped by each kick that asks for the children to be written again
        self.known_table = None  # (JSON, RoutingTable) of the table last seen in force, not to parse it again
        self.resync_s = RESYNC_S  # reconciled again after this long with no kick (give or take 10 %)
        self.standing_by = False  # the last reconcile found another replica acting (said once, not per kick)
        self._reconcile = reconcile
        self._kicked = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._selector: tuple[int | None, LabelSelector | None] = (None, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pool {self.key}")

    async def stop(self) -> None:
        """Cancel the worker and wait for it (a reconcile in progress is interrupted at its next await)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def kick(self) -> None:
        """Ask for a reconcile (soon, after the one in progress if any)."""
        self._kicked.set()

    def children_key(self, router_image: str) -> tuple:
        """What the children depend on: the spec's generation, the router image and the requests to rewrite them.

        A reconcile takes the key when it starts and records it once its children are written; a request
        that arrives meanwhile (a child deleted during that reconcile) changes the key, so the next
        reconcile writes them again rather than taking them as done.
        """
        return self.body.get("metadata", {}).get("generation"), router_image, self.children_requests

    def selector(self) -> LabelSelector | None:
        """The pool's pod selector (parsed once per generation; None if static-only or invalid)."""
        generation = self.body.get("metadata", {}).get("generation")
        if self._selector[0] != generation:
            try:
                spec = PoolSpec.model_validate(self.body.get("spec") or {})
                selected = effective_selector(spec, self.body["metadata"]["name"])
            except ValueError:
                selected = None
            self._selector = (generation, selected)
        return self._selector[1]

    def wants_pod(self, name: str, labels: Mapping[str, str]) -> bool:
        """True if pod `name` with `labels` is, or was at the last reconcile, one of this pool's pods."""
        if name in self.pod_names or labels.get(ROUTER_LABEL) == self.key.partition("/")[2]:  # a replica or a router
            return True
        selector = self.selector()
        return selector is not None and matches(selector, labels)

    async def _run(self) -> None:
        refused, transient = Backoff(*RETRY_BACKOFF_S), Backoff(*TRANSIENT_BACKOFF_S)
        failures = 0
        delay_s: float | None = None
        while True:
            wait_s = delay_s if delay_s is not None else self.resync_s * random.uniform(0.9, 1.1)
            try:
                async with asyncio.timeout(wait_s):  # not wait_for, which may swallow a cancellation (3.11)
                    await self._kicked.wait()
            except TimeoutError:
                pass  # time to retry, or to resync
            self._kicked.clear()
            try:
                ok = await self._reconcile(self.body, self)
                schedule = refused
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network trouble, timeouts, a bug: log, keep the worker, retry soon
                log.warning("pool %s: reconcile failed: %s: %s", self.key, type(exc).__name__, exc)
                ok, schedule = False, transient
            failures = 0 if ok else failures + 1
            delay_s = None if ok else schedule.delay(failures)


class Pools:
    """The workers of all known pools, by namespace/name."""

    def __init__(self, reconcile: Reconcile) -> None:
        self._reconcile = reconcile
        self.workers: dict[str, PoolWorker] = {}

    def generation_changed(self, body: Mapping) -> bool:
        """True if `body`'s spec generation differs from the one last seen for that pool (or it is new)."""
        meta = body["metadata"]
        worker = self.workers.get(f"{meta['namespace']}/{meta['name']}")
        return worker is None or worker.body["metadata"].get("generation") != meta.get("generation")

    def upsert(self, body: dict, kick: bool = True) -> PoolWorker:
        """Remember the newest `body` of a pool and kick its worker (started, and kicked, if new)."""
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        worker = self.workers.get(key)
        if worker is None or worker.body.get("metadata", {}).get("uid") != body["metadata"].get("uid"):
            if worker is not None:  # deleted and created again meanwhile: a new pool
                asyncio.create_task(worker.stop())
            worker = self.workers[key] = PoolWorker(key, body, self._reconcile)
            worker.start()
            kick = True
        worker.body = body
        if kick:
            worker.kick()
        return worker

    async def forget(self, namespace: str, name: str) -> None:
        """Stop the worker of a deleted pool."""
        worker = self.workers.pop(f"{namespace}/{name}", None)
        if worker is not None:
            await worker.stop()

    def kick(self, namespace: str, name: str, with_children: bool = False) -> None:
        """Kick one pool, if known; `with_children` has it write its children again too."""
        worker = self.workers.get(f"{namespace}/{name}")
        if worker is not None:
            if with_children:
                worker.children_requests += 1
            worker.kick()

    def kick_for_pod(self, namespace: str, name: str, labels: Mapping[str, str]) -> list[str]:
        """Kick the pools that pod `name` belongs or belonged to; returns their keys."""
        prefix = f"{namespace}/"
        kicked = [w for key, w in self.workers.items() if key.startswith(prefix) and w.wants_pod(name, labels)]
        for worker in kicked:
            worker.kick()
        return [w.key for w in kicked]

    async def stop(self) -> None:
        """Stop every worker."""
        workers, self.workers = list(self.workers.values()), {}
        await asyncio.gather(*(w.stop() for w in workers))
