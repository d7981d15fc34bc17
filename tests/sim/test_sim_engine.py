"""The continuous-batching engine driven by a fake clock: every step's duration is checked exactly."""

from __future__ import annotations

import asyncio

import pytest

from maitred.sim.engine import Engine, RequestTooLarge
from maitred.sim.prefix_cache import PrefixCache
from maitred.sim.timing import StepCost

B0, B1, B2 = 5.75e-3, 17.25e-6, 6e-6  # the defaults: s, s/token, s/sequence


class FakeClock:
    """A clock that only moves when the engine sleeps; records every sleep (s)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.after_sleep = None  # called with the number of sleeps so far, at the end of each (mid-step)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.after_sleep is not None:
            self.after_sleep(len(self.sleeps))
        await asyncio.sleep(0)


class Latencies:
    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.e2e: list[float] = []

    def on_first_token(self, ttft_s: float) -> None:
        self.ttft.append(ttft_s)

    def on_finished(self, e2e_s: float) -> None:
        self.e2e.append(e2e_s)


def make_engine(clock: FakeClock, *, max_num_seqs=256, blocks=1000, speed=1.0, zero=False, observer=None):
    return Engine(
        max_num_seqs=max_num_seqs,
        cost=StepCost(B0, B1, B2, speed=speed, zero=zero),
        cache=PrefixCache(blocks, 16),
        clock=clock,
        sleep=clock.sleep,
        observer=observer,
    )


def prompt(n: int, tag: str = "w") -> list[str]:
    return [f"{tag}{i}" for i in range(n)]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def test_step_formula():
    cost = StepCost(B0, B1, B2)
    assert cost.step_s(0, 1) == pytest.approx(B0 + B2)
    assert cost.step_s(1000, 10) == pytest.approx(B0 + 1000 * B1 + 10 * B2)
    assert StepCost(B0, B1, B2, speed=2.0).step_s(1000, 10) == pytest.approx((B0 + 1000 * B1 + 10 * B2) / 2)
    assert StepCost(B0, B1, B2, speed=0.5).step_s(0, 1) == pytest.approx(2 * (B0 + B2))
    assert StepCost(B0, B1, B2, zero=True).step_s(1000, 10) == 0.0


def test_one_request_is_prefilled_in_its_first_step_then_decodes_one_token_per_step():
    async def main():
        clock, latencies = FakeClock(), Latencies()
        engine = make_engine(clock, observer=latencies)
        seq = engine.submit(prompt(100), max_tokens=3)
        await seq.done
        await engine.aclose()
        return clock, latencies, seq

    clock, latencies, seq = run(main())
    prefill_step = B0 + 100 * B1 + B2
    assert clock.sleeps == pytest.approx([prefill_step, B0 + B2, B0 + B2])
    assert latencies.ttft == pytest.approx([prefill_step])
    assert latencies.e2e == pytest.approx([prefill_step + 2 * (B0 + B2)])
    assert (seq.state, seq.generated, seq.cached_tokens) == ("finished", 3, 0)


def test_speed_factor_divides_every_step():
    async def main():
        clock = FakeClock()
        engine = make_engine(clock, speed=2.0)
        await engine.submit(prompt(100), max_tokens=2).done
        await engine.aclose()
        return clock.sleeps

    assert run(main()) == pytest.approx([(B0 + 100 * B1 + B2) / 2, (B0 + B2) / 2])


def test_zero_latency_takes_no_time():
    async def main():
        clock = FakeClock()
        engine = make_engine(clock, zero=True)
        seqs = [engine.submit(prompt(500, str(i)), max_tokens=100) for i in range(3)]
        await asyncio.gather(*(s.done for s in seqs))
        await engine.aclose()
        return clock, seqs

    clock, seqs = run(main())
    assert clock.now == 0.0
    assert all(s.generated == 100 for s in seqs)


def test_a_request_joining_a_running_batch_is_prefilled_in_the_step_it_joins():
    async def main():
        clock, latencies = FakeClock(), Latencies()
        engine = make_engine(clock, observer=latencies)
        first = engine.submit(prompt(50, "a"), max_tokens=4)
        joined = []

        def arrive_at_the_end_of_step_2(steps: int) -> None:
            if steps == 2:
                joined.append(engine.submit(prompt(200, "b"), max_tokens=1))

        clock.after_sleep = arrive_at_the_end_of_step_2
        await first.done
        await engine.aclose()
        return clock, latencies

    clock, latencies = run(main())
    join_step = B0 + 200 * B1 + 2 * B2  # prefill of the newcomer, two sequences in the batch
    assert clock.sleeps == pytest.approx([B0 + 50 * B1 + B2, B0 + B2, join_step, B0 + B2])
    assert latencies.ttft[1] == pytest.approx(join_step)  # its first token comes at the end of that step


def test_at_most_max_num_seqs_run_and_the_rest_wait_in_fifo_order():
    async def main():
        clock = FakeClock()
        engine = make_engine(clock, max_num_seqs=2)
        seqs = [engine.submit(prompt(20, str(i)), max_tokens=3 + (i % 2)) for i in range(6)]
        engine.admit()  # what the first step will do
        counts = (engine.num_running, engine.num_waiting)
        await asyncio.gather(*(s.done for s in seqs))
        await engine.aclose()
        return counts, seqs

    counts, seqs = run(main())
    assert counts == (2, 4)
    finish = [s.finish_s for s in seqs]
    first_token = [s.first_token_s for s in seqs]
    assert first_token == sorted(first_token)
    assert finish[0] < finish[2] <= finish[4] and finish[1] < finish[3] <= finish[5]
    assert max(first_token[:2]) < min(first_token[2:4]) and max(first_token[2:4]) < min(first_token[4:])


def test_a_repeated_prompt_reuses_its_cached_blocks_and_prefills_only_the_rest():
    async def main():
        clock = FakeClock()
        engine = make_engine(clock)
        first = engine.submit(prompt(1000), max_tokens=1)
        await first.done
        start = clock.now
        second = engine.submit(prompt(1000), max_tokens=1)
        await second.done
        await engine.aclose()
        return engine, first, second, clock.now - start

    engine, first, second, ttft = run(main())
    assert first.cached_tokens == 0
    assert second.cached_tokens == 992  # 62 full blocks of 16; the partial block is computed again
    assert ttft == pytest.approx(B0 + (1000 - 992) * B1 + B2)
    assert (engine.stats.prefix_queries_tokens, engine.stats.prefix_hits_tokens) == (2000, 992)


def test_a_fully_cached_prompt_still_computes_its_last_block():
    async def main():
        clock = FakeClock()
        engine = make_engine(clock)
        await engine.submit(prompt(64), max_tokens=1).done
        again = engine.submit(prompt(64), max_tokens=1)
        await again.done
        await engine.aclose()
        return again

    assert run(main()).cached_tokens == 48


def test_cancelling_frees_the_slot_and_the_blocks_for_the_next_request():
    async def main():
        clock = FakeClock()
        engine = make_engine(clock, max_num_seqs=1)
        long = engine.submit(prompt(100), max_tokens=10_000, stream=True)
        queued = engine.submit(prompt(10, "q"), max_tokens=2)
        await long.progress()
        usage_running = engine.cache.usage
        assert (engine.num_running, engine.num_waiting) == (1, 1)
        engine.cancel(long)
        await queued.done
        await engine.aclose()
        return engine, long, queued, usage_running

    engine, long, queued, usage_running = run(main())
    assert usage_running > 0
    assert long.state == "cancelled" and long.done.done()
    assert queued.state == "finished"
    assert engine.cache.usage == 0.0 and engine.num_running == 0


def test_a_request_waits_for_kv_blocks_even_with_a_free_slot():
    async def main():
        clock = FakeClock()
        engine = make_engine(clock, blocks=10)  # 160 tokens of KV cache
        big = engine.submit(prompt(100, "a"), max_tokens=20)  # 8 blocks
        other = engine.submit(prompt(40, "b"), max_tokens=10)  # 4 blocks: does not fit beside it
        engine.admit()
        counts = (engine.num_running, engine.num_waiting)
        await asyncio.gather(big.done, other.done)
        await engine.aclose()
        return counts, big, other

    counts, big, other = run(main())
    assert counts == (1, 1)
    assert other.first_token_s > big.finish_s


def test_a_request_larger_than_the_whole_cache_is_refused():
    async def main():
        engine = make_engine(FakeClock(), blocks=4)
        with pytest.raises(RequestTooLarge, match="needs 5 KV cache blocks"):
            engine.submit(prompt(60), max_tokens=10)
        await engine.aclose()

    run(main())
