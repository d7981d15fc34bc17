"""Serving the router's ASGI app with uvicorn: one process, or one worker of several.

The options are the same in both cases; only the listening sockets differ: a worker binds its own
with SO_REUSEPORT, so that the kernel spreads new connections evenly over the workers (a shared
accept queue lets the least busy worker win every accept, and a burst of connections can all land on
one of them). The traffic port and the admin port (if any) are served by the same uvicorn server;
the app tells them apart by the port a request came in on.
"""

from __future__ import annotations

import socket

import uvicorn


def uvicorn_config(app, log_level: str, drain_seconds: float) -> uvicorn.Config:
    """The uvicorn settings of the router's hot path (uvloop, httptools, no per-request extras).

    On SIGTERM uvicorn stops listening (so readiness probes fail and the pod leaves its Service), lets
    the requests in flight finish for at most `drain_seconds` (s), then cancels what is left.
    """
    # proxy_headers=False: the proxy appends the peer's address to X-Forwarded-For itself. With
    # uvicorn's default, a peer on 127.0.0.1 (a sidecar) had its X-Forwarded-For taken as the
    # client, so the router appended the client twice and lost the hop.
    # log_config=None: uvicorn's lines go through the root logger, in the router's --log-format.
    # ws="none": the router serves no WebSocket, and with uvicorn's default a request asking to upgrade to
    # one went to the websockets library, which left it unanswered when it had a body (a client could hold
    # connections open that way); now it is answered over HTTP/1.1, as RFC 9110 §7.8 allows.
    return uvicorn.Config(app, loop="uvloop", http="httptools", ws="none", lifespan="on", access_log=False,
                          server_header=False, date_header=False, log_level=log_level, backlog=4096,
                          timeout_keep_alive=75, proxy_headers=False, log_config=None,
                          timeout_graceful_shutdown=drain_seconds)


def listen_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to `host`:`port` (IPv4 or IPv6), not yet listening. Raises OSError."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, calling `on_listening()` once its sockets listen and `on_draining()` when it starts
    to shut down (before it waits for the open requests)."""

    def __init__(self, config: uvicorn.Config, on_listening=None, on_draining=None) -> None:
        super().__init__(config)
        self._on_listening, self._on_draining = on_listening, on_draining

    async def shutdown(self, sockets=None) -> None:
        if self._on_draining is not None:
            self._on_draining()
        await super().shutdown(sockets=sockets)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_listening is not None:
            self._on_listening()


def serve(app, socks: list[socket.socket], log_level: str, drain_seconds: float, on_listening=None,
          on_draining=None) -> None:
    """Run `app` on `socks` until SIGTERM or SIGINT, then drain open requests for at most `drain_seconds` (s).

    `on_listening()`, if given, is called once the sockets listen (after the app's start-up);
    `on_draining()` when the drain begins.
    """
    _Server(uvicorn_config(app, log_level, drain_seconds), on_listening, on_draining).run(sockets=socks)
