"""The router: one object holding a pool's table, endpoint states, balancer and upstream connections.

Built once at start-up and passed to the proxy, the control paths and the table source (no
singletons). A new table version is applied between two awaits, so requests in flight keep the
endpoint they hold and new requests see the new endpoints at once.

With several worker processes (:mod:`maitred.router.workers`) there is one `Router` per process
over one shared block of endpoint state: the supervisor's (`worker=-1`) runs the table source,
the health checks and the load scrapes, and publishes each table; each worker's serves requests
and follows the published tables.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import aiohttp

from maitred.router.balancing import Balancer, make_balancer
from maitred.router.endpoints import EndpointRegistry, EndpointState
from maitred.router.health import HealthChecker
from maitred.router.hold import ColdStartHold
from maitred.router.load import LoadScraper, pool_load
from maitred.router.metrics import RouterMetrics
from maitred.router.shared import SlotAllocator
from maitred.router.limits import DEFAULT_MAX_BODY_BYTES
from maitred.router.table import RoutingTable

log = logging.getLogger("maitred.router")


class Router:
    """State of one router process. `session` exists between :meth:`start` and :meth:`close`."""

    def __init__(self, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, rng: random.Random | None = None,
                 shared=None, worker: int = -1, publish: Callable[[], None] | None = None) -> None:
        """`shared` (a :class:`~maitred.router.shared.SharedState`) and `worker` (this process's row,
        -1 for the supervisor) make this one process of a multi-process router; `publish()` is the
        supervisor's way of handing the current table (and any refusal) to the workers."""
        self.max_body_bytes = max_body_bytes
        self.rng = rng or random.Random()
        self.shared, self.worker, self._publish = shared, worker, publish
        self.slots = SlotAllocator(shared.slots) if shared is not None and worker < 0 else None
        self.endpoints = EndpointRegistry(on_health_change=self._health_changed, shared=shared, worker=worker)
        self.hold = ColdStartHold(shared=shared, worker=worker)
        self.metrics = RouterMetrics(self.endpoints, shared=shared, held=lambda: self.hold.held)
        self.health = HealthChecker(self.endpoints)
        self.load = LoadScraper(self.endpoints)
        self.balancer: Balancer | None = None
        self.session: aiohttp.ClientSession | None = None
        self.client_timeout = aiohttp.ClientTimeout(total=None)
        self.table_error: str | None = None

    async def start(self) -> None:
        """Open the pooled keep-alive upstream connections."""
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=60)
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # bodies pass byte for byte, compressed or not
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    def start_checks(self) -> list[asyncio.Task]:
        """Start the active health checks and the load scrapes (once per router: in its only process or its
        supervisor); the caller cancels the tasks."""
        return [asyncio.create_task(self.health.run(self.session)), asyncio.create_task(self.load.run(self.session))]

    async def close(self) -> None:
        """Close upstream connections."""
        if self.session is not None:
            await self.session.close()

    def apply_table(self, table: RoutingTable, slots: dict[str, int] | None = None) -> None:
        """Make `table` current; keeps per-endpoint state by id and the balancer if the method is unchanged.

        In the supervisor of a multi-process router, endpoints get their shared slots here and the
        table is published to the workers; a worker passes the `slots` the supervisor published.
        Raises ValueError (supervisor) if the table has more endpoints than the shared block has slots.
        """
        previous = self.endpoints.table
        if self.slots is not None:
            try:
                slots, fresh = self.slots.assign([e.id for e in table.endpoints])
            except ValueError as exc:
                return self.reject_table(f"routing table {table.pool} version {table.version}: {exc}")
            for slot in fresh:
                self.shared.reset_slot(slot)
        change = self.endpoints.apply(table, slots)
        if self.balancer is None or previous is None or previous.method != table.method:
            self.balancer = make_balancer(table.method, rng=self.rng)
        t = table.timeouts
        self.client_timeout = aiohttp.ClientTimeout(
            total=t.request_seconds, sock_connect=t.connect_seconds, sock_read=t.idle_seconds
        )
        self.table_error = None
        if self.worker < 0:  # counted once per router, by the process that loaded it
            self.metrics.table_loads.labels("applied").inc()
        if self._publish is not None:
            self._publish()
        self.health.kick()
        self.hold.wake()
        if not table.endpoints:
            log.warning("routing table %s version %d has no endpoints: every request %s", table.pool,
                        table.version, "is held for a cold start" if table.cold_start else "gets 503")
        log.info("routing table %s version %d applied: %s, %d endpoints (added %s, removed %s)",
                 table.pool, table.version, table.method, len(table.endpoints),
                 ", ".join(change.added) or "none", ", ".join(change.removed) or "none")

    def reject_table(self, error: str) -> None:
        """Record a table that could not be used; the last good one stays in force."""
        self.table_error = error
        if self.worker < 0:
            self.metrics.table_loads.labels("rejected").inc()
        if self._publish is not None:
            self._publish()
        kept = self.endpoints.table
        log.error("%s; keeping %s", error, f"version {kept.version}" if kept else "no table")

    def _health_changed(self, state: EndpointState) -> None:
        if not state.healthy:
            self.metrics.ejections.labels(state.id).inc()
        else:
            self.hold.wake()

    @property
    def ready(self) -> bool:
        """A table is loaded and at least one endpoint is live, or it holds requests for a cold start and
        lists no endpoint.

        With `coldStart` a router of a pool at zero replicas is ready: it must take the requests (its pod in
        its Service) to hold them, and report them, so that the pool scales up. One whose endpoints are all
        down is not: it leaves its Service, as without `coldStart`.
        """
        table = self.endpoints.table
        return table is not None and (bool(self.endpoints.live) or (table.cold_start is not None
                                                                    and not table.endpoints))

    def _worker_snapshot(self, index: int) -> dict:
        """One worker's pid, whether it accepts connections yet, its table version and how long after its publication it applied the current table (ms)."""
        status, shared = self.shared.worker_status(index), self.shared
        current = status["table_generation"] == shared.table_generation and shared.published_at_ns
        return {"index": index, "pid": status["pid"], "listening": bool(status["listening"]),
                "tableVersion": status["table_version"],
                "tableLagMs": round((status["applied_at_ns"] - shared.published_at_ns) / 1e6, 3) if current else None}

    def load_report(self) -> dict:
        """The pool's load as this router sees it, for /debug/load (the operator autoscales on it).

        ``{"pool", "tableVersion", "endpoints", "liveEndpoints", "reporting", "waiting", "running",
        "kvCacheUsage", "inFlight", "held"}``: see :class:`~maitred.router.load.PoolLoad`; `held` is
        the requests held for a cold start (:mod:`maitred.router.hold`); pool and version None without a table.
        """
        table = self.endpoints.table
        load = pool_load(self.endpoints)
        return {"pool": table.pool if table else None, "tableVersion": table.version if table else None,
                "endpoints": load.endpoints, "liveEndpoints": load.live, "reporting": load.reporting,
                "waiting": load.waiting, "running": load.running, "kvCacheUsage": load.kv_cache_usage,
                "inFlight": load.in_flight, "held": self.hold.held}

    def snapshot(self) -> dict:
        """The table and each endpoint's live state, for /debug/table."""
        table = self.endpoints.table
        snapshot = {
            "table": table.model_dump(mode="json", by_alias=True) if table else None,
            "tableError": self.table_error,
            "endpoints": [s.snapshot() for s in self.endpoints],
        }
        if self.shared is not None:
            snapshot["worker"] = self.worker
            snapshot["workers"] = [self._worker_snapshot(i) for i in range(self.shared.workers)]
        return snapshot
