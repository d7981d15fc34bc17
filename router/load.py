"""Load reports: the replicas' own queue and KV-cache figures, scraped from their Prometheus /metrics.

The router's in-flight count sees only its own requests; a replica's queue also holds those of other
router replicas and of clients that bypass the router. For methods that weigh that load
(`least-load`, and the load bound of `prefix-affinity` and `session-affinity`), and for a table with
`scrapeLoad` (an autoscaler reads the pool's load: `/debug/load` and the `maitred_pool_*` metrics),
:class:`LoadScraper` reads each live endpoint's /metrics every `SCRAPE_PERIOD_S`
and stores the figures on its :class:`~maitred.router.endpoints.EndpointState`,
with the router's in-flight count at that moment, so that a balancer can add the requests it sent
since (the report is already stale by then). :func:`pool_load` sums them up for the pool.

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
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from maitred.router.endpoints import EndpointRegistry, EndpointState, monotonic_s

log = logging.getLogger("maitred.router.load")

SCRAPE_PERIOD_S = 0.25
SCRAPE_TIMEOUT_S = 1.0
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size")
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs", "tgi_batch_current_size")
KV_CACHE_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
#: Methods that read load reports; for the others nothing is scraped (unless the table asks: `scrapeLoad`).
METHODS_USING_LOAD = frozenset({"least-load", "prefix-affinity", "session-affinity"})
#: A report older than this (s) no longer counts in :func:`pool_load`: a few scrape periods, and one
#: scrape that waited its whole timeout for a slow endpoint.
REPORT_MAX_AGE_S = SCRAPE_TIMEOUT_S + 4 * SCRAPE_PERIOD_S


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


def wants_load(table) -> bool:
    """True if the load reports are scraped for `table` (a RoutingTable, or None: no)."""
    return table is not None and (table.scrape_load or table.method in METHODS_USING_LOAD)


@dataclass(frozen=True, slots=True)
class PoolLoad:
    """The pool's load as one router sees it: endpoint counts, and what the fresh reports add up to.

    `reporting`: live endpoints with a report at most `REPORT_MAX_AGE_S` old. `waiting`, `running`:
    sums of their reported requests (None if none reports). `kv_cache_usage`: the mean over those that
    report it, 0..1 (None if none does). `in_flight`: requests the router has open to the endpoints.
    """

    endpoints: int
    live: int
    reporting: int
    waiting: float | None
    running: float | None
    kv_cache_usage: float | None
    in_flight: int


def pool_load(states: Iterable[EndpointState], now_s: float | None = None) -> PoolLoad:
    """Sum up the endpoints' latest load reports (`now_s`: :func:`monotonic_s`, to judge their age)."""
    now_s = monotonic_s() if now_s is None else now_s
    endpoints = live = reporting = in_flight = 0
    waiting = running = kv_sum = 0.0
    kv_count = 0
    for state in states:
        endpoints += 1
        in_flight += state.in_flight
        if not state.live:
            continue
        live += 1
        at, state_running = state.reported_at, state.reported_running
        if at is None or state_running is None or now_s - at > REPORT_MAX_AGE_S:
            continue
        reporting += 1
        waiting += state.reported_waiting or 0.0
        running += state_running
        kv = state.reported_kv_cache_usage
        if kv is not None:
            kv_sum += kv
            kv_count += 1
    return PoolLoad(endpoints, live, reporting, waiting if reporting else None, running if reporting else None,
                    kv_sum / kv_count if kv_count else None, in_flight)


class LoadScraper:
    """Scrapes the live endpoints' /metrics while the table needs load reports (:func:`wants_load`)."""

    def __init__(self, endpoints: EndpointRegistry) -> None:
        self._endpoints = endpoints

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Scrape every `SCRAPE_PERIOD_S` until cancelled."""
        while True:
            if wants_load(self._endpoints.table):
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
        state.reported_at = monotonic_s()


def _forget(state: EndpointState) -> None:
    state.reported_waiting = state.reported_running = state.reported_kv_cache_usage = state.reported_at = None
