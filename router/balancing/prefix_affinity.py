"""prefix-affinity: send a prompt to the replica that most likely holds its prefix in KV cache, within a load bound.

A replica's prefix cache makes a repeated prefix almost free (vLLM's automatic prefix caching, SGLang's
RadixAttention); a conversation's next turn, or a shared system prompt, is cheap only where it was
served before. The router cannot see the caches, so it remembers where it sent what:

- the prompt text (chat messages' roles and contents, or the completion prompt) is cut into blocks of
  `BLOCK_CHARS` characters, each named by a hash chained over all blocks before it, so a block hash
  stands for the whole prefix up to it (as vLLM names its KV blocks);
- an LRU index maps each block hash to the endpoints that served it (at most `INDEX_CAPACITY` hashes);
- an endpoint's score is the number of leading blocks of this prompt it served; the best score wins,
  ties (say several replicas that all hold a shared system prompt) go to the fewest in flight; a best match on less than `MIN_MATCH_RATIO` of the prompt's blocks
  (typically a system prompt that every request shares) counts as none, and the request goes to the
  fewest in flight instead (SGLang's `cache_threshold`);
- the bound: an endpoint with more than `LOAD_FACTOR` x (mean in-flight + 1) requests in flight is
  passed over, so one hot prefix cannot pile all traffic on one replica ("Consistent Hashing with
  Bounded Loads", Mirrokni, Thorup, Zadimoghaddam, 2018).

The approach is that of the Gateway API Inference Extension's prefix-cache scorer (llm-d) and SGLang
router's cache-aware policy, which keeps a radix tree per worker instead of block hashes.
O(blocks + n) per pick; requests without a prompt go to the fewest in flight.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from maitred.router.balancing import register
from maitred.router.balancing.least_connections import LeastConnections
from maitred.router.endpoints import EndpointState

BLOCK_CHARS = 256  # about 64 tokens
MAX_BLOCKS = 128  # prompts past 32 Ki characters are matched on their start
INDEX_CAPACITY = 100_000  # block hashes remembered (about 10 MB)
LOAD_FACTOR = 1.25
MIN_MATCH_RATIO = 0.5  # a match on less of the prompt than this (say a shared system prompt) is no match


def prompt_text(request: Any) -> str:
    """The text a replica would cache for `request` (an OpenAI body as a dict): chat or completion."""
    if not isinstance(request, dict):
        return ""
    messages = request.get("messages")
    if isinstance(messages, list):
        parts = []
        for message in messages:
            if isinstance(message, dict):
                parts.append(f"<{message.get('role', '')}>")
                content = message.get("content")
                if isinstance(content, str):
                    parts.append(content)
                elif isinstance(content, list):
                    parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
        return "".join(parts)
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return prompt[0]
    return ""


def block_hashes(text: str) -> list[int]:
    """Chained hashes of `text`'s full blocks of `BLOCK_CHARS` characters (a partial last block is left out)."""
    hashes, previous = [], 0
    for start in range(0, min(len(text), BLOCK_CHARS * MAX_BLOCKS) - BLOCK_CHARS + 1, BLOCK_CHARS):
        previous = hash((previous, text[start:start + BLOCK_CHARS]))
        hashes.append(previous)
    return hashes


@register
class PrefixAffinity:
    """Longest remembered prefix wins, among endpoints under the load bound."""

    name = "prefix-affinity"

    def __init__(self, rng: random.Random, clock: Callable[[], float]) -> None:
        self._index: OrderedDict[int, set[str]] = OrderedDict()  # block hash -> ids of endpoints that served it
        self._least_connections = LeastConnections(rng, clock)

    def pick(self, endpoints: Sequence[EndpointState], request: Any = None) -> EndpointState:
        """The endpoint that served the longest prefix of this prompt, unless it is over the load bound."""
        hashes = block_hashes(prompt_text(request))
        bound = LOAD_FACTOR * (sum(e.in_flight for e in endpoints) / len(endpoints) + 1)
        eligible = [e for e in endpoints if e.in_flight <= bound] or list(endpoints)
        best = self._least_connections.pick(self._longest_prefix(eligible, hashes) or eligible)
        self._remember(hashes, best.id)
        return best

    def _longest_prefix(self, eligible: Sequence[EndpointState], hashes: list[int]) -> list[EndpointState]:
        """The eligible endpoints that served the most leading blocks, if that is enough of the prompt."""
        holders = {e.id for e in eligible}
        depth = 0
        for block in hashes:
            deeper = holders & self._index.get(block, set())
            if not deeper:
                break
            holders, depth = deeper, depth + 1
        if depth == 0 or depth < MIN_MATCH_RATIO * len(hashes):
            return []
        return [e for e in eligible if e.id in holders]

    def _remember(self, hashes: list[int], endpoint_id: str) -> None:
        index = self._index
        for block in hashes:
            holders = index.get(block)
            if holders is None:
                index[block] = {endpoint_id}
            else:
                holders.add(endpoint_id)
                index.move_to_end(block)
        while len(index) > INDEX_CAPACITY:
            index.popitem(last=False)
