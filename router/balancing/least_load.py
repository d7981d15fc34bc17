"""least-load: the replica with the least work queued and running, by its own report.

Load of an endpoint = requests waiting + requests running, as the replica last reported them on its
/metrics (:mod:`maitred.router.load`), plus the requests this router sent it since that report
(in-flight now − in-flight then), so that a burst between two scrapes does not all land on the
replica that looked idle. KV-cache usage (0..1) breaks near-ties: a replica close to a full cache
is about to queue. An endpoint with no report yet counts its in-flight requests alone.

This is the queue and KV-cache scoring of the Gateway API Inference Extension's endpoint picker
(llm-d) and vLLM production-stack's load-aware routing, reduced to one cost. O(n) per pick.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from maitred.router.balancing import register
from maitred.router.endpoints import EndpointState

#: How much a full KV cache weighs, in queued requests.
KV_CACHE_WEIGHT = 1.0


def queued(endpoint: EndpointState) -> float:
    """Estimated requests waiting and running on `endpoint` now: its last report plus what was sent since.

    Never below this router's own in-flight count (a report taken just before a burst may show less).
    Without a report, the in-flight count alone.
    """
    in_flight = endpoint.in_flight  # read once: with several workers it is a sum of cells that keep moving
    running = endpoint.reported_running
    if running is None:
        return float(in_flight)
    reported = (endpoint.reported_waiting or 0.0) + running + in_flight - endpoint.in_flight_at_report
    return max(reported, float(in_flight))


def load(endpoint: EndpointState) -> float:
    """Estimated load of `endpoint` now, in requests: :func:`queued`, plus KV-cache usage to break near-ties."""
    return queued(endpoint) + KV_CACHE_WEIGHT * (endpoint.reported_kv_cache_usage or 0.0)


@register
class LeastLoad:
    """Lowest reported load wins; ties go to each tied endpoint in turn."""

    name = "least-load"

    def __init__(self, rng: random.Random, clock: Callable[[], float]) -> None:
        self._turn = rng.randrange(1 << 16)

    def pick(self, endpoints: Sequence[EndpointState], request: Any = None) -> EndpointState:
        """The endpoint with the least estimated load."""
        loads = [load(e) for e in endpoints]
        least = min(loads)
        tied = [e for e, value in zip(endpoints, loads) if value == least]
        self._turn += 1
        return tied[self._turn % len(tied)]
