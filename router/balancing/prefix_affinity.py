"""prefix-affinity: a prompt goes where its prefix is most likely in KV cache, the same in every router replica.

A replica's prefix cache makes a repeated prefix almost free (vLLM's automatic prefix caching, SGLang's
RadixAttention); a conversation's next turn, or a shared document, is cheap only where it was served
before. This method needs no memory of where it sent what, so router replicas and workers agree:

- the request's key is its OpenAI `prompt_cache_key` if it has one, else its prefix key (the model, the
  leading system messages and the start of the first message after them; the rule and why:
  :mod:`maitred.router.balancing.keys`);
- the endpoint is the key's first choice by weighted rendezvous hashing, unless that one carries more
  than ``affinity.loadFactor x (its share of the load + 1)`` requests, in which case the key's next
  choice under the bound (:mod:`maitred.router.balancing.rendezvous`; "Consistent Hashing with Bounded
  Loads", Mirrokni, Thorup, Zadimoghaddam, 2018);
- an endpoint's load is the one view all routers share as far as possible: the requests waiting and
  running by its own last report on /metrics, plus those this router sent it since
  (:func:`~maitred.router.balancing.least_load.queued`; in flight alone before the first report).

A request with no prompt (no key) goes to the least loaded endpoint. O(prompt key + n) per pick.

This replaces a learned index of block hashes (as the Gateway API Inference Extension's prefix scorer and
SGLang's cache-aware router keep): a learned index sends a prefix to where *this* process sent it, so two
router replicas learn two homes for it, and both replicas' caches fill with it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from maitred.router.balancing import RequestView, register
from maitred.router.balancing.keys import affinity_key
from maitred.router.balancing.least_load import LeastLoad, queued
from maitred.router.balancing.rendezvous import pick
from maitred.router.endpoints import EndpointState


class KeyAffinity:
    """Bounded-load rendezvous on the key :meth:`key` gives; a request with no key goes to the least loaded."""

    name = ""

    def __init__(self, rng: random.Random, clock: Callable[[], float]) -> None:
        self._least_load = LeastLoad(rng, clock)

    def key(self, request: RequestView) -> int | None:
        """The request's 64-bit affinity key, or None."""
        raise NotImplementedError

    def pick(self, endpoints: Sequence[EndpointState], request: RequestView | None = None) -> EndpointState:
        """The key's first endpoint under the load bound."""
        key = None if request is None else self.key(request)
        if key is None:
            return self._least_load.pick(endpoints)
        loads = [queued(e) for e in endpoints]
        return endpoints[pick(key, endpoints, loads, request.affinity.load_factor)]


@register
class PrefixAffinity(KeyAffinity):
    """`prompt_cache_key`, else the prompt's prefix key, placed by rendezvous hashing within the load bound."""

    name = "prefix-affinity"

    def key(self, request: RequestView) -> int | None:
        return affinity_key(request.body)
