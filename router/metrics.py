"""The router's Prometheus metrics (`/metrics` on the admin port), one registry per router.

Names follow Prometheus' conventions (base units, `_total` on counters); times are in seconds:

| metric | type | labels | what |
|---|---|---|---|
| `maitred_requests_total` | counter | endpoint, model, status | requests answered (endpoint `none`: none was reached) |
| `maitred_request_duration_seconds` | histogram | endpoint, model | arrival to the last byte sent, of requests that reached an endpoint |
| `maitred_ttft_seconds` | histogram | endpoint, model | streams only: arrival to the first chunk sent |
| `maitred_inter_token_latency_seconds` | histogram | endpoint, model | streams of 2+ tokens: (last chunk - first chunk) / (tokens - 1), once per stream |
| `maitred_upstream_latency_seconds` | histogram | endpoint | sending upstream to the last byte of the answer |
| `maitred_prompt_tokens_total`, `maitred_completion_tokens_total`, `maitred_cached_prompt_tokens_total` | counter | endpoint, model | from the responses' `usage` |
| `maitred_retries_total` | counter | endpoint, reason | |
| `maitred_ejections_total` | counter | endpoint | endpoints turned unhealthy |
| `maitred_streams_broken_total` | counter | endpoint, reason | answers cut off after they began (reset, timeout, malformed) |
| `maitred_table_loads_total` | counter | result | applied, rejected |
| `maitred_requests_in_flight`, `maitred_endpoint_healthy`, `maitred_table_version` | gauge | endpoint (the first two) | read from the live state at scrape time |
| `maitred_endpoints_live` | gauge | - | endpoints taking traffic now (0 too, where `maitred_endpoint_healthy` has no series) |
| `maitred_requests_held` | gauge | - | requests held for a cold start now (:mod:`maitred.router.hold`) |
| `maitred_pool_requests_waiting`, `maitred_pool_requests_running` | gauge | - | sums of the replicas' fresh load reports (no sample while none reports) |
| `maitred_pool_kv_cache_usage_ratio` | gauge | - | mean KV-cache usage (0..1) of the replicas that report it (no sample while none does) |

The last four are what an autoscaler reads (as `/debug/load` shows them, :func:`maitred.router.load.pool_load`);
like the other live gauges they come from the shared block at scrape time, so any worker reports the router
as a whole. None carries a `pool` label, as no other metric does: one router serves one pool, and the
PodMonitor adds `pool` (and `namespace`, `pod`) to every series it scrapes.

The `model` label is bounded: with a table that lists models, it is one of them or `other`
(unlisted, or none given); with no models listed, the first `MAX_UNLISTED_MODELS` names this
process has seen (each at most `MAX_MODEL_LABEL_CHARS` long), then `other`.

**Cost on the request path.** prometheus-client spends 1-3 us on each update (a lock, and with
several workers a write to a mapped file), about ten of them per request. So a request is recorded
into plain Python numbers (:class:`_Histogram`, :class:`_Counter`: a few additions), and
:meth:`RouterMetrics.flush` hands what gathered to prometheus-client: when this process has no request
left in flight, at most every `FLUSH_PERIOD_S` under load, and before every scrape. Under load one
flush carries hundreds of requests.

A router of several processes (`--workers N`) reports as a whole from any of them: counters and
histograms use prometheus-client's multiprocess mode (each process writes its own file in
$PROMETHEUS_MULTIPROC_DIR, a scrape sums them), and the live figures come from the shared block. A
worker that is busy shows in another worker's scrape within `FLUSH_PERIOD_S`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from maitred.router.endpoints import EndpointRegistry
from maitred.router.load import pool_load
from maitred.router.usage import Usage

# Seconds; LLM requests range from milliseconds (embeddings) to many minutes (long generations).
TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
# Seconds per token: a fast small model decodes in ~5 ms, a loaded large one in 100+ ms.
ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()

#: The `endpoint` label of requests that reached no endpoint (no live endpoint, bad request).
NO_ENDPOINT = "none"
#: The `model` label of requests for a model the table does not list, or for none.
OTHER_MODEL = "other"
#: With no models in the table: how many distinct model names one process labels as themselves.
MAX_UNLISTED_MODELS = 32
#: Longer model names are labelled `other`, in chars.
MAX_MODEL_LABEL_CHARS = 128
#: Longest time gathered figures wait for a flush while requests are in flight, in s.
FLUSH_PERIOD_S = 0.1
#: The reasons of `maitred_streams_broken_total`.
STREAM_BREAKS = ("reset", "timeout", "malformed")


class _Counter:
    """One counter series, added to locally; `push()` hands the sum to its prometheus-client child."""

    __slots__ = ("_child", "_value", "_dirty", "_pending")

    def __init__(self, child, pending: list) -> None:
        self._child, self._value, self._dirty, self._pending = child, 0.0, False, pending

    def inc(self, amount: float = 1.0) -> None:
        self._value += amount
        if not self._dirty:
            self._dirty = True
            self._pending.append(self)

    def push(self) -> None:
        self._child.inc(self._value)
        self._value, self._dirty = 0.0, False


class _Histogram:
    """One histogram series, observed locally; `push()` hands the counts and sum to its child."""

    __slots__ = ("_child", "_bounds", "_counts", "_sum", "_dirty", "_pending")

    def __init__(self, child, bounds: tuple[float, ...], pending: list) -> None:
        self._child, self._bounds, self._pending = child, bounds, pending
        self._counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self._sum, self._dirty = 0.0, False

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1  # buckets are `le`: value <= bound
        self._sum += value
        if not self._dirty:
            self._dirty = True
            self._pending.append(self)

    def push(self) -> None:
        # prometheus-client's Histogram child keeps one value per bucket (not cumulative) and the sum.
        buckets, counts = self._child._buckets, self._counts
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
                counts[i] = 0
        self._child._sum.inc(self._sum)
        self._sum, self._dirty = 0.0, False


class _Series:
    """The series of one (endpoint, model) pair."""

    __slots__ = ("duration", "ttft", "itl", "prompt", "completion", "cached", "by_status")

    def __init__(self, metrics: "RouterMetrics", endpoint: str, model: str) -> None:
        pending = metrics._pending
        self.duration = _Histogram(metrics.request_duration.labels(endpoint, model), LATENCY_BUCKETS_S, pending)
        self.ttft = _Histogram(metrics.ttft.labels(endpoint, model), TTFT_BUCKETS_S, pending)
        self.itl = _Histogram(metrics.inter_token_latency.labels(endpoint, model), ITL_BUCKETS_S, pending)
        self.prompt = _Counter(metrics.prompt_tokens.labels(endpoint, model), pending)
        self.completion = _Counter(metrics.completion_tokens.labels(endpoint, model), pending)
        self.cached = _Counter(metrics.cached_prompt_tokens.labels(endpoint, model), pending)
        self.by_status: dict[int, _Counter] = {}


class RouterMetrics:
    """The metric families; `registry` is what `/metrics` exports (call :meth:`flush` first)."""

    def __init__(self, endpoints: EndpointRegistry, shared=None, held: Callable[[], int] = lambda: 0) -> None:
        """With `shared`, the counters go to this process's multiprocess file, and `registry`
        exports every process's (read from $PROMETHEUS_MULTIPROC_DIR) instead of this one's.
        `held()`: the requests the router holds for a cold start now."""
        r = CollectorRegistry(auto_describe=True)
        per_request = ["endpoint", "model"]
        self.requests = Counter("maitred_requests", "Requests answered, by endpoint, model and status.",
                                ["endpoint", "model", "status"], registry=r)
        self.request_duration = Histogram(
            "maitred_request_duration_seconds",
            "Time from a request's arrival to the last byte sent to the client, in s (requests that reached an endpoint).",
            per_request, buckets=LATENCY_BUCKETS_S, registry=r)
        self.ttft = Histogram("maitred_ttft_seconds",
                              "Streams only: time from the request's arrival to its first chunk sent to the client, in s.",
                              per_request, buckets=TTFT_BUCKETS_S, registry=r)
        self.inter_token_latency = Histogram(
            "maitred_inter_token_latency_seconds",
            "Streams of 2+ tokens: (last chunk - first chunk) / (tokens - 1), in s per token, once per stream.",
            per_request, buckets=ITL_BUCKETS_S, registry=r)
        self.upstream_latency = Histogram("maitred_upstream_latency_seconds",
                                          "Time from sending upstream to the last byte, in s.",
                                          ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.prompt_tokens = Counter("maitred_prompt_tokens", "Prompt tokens, from the responses' usage.",
                                     per_request, registry=r)
        self.completion_tokens = Counter("maitred_completion_tokens", "Completion tokens, from the responses' usage.",
                                         per_request, registry=r)
        self.cached_prompt_tokens = Counter(
            "maitred_cached_prompt_tokens",
            "Prompt tokens the server had in its prefix cache (usage.prompt_tokens_details.cached_tokens).",
            per_request, registry=r)
        self.retries = Counter("maitred_retries", "Retries, by the endpoint that failed and why.",
                               ["endpoint", "reason"], registry=r)
        self.ejections = Counter("maitred_ejections", "Endpoints turned unhealthy, by endpoint.",
                                 ["endpoint"], registry=r)
        self.streams_broken = Counter("maitred_streams_broken", "Responses cut off after they had started, by endpoint"
                                      " and reason (reset, timeout, malformed).", ["endpoint", "reason"], registry=r)
        self.table_loads = Counter("maitred_table_loads", "Routing-table loads, by result (applied, rejected).",
                                   ["result"], registry=r)
        for result in ("applied", "rejected"):
            self.table_loads.labels(result)
        if shared is None:
            self.registry = r
        else:
            self.registry = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(self.registry)
        self.registry.register(_LiveStateCollector(endpoints, held))
        self._endpoints = endpoints
        self._pending: list[_Counter | _Histogram] = []
        self._series: dict[tuple[str, str], _Series] = {}
        self._upstream: dict[str, _Histogram] = {}
        self._flushed_at = time.monotonic()
        self._known_endpoints: set[str] = set()
        self._labels_for = None  # the table the model labels below are for
        self._listed: frozenset[str] = frozenset()
        self._unlisted: set[str] = set()

    def model_label(self, model) -> str:
        """The `model` label of a request for `model` (a str, or None): bounded, see the module's doc."""
        table = self._endpoints.table
        if table is not self._labels_for:
            self._labels_for = table
            self._listed = frozenset(table.models) if table is not None else frozenset()
        if self._listed:
            return model if model in self._listed else OTHER_MODEL
        if not isinstance(model, str) or not model or len(model) > MAX_MODEL_LABEL_CHARS:
            return OTHER_MODEL
        if model in self._unlisted:
            return model
        if len(self._unlisted) < MAX_UNLISTED_MODELS:
            self._unlisted.add(model)
            return model
        return OTHER_MODEL

    def record_request(self, endpoint: str, model: str, status: int, duration_s: float | None,
                       ttft_s: float | None = None, itl_s: float | None = None, usage: Usage | None = None) -> None:
        """One answered request. `model`: from :meth:`model_label`; times in s (None: not measured)."""
        series = self._series.get((endpoint, model))
        if series is None:
            series = self._series[(endpoint, model)] = _Series(self, endpoint, model)
        counter = series.by_status.get(status)
        if counter is None:
            counter = series.by_status[status] = _Counter(self.requests.labels(endpoint, model, str(status)),
                                                          self._pending)
        counter.inc()
        if duration_s is not None:
            series.duration.observe(duration_s)
        if ttft_s is not None:
            series.ttft.observe(ttft_s)
        if itl_s is not None:
            series.itl.observe(itl_s)
        if usage is not None:
            series.prompt.inc(usage.prompt)
            series.completion.inc(usage.completion)
            if usage.cached:
                series.cached.inc(usage.cached)

    def record_upstream(self, endpoint: str, seconds: float) -> None:
        """Time from sending a request upstream to the last byte of its answer, in s."""
        histogram = self._upstream.get(endpoint)
        if histogram is None:
            histogram = self._upstream[endpoint] = _Histogram(self.upstream_latency.labels(endpoint),
                                                              LATENCY_BUCKETS_S, self._pending)
        histogram.observe(seconds)

    def maybe_flush(self, in_flight: int) -> None:
        """Flush if this process has no request left in flight, or the last flush is `FLUSH_PERIOD_S` old."""
        if in_flight == 0 or time.monotonic() - self._flushed_at >= FLUSH_PERIOD_S:
            self.flush()

    def flush(self) -> None:
        """Hand what gathered since the last flush to prometheus-client (and so to a scrape)."""
        self._flushed_at = time.monotonic()
        pending = self._pending
        for series in pending:
            series.push()
        pending.clear()

    def before_scrape(self) -> None:
        """Flush, and give every endpoint of the table its rare counters at 0, so that they are scraped (and a
        rate() sees their first increase) before the first ejection or broken stream."""
        self.flush()
        for state in self._endpoints:
            if state.id not in self._known_endpoints:
                self._known_endpoints.add(state.id)
                self.ejections.labels(state.id)
                for reason in STREAM_BREAKS:
                    self.streams_broken.labels(state.id, reason)


class _LiveStateCollector(Collector):
    """The gauges read from the live state (the shared block with several workers) at each scrape."""

    def __init__(self, endpoints: EndpointRegistry, held: Callable[[], int]) -> None:
        self._endpoints, self._held = endpoints, held

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_flight = GaugeMetricFamily("maitred_requests_in_flight", "Requests in flight, by endpoint.",
                                      labels=["endpoint"])
        healthy = GaugeMetricFamily("maitred_endpoint_healthy", "1 if the endpoint takes traffic.", labels=["endpoint"])
        for state in self._endpoints:
            in_flight.add_metric([state.id], state.in_flight)
            healthy.add_metric([state.id], 1.0 if state.live else 0.0)
        table = self._endpoints.table
        version = GaugeMetricFamily("maitred_table_version", "Version of the routing table in use (-1: none).",
                                    value=table.version if table else -1)
        yield from (in_flight, healthy, version)
        yield from self._pool_load()

    def _pool_load(self) -> Iterator[GaugeMetricFamily]:
        load = pool_load(self._endpoints)
        yield GaugeMetricFamily("maitred_endpoints_live", "Endpoints taking traffic now.", value=load.live)
        yield GaugeMetricFamily("maitred_requests_held", "Requests held for a cold start now (no live endpoint yet).",
                                value=self._held())
        for name, value, what in (
                ("maitred_pool_requests_waiting", load.waiting, "Requests waiting in the replicas' queues, summed"),
                ("maitred_pool_requests_running", load.running, "Requests running on the replicas, summed"),
                ("maitred_pool_kv_cache_usage_ratio", load.kv_cache_usage, "Mean KV-cache usage (0..1)")):
            family = GaugeMetricFamily(name, f"{what} over the live replicas with a fresh load report.")
            if value is not None:  # nothing reports: no sample, rather than NaN
                family.add_metric([], value)
            yield family
