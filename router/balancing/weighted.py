"""weighted: smooth weighted round-robin, as NGINX does it.

Each pick adds every endpoint's weight to its running score, takes the endpoint with the highest
score, and subtracts the total weight from the winner. Over any window of `total weight` picks each
endpoint is chosen exactly `weight` times, interleaved rather than in bursts (weights 5,1,1 give
a a b a c a a, not a a a a a b c). The split does not depend on the order of the list: ties go to the
smaller id. O(n) per pick; NGINX accepts the same for its upstream groups.
Source: NGINX `ngx_http_upstream_get_peer` (src/http/ngx_http_upstream_round_robin.c).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from maitred.router.balancing import register
from maitred.router.endpoints import EndpointState


@register
class Weighted:
    """Smooth weighted round-robin over the endpoints' `weight` (0 never takes traffic)."""

    name = "weighted"

    def __init__(self, rng: random.Random, clock: Callable[[], float]) -> None:
        # Running scores by endpoint id, so that they survive table versions.
        self._score: dict[str, int] = {}

    def pick(self, endpoints: Sequence[EndpointState], request: Any = None) -> EndpointState:
        """The endpoint whose running score is highest after adding each endpoint's weight."""
        score = self._score
        if len(score) > 4 * len(endpoints) + 16:
            self._score = score = {e.id: score.get(e.id, 0) for e in endpoints}
        best: EndpointState | None = None
        best_score = 0
        total = 0
        for endpoint in endpoints:
            if endpoint.weight <= 0:
                continue
            current = score.get(endpoint.id, 0) + endpoint.weight
            score[endpoint.id] = current
            total += endpoint.weight
            if best is None or current > best_score or (current == best_score and endpoint.id < best.id):
                best, best_score = endpoint, current
        if best is None:
            raise ValueError("weighted: no endpoint with a weight above zero")
        score[best.id] = best_score - total
        return best
