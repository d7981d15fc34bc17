"""A replica killed under load: requests that had not reached it go elsewhere and succeed."""

from __future__ import annotations

import threading
import time
from collections import Counter

from router_harness import metric, run_load, table, wait_for


def test_replica_killed_under_load_only_its_in_flight_requests_may_fail(backends, router):
    a, b, c = backends(*[(n, {"delay_s": 0.2}) for n in "abc"])
    r = router(table([a, b, c], method="least-connections", retries={"attempts": 2},
                     healthCheck={"periodSeconds": 0.5, "timeoutSeconds": 1, "failureThreshold": 3}))
    results = []
    load = threading.Thread(target=lambda: results.extend(run_load(r.url, duration_s=5, concurrency=9)))
    load.start()
    try:
        time.sleep(1.5)
        wait_for(lambda: b.stats()["inFlight"] > 0, 5, "replica b to hold requests")
        killed_at = time.monotonic()
        b.kill()
    finally:
        load.join()

    after = [x for x in results if x.started > killed_at]
    assert len(after) > 30, "too little load after the kill to mean anything"
    lost_after = [(x.status, x.error, x.body[:200]) for x in after if x.status != 200]
    assert not lost_after, f"requests started after the kill failed: {lost_after[:3]}"
    assert Counter(x.backend for x in after).keys() <= {"a", "c"}
    # Only requests that were in flight at the kill may fail, and at most one per worker.
    failed = [x for x in results if x.status != 200]
    assert all(x.started <= killed_at <= x.ended for x in failed)
    assert len(failed) <= 9

    wait_for(lambda: not r.endpoints()["b"]["live"], 10, "the killed replica to be taken out")
    metrics = r.metrics()
    assert [metric(metrics, "maitred_endpoint_healthy", endpoint=i) for i in "abc"] == [1, 0, 1]
    assert metric(metrics, "maitred_ejections_total", endpoint="b") == 1
    assert r.client.get("/readyz").status_code == 200
    wait_for(lambda: all(e["inFlight"] == 0 for e in r.endpoints().values()), 2, "in-flight to drain")
