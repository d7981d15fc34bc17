"""least-connections: the endpoint with the fewest requests in flight.

Ties are broken by rotation among the tied endpoints only: each pick takes the next of them in
turn, so equally loaded endpoints share the traffic evenly. (Rotating the start of the scan
instead is not even: with a, b idle and c busy, a scan starting at c lands on a, so a got two
picks in three.) O(n) per pick, which is cheaper than keeping a heap in step for the handful of
replicas a pool has.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from maitred.router.balancing import register
from maitred.router.endpoints import EndpointState


@register
class LeastConnections:
    """Fewest in-flight requests wins (NGINX `least_conn`, Envoy LEAST_REQUEST with all hosts)."""

    name = "least-connections"

    def __init__(self, rng: random.Random, clock: Callable[[], float]) -> None:
        # A random first turn, so that router replicas do not all send their first request to one endpoint.
        self._turn = rng.randrange(1 << 16)

    def pick(self, endpoints: Sequence[EndpointState], request: Any = None) -> EndpointState:
        """The endpoint with the fewest in flight; among equals, each in turn."""
        # One read of each count: with several workers they move under our feet (another process's cells).
        counts = [e.in_flight for e in endpoints]
        fewest = min(counts)
        tied = [e for e, n in zip(endpoints, counts) if n == fewest]
        self._turn += 1
        return tied[self._turn % len(tied)]
