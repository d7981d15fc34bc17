"""least-response-time: peak-EWMA latency x (in-flight + 1), over two random choices.

Cost of an endpoint = latency EWMA (ms, peak-sensitive, see
:meth:`~maitred.router.endpoints.EndpointState.observe_latency`) x (requests in flight + 1), the
cost function of Finagle's and Linkerd's peak-EWMA balancer and Envoy's `peak_ewma`. Comparing two
endpoints drawn at random (power of two choices; Mitzenmacher, "The Power of Two Choices in
Randomized Load Balancing", 2001) rather than scanning all keeps picks O(1) and avoids a herd
rushing to the one endpoint that looked best a moment ago.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from maitred.router.balancing import register
from maitred.router.endpoints import EndpointState


def cost(endpoint: EndpointState) -> float:
    """Expected wait on `endpoint`, in ms x requests: latency EWMA x (in-flight + 1)."""
    return endpoint.latency_ewma_ms * (endpoint.in_flight + 1)


@register
class LeastResponseTime:
    """Power of two choices on peak-EWMA cost."""

    name = "least-response-time"

    def __init__(self, rng: random.Random, clock: Callable[[], float]) -> None:
        self._rng = rng

    def pick(self, endpoints: Sequence[EndpointState], request: Any = None) -> EndpointState:
        """The cheaper of two distinct endpoints drawn at random (the only one, if there is one)."""
        n = len(endpoints)
        if n == 1:
            return endpoints[0]
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = endpoints[i], endpoints[j]
        return a if cost(a) <= cost(b) else b
