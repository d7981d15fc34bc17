"""`maitred router --workers 2`: one router as far as a user can tell.

Open requests are counted across workers, a table reaches every worker, health checks run once
per router, an ejection in one worker holds in all, and a worker that dies is started again.
(The rest of the router suite also runs against two-worker routers: MAITRED_TEST_ROUTER_WORKERS=2.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import httpx

from router_harness import MODEL, chat_body, metric, run_load, table, wait_for


def open_requests(url: str, count: int, hold_s: float):
    """Start `count` requests, each on its own connection, and return (tasks, clients) to close later."""

    async def one(client: httpx.AsyncClient) -> int:
        resp = await client.post("/v1/chat/completions", json=chat_body(), timeout=hold_s + 30)
        return resp.status_code

    clients = [httpx.AsyncClient(base_url=url, trust_env=False) for _ in range(count)]
    return [asyncio.create_task(one(c)) for c in clients], clients


def test_in_flight_counts_the_open_requests_of_both_workers(backends, router):
    (a,) = backends(("a", {"delay_s": 8}))
    r = router(table([a], method="least-connections"), "--workers", "2")

    async def scenario() -> tuple[dict, float, list[int]]:
        tasks, clients = open_requests(r.url, 12, hold_s=8)
        try:
            # Each request on its own connection; the kernel spreads connections over the workers.
            def all_open():
                state = r.endpoints()["a"]
                return state["inFlight"] == 12 and state

            state = await asyncio.to_thread(wait_for, all_open, 6, "12 requests in flight")
            in_metrics = metric(await asyncio.to_thread(r.metrics), "maitred_requests_in_flight", endpoint="a")
            statuses = await asyncio.gather(*tasks)
            return state, in_metrics, statuses
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))

    state, in_metrics, statuses = asyncio.run(scenario())
    assert state["inFlight"] == 12 and in_metrics == 12
    by_worker = state["inFlightByWorker"]
    assert sum(by_worker) == 12 and min(by_worker) > 0, f"one worker took every connection: {by_worker}"
    assert statuses == [200] * 12
    assert r.endpoints()["a"]["inFlight"] == 0 and metric(r.metrics(), "maitred_requests_in_flight", endpoint="a") == 0
    assert metric(r.metrics(), "maitred_requests_total", endpoint="a", status="200") == 12


def test_a_new_table_reaches_both_workers_within_a_second(backends, router):
    a, b = backends(("a", {}), ("b", {}))
    r = router(table([a]), "--workers", "2")
    r.update_table(endpoints=[b.endpoint()])  # waits until every worker shows the new version

    workers = r.debug()["workers"]
    assert [w["tableVersion"] for w in workers] == [2, 2]
    lags = [w["tableLagMs"] for w in workers]
    assert all(lag is not None and 0 <= lag < 1000 for lag in lags), lags
    results = run_load(r.url, requests=40, concurrency=8)
    assert Counter(x.backend for x in results) == {"b": 40}


def test_health_checks_run_once_per_router_not_once_per_worker(backends, router):
    (a,) = backends(("a", {}))
    period_s = 0.2
    r = router(table([a], healthCheck={"periodSeconds": period_s, "timeoutSeconds": 1}), "--workers", "2")
    before, started = a.stats()["healthChecks"], time.monotonic()
    time.sleep(3)
    checks, elapsed = a.stats()["healthChecks"] - before, time.monotonic() - started
    # One checker makes at most elapsed/period checks (fewer on a busy machine); two would make twice that.
    assert 0 < checks <= elapsed / period_s * 1.3 + 2, f"{checks} checks in {elapsed:.1f} s at a {period_s} s period"
    assert r.debug()["workers"][0]["pid"] != r.debug()["workers"][1]["pid"]


def test_an_ejection_by_one_worker_holds_in_every_worker_and_counts_once(backends, router):
    good, bad = backends(("good", {}), ("bad", {"status": 500}))
    r = router(table([good, bad], method="round-robin", retries={"attempts": 0},
                     healthCheck={"periodSeconds": 30, "timeoutSeconds": 1, "failureThreshold": 3}),
               "--workers", "2")
    wait_for(lambda: all(e["healthReason"] != "not checked yet" for e in r.endpoints().values()), 10,
             "the first health checks")
    run_load(r.url, requests=20, concurrency=4)  # the bad replica fails 3 in a row somewhere and is ejected
    assert not r.endpoints()["bad"]["live"], r.endpoints()["bad"]
    after = run_load(r.url, requests=40, concurrency=8)  # fresh connections, over both workers
    assert Counter(x.backend for x in after) == {"good": 40}
    assert metric(r.metrics(), "maitred_ejections_total", endpoint="bad") == 1


def test_a_killed_worker_is_started_again_and_the_router_keeps_serving(backends, router):
    (a,) = backends(("a", {}))
    r = router(table([a]), "--workers", "2")
    victim = r.debug()["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)

    def replaced():
        workers = r.debug()["workers"]
        return workers[0]["pid"] not in (victim, 0) and workers[0]["tableVersion"] == 1

    wait_for(replaced, 20, "worker 0 to be started again")
    results = run_load(r.url, requests=40, concurrency=8)
    assert [x.status for x in results] == [200] * 40


def test_workers_stop_when_their_supervisor_is_killed(backends, router):
    (a,) = backends(("a", {}))
    r = router(table([a]), "--workers", "2")
    pids = [w["pid"] for w in r.debug()["workers"]]
    os.kill(r.proc.pid, signal.SIGKILL)  # the supervisor: the `maitred router` process itself
    r.proc.wait()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(lambda: all(gone(pid) for pid in pids), 10, "the orphaned workers to stop")


def test_the_models_list_and_bad_requests_are_answered_by_any_worker(backends, router):
    (a,) = backends(("a", {}))
    r = router(table([a]), "--workers", "2")
    for _ in range(6):
        with httpx.Client(base_url=r.url, trust_env=False) as fresh:  # a new connection each time
            assert fresh.get("/v1/models").json()["data"][0]["id"] == MODEL
            bad = fresh.post("/v1/chat/completions", content=b"{not json")
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
