"""Fault injection state and decisions (the admin endpoint changes it at run time).

The decisions are pure functions of the current `FaultConfig`, a seeded random generator and the engine's
queue, so tests get the same error pattern for the same seed.
"""

from __future__ import annotations

import random
from typing import Any

from maitred.sim.config import FaultConfig
from maitred.sim.engine import Engine
from maitred.sim.listener import ListenerControl
from maitred.sim.protocol import ApiError

_STATUS_TYPES = {429: "rate_limit_error", 503: "service_unavailable"}


class Faults:
    """The current faults; `update()` merges a patch the way POST /admin/faults does."""

    def __init__(self, config: FaultConfig, seed: int, listener: ListenerControl) -> None:
        self.config = config.model_copy()
        self._rng = random.Random(seed)
        self._listener = listener

    def update(self, patch: dict[str, Any]) -> FaultConfig:
        """Merge `patch` (FaultConfig fields) into the faults and return the result.

        Raises pydantic.ValidationError for unknown fields or bad values, RuntimeError if `refuse_connections`
        is asked for but no listening server is attached, or asked to be undone. Nothing changes when it raises.
        """
        merged = FaultConfig.model_validate({**self.config.model_dump(), **patch})
        if self.config.refuse_connections and not merged.refuse_connections:
            raise RuntimeError("the listening sockets are closed for good; restart the simulator")
        if merged.refuse_connections and not self.config.refuse_connections:
            self._listener.stop_accepting()
        self.config = merged
        return merged

    def injected_error(self) -> ApiError | None:
        """The error to answer this inference request with, drawn with probability `error_rate`."""
        config = self.config
        if config.error_rate <= 0.0 or self._rng.random() >= config.error_rate:
            return None
        status = config.error_status
        retry_after = config.retry_after_s if status in (429, 503) else None
        return ApiError(
            status,
            f"injected fault: error_rate={config.error_rate} answers {status}",
            type=_STATUS_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            code=status,
            retry_after_s=retry_after,
        )

    def overloaded(self, engine: Engine) -> ApiError | None:
        """503 with Retry-After if this request would wait while `max_waiting` requests already wait."""
        limit = self.config.max_waiting
        if limit is None or engine.num_queued_beyond_slots < limit:
            return None
        return ApiError(
            503,
            f"the server is overloaded: {engine.num_waiting} requests are waiting (max_waiting={limit})",
            type="service_unavailable",
            code=503,
            retry_after_s=self.config.retry_after_s,
        )
