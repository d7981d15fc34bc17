"""Balancing methods: each picks one endpoint for a request from the live endpoints.

One method per module, registered under the name a routing table uses. The interface is one
method, :meth:`Balancer.pick`; per-endpoint state (in-flight, latency) lives in
:class:`~maitred.router.endpoints.EndpointState`, which the methods only read. Randomness and time
are injected, so that methods can be tested deterministically (as Envoy's balancers take a random
generator and a time source).
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

from maitred.router.endpoints import EndpointState


class Balancer(Protocol):
    """Picks one endpoint for a request."""

    name: ClassVar[str]

    def pick(self, endpoints: Sequence[EndpointState], request: Any = None) -> EndpointState:
        """Choose from `endpoints` (live, non-empty, never weight 0); `request` is the parsed body or None."""
        ...


_REGISTRY: dict[str, type] = {}
_MODULES = ("round_robin", "least_connections", "weighted", "least_response_time", "least_load", "prefix_affinity")


def register(cls: type) -> type:
    """Class decorator: make a balancer available under its `name`."""
    _REGISTRY[cls.name] = cls
    return cls


def make_balancer(
    name: str, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic
) -> Balancer:
    """Build the balancer registered as `name`. Raises KeyError for an unknown name."""
    for module in _MODULES:  # each registers itself on first import; later imports are dict lookups
        importlib.import_module(f"{__name__}.{module}")
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown balancing method {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
    return cls(rng=rng or random.Random(), clock=clock)
