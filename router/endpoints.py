"""Per-endpoint live state, kept by endpoint id across routing-table versions.

The balancing methods only read this state; the proxy and the health checker write it. This split
follows Envoy (hosts carry their own active-request counter and latency samples) and llm-d (a data
producer maintains in-flight load; scorers only read it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from maitred.router.table import Endpoint, RoutingTable

#: Latency assumed for an endpoint with no sample yet, in ms (Envoy's peak-EWMA does the same).
DEFAULT_LATENCY_MS = 10.0
#: Decay time of the latency EWMA, in s: Finagle's and Linkerd's peak-EWMA default.
EWMA_DECAY_S = 10.0


@dataclass(eq=False, slots=True)
class EndpointState:
    """One upstream's live state.

    `in_flight` counts requests sent and not yet finished (acquire/release, always paired in a
    `finally`). `latency_ewma_ms` is a peak-sensitive EWMA of time to first byte in ms. `healthy` is
    the verdict of active checks and passive ejection together; `health_reason` says why.
    """

    id: str
    url: str
    weight: int = 1
    zone: str | None = None
    in_flight: int = 0
    latency_ewma_ms: float = DEFAULT_LATENCY_MS
    latency_sampled_at: float = 0.0
    healthy: bool = True
    health_reason: str = "not checked yet"
    consecutive_failures: int = 0
    check_failures: int = 0
    check_successes: int = 0
    requests_total: int = 0
    failures_total: int = 0
    ejections_total: int = 0
    # The replica's own load, from its /metrics (see maitred.router.load); None until scraped.
    reported_waiting: float | None = None
    reported_running: float | None = None
    reported_kv_cache_usage: float | None = None
    reported_at: float | None = None  # when the report came: monotonic_s(), comparable across processes
    in_flight_at_report: int = 0

    def acquire(self) -> None:
        """Count one more request in flight."""
        self.in_flight += 1
        self.requests_total += 1

    def release(self) -> None:
        """Count one request finished; never goes below zero."""
        if self.in_flight > 0:
            self.in_flight -= 1

    def count_failure(self) -> None:
        """Count a failed request (connection failure, timeout, 5xx): one more in a row, one more in all."""
        self.consecutive_failures += 1
        self.failures_total += 1

    def observe_latency(self, latency_ms: float, now_s: float) -> None:
        """Fold a latency sample (ms) into the peak-sensitive EWMA.

        A sample above the average replaces it at once (the "peak" in peak-EWMA), so a slowing
        endpoint is avoided quickly; lower samples decay it with weight exp(-dt / 10 s), as in
        Finagle's PeakEwma and Envoy's peak_ewma balancer.
        """
        if self.latency_sampled_at == 0.0 or latency_ms > self.latency_ewma_ms:
            self.latency_ewma_ms = latency_ms
        else:
            w = math.exp(-(now_s - self.latency_sampled_at) / EWMA_DECAY_S)
            self.latency_ewma_ms = self.latency_ewma_ms * w + latency_ms * (1.0 - w)
        self.latency_sampled_at = now_s

    @property
    def live(self) -> bool:
        """May take new requests: healthy and with a weight above zero."""
        return self.healthy and self.weight > 0

    def snapshot(self) -> dict:
        """The state as a JSON-able dict, for /debug/table."""
        return self._snapshot()

    def _snapshot(self) -> dict:
        return {
            "id": self.id,
            "url": self.url,
            "weight": self.weight,
            "zone": self.zone,
            "live": self.live,
            "healthy": self.healthy,
            "healthReason": self.health_reason,
            "inFlight": self.in_flight,
            "latencyEwmaMs": round(self.latency_ewma_ms, 3),
            "consecutiveFailures": self.consecutive_failures,
            "requestsTotal": self.requests_total,
            "failuresTotal": self.failures_total,
            "ejectionsTotal": self.ejections_total,
            "reportedLoad": None if self.reported_running is None else {
                "waiting": self.reported_waiting, "running": self.reported_running,
                "kvCacheUsage": self.reported_kv_cache_usage},
        }


def _shared_figure(name: str, none_is_nan: bool = False, default: float | None = None) -> property:
    """A property reading and writing the per-slot figure `name` of a :class:`SharedEndpointState`."""

    def get(self):
        value = self._shared.get(name, self._slot)
        if (none_is_nan or default is not None) and value != value:  # NaN: nothing recorded
            return default
        return value

    def set(self, value) -> None:
        self._shared.set(name, self._slot, math.nan if value is None else value)

    return property(get, set, doc=f"`{name}` of the endpoint's slot, shared by the router's processes.")


class SharedEndpointState(EndpointState):
    """An :class:`EndpointState` whose balancing and health figures live in a router's shared block.

    Every worker process of one router has its own object for an endpoint, all reading the same
    slot of the :class:`~maitred.router.shared.SharedState`: `in_flight`, `requests_total` and
    `failures_total` are summed over the workers (each writes only its own cell); health, its
    reason, consecutive failures, the latency EWMA and the reported load are one value per slot.
    `worker` is this process's row, or -1 for the supervisor, which counts no requests.
    """

    __slots__ = ("_shared", "_slot", "_worker", "_cell")

    def __init__(self, id: str, url: str, shared, slot: int, worker: int) -> None:
        # Not the dataclass __init__: that would write defaults over the figures other processes hold.
        self.id, self.url, self.weight, self.zone = id, url, 1, None
        self.check_failures = self.check_successes = 0
        self._shared, self._slot, self._worker = shared, slot, worker
        self._cell = slot * shared.workers + worker

    @property
    def slot(self) -> int:
        """The endpoint's slot in the shared block."""
        return self._slot

    @property
    def in_flight(self) -> int:
        return self._shared.total(self._shared.in_flight_cells, self._slot)

    @property
    def requests_total(self) -> int:
        return self._shared.total(self._shared.requests_cells, self._slot)

    @property
    def failures_total(self) -> int:
        return self._shared.total(self._shared.failures_cells, self._slot)

    def acquire(self) -> None:
        shared = self._shared
        shared.in_flight_cells[self._cell] += 1
        shared.requests_cells[self._cell] += 1

    def release(self) -> None:
        cells = self._shared.in_flight_cells
        if cells[self._cell] > 0:
            cells[self._cell] -= 1

    def count_failure(self) -> None:
        self.consecutive_failures += 1
        self._shared.failures_cells[self._cell] += 1

    @property
    def healthy(self) -> bool:
        return self._shared.healthy_cells[self._slot] == 1

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self._shared.healthy_cells[self._slot] = 1 if value else 0
        self._shared.bump_health_generation()

    @property
    def health_reason(self) -> str:
        return self._shared.reason(self._slot)

    @health_reason.setter
    def health_reason(self, reason: str) -> None:
        self._shared.set_reason(self._slot, reason)

    consecutive_failures = _shared_figure("consecutive_failures")
    ejections_total = _shared_figure("ejections_total")
    in_flight_at_report = _shared_figure("in_flight_at_report")
    latency_ewma_ms = _shared_figure("latency_ewma_ms", default=DEFAULT_LATENCY_MS)
    latency_sampled_at = _shared_figure("latency_sampled_at", default=0.0)
    reported_waiting = _shared_figure("reported_waiting", none_is_nan=True)
    reported_running = _shared_figure("reported_running", none_is_nan=True)
    reported_kv_cache_usage = _shared_figure("reported_kv_cache_usage", none_is_nan=True)
    reported_at = _shared_figure("reported_at", none_is_nan=True)

    def snapshot(self) -> dict:
        data = self._snapshot()
        data["inFlightByWorker"] = self._shared.by_worker(self._shared.in_flight_cells, self._slot)
        return data


@dataclass(slots=True)
class TableChange:
    """What a new table version changed, by endpoint id."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class EndpointRegistry:
    """The endpoints of the current table and their state; `live` is recomputed on every change.

    `on_health_change(state)` is called when an endpoint turns healthy or unhealthy in this
    process. With `shared` (a :class:`~maitred.router.shared.SharedState`), states are
    :class:`SharedEndpointState` rows of this process (`worker`, -1 for the supervisor), and `live`
    also follows verdicts that another process of the router wrote.
    """

    def __init__(self, on_health_change: Callable[[EndpointState], None] | None = None,
                 shared=None, worker: int = -1) -> None:
        self.table: RoutingTable | None = None
        self.by_id: dict[str, EndpointState] = {}
        self._live: tuple[EndpointState, ...] = ()
        self._on_health_change = on_health_change or (lambda state: None)
        self._shared, self._worker = shared, worker
        self._health_seen = -1

    @property
    def live(self) -> tuple[EndpointState, ...]:
        """The endpoints that may take new requests, in table order."""
        shared = self._shared
        if shared is not None and shared.health_generation != self._health_seen:
            self._refresh()
        return self._live

    def apply(self, table: RoutingTable, slots: dict[str, int] | None = None) -> TableChange:
        """Make `table` current, keeping the state of endpoints whose id stays.

        `slots` (endpoint id -> slot, shared mode only) places each endpoint in the shared block.
        Requests in flight on a removed endpoint keep their reference to its state and finish.
        """
        change = TableChange()
        new: dict[str, EndpointState] = {}
        for endpoint in table.endpoints:
            state = self.by_id.get(endpoint.id)
            if state is not None and slots is not None and state.slot != slots[endpoint.id]:
                state = None
            if state is None:
                if slots is None:
                    state = EndpointState(id=endpoint.id, url=endpoint.url)
                else:
                    state = SharedEndpointState(endpoint.id, endpoint.url, self._shared, slots[endpoint.id],
                                                self._worker)
                change.added.append(endpoint.id)
            _update(state, endpoint)
            new[endpoint.id] = state
        change.removed = [i for i in self.by_id if i not in new]
        self.table, self.by_id = table, new
        self._refresh()
        return change

    def set_health(self, state: EndpointState, healthy: bool, reason: str) -> None:
        """Set an endpoint's health verdict and recompute the live set when it flips."""
        state.health_reason = reason
        if state.healthy == healthy:
            return
        state.healthy = healthy
        if not healthy:
            state.ejections_total += 1
        self._refresh()
        self._on_health_change(state)

    def _refresh(self) -> None:
        if self._shared is not None:
            self._health_seen = self._shared.health_generation
        self._live = tuple(s for s in self.by_id.values() if s.live)

    def __iter__(self) -> Iterable[EndpointState]:
        return iter(list(self.by_id.values()))

    def __len__(self) -> int:
        return len(self.by_id)


def _update(state: EndpointState, endpoint: Endpoint) -> None:
    if state.url != endpoint.url:
        # Same id, new address: the old samples say nothing about the new one.
        state.url = endpoint.url
        state.latency_ewma_ms, state.latency_sampled_at = DEFAULT_LATENCY_MS, 0.0
    state.weight, state.zone = endpoint.weight, endpoint.zone


def monotonic_s() -> float:
    """The router's clock, in seconds (CLOCK_MONOTONIC: one clock for all the router's processes)."""
    return time.monotonic()
