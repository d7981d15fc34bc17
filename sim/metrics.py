"""Prometheus metrics under vLLM's names, in a registry of their own (several sims can share a process).

Gauges and counters are read from the engine when scraped (a custom collector), so the hot path pays nothing
for them; only the two latency histograms are observed per request. Every series has the label `model_name`,
the first served model name, as vLLM labels with its first `--served-model-name`.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from maitred.sim.engine import Engine

# vLLM's buckets (vllm/v1/metrics/loggers.py), so that dashboards and routers see the same shape.
TTFT_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
E2E_BUCKETS_S = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineCollector(Collector):
    """Reads the engine's queue lengths, KV usage and token counters at scrape time."""

    def __init__(self, engine: Engine, model_name: str) -> None:
        self._engine = engine
        self._labels = [model_name]

    def collect(self) -> Iterator[Metric]:
        engine, labels = self._engine, self._labels
        stats = engine.stats
        yield self._gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                          engine.num_running)
        yield self._gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                          engine.num_waiting)
        yield self._gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                          engine.cache.usage)
        # The pre-v1 name, still read by some routers (production-stack, older dashboards).
        yield self._gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.",
                          engine.cache.usage)
        counters = (
            ("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
             stats.prefix_queries_tokens),
            ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
             stats.prefix_hits_tokens),
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens),
            ("vllm:generation_tokens", "Number of generation tokens processed.", stats.generation_tokens),
        )
        for name, doc, value in counters:
            counter = CounterMetricFamily(name, doc, labels=["model_name"])
            counter.add_metric(labels, value)
            yield counter

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily(name, doc, labels=["model_name"])
        gauge.add_metric(self._labels, value)
        return gauge


class SimMetrics:
    """The sim's metrics: a private registry, the engine collector and the latency histograms.

    It is the engine's observer (`on_first_token`, `on_finished`, seconds). `render()` -> exposition bytes.
    """

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=False)
        ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                         ["model_name"], registry=self.registry, buckets=TTFT_BUCKETS_S)
        e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                        ["model_name"], registry=self.registry, buckets=E2E_BUCKETS_S)
        # Bound children: observing then skips the label lookup.
        self._ttft = ttft.labels(model_name)
        self._e2e = e2e.labels(model_name)

    def attach(self, engine: Engine) -> None:
        """Expose `engine`'s gauges and counters."""
        self.registry.register(_EngineCollector(engine, self.model_name))

    def on_first_token(self, ttft_s: float) -> None:
        self._ttft.observe(ttft_s)

    def on_finished(self, e2e_s: float) -> None:
        self._e2e.observe(e2e_s)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
