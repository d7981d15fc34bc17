"""Run a simulator app under uvicorn (uvloop, httptools, no access log), as `maitred sim` does."""

from __future__ import annotations

import uvicorn

from maitred.sim.app import create_app
from maitred.sim.config import SimConfig


def build_server(config: SimConfig, **uvicorn_options) -> uvicorn.Server:
    """A uvicorn Server for a new app of `config`, attached to the app's listener control.

    `uvicorn_options`: more uvicorn.Config options (`maitred sim` passes log_config=None, so that uvicorn
    logs through the root logger in its --log-format).
    """
    app = create_app(config)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=config.log_level,
        # Streams in flight get a few seconds to finish on SIGTERM; then they are cut.
        timeout_graceful_shutdown=5,
        **uvicorn_options,
    )
    server = uvicorn.Server(uv_config)
    app.state.sim.listener.attach(server)
    return server


def serve(config: SimConfig, **uvicorn_options) -> None:
    """Serve until SIGINT/SIGTERM (blocking)."""
    build_server(config, **uvicorn_options).run()
