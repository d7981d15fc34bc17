"""A KV-cache block pool with automatic prefix caching, after vLLM v1's `BlockPool` / `KVCacheManager`.

The cache holds `capacity_blocks` blocks of `block_size` tokens. Only full prompt blocks are cacheable; each is
named by a chained hash, `hash((parent_hash, tokens of the block))`, so a block hit means the whole prefix up
to and including that block is identical. Blocks have a reference count: blocks of running requests are pinned
(ref > 0); a cached block whose count falls to 0 stays in memory, evictable, in LRU order, until a new block is
needed and no never-used block is left. As in vLLM, a finished request frees its blocks tail first, so that
the ends of prefixes are evicted before their starts.

Only counts and hashes are kept; there is no per-block object, no memory is simulated.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

_ROOT_HASH = hash("maitred.sim.prefix-cache.root")


@dataclass(slots=True)
class Allocation:
    """Blocks pinned for one request: cacheable blocks by hash (in prefix order) and anonymous blocks."""

    hashes: list[int]
    anonymous: int


class PrefixCache:
    """Block pool with prefix caching.

    capacity_blocks: total KV blocks; block_size: tokens per block.
    `usage` (0..1) counts pinned blocks, like vLLM's `kv_cache_usage_perc` (evictable cached blocks are free).
    """

    def __init__(self, capacity_blocks: int, block_size: int = 16) -> None:
        if capacity_blocks < 1 or block_size < 1:
            raise ValueError("capacity_blocks and block_size must be >= 1")
        self.capacity_blocks = capacity_blocks
        self.block_size = block_size
        self._refs: dict[int, int] = {}  # every cached block (pinned or evictable): hash -> reference count
        self._evictable: OrderedDict[int, None] = OrderedDict()  # ref == 0 cached blocks, least recently used first
        self._pinned = 0  # blocks with ref > 0, cached or anonymous

    # -- pure helpers -------------------------------------------------------------------------------------

    def block_hashes(self, tokens: Sequence[Hashable]) -> list[int]:
        """Chained hashes of the full blocks of `tokens` (a trailing partial block has none).

        Python's `hash` is salted per process, which is fine: the cache lives in one process.
        """
        size = self.block_size
        hashes: list[int] = []
        parent = _ROOT_HASH
        for start in range(0, len(tokens) - size + 1, size):
            parent = hash((parent, tuple(tokens[start : start + size])))
            hashes.append(parent)
        return hashes

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` tokens (ceil division)."""
        return -(-num_tokens // self.block_size)

    # -- queries ----------------------------------------------------------------------------------------------

    @property
    def usage(self) -> float:
        """Share of blocks pinned by running requests, 0..1."""
        return self._pinned / self.capacity_blocks

    @property
    def num_cached_blocks(self) -> int:
        """Blocks holding a cached prefix block, pinned or evictable."""
        return len(self._refs)

    @property
    def num_free_blocks(self) -> int:
        """Blocks a new allocation may take: never-used ones plus evictable cached ones."""
        return self.capacity_blocks - self._pinned

    def lookup(self, hashes: Sequence[int], max_blocks: int | None = None) -> int:
        """Number of leading blocks of `hashes` already cached (at most `max_blocks`). Does not pin anything."""
        limit = len(hashes) if max_blocks is None else min(max_blocks, len(hashes))
        hits = 0
        while hits < limit and hashes[hits] in self._refs:
            hits += 1
        return hits

    # -- allocation --------------------------------------------------------------------------------------------

    def allocate(self, hashes: Sequence[int], anonymous: int) -> Allocation | None:
        """Pin the cacheable blocks `hashes` (reusing cached ones, caching new ones) plus `anonymous` blocks.

        Returns None, changing nothing, when the free blocks cannot cover the new ones; new blocks first take
        never-used blocks, then evict the least recently used evictable cached blocks.
        """
        cached = [h for h in hashes if h in self._refs]
        needed = len(hashes) - len(cached) + anonymous
        reclaimed = sum(1 for h in cached if self._refs[h] == 0)  # evictable blocks we are about to pin
        if needed > self.capacity_blocks - self._pinned - reclaimed:
            return None
        # Pin the reused blocks first, so that taking new blocks cannot evict them.
        for h in cached:
            ref = self._refs[h]
            if ref == 0:
                del self._evictable[h]
                self._pinned += 1
            self._refs[h] = ref + 1
        for h in hashes:
            if h not in self._refs:
                self._take_block()
                self._refs[h] = 1
        for _ in range(anonymous):
            self._take_block()
        return Allocation(list(hashes), anonymous)

    def free(self, allocation: Allocation) -> None:
        """Unpin an allocation; cached blocks whose count drops to 0 become evictable, tail block first."""
        self._pinned -= allocation.anonymous
        for h in reversed(allocation.hashes):
            ref = self._refs[h] - 1
            self._refs[h] = ref
            if ref == 0:
                self._pinned -= 1
                self._evictable[h] = None
        allocation.hashes = []
        allocation.anonymous = 0

    def reset(self) -> bool:
        """Drop every evictable cached block (vLLM's `/reset_prefix_cache`); False if some blocks are pinned."""
        for h in self._evictable:
            del self._refs[h]
        self._evictable.clear()
        return not self._refs

    def _take_block(self) -> None:
        # Never-used blocks first, so that cached prefixes live as long as the capacity allows.
        if self._pinned + len(self._evictable) >= self.capacity_blocks:
            victim, _ = self._evictable.popitem(last=False)
            del self._refs[victim]
        self._pinned += 1
