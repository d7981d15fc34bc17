"""The simulated inference engine: continuous batching with a prefix cache, one asyncio task.

Each step of the loop (see `Engine.run`):
1. admit waiting requests in FIFO order while fewer than `max_num_seqs` run and their KV blocks fit (a request
   that does not fit blocks the queue head, as in vLLM's FCFS scheduler);
2. take `StepCost.step_s(uncached prompt tokens admitted, running sequences)` seconds;
3. give every running sequence one token (a sequence admitted in this step gets its first token now: it was
   prefilled in this step); a sequence that has its `max_tokens` tokens finishes and unpins its blocks.

Time is injected (`clock`, `sleep`), so tests can drive the engine with a fake clock and check every step.
Simplification: a request reserves the blocks for its prompt and all its output tokens when it is admitted,
so there is no preemption (vLLM allocates decode blocks lazily and preempts when it runs out).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence as Seq
from dataclasses import dataclass, field
from typing import Protocol

from maitred.sim.prefix_cache import Allocation, PrefixCache
from maitred.sim.timing import StepCost

# In zero-latency mode the loop runs up to this many steps before yielding to the event loop: steps take no
# time, so a request is best served in one go (its stream then leaves in one write), yet a huge `max_tokens`
# must not starve the server's I/O.
ZERO_LATENCY_BURST_STEPS = 64


class RequestTooLarge(ValueError):
    """The request can never run: it needs more KV blocks than the whole cache holds."""


class EngineObserver(Protocol):
    """Receives per-request latencies (seconds), e.g. to feed Prometheus histograms."""

    def on_first_token(self, ttft_s: float) -> None: ...

    def on_finished(self, e2e_s: float) -> None: ...


@dataclass(eq=False, slots=True)
class Sequence:
    """One request inside the engine.

    Times are the engine clock's seconds. `done` resolves when it ends (finished or cancelled); a streaming
    handler awaits `progress()` instead, which returns after each step that gave it a token, and at its end.
    """

    prompt_len: int
    block_hashes: list[int]
    max_tokens: int
    arrival_s: float
    done: asyncio.Future[None]
    stream: bool = False
    waiter: asyncio.Future[None] | None = field(default=None, repr=False)
    cached_tokens: int = 0
    generated: int = 0
    first_token_s: float | None = None
    finish_s: float | None = None
    state: str = "waiting"  # waiting -> running -> finished | cancelled
    allocation: Allocation | None = field(default=None, repr=False)

    @property
    def ended(self) -> bool:
        """Finished or cancelled: no more tokens will come."""
        return self.state == "finished" or self.state == "cancelled"

    async def progress(self) -> None:
        """Wait until the next step gives this sequence a token, or until it ends (returns at once if ended)."""
        if self.ended:
            return
        self.waiter = self.done.get_loop().create_future()
        await self.waiter

    def notify(self) -> None:
        """Wake the handler waiting in `progress()` (engine side)."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)


@dataclass(slots=True)
class EngineStats:
    """Monotonic counters, read by the metrics collector (tokens and requests)."""

    prefix_queries_tokens: int = 0
    prefix_hits_tokens: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished_requests: int = 0


class Engine:
    """Continuous-batching engine.

    max_num_seqs: sequences running at once; cost: step duration model; cache: KV blocks and prefix cache;
    clock: () -> seconds (monotonic); sleep: async (seconds) -> None; observer: latency sink (optional).
    """

    def __init__(
        self,
        *,
        max_num_seqs: int,
        cost: StepCost,
        cache: PrefixCache,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observer: EngineObserver | None = None,
    ) -> None:
        self.max_num_seqs = max_num_seqs
        self.cost = cost
        self.cache = cache
        self.stats = EngineStats()
        self._clock = clock
        self._sleep = sleep
        self._observer = observer
        self._waiting: deque[Sequence] = deque()
        self._running: dict[Sequence, None] = {}  # insertion-ordered set
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.steps = 0

    # -- state ----------------------------------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_queued_beyond_slots(self) -> int:
        """Requests that will have to wait for a slot: waiting ones not admitted at the next step."""
        return len(self._waiting) + len(self._running) - self.max_num_seqs

    # -- requests -------------------------------------------------------------------------------------------

    def submit(self, tokens: Seq[Hashable], max_tokens: int, *, stream: bool = False) -> Sequence:
        """Queue a request of prompt `tokens` that generates `max_tokens` tokens (0 = prefill only, embeddings).

        Starts the step loop if needed. Raises RequestTooLarge if it could never fit in the KV cache.
        """
        cache = self.cache
        blocks = cache.blocks_for(len(tokens) + max_tokens)
        if blocks > cache.capacity_blocks:
            raise RequestTooLarge(
                f"the request needs {blocks} KV cache blocks ({len(tokens)} prompt + {max_tokens} output tokens) "
                f"but the cache holds {cache.capacity_blocks} blocks of {cache.block_size} tokens"
            )
        loop = asyncio.get_running_loop()
        seq = Sequence(
            prompt_len=len(tokens),
            block_hashes=cache.block_hashes(tokens),
            max_tokens=max_tokens,
            arrival_s=self._clock(),
            done=loop.create_future(),
            stream=stream,
        )
        self._waiting.append(seq)
        self._wake.set()
        if self._task is None:
            self.start()
        return seq

    def cancel(self, seq: Sequence) -> None:
        """End a sequence early (client gone): leave the queue, or unpin its blocks and free its slot.

        Safe to call at any time, also after it finished (then a no-op).
        """
        if seq.state == "waiting":
            self._waiting.remove(seq)
        elif seq.state == "running":
            del self._running[seq]
            self._release(seq)
        else:
            return
        seq.state = "cancelled"
        self._end(seq)

    # -- the loop -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the step loop task (idempotent). Needs a running event loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="maitred-sim-engine")

    async def aclose(self) -> None:
        """Stop the loop and end every queued or running sequence (their handlers see them end)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for seq in [*self._waiting, *self._running]:
            self.cancel(seq)

    async def run(self) -> None:
        """The step loop: wait for work, admit, take the step's time, emit one token per running sequence."""
        burst = 0
        while True:
            if not self._running and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                burst = 0
            start_s = self._clock()
            prefill_tokens = self.admit()
            if not self._running:
                continue  # everything that waited was cancelled meanwhile
            step_s = self.cost.step_s(prefill_tokens, len(self._running))
            if step_s > 0.0:
                # Sleep to the step's deadline, so that the loop's own work counts as part of the step.
                await self._sleep(max(0.0, start_s + step_s - self._clock()))
            elif burst >= ZERO_LATENCY_BURST_STEPS:
                burst = 0
                await self._sleep(0.0)
            burst += 1
            self.emit()

    def admit(self) -> int:
        """Move waiting sequences into the batch (FIFO); returns their uncached prompt tokens (to prefill)."""
        cache = self.cache
        block_size = cache.block_size
        prefill_tokens = 0
        while self._waiting and len(self._running) < self.max_num_seqs:
            seq = self._waiting[0]
            hashes = seq.block_hashes
            # At least one prompt token is always computed (it yields the first logits), as in vLLM.
            hits = cache.lookup(hashes, (seq.prompt_len - 1) // block_size)
            anonymous = cache.blocks_for(seq.prompt_len + seq.max_tokens) - len(hashes)
            allocation = cache.allocate(hashes, anonymous)
            if allocation is None:
                break  # head of line waits for blocks to be freed
            self._waiting.popleft()
            seq.allocation = allocation
            seq.cached_tokens = hits * block_size
            seq.state = "running"
            self._running[seq] = None
            stats = self.stats
            stats.prefix_queries_tokens += seq.prompt_len
            stats.prefix_hits_tokens += seq.cached_tokens
            stats.prompt_tokens += seq.prompt_len
            prefill_tokens += seq.prompt_len - seq.cached_tokens
        return prefill_tokens

    def emit(self) -> None:
        """End of a step: one token for every running sequence; finish those that have all their tokens."""
        self.steps += 1
        now = self._clock()
        finished: list[Sequence] = []
        emitted = 0
        for seq in self._running:
            if seq.generated < seq.max_tokens:
                seq.generated += 1
                emitted += 1
                if seq.generated == 1:
                    seq.first_token_s = now
                    if self._observer is not None:
                        self._observer.on_first_token(now - seq.arrival_s)
                if seq.stream:
                    seq.notify()
            if seq.generated >= seq.max_tokens:
                finished.append(seq)
        self.stats.generation_tokens += emitted
        for seq in finished:
            del self._running[seq]
            self._release(seq)
            seq.state = "finished"
            seq.finish_s = now
            self.stats.finished_requests += 1
            if self._observer is not None:
                self._observer.on_finished(now - seq.arrival_s)
            self._end(seq)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block not pinned by a running request; True if the cache is now empty."""
        return self.cache.reset()

    # -- helpers --------------------------------------------------------------------------------------------

    def _release(self, seq: Sequence) -> None:
        if seq.allocation is not None:
            self.cache.free(seq.allocation)
            seq.allocation = None

    @staticmethod
    def _end(seq: Sequence) -> None:
        seq.notify()
        if not seq.done.done():
            seq.done.set_result(None)
