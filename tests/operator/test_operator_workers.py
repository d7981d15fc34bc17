"""Pool workers: kicks during a reconcile coalesce into one more, failures are retried, deletions stop the worker."""

from __future__ import annotations

import asyncio

from maitred.operator import workers
from maitred.operator.workers import Pools

from operator_objects import pool_body


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_kicks_during_a_reconcile_coalesce_into_one_more_reconcile():
    async def scenario():
        calls, release, entered = [], asyncio.Event(), asyncio.Event()

        async def reconcile(body, worker):
            calls.append(body["metadata"]["generation"])
            entered.set()
            await release.wait()
            return True

        pools = Pools(reconcile)
        pools.upsert(pool_body())
        await entered.wait()
        for generation in range(4, 14):  # ten events while the first reconcile runs
            pools.upsert({**pool_body(), "metadata": {**pool_body()["metadata"], "generation": generation}})
        release.set()
        while len(calls) < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        await pools.stop()
        return calls

    assert run(scenario()) == [3, 13], "one more reconcile, of the newest body"


def test_a_failed_reconcile_is_retried_without_a_new_event(monkeypatch):
    monkeypatch.setattr(workers, "RETRY_BACKOFF_S", (0.01, 0.05))

    async def scenario():
        outcomes = iter([False, RuntimeError("API down"), True])
        calls = []

        async def reconcile(body, worker):
            calls.append(1)
            outcome = next(outcomes)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        pools = Pools(reconcile)
        pools.upsert(pool_body())
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # succeeded: no more retries
        await pools.stop()
        return len(calls)

    assert run(scenario()) == 3


def test_pod_events_kick_the_pools_the_pod_belongs_or_belonged_to():
    async def scenario():
        async def reconcile(body, worker):
            return True

        pools = Pools(reconcile)
        llama = pools.upsert(pool_body("llama"))
        pools.upsert(pool_body("other", selector={"matchLabels": {"app": "other"}}))
        pools.upsert(pool_body("elsewhere", namespace="ns2"))
        llama.pod_names = frozenset({"relabelled"})
        kicked = {
            "match": pools.kick_for_pod("ml", "p1", {"app": "llama"}),
            "was a member": pools.kick_for_pod("ml", "relabelled", {"app": "retired"}),
            "stranger": pools.kick_for_pod("ml", "p2", {"app": "nobody"}),
        }
        await pools.stop()
        return kicked

    assert run(scenario()) == {"match": ["ml/llama"], "was a member": ["ml/llama"], "stranger": []}


def test_forgetting_a_pool_stops_its_worker_mid_reconcile():
    async def scenario():
        entered, cancelled = asyncio.Event(), asyncio.Event()

        async def reconcile(body, worker):
            entered.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return True

        pools = Pools(reconcile)
        pools.upsert(pool_body())
        await entered.wait()
        await pools.forget("ml", "llama")
        return cancelled.is_set(), pools.workers

    assert run(scenario()) == (True, {})


def test_a_status_write_is_no_news_but_a_spec_change_is():
    async def scenario():
        async def reconcile(body, worker):
            return True

        pools = Pools(reconcile)
        pools.upsert(pool_body())
        status_only = {**pool_body(), "status": {"ready": "1/1"}}
        spec_changed = {**pool_body(), "metadata": {**pool_body()["metadata"], "generation": 4}}
        answers = (pools.generation_changed(status_only), pools.generation_changed(spec_changed),
                   pools.generation_changed(pool_body("new")))
        await pools.stop()
        return answers

    assert run(scenario()) == (False, True, True)


def test_a_child_deleted_during_a_reconcile_is_written_again_by_the_next_one():
    async def scenario():
        async def reconcile(body, worker):
            return True

        pools = Pools(reconcile)
        worker = pools.upsert(pool_body())
        started_with = worker.children_key("img")  # a reconcile starts...
        pools.kick("ml", "llama", with_children=True)  # ...a child is deleted meanwhile...
        worker.children_applied_for = started_with  # ...and the reconcile records what it wrote
        due = worker.children_key("img") != worker.children_applied_for
        await pools.stop()
        return due

    assert run(scenario()), "the next reconcile must write the children again"
