"""Balancing methods: each picks one endpoint for a request from the live endpoints.

One method per module, registered under the name a routing table uses. The interface is one
method, :meth:`Balancer.pick`; per-endpoint state (in-flight, latency) lives in
:class:`~maitred.router.endpoints.EndpointState`, which the methods only read, and what a method may
read of the request is a :class:`RequestView`. Randomness and time are injected, so that methods can be
tested deterministically (as Envoy's balancers take a random generator and a time source).
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

from maitred.router.endpoints import EndpointState
from maitred.router.table import Affinity

_DEFAULT_AFFINITY = Affinity()


class RequestView:
    """What a balancer may read of one request; built once per request, read only by the methods that need it.

    `body`: the parsed JSON body on the model paths (chat, completions, embeddings), else None.
    `headers`: the ASGI headers, ``[(lower-case name, value), ...]`` as bytes, not copied.
    `affinity`: the table's :class:`~maitred.router.table.Affinity` settings, passed per request so that a
    new table version takes effect without rebuilding the balancer.
    """

    __slots__ = ("body", "headers", "affinity")

    def __init__(self, body: Any = None, headers: Sequence[tuple[bytes, bytes]] = (),
                 affinity: Affinity = _DEFAULT_AFFINITY) -> None:
        self.body, self.headers, self.affinity = body, headers, affinity

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower-case bytes), or None. O(headers)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Balancer(Protocol):
    """Picks one endpoint for a request."""

    name: ClassVar[str]

    def pick(self, endpoints: Sequence[EndpointState], request: RequestView | None = None) -> EndpointState:
        """Choose from `endpoints` (live, non-empty, never weight 0) for `request` (None: nothing known of it)."""
        ...


_REGISTRY: dict[str, type] = {}
_MODULES = ("round_robin", "least_connections", "weighted", "least_response_time", "least_load", "prefix_affinity",
            "session_affinity")


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
