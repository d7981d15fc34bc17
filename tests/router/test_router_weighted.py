"""The weighted method splits traffic by weight, whatever the order of the table's list."""

from __future__ import annotations

from collections import Counter

from router_harness import run_load, table


def test_weights_3_to_1_split_traffic_3_to_1_in_either_order_and_weight_0_gets_none(backends, router):
    heavy, light, idle = backends(("heavy", {}), ("light", {}), ("idle", {}))
    r = router(table([(heavy, 3), (light, 1), (idle, 0)], method="weighted"))
    assert {i: e["live"] for i, e in r.endpoints().items()} == {"heavy": True, "light": True, "idle": False}

    for order in ([(heavy, 3), (light, 1), (idle, 0)], [(idle, 0), (light, 1), (heavy, 3)]):
        r.write_table({**table(order, method="weighted"), "version": r.table["version"] + 1})
        before = {x.name: x.stats()["requests"] for x in (heavy, light, idle)}
        results = run_load(r.url, requests=1000, concurrency=8)
        assert [x.status for x in results] == [200] * 1000
        seen = {x.name: x.stats()["requests"] - before[x.name] for x in (heavy, light, idle)}
        assert seen == dict(Counter(x.backend for x in results)) | {"idle": 0}
        share = seen["heavy"] / 1000
        assert abs(share - 0.75) <= 0.05 * 0.75, f"heavy got {share:.1%} with order {[b.name for b, _ in order]}"
        assert seen["idle"] == 0
