"""Load reports: the replicas' own queue and KV-cache figures, scraped from their Prometheus /metrics.

The router's in-flight count sees only its own requests; a replica's queue also holds those of other
router replicas and of clients that bypass the router. For methods that weigh that load
(`least-load`, and the load bound of `prefix-affinity` and `session-affinity`),
:class:`LoadScraper` reads each live endpoint's /metrics every `SCRAPE_PERIOD_S`
and stores the figures on its :class:`~maitred.router.endpoints.EndpointState`,
with the router's in-flight count at that moment, so that a balancer can add the requests it sent
since (the report is already stale by then).

Metric names understood (the first present wins):

| figure | vLLM | SGLang | TGI |
|---|---|---|---|
| waiting | `vllm:num_requests_waiting` | `sglang:num_queue_reqs` | `tgi_queue_size` |
| running | `vllm:num_requests_running` | `sglang:num_running_reqs` | `tgi_batch_current_size` |
| KV-cache usage (0..1) | `vllm:kv_cache_usage_perc`, `vllm:gpu_cache_usage_perc` | `sglang:token_usage` | - |
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from maitred.router.endpoints import EndpointRegistry, EndpointState

log = logging.getLogger("maitred.router.load")

SCRAPE_PERIOD_S = 0.25
SCRAPE_TIMEOUT_S = 1.0
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size")
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs", "tgi_batch_current_size")
KV_CACHE_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
#: Methods that read load reports; for the others nothing is scraped.
METHODS_USING_LOAD = frozenset({"least-load", "prefix-affinity", "session-affinity"})


def parse_load(text: str) -> dict[str, float]:
    """{"waiting", "running", "kv_cache_usage"} from Prometheus text; a figure absent is left out.

    Several series of one name (one per model or engine) are summed; KV-cache usage takes the
    largest. Raises ValueError on text that is not Prometheus exposition format.
    """
    samples: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.value)
    figures = {}
    for key, names, combine in (("waiting", WAITING, sum), ("running", RUNNING, sum),
                                ("kv_cache_usage", KV_CACHE_USAGE, max)):
        for name in names:
            if name in samples:
                figures[key] = float(combine(samples[name]))
                break
    return figures


class LoadScraper:
    """Scrapes the live endpoints' /metrics while the table's method needs load reports."""

    def __init__(self, endpoints: EndpointRegistry) -> None:
        self._endpoints = endpoints

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Scrape every `SCRAPE_PERIOD_S` until cancelled."""
        while True:
            table = self._endpoints.table
            if table is not None and table.method in METHODS_USING_LOAD:
                await asyncio.gather(*(self._scrape(session, s) for s in self._endpoints.live))
            await asyncio.sleep(SCRAPE_PERIOD_S)

    async def _scrape(self, session: aiohttp.ClientSession, state: EndpointState) -> None:
        in_flight = state.in_flight
        try:
            async with session.get(state.url + "/metrics", timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)) as r:
                if r.status != 200:
                    return _forget(state)
                figures = parse_load(await r.text())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("no load report from %s: %s", state.id, exc)
            return _forget(state)
        if "running" not in figures:
            return _forget(state)
        state.reported_waiting = figures.get("waiting", 0.0)
        state.reported_running = figures["running"]
        state.reported_kv_cache_usage = figures.get("kv_cache_usage")
        state.in_flight_at_report = in_flight


def _forget(state: EndpointState) -> None:
    state.reported_waiting = state.reported_running = state.reported_kv_cache_usage = None
