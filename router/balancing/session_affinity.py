"""session-affinity: every request of a session goes to one endpoint, the same in every router replica.

The key is the session the client names: the header the table's ``affinity.sessionHeader`` names
(default ``x-session-id``), else the body's OpenAI `user`, else its `prompt_cache_key`, else the prompt's
prefix key as `prefix-affinity` computes it (:func:`maitred.router.balancing.keys.session_key`). The
header works on every path, with no body read; the body's fields on the model paths.

Placement is `prefix-affinity`'s: weighted rendezvous hashing of the key, passing over an endpoint above
``affinity.loadFactor x (its share of the load + 1)`` requests queued and running
(:mod:`maitred.router.balancing.rendezvous`). So a session stays put as long as its endpoint is live and
not overloaded; adding an endpoint moves about 1/(n+1) of the sessions, all to the new one; removing one
moves only its sessions. O(headers + n) per pick with a session header.
"""

from __future__ import annotations

from maitred.router.balancing import RequestView, register
from maitred.router.balancing.keys import session_key
from maitred.router.balancing.prefix_affinity import KeyAffinity


@register
class SessionAffinity(KeyAffinity):
    """Session header, `user`, `prompt_cache_key` or prefix key, placed by rendezvous hashing within the bound."""

    name = "session-affinity"

    def key(self, request: RequestView) -> int | None:
        return session_key(request)
