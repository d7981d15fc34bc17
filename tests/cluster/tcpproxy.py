"""A TCP proxy that can freeze its connections, for tests of half-open connections.

A frozen connection stops forwarding in both directions but stays open: no FIN, no RST, and the proxy's
kernel still acknowledges what arrives (and TCP keep-alive probes), as when a NAT entry or a load
balancer on the way dropped the connection's state. Connections opened after :meth:`freeze` forward as
usual, so a client that gives up on a frozen connection and opens a new one gets through.

    with FreezableProxy("127.0.0.1", 6443) as proxy:   # listens on 127.0.0.1:<proxy.port>
        ...                                            # clients connect to proxy.address
        proxy.freeze()                                 # every connection open now hangs
        proxy.connections()                            # (open, frozen)

Bytes pass through untouched (TLS too: the proxy never looks inside), one thread per direction.
"""

from __future__ import annotations

import select
import socket
import threading


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.frozen = threading.Event()
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            try:
                sock.close()
            except OSError:
                pass


class FreezableProxy:
    """Forwards 127.0.0.1:`port` (a free one) to `target_host`:`target_port`. Start, then stop it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> "FreezableProxy":
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        """Close the listener and every connection (idempotent)."""
        self._stopping.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close()
        for thread in self._threads:
            thread.join(timeout=2)

    def __enter__(self) -> "FreezableProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def freeze(self) -> int:
        """Freeze every connection open now; return how many."""
        with self._lock:
            live = [p for p in self._pairs if not p.closed.is_set()]
        for pair in live:
            pair.frozen.set()
        return len(live)

    def connections(self) -> tuple[int, int]:
        """(open connections, frozen ones among them)."""
        with self._lock:
            live = [p for p in self._pairs if not p.closed.is_set()]
        return len(live), sum(p.frozen.is_set() for p in live)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"proxy:{self.port}")
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()  # as an unreachable target would: the client sees the connection end
                continue
            upstream.settimeout(None)
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs = [p for p in self._pairs if not p.closed.is_set()] + [pair]
            self._spawn(self._pump, pair, client, upstream)
            self._spawn(self._pump, pair, upstream, client)

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        while not pair.closed.is_set() and not self._stopping.is_set():
            if pair.frozen.is_set():
                pair.closed.wait(0.2)  # hold the connection open, forward nothing, read nothing
                continue
            try:
                readable, _, _ = select.select([src], [], [], 0.2)
                if not readable:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                if pair.frozen.is_set():
                    continue  # frozen while this was in flight: it never arrives
                dst.sendall(data)
            except OSError:
                break
        if not pair.frozen.is_set():
            pair.close()
