"""Control of the server's listening sockets (the `refuse_connections` fault).

The app cannot reach its server through ASGI, so whoever runs the server attaches it here (`maitred sim` does,
see `maitred.sim.serve`). Closing uvicorn's asyncio servers closes the listening sockets: new connects are
refused by the kernel while the process lives on.
"""

from __future__ import annotations

from typing import Any


class ListenerControl:
    """Holds the running uvicorn `Server`, once attached."""

    def __init__(self) -> None:
        self._server: Any = None

    def attach(self, server: Any) -> None:
        """Attach a `uvicorn.Server` (before or after it starts)."""
        self._server = server

    @property
    def attached(self) -> bool:
        return self._server is not None

    def stop_accepting(self) -> None:
        """Close the listening sockets, then ask every open connection to close after its current request.

        Raises RuntimeError if no server is attached or it has not started listening.
        """
        servers = getattr(self._server, "servers", None)
        if not servers:
            raise RuntimeError("no listening server is attached (run the simulator with `maitred sim`)")
        for server in servers:
            server.close()
        # Idle keep-alive connections close now and busy ones after their response (uvicorn's graceful
        # shutdown), so that clients with pooled connections see the refusal too.
        for connection in list(self._server.server_state.connections):
            connection.shutdown()
