"""Weighted rendezvous hashing with bounded loads: the same key goes to the same endpoint in every router process.

Pure functions, no I/O and no state, so that router replicas and their workers, given the same table,
agree on where a key lives without talking to each other.

**Ranking** (highest random weight; Thaler & Ravishankar, "Using Name-Based Mappings to Increase Hit
Rates", 1998). Each endpoint gets a score for the key, and the endpoints in descending score are the
key's *preference order*. With weights, the score is ``-weight / ln(u)``, where ``u`` in (0, 1) is a
hash of (key, endpoint): endpoint i then comes first for a share ``weight_i / sum(weights)`` of the keys
(Schindelhauer & Schomaker, "Weighted Distributed Hash Tables", SPAA 2005). Consequences:

- adding an endpoint of weight w moves the keys it now ranks first, a share ``w / (W + w)`` of them
  (1/(n+1) with equal weights), and every one of them moves *to it*;
- removing an endpoint moves only the keys it ranked first, each to its own second choice, so they
  spread over the rest rather than landing on one neighbour (the weakness of a plain hash ring).

``u`` must not depend on the process: Python's ``hash()`` is salted per process (PYTHONHASHSEED), so the
key digest is BLAKE2b (:func:`key_digest`), each endpoint id has a BLAKE2b digest computed once
(:func:`endpoint_digest`), and the two are combined per pick by a cheap 64-bit mixer, the SplitMix64
finalizer (Steele, Lea & Flood, "Fast Splittable Pseudorandom Number Generators", OOPSLA 2014; the
constants are David Stafford's "Mix13"), which turns one flipped input bit into about half the output
bits flipped.

**Bounded loads** (Mirrokni, Thorup & Zadimoghaddam, "Consistent Hashing with Bounded Loads", SODA
2018). A hot key must not bury its first choice. An endpoint is over the bound when its load exceeds
``load_factor x (its weighted share of the total load + 1)``, which with equal weights is
``load_factor x (mean load + 1)``; the key goes to the first endpoint of its preference order that is
not over the bound. That is the highest-scoring endpoint under the bound, found in one pass: O(n) per
pick, no sort. With ``load_factor >= 1`` one always exists (some endpoint carries at most its share);
for smaller factors the least loaded endpoint is taken. The "+ 1" lets an idle pool take a request
anywhere, and is the request being placed (the paper counts it in the mean).

Loads are the caller's: agreement between processes is exact while they see the same loads, so they
should be loads every process can see (the replicas' own reports), plus as little local state as
possible (see :mod:`maitred.router.balancing.keys` and the affinity methods).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from hashlib import blake2b
from typing import Protocol

_MASK64 = (1 << 64) - 1
_UNIT = 2.0 ** -53  # one step of a 53-bit fraction, the precision of a float


class Weighted(Protocol):
    """What ranking reads of an endpoint: its id (the stable name) and its weight (> 0 to be chosen)."""

    id: str
    weight: int


def key_digest(key: bytes) -> int:
    """The 64-bit digest of a key (BLAKE2b-64, little-endian), the same in every process."""
    return int.from_bytes(blake2b(key, digest_size=8, person=b"maitred-key").digest(), "little")


@lru_cache(maxsize=1 << 14)
def endpoint_digest(endpoint_id: str) -> int:
    """The 64-bit digest of an endpoint id, computed once per id (memoized: ids outlive table versions)."""
    return int.from_bytes(blake2b(endpoint_id.encode(), digest_size=8, person=b"maitred-ep").digest(), "little")


def mix64(x: int) -> int:
    """SplitMix64's finalizer: a bijection on 64-bit integers with full avalanche."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def score(key: int, endpoint_id: str, weight: float) -> float:
    """The endpoint's rendezvous score for `key` (a :func:`key_digest`): ``-weight / ln(u)``, higher ranks first.

    ``u`` is the top 53 bits of ``mix64(key ^ endpoint digest)`` as a fraction strictly inside (0, 1).
    Weight 0 scores 0, below every endpoint with a weight.
    """
    u = ((mix64(key ^ endpoint_digest(endpoint_id)) >> 11) + 0.5) * _UNIT
    return -weight / math.log(u)


def preference(key: int, endpoints: Sequence[Weighted]) -> list[int]:
    """Indices of `endpoints`, the key's first choice first. O(n log n); picking needs only :func:`pick`.

    Equal scores (as good as impossible with 53-bit fractions) are ordered by id, so the order never
    depends on the order of `endpoints`.
    """
    scores = [score(key, e.id, e.weight) for e in endpoints]
    return sorted(range(len(endpoints)), key=lambda i: (-scores[i], endpoints[i].id))


def bounds(endpoints: Sequence[Weighted], loads: Sequence[float], load_factor: float) -> list[float]:
    """Each endpoint's load bound: ``load_factor x (weight / total weight x total load + 1)``.

    `loads` are in requests (queued and running), aligned with `endpoints`.
    """
    total_weight = sum(e.weight for e in endpoints) or 1
    per_weight = sum(loads) / total_weight
    return [load_factor * (e.weight * per_weight + 1.0) for e in endpoints]


def pick(key: int, endpoints: Sequence[Weighted], loads: Sequence[float], load_factor: float) -> int:
    """Index of the endpoint for `key`: its first choice not over the load bound (see the module docstring).

    `endpoints` non-empty; `loads` aligned with them, in requests. If every endpoint is over its bound
    (possible only with ``load_factor < 1``), the least loaded, ties to the higher score. O(n), one pass
    for the totals and one for the scores (:func:`score` inlined: this runs on every request).
    """
    total_weight = 0
    for endpoint in endpoints:
        total_weight += endpoint.weight
    per_weight = sum(loads) / (total_weight or 1)
    best, best_score = -1, -1.0
    log = math.log
    for i, endpoint in enumerate(endpoints):
        weight = endpoint.weight
        if loads[i] > load_factor * (weight * per_weight + 1.0):
            continue
        x = key ^ endpoint_digest(endpoint.id)
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        s = -weight / log((((x ^ (x >> 31)) >> 11) + 0.5) * _UNIT)
        if s > best_score or (s == best_score and endpoint.id < endpoints[best].id):
            best, best_score = i, s
    if best >= 0:
        return best
    least = min(loads)
    tied = [i for i, load in enumerate(loads) if load == least]
    return min(tied, key=lambda i: (-score(key, endpoints[i].id, endpoints[i].weight), endpoints[i].id))
