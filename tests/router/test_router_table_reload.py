"""Rewriting the routing table under load: no request lost, removed endpoints drained, bad tables
refused while the last good one keeps serving."""

from __future__ import annotations

import threading
import time

from router_harness import metric, run_load, table, wait_for, write_atomically

# A request is routed within microseconds of its pick; this margin covers a busy machine's
# scheduling between the router applying a table and the test seeing it applied.
DRAIN_MARGIN_S = 0.3


def arrivals_after(backend, t_wall: float) -> list[float]:
    return [t for t, _ in backend.stats()["arrivals"] if t > t_wall]


def test_reloads_that_add_and_remove_endpoints_under_load_lose_no_request(backends, router):
    a, b, c, d = backends(*[(n, {"delay_s": 0.15}) for n in "abcd"])
    r = router(table([a, b]))
    results = []
    load = threading.Thread(target=lambda: results.extend(run_load(r.url, duration_s=5.5, concurrency=8)))
    load.start()
    applied: dict[str, float] = {}
    try:
        # Each step: the endpoints of the new version and which one it drops (if any).
        steps = [([a, b, c], None, "round-robin"), ([b, c, d], "a", "least-connections"),
                 ([c, d], "b", "least-connections"), ([c, (d, 3)], None, "weighted")]
        for endpoints, removed, method in steps:
            time.sleep(0.9)
            version = r.table["version"] + 1
            r.write_table({**table(endpoints, method=method), "version": version})
            applied[removed or f"v{version}"] = time.time()
    finally:
        load.join()

    assert len(results) > 100, "the load ran too slowly to mean anything"
    failures = [(x.status, x.error, x.body[:200]) for x in results if x.status != 200]
    assert not failures, f"{len(failures)} of {len(results)} requests lost: {failures[:3]}"

    state = r.debug()
    assert state["table"]["version"] == 5 and state["tableError"] is None
    assert [e["id"] for e in state["endpoints"]] == ["c", "d"]
    # Removed endpoints finish what they hold and get nothing new.
    assert arrivals_after(a, applied["a"] + DRAIN_MARGIN_S) == []
    assert arrivals_after(b, applied["b"] + DRAIN_MARGIN_S) == []
    # Added ones take traffic at once.
    assert len(arrivals_after(c, applied["v2"])) > 10
    assert len(arrivals_after(d, applied["a"])) > 10
    assert sum(x.stats()["requests"] for x in (a, b, c, d)) == len(results)
    assert metric(r.metrics(), "maitred_table_version") == 5
    wait_for(lambda: all(e["inFlight"] == 0 for e in r.endpoints().values()), 2, "in-flight to drain")


def test_a_bad_table_file_keeps_the_last_good_table_in_force(backends, router):
    a, b = backends(("a", {}), ("b", {}))
    r = router(table([a]))
    good = r.table

    write_atomically(r.table_path, b'{"pool": "test/pool", "version": 2, "endpoints": [')
    error = wait_for(lambda: r.debug()["tableError"], 5, "the router to refuse the table")
    assert "not valid JSON" in error
    state = r.debug()
    assert state["table"]["version"] == 1 and [e["id"] for e in state["endpoints"]] == ["a"]
    assert r.client.post("/v1/chat/completions", json={"model": "test-model", "messages": []}).status_code == 200
    assert r.client.get("/readyz").status_code == 200

    bad_weight = {**table([a, b]), "version": 3}
    bad_weight["endpoints"][1]["weight"] = -1
    write_atomically(r.table_path, bad_weight)
    error = wait_for(lambda: "endpoints.1.weight" in (r.debug()["tableError"] or "") and r.debug()["tableError"], 5,
                     "the router to name the bad field")
    assert "greater than or equal to 0" in error
    assert r.debug()["table"]["version"] == 1

    r.write_table({**good, "endpoints": [a.endpoint(), b.endpoint()], "version": 4})
    state = r.debug()
    assert state["tableError"] is None
    assert [e["id"] for e in state["endpoints"]] == ["a", "b"]
    metrics = r.metrics()
    assert metric(metrics, "maitred_table_loads_total", result="rejected") == 2
    assert metric(metrics, "maitred_table_loads_total", result="applied") == 2


def test_a_deleted_table_file_keeps_the_last_good_table(backends, router):
    (a,) = backends(("a", {}))
    r = router(table([a]))
    r.table_path.unlink()
    error = wait_for(lambda: r.debug()["tableError"], 5, "the router to notice the missing file")
    assert "does not exist" in error
    assert r.client.post("/v1/chat/completions", json={"model": "test-model", "messages": []}).status_code == 200
    r.write_table({**r.table, "version": 2})
    assert r.debug()["tableError"] is None


def configmap_volume_update(mount, table: dict, stamp: str) -> None:
    """Update `mount` as the kubelet updates a ConfigMap volume: a new hidden folder holding the files,
    then the `..data` symlink swapped to it by a rename, then the old folder removed."""
    import json
    import os
    import shutil

    folder = mount / f"..{stamp}"
    folder.mkdir()
    (folder / "table.json").write_text(json.dumps(table))
    old = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
    os.symlink(folder.name, mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")
    if not (mount / "table.json").is_symlink():
        os.symlink("..data/table.json", mount / "table.json")
    if old is not None:
        shutil.rmtree(mount / old)


def test_a_table_on_a_configmap_volume_reloads_at_every_update(backends, router, tmp_path):
    a, b, c = backends(("a", {}), ("b", {}), ("c", {}))
    mount = tmp_path / "mount"
    mount.mkdir()
    first = table([a])
    configmap_volume_update(mount, first, "2026_12_01_a")
    r = router(first, table_path=mount / "table.json")

    for n, (backend, stamp) in enumerate([(b, "2026_12_01_b"), (c, "2026_12_01_c")], start=2):
        configmap_volume_update(mount, {**table([backend]), "version": n}, stamp)
        r.wait_version(n)
        results = run_load(r.url, requests=10, concurrency=2)
        assert {x.backend for x in results} == {backend.name}, f"update {n} not applied"
    assert r.debug()["tableError"] is None
