"""`create_app(config)`: the simulator as an ASGI app.

The app is a Starlette application whose hot paths (inference, /health, /v1/models) are dispatched before
Starlette's middleware and router: a dict lookup on the path, then a raw-ASGI handler. That keeps the
zero-latency mode cheap for router benchmarks, and hands uvicorn's own `send` to the handlers (the
connection-reset fault needs it). The control paths (admin, metrics) go through Starlette.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette

from maitred.sim import control
from maitred.sim.asgi import Receive, Scope, Send, send_error, send_response
from maitred.sim.config import SimConfig
from maitred.sim.engine import Engine
from maitred.sim.faults import Faults
from maitred.sim.handlers import InferenceHandlers
from maitred.sim.listener import ListenerControl
from maitred.sim.metrics import SimMetrics
from maitred.sim.prefix_cache import PrefixCache
from maitred.sim.protocol import ApiError
from maitred.sim.responses import models_body
from maitred.sim.timing import StepCost
from maitred.sim.tokens import TextGenerator

_UNHEALTHY = ApiError(503, "unhealthy (injected fault)", type="service_unavailable", code=503)


@dataclass
class SimState:
    """Everything one simulator app owns (built once per app; no globals)."""

    config: SimConfig
    engine: Engine
    metrics: SimMetrics
    faults: Faults
    generator: TextGenerator
    listener: ListenerControl
    models_body: bytes


def build_state(config: SimConfig) -> SimState:
    """Build the engine, metrics, faults and text generator of one app from its config."""
    metrics = SimMetrics(config.models[0])
    engine = Engine(
        max_num_seqs=config.max_num_seqs,
        cost=StepCost.from_config(config),
        cache=PrefixCache(config.kv_cache_blocks, config.block_size),
        observer=metrics,
    )
    metrics.attach(engine)
    listener = ListenerControl()
    return SimState(
        config=config,
        engine=engine,
        metrics=metrics,
        faults=Faults(config.faults, config.seed, listener),
        generator=TextGenerator(config.seed),
        listener=listener,
        models_body=models_body(config.models, config.max_model_len),
    )


class SimApp(Starlette):
    """The simulator's ASGI app; `app.state.sim` is its SimState."""

    def __init__(self, state: SimState) -> None:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            state.engine.start()
            try:
                yield
            finally:
                await state.engine.aclose()

        super().__init__(
            routes=control.ROUTES,
            exception_handlers={404: control.http_error, 405: control.http_error},
            lifespan=lifespan,
        )
        self.state.sim = state
        inference = InferenceHandlers(state)
        # path -> (method, raw ASGI handler)
        self._fast = {
            "/v1/chat/completions": ("POST", inference.chat),
            "/v1/completions": ("POST", inference.completions),
            "/v1/embeddings": ("POST", inference.embeddings),
            "/v1/models": ("GET", self._models),
            "/health": ("GET", self._health),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self._fast.get(scope["path"])
            if route is not None:
                method, handler = route
                if scope["method"] == method:
                    await handler(scope, receive, send)
                else:
                    message = f"{scope['method']} {scope['path']}: Method Not Allowed (use {method})"
                    await send_error(send, ApiError(405, message))
                return
        await super().__call__(scope, receive, send)

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_response(send, 200, self.state.sim.models_body)

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: SimState = self.state.sim
        if state.faults.config.unhealthy:
            await send_error(send, _UNHEALTHY)
        else:
            await send_response(send, 200, b"", content_type=b"text/plain")


def create_app(config: SimConfig | None = None) -> SimApp:
    """Build a simulator app from `config` (defaults: `SimConfig()`).

    Serve it with any ASGI server; the engine's loop starts with the lifespan or on the first request.
    The `refuse_connections` fault also needs `app.state.sim.listener.attach(uvicorn_server)`
    (`maitred.sim.serve.serve` does it).
    """
    return SimApp(build_state(config or SimConfig()))
