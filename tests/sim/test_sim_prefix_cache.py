"""The KV block pool with prefix caching: hits, pinning, LRU eviction, the capacity bound."""

from __future__ import annotations

import pytest

from maitred.sim.prefix_cache import PrefixCache


def words(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_only_full_blocks_are_hashed_and_hashes_chain_the_prefix():
    cache = PrefixCache(capacity_blocks=10, block_size=4)
    a = cache.block_hashes(words("a", 10))
    assert len(a) == 2  # 10 tokens = 2 full blocks + a partial one
    b = cache.block_hashes(words("a", 4) + words("b", 4))
    assert b[0] == a[0] and b[1] != a[1]
    # Same block content after a different prefix is a different block.
    c = cache.block_hashes(words("z", 4) + words("a", 8)[4:8])
    assert c[1] != a[1]


def test_a_repeated_prefix_hits_while_a_different_one_misses():
    cache = PrefixCache(capacity_blocks=10, block_size=4)
    hashes = cache.block_hashes(words("a", 12))
    assert cache.lookup(hashes) == 0
    allocation = cache.allocate(hashes, anonymous=1)
    assert allocation is not None
    cache.free(allocation)
    assert cache.lookup(hashes) == 3
    assert cache.lookup(hashes, max_blocks=2) == 2
    longer = cache.block_hashes(words("a", 12) + words("x", 8))
    assert cache.lookup(longer) == 3
    assert cache.lookup(cache.block_hashes(words("b", 12))) == 0


def test_running_requests_pin_blocks_and_usage_counts_only_pinned_ones():
    cache = PrefixCache(capacity_blocks=8, block_size=4)
    hashes = cache.block_hashes(words("a", 8))
    first = cache.allocate(hashes, anonymous=2)
    assert cache.usage == pytest.approx(4 / 8)
    second = cache.allocate(hashes, anonymous=1)  # shares the two cached blocks
    assert cache.usage == pytest.approx(5 / 8)
    cache.free(first)
    assert cache.usage == pytest.approx(3 / 8)
    cache.free(second)
    assert cache.usage == 0.0
    assert cache.num_cached_blocks == 2  # still cached, evictable
    assert cache.num_free_blocks == 8


def test_capacity_is_never_exceeded_and_pinned_blocks_are_never_evicted():
    cache = PrefixCache(capacity_blocks=4, block_size=4)
    pinned = cache.allocate(cache.block_hashes(words("a", 12)), anonymous=0)
    assert pinned is not None
    assert cache.allocate(cache.block_hashes(words("b", 8)), anonymous=0) is None  # 3 pinned + 2 new > 4
    assert cache.usage == pytest.approx(3 / 4)  # the failed allocation changed nothing
    assert cache.allocate([], anonymous=1) is not None
    assert cache.usage == 1.0
    assert cache.allocate([], anonymous=1) is None
    assert cache.lookup(pinned.hashes) == 3


def test_least_recently_used_blocks_are_evicted_first_tail_of_a_prefix_before_its_head():
    cache = PrefixCache(capacity_blocks=4, block_size=4)
    a = cache.block_hashes(words("a", 8))
    b = cache.block_hashes(words("b", 8))
    cache.free(cache.allocate(a, anonymous=0))
    cache.free(cache.allocate(b, anonymous=0))  # cache full of evictable blocks: a0 a1 b0 b1
    cache.free(cache.allocate(a, anonymous=0))  # a used again: b is now least recently used
    assert cache.allocate([], anonymous=1) is not None  # evicts one block of b: its tail, b1
    assert cache.lookup(b) == 1
    assert cache.lookup(a) == 2
    assert cache.allocate([], anonymous=1) is not None  # then b0
    assert cache.lookup(b) == 0
    assert cache.lookup(a) == 2


def test_reset_forgets_evictable_blocks_but_keeps_pinned_ones():
    cache = PrefixCache(capacity_blocks=8, block_size=4)
    a = cache.block_hashes(words("a", 4))
    b = cache.block_hashes(words("b", 4))
    cache.free(cache.allocate(a, anonymous=0))
    held = cache.allocate(b, anonymous=0)
    assert cache.reset() is False
    assert cache.lookup(a) == 0 and cache.lookup(b) == 1
    cache.free(held)
    assert cache.reset() is True
    assert cache.num_cached_blocks == 0
