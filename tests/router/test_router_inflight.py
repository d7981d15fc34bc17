"""In-flight accounting survives connection resets, ejection and recovery, and least-connections
spreads load over a recovered replica again."""

from __future__ import annotations

from collections import Counter

from router_harness import metric, run_load, table, wait_for


def in_flight_everywhere(r) -> dict[str, tuple[int, float]]:
    """{endpoint: (/debug/table inFlight, /metrics maitred_requests_in_flight)}."""
    metrics = r.metrics()
    return {i: (e["inFlight"], metric(metrics, "maitred_requests_in_flight", endpoint=i)) for i, e in r.endpoints().items()}


def test_in_flight_returns_to_zero_after_resets_and_the_recovered_replica_takes_its_share(backends, router):
    a, b, c = backends(*[(n, {"delay_s": 0.1}) for n in "abc"])
    r = router(table([a, b, c], method="least-connections",
                     healthCheck={"periodSeconds": 0.2, "timeoutSeconds": 1, "failureThreshold": 3}))

    # Replica a resets (TCP RST) the next 10 connections it gets: requests and health checks alike.
    a.control(reset_next=10)
    first = run_load(r.url, requests=30, concurrency=6)
    assert [x.status for x in first] == [200] * 30, [x.error or x.body for x in first if x.status != 200]
    assert metric(r.metrics(), "maitred_retries_total", endpoint="a") >= 1, "no request met a reset"

    # Health checks use up the rest of the resets; then a passes a check and is live again.
    wait_for(lambda: a.stats()["resets"] == 10 and r.endpoints()["a"]["healthy"], 15, "replica a to recover")
    state = r.endpoints()
    assert state["a"]["ejectionsTotal"] >= 1, state["a"]
    assert metric(r.metrics(), "maitred_ejections_total", endpoint="a") >= 1
    assert in_flight_everywhere(r) == {"a": (0, 0), "b": (0, 0), "c": (0, 0)}

    second = run_load(r.url, requests=30, concurrency=6)
    assert [x.status for x in second] == [200] * 30
    share = Counter(x.backend for x in second)
    assert 6 <= share["a"] <= 15, f"recovered replica took {share['a']} of 30 ({dict(share)})"
    assert in_flight_everywhere(r) == {"a": (0, 0), "b": (0, 0), "c": (0, 0)}
