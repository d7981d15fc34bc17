"""How fast the operator notices a fault and recovers: every timeout, backoff and period, in one place.

The faults, and what bounds the operator's answer to each (all times in seconds):

- **The API server restarts or is unreachable.** Every request and watch is retried after a short backoff
  that doubles from 0.1 to at most :data:`RETRY_CAP_S` (1 s) and never gives up, so the operator is back
  within about a second of the API server (kopf's default backoffs, 1, 1, 2, 3, 5, 8, 13, 21 s, left it
  up to 21 s behind, then gave up on the request). A reconcile that failed on the network is retried after
  0.2 s doubling to :data:`TRANSIENT_RETRY_CAP_S`; every pool is reconciled again every
  :data:`RESYNC_S` anyway, and the pod cache is listed again every :data:`RELIST_S`.
- **A connection freezes** (half-open: no data, no FIN or RST, as when a NAT entry or a load balancer
  drops it). The API server ends each watch after :data:`WATCH_SERVER_TIMEOUT_S` and the operator then
  watches again from where it was; a watch still open after :data:`WATCH_CLIENT_TIMEOUT_S` is dead, so it
  is cut and replaced on a new connection, and every pooled connection is dropped with it. A plain
  request that gets no byte for :data:`READ_TIMEOUT_S` is tried once more on a new connection. TCP
  keep-alive (:func:`keepalive_socket`) finds a peer that vanished within about
  :data:`KEEPALIVE_IDLE_S` + :data:`KEEPALIVE_PROBES` x :data:`KEEPALIVE_INTERVAL_S` even on a connection
  that is idle.
- **The active replica crashes** (SIGKILL: it cannot say goodbye). Its kopf peering entry lives
  :data:`PEERING_LIFETIME_S` after its last keep-alive (kopf sends one every 1 to 5 s with that lifetime),
  so a standby takes over within about 11 s (kopf's default lifetime of 60 s made it a minute). A replica
  started later outranks the ones started before it (:func:`newest_wins_priority`), so an operator restarted
  in place acts at once rather than waiting for its own dead entry to expire.
"""

from __future__ import annotations

import itertools
import random
import socket
import time
from collections.abc import Iterator

#: Backoff between retries of a failed request or watch: from the first, doubling, to the cap, forever.
RETRY_FIRST_S = 0.1
RETRY_CAP_S = 1.0
#: Retry of a reconcile that failed on the network, a timeout or a 5xx/429/409 answer: doubling up to this.
TRANSIENT_RETRY_FIRST_S = 0.2
TRANSIENT_RETRY_CAP_S = 2.0
#: Every pool is reconciled again this often with no event (give or take 10 %).
RESYNC_S = 60.0


class Backoff:
    """Delays (s) from `first`, doubling, up to `cap`, without end; iterable any number of times.

    kopf takes a sized iterable of backoffs as a promise to give up after the last one; this one has no
    length, so kopf retries a failed request until it succeeds.
    """

    def __init__(self, first: float = RETRY_FIRST_S, cap: float = RETRY_CAP_S) -> None:
        self.first, self.cap = first, cap

    def __iter__(self) -> Iterator[float]:
        return (self.delay(n) for n in itertools.count(1))

    def delay(self, failures: int) -> float:
        """The delay before the next try after `failures` failures in a row (1 for the first failure)."""
        return min(self.cap, self.first * 2 ** min(max(failures - 1, 0), 30))

    def __repr__(self) -> str:
        return f"Backoff({self.first} s doubling to {self.cap} s, without end)"


#: The pod cache is listed again this often, whatever its watch said.
RELIST_S = 300.0
#: The page size of every LIST, so that each request stays small and well within its timeout.
LIST_CHUNK = 500

#: A watch's timeoutSeconds: the API server ends the watch then, and the operator watches again from the
#: last resourceVersion it saw (the API server sends a bookmark 2 s before the end, so that one is current).
WATCH_SERVER_TIMEOUT_S = 6
#: A watch still open this long after it started has stopped hearing from the API server: it is cut.
WATCH_CLIENT_TIMEOUT_S = 10.0
#: To open a TCP connection (and the TLS handshake) to the API server.
CONNECT_TIMEOUT_S = 3.0
#: A plain request that receives no byte for this long is given up (and tried once more on a new connection).
READ_TIMEOUT_S = 5.0
#: A plain request, in all (the operator's reads and writes are single objects; lists come in pages).
REQUEST_TIMEOUT_S = 20.0
#: One of kopf's own requests, in all: they are small (peering keep-alives, pages of LIST_CHUNK objects), and
#: a keep-alive stuck on a frozen connection must be tried again well within the peering lifetime.
KOPF_REQUEST_TIMEOUT_S = 5.0
#: TCP keep-alive on every connection to the API server: the first probe after this much silence...
KEEPALIVE_IDLE_S = 5
#: ...then one probe every this many seconds...
KEEPALIVE_INTERVAL_S = 2
#: ...and the connection is dead after this many unanswered probes.
KEEPALIVE_PROBES = 3
#: Data sent but not acknowledged for this long (ms) ends the connection too (TCP_USER_TIMEOUT).
TCP_USER_TIMEOUT_MS = 10_000


def keepalive_socket(addr_info) -> socket.socket:
    """A TCP socket with keep-alive probes and a user timeout (aiohttp's ``socket_factory``).

    `addr_info` is one entry of :func:`socket.getaddrinfo`. Options the platform lacks are left out.
    """
    family, type_, proto = addr_info[0], addr_info[1], addr_info[2]
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES), ("TCP_USER_TIMEOUT", TCP_USER_TIMEOUT_MS)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
    return sock


#: How long a replica's kopf peering entry counts as alive after its last keep-alive.
PEERING_LIFETIME_S = 10


def newest_wins_priority(now_s: float | None = None) -> int:
    """A peering priority from the start time: a replica started later outranks those started before it.

    Milliseconds since the epoch times 1,000, plus a random 0..999 so that two replicas started in the same
    millisecond do not tie (kopf pauses every replica of a tie). About 1.8e15: below 2**53, so exact as a
    JSON number in any client.
    """
    now_s = time.time() if now_s is None else now_s
    return int(now_s * 1000) * 1000 + random.randint(0, 999)


def configure_kopf(settings) -> None:
    """Set kopf's timeouts, backoffs and peering lifetime to the values above (`settings`: kopf.OperatorSettings)."""
    settings.networking.error_backoffs = Backoff()
    settings.watching.reconnect_backoff = RETRY_FIRST_S
    settings.networking.request_timeout = KOPF_REQUEST_TIMEOUT_S
    settings.networking.connect_timeout = CONNECT_TIMEOUT_S
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT_S
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT_S
    settings.watching.connect_timeout = CONNECT_TIMEOUT_S
    settings.watching.inactivity_timeout = WATCH_CLIENT_TIMEOUT_S
    settings.watching.chunk_size = LIST_CHUNK
    settings.peering.lifetime = PEERING_LIFETIME_S
