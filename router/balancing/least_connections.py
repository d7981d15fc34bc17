"""least-connections: the endpoint with the fewest requests in flight.

Ties are broken by rotation: the scan starts one place further each pick, so equally loaded
endpoints share the traffic instead of the first one taking it all. O(n) per pick, which is
cheaper than keeping a heap in step for the handful of replicas a pool has.
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
        self._start = rng.randrange(1 << 16)

    def pick(self, endpoints: Sequence[EndpointState], request: Any = None) -> EndpointState:
        """The endpoint with the fewest in flight; among equals, the first from a rotating start."""
        n = len(endpoints)
        self._start += 1
        best = endpoints[self._start % n]
        for i in range(1, n):
            candidate = endpoints[(self._start + i) % n]
            if candidate.in_flight < best.in_flight:
                best = candidate
        return best
