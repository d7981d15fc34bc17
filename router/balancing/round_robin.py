"""round-robin: each live endpoint in turn. O(1) per pick."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from maitred.router.balancing import register
from maitred.router.endpoints import EndpointState


@register
class RoundRobin:
    """Cycles through the live endpoints; starts at a random offset so that router replicas differ."""

    name = "round-robin"

    def __init__(self, rng: random.Random, clock: Callable[[], float]) -> None:
        self._next = rng.randrange(1 << 16)

    def pick(self, endpoints: Sequence[EndpointState], request: Any = None) -> EndpointState:
        """The next endpoint in turn."""
        self._next += 1
        return endpoints[self._next % len(endpoints)]
