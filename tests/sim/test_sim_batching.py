"""Continuous batching seen from outside: a bounded batch, a FIFO queue, freed slots, a full-queue 503.

One simulator with --max-num-seqs 2 at half speed (a step takes ~11.5 ms) serves the module.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture(scope="module")
def small_sim(start_module_sim):
    return start_module_sim("--max-num-seqs", "2", "--speed", "0.5")


async def queue_lengths(client: httpx.AsyncClient) -> tuple[float, float]:
    """(running, waiting) from /metrics."""
    values = {}
    for family in text_string_to_metric_families((await client.get("/metrics")).text):
        for sample in family.samples:
            values[sample.name] = sample.value
    return values["vllm:num_requests_running"], values["vllm:num_requests_waiting"]


async def wait_for_queue(client: httpx.AsyncClient, expected: tuple[int, int], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = await queue_lengths(client)
        if seen == expected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"(running, waiting) stayed {seen}, expected {expected}")


def completion(max_tokens: int) -> dict:
    return {"model": "sim-model", "prompt": "tell me a story", "max_tokens": max_tokens, "stream": True}


def test_six_requests_with_two_slots_run_two_at_a_time_in_fifo_order(small_sim):
    # 100 tokens at ~11.5 ms a step: each pair runs ~1.15 s. Each request is sent once the server holds the
    # previous one, and 50 ms later, so the arrival order is known and the first tokens are >= 50 ms apart.
    async def one(client: httpx.AsyncClient, start: float, times: dict, index: int) -> None:
        async with client.stream("POST", "/v1/completions", json=completion(100)) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: ") and index not in times:
                    times[index] = [time.monotonic() - start, None]
            times[index][1] = time.monotonic() - start

    async def held(client: httpx.AsyncClient) -> float:
        running, waiting = await queue_lengths(client)
        return running + waiting

    async def main():
        times: dict[int, list] = {}
        async with httpx.AsyncClient(base_url=small_sim.base_url, timeout=30) as client:
            start = time.monotonic()
            tasks = []
            for index in range(6):
                tasks.append(asyncio.create_task(one(client, start, times, index)))
                while await held(client) < index + 1:
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.05)
            assert await queue_lengths(client) == (2, 4)
            await asyncio.gather(*tasks)
            assert await queue_lengths(client) == (0, 0)
        return [times[i] for i in range(6)]

    times = asyncio.run(main())
    first_tokens = [t[0] for t in times]
    finishes = [t[1] for t in times]
    assert first_tokens == sorted(first_tokens), times
    assert finishes == sorted(finishes), times
    # FIFO with two slots: request k+2 starts only once request k has finished.
    for k in range(4):
        assert first_tokens[k + 2] >= finishes[k] - 0.05, times
    assert finishes[1] < first_tokens[4], times


def test_a_client_that_leaves_frees_its_slot_for_the_next_in_line(small_sim):
    async def main():
        async with httpx.AsyncClient(base_url=small_sim.base_url, timeout=30) as client:
            long_streams, readers = [], []
            for _ in range(2):
                request = client.build_request("POST", "/v1/completions", json=completion(100_000))
                response = await client.send(request, stream=True)
                long_streams.append(response)
                readers.append(response.aiter_lines())  # kept: dropping it would close the stream
                assert (await anext(readers[-1])).startswith("data: ")  # it is running
            waiter = asyncio.create_task(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3}))
            await wait_for_queue(client, (2, 1))
            await long_streams[0].aclose()  # the client leaves
            reply = await asyncio.wait_for(waiter, timeout=3)
            assert reply.status_code == 200
            await wait_for_queue(client, (1, 0))
            await long_streams[1].aclose()
            await wait_for_queue(client, (0, 0))

    asyncio.run(main())


def test_503_with_retry_after_when_the_waiting_queue_is_full(small_sim):
    async def main():
        async with httpx.AsyncClient(base_url=small_sim.base_url, timeout=30) as client:
            set_faults = await client.post("/admin/faults", json={"max_waiting": 1, "retry_after_s": 4})
            assert set_faults.json()["max_waiting"] == 1
            streams = []
            try:
                for _ in range(3):  # two run, one waits
                    request = client.build_request("POST", "/v1/completions", json=completion(100_000))
                    streams.append(await client.send(request, stream=True))
                await wait_for_queue(client, (2, 1))
                refused = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "4"
                assert refused.json()["error"]["message"]
            finally:
                for stream in streams:
                    await stream.aclose()
                await client.post("/admin/faults", json={"max_waiting": None, "retry_after_s": 1})
            await wait_for_queue(client, (0, 0))

    asyncio.run(main())
