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
    in_flight_at_report: int = 0

    def acquire(self) -> None:
        """Count one more request in flight."""
        self.in_flight += 1
        self.requests_total += 1

    def release(self) -> None:
        """Count one request finished; never goes below zero."""
        if self.in_flight > 0:
            self.in_flight -= 1

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


@dataclass(slots=True)
class TableChange:
    """What a new table version changed, by endpoint id."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class EndpointRegistry:
    """The endpoints of the current table and their state; `live` is recomputed on every change.

    `on_health_change(state)` is called when an endpoint turns healthy or unhealthy.
    """

    def __init__(self, on_health_change: Callable[[EndpointState], None] | None = None) -> None:
        self.table: RoutingTable | None = None
        self.by_id: dict[str, EndpointState] = {}
        self.live: tuple[EndpointState, ...] = ()
        self._on_health_change = on_health_change or (lambda state: None)

    def apply(self, table: RoutingTable) -> TableChange:
        """Make `table` current, keeping the state of endpoints whose id stays.

        Requests in flight on a removed endpoint keep their reference to its state and finish.
        """
        change = TableChange()
        new: dict[str, EndpointState] = {}
        for endpoint in table.endpoints:
            state = self.by_id.get(endpoint.id)
            if state is None:
                state = EndpointState(id=endpoint.id, url=endpoint.url)
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
        self.live = tuple(s for s in self.by_id.values() if s.live)

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
    """The router's clock, in seconds (monotonic)."""
    return time.monotonic()
