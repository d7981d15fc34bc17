"""Holding requests while a pool scales from zero (the routing table's `coldStart`).

A pool scaled to 0 replicas has no live endpoint; without `coldStart` a request then gets 503 at once.
With it, the request waits for an endpoint to turn live (the operator scales the pool up on the load
this router reports, `held` included), then is routed as usual, streams too. Bounds: at most
`maxRequests` held at once in one router (all its worker processes), each at most `holdSeconds`.

Waking is by event, not by polling per request: whatever may have made an endpoint live calls
:meth:`ColdStartHold.wake`, once for all the held requests of the process: a table applied
(:meth:`~maitred.router.core.Router.apply_table`), a verdict turned healthy in this process, and in
a worker of a multi-process router a health verdict the supervisor changed (seen by
:func:`~maitred.router.workers.follow_tables` within its 50 ms period). Each woken request looks at
the live set again, and waits on if it is still empty.

The count of held requests lives in the process (`held_here`) and, with several workers, in this
worker's cell of the shared block, so that `held` (the router's total) is the sum over workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: Retry-After (s) of the 503s of a cold start: a replica takes some time to load its model.
RETRY_AFTER_S = 5


class ColdStartHold:
    """The requests held in one process. `shared` and `worker` (see :class:`~maitred.router.shared.SharedState`)
    make the count visible to the router's other processes; the supervisor (`worker` -1) holds none."""

    def __init__(self, shared=None, worker: int = -1) -> None:
        self._shared, self._worker = shared, worker
        self._cells = shared.held_cells if shared is not None and worker >= 0 else None
        self.held_here = 0
        self.closing = False  # the router is shutting down: nothing is held any more
        self._changed: asyncio.Event | None = None  # set by wake(); a fresh one for each wait after

    @property
    def held(self) -> int:
        """Requests held now in the whole router (every worker process)."""
        if self._shared is not None:
            return sum(self._shared.held_cells)
        return self.held_here

    def enter(self, max_requests: int) -> bool:
        """Count one more request held, unless `max_requests` are held already in the router (then False).

        Counted first and checked after, so that workers entering at once can each refuse, never all pass.
        """
        if self._cells is None:
            if self.held_here >= max_requests:
                return False
            self.held_here += 1
            return True
        self.held_here += 1
        self._cells[self._worker] = self.held_here
        if sum(self._cells) > max_requests:
            self.leave()
            return False
        return True

    def leave(self) -> None:
        """Count one held request less (it was routed, timed out or its client left); pairs with :meth:`enter`."""
        self.held_here -= 1
        if self._cells is not None:
            self._cells[self._worker] = self.held_here

    def close(self) -> None:
        """The router begins to shut down: every held request gives up now, and none is held after (their
        clients can retry at once on another router, rather than wait out the drain and be cut)."""
        self.closing = True
        self.wake()

    def wake(self) -> None:
        """An endpoint may have turned live: every request held in this process looks again."""
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    async def wait(self, ready: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `ready()` is true (checked at once and on each :meth:`wake`), at most `timeout_s` (s).

        True if it became ready, False on the timeout or when the router shuts down (:meth:`close`).
        Cancellation (a client that left) passes through.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not ready():
            if self.closing:
                return False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if self._changed is None:
                self._changed = asyncio.Event()
            changed = self._changed
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                return ready()
        return True
