"""The router's Prometheus metrics (`/metrics`), one registry per router.

Counters and histograms are updated on the request path; in-flight, health and the table version
are read from the live state at scrape time by a collector, so they can never drift from it.

A router of several processes (`--workers N`) reports as a whole from any of them: counters and
histograms use prometheus-client's multiprocess mode (each process writes its own file in
$PROMETHEUS_MULTIPROC_DIR, a scrape sums them), and the live figures come from the shared block.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from maitred.router.endpoints import EndpointRegistry

# Seconds; LLM requests range from milliseconds (embeddings) to many minutes (long generations).
TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()

#: The `endpoint` label of requests that reached no endpoint (no live endpoint, bad request).
NO_ENDPOINT = "none"


class RouterMetrics:
    """The metric families; `registry` is what `/metrics` exports."""

    def __init__(self, endpoints: EndpointRegistry, shared=None) -> None:
        """With `shared`, the counters go to this process's multiprocess file, and `registry`
        exports every process's (read from $PROMETHEUS_MULTIPROC_DIR) instead of this one's."""
        r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("maitred_requests", "Requests answered, by endpoint and status.",
                                ["endpoint", "status"], registry=r)
        self.upstream_latency = Histogram("maitred_upstream_latency_seconds",
                                          "Time from sending upstream to the last byte, in s.",
                                          ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.ttft = Histogram("maitred_ttft_seconds",
                              "Time from the request's arrival to its first response byte sent to the client, in s.",
                              ["endpoint"], buckets=TTFT_BUCKETS_S, registry=r)
        self.retries = Counter("maitred_retries", "Retries, by the endpoint that failed and why.",
                               ["endpoint", "reason"], registry=r)
        self.ejections = Counter("maitred_ejections", "Endpoints turned unhealthy, by endpoint.",
                                 ["endpoint"], registry=r)
        self.streams_broken = Counter("maitred_streams_broken", "Responses cut off after they had started, by endpoint"
                                      " and reason (reset, timeout, malformed).", ["endpoint", "reason"], registry=r)
        self.table_loads = Counter("maitred_table_loads", "Routing-table loads, by result (applied, rejected).",
                                   ["result"], registry=r)
        if shared is None:
            self.registry = r
        else:
            self.registry = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(self.registry)
        self.registry.register(_LiveStateCollector(endpoints))


class _LiveStateCollector(Collector):
    def __init__(self, endpoints: EndpointRegistry) -> None:
        self._endpoints = endpoints

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_flight = GaugeMetricFamily("maitred_in_flight", "Requests in flight, by endpoint.", labels=["endpoint"])
        healthy = GaugeMetricFamily("maitred_endpoint_healthy", "1 if the endpoint takes traffic.", labels=["endpoint"])
        for state in self._endpoints:
            in_flight.add_metric([state.id], state.in_flight)
            healthy.add_metric([state.id], 1.0 if state.live else 0.0)
        table = self._endpoints.table
        version = GaugeMetricFamily("maitred_table_version", "Version of the routing table in use (-1: none).",
                                    value=table.version if table else -1)
        yield from (in_flight, healthy, version)
