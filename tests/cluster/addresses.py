"""Pod IPs on loopback: each pod of the test kubelet gets its own 127.x.y.z.

Linux routes all of 127.0.0.0/8 to the loopback device, so any of these
addresses can be bound with no setup. Pods start at 127.0.1.1 (127.0.0.x is
left to the router tests) and addresses are not reused within a session, so
a stale endpoint never reaches a new pod by accident.
"""

from __future__ import annotations

import ipaddress
import threading

from . import procs


class AddressPool:
    """Hands out loopback addresses, upward from ``first``.

    ``take(port)`` skips any address whose ``port`` is already bound, which is
    what happens when two test sessions run on one machine at once.
    Raises RuntimeError past 127.255.255.254.
    """

    def __init__(self, first: str = "127.0.1.1") -> None:
        self._next = int(ipaddress.IPv4Address(first))
        self._last = int(ipaddress.IPv4Address("127.255.255.254"))
        self._lock = threading.Lock()

    def take(self, port: int) -> str:
        """A fresh address on which ``port`` is free (dotted quad)."""
        with self._lock:
            while self._next <= self._last:
                address = ipaddress.IPv4Address(self._next)
                self._next += 1
                if address.packed[-1] in (0, 255):
                    continue  # x.y.z.0 and .255 look like network/broadcast to humans
                if procs.port_is_free(str(address), port):
                    return str(address)
        raise RuntimeError("loopback pod addresses exhausted")


# One pool per test session, shared by every kubelet, so no two pods collide.
POOL = AddressPool()
