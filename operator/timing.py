"""How fast the operator notices a fault and recovers: every timeout, backoff and period, in one place.

The faults, and what bounds the operator's answer to each (all times in seconds):

- **The API server restarts or is unreachable.** Every request and watch is retried after a short backoff
  that doubles from 0.1 to at most :data:`RETRY_CAP_S` (1 s) and never gives up, so the operator is back
  within about a second of the API server (kopf's default backoffs, 1, 1, 2, 3, 5, 8, 13, 21 s, left it
  up to 21 s behind, then gave up on the request). A reconcile that failed on the network is retried after
  0.2 s doubling to :data:`TRANSIENT_RETRY_CAP_S`; every pool is reconciled again every
  :data:`RESYNC_S` anyway, and the pod cache is listed again every :data:`RELIST_S`.
"""

from __future__ import annotations

import itertools
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
#: The page size of every LIST, so that each request stays small.
LIST_CHUNK = 500

def configure_kopf(settings) -> None:
    """Set kopf's backoffs to the values above (`settings`: kopf.OperatorSettings)."""
    settings.networking.error_backoffs = Backoff()
    settings.watching.reconnect_backoff = RETRY_FIRST_S
