"""The operator's pure reconcile step for one pool of many pods: spec, pods and the table in force in; the
routing table, its ConfigMap text and the pool's status out. No API server: the same functions the
operator's reconcile calls (maitred.operator.reconcile), in the same order, on pods shaped as the pod cache
holds them.

    python bench/reconcile.py [--pods 1000 3000] [--repeat 30] [--out bench/results]

Cases, per pool size (median and p90 over --repeat runs, in ms):

- ``one_pod_changed``: a pod went NotReady; the table in force is the one this process wrote last, so its
  text is compared, not parsed (the common case: a pod event);
- ``after_restart``: the same, but the table in force is parsed from the ConfigMap (a process's first
  reconcile of the pool);
- ``nothing_changed``: a resync with no change (the table's version stays, nothing is written).

Writes ``reconcile.json`` into --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import pydantic

from maitred.operator.children import TABLE_KEY, PoolRef, build_configmap
from maitred.operator.reconcile import holds, plan_pool, table_in_configmap
from maitred.operator.status import compute_status, status_patch

SPEC = {"selector": {"matchLabels": {"app": "llama"}}, "port": 8000, "models": ["meta-llama/Llama-3.1-8B-Instruct"],
        "balancing": {"method": "least-load",
                      "weights": [{"selector": {"matchLabels": {"gpu": "h100"}}, "weight": 2}]}}
POOL = PoolRef("ml", "llama", "c0ffee00-0000-4000-8000-000000000001", generation=7)


def pods(count: int, not_ready: int = -1) -> list[dict]:
    """`count` pods of a Deployment as the pod cache holds them; pod `not_ready` is NotReady."""
    out = []
    for i in range(count):
        labels = {"app": "llama", "pod-template-hash": "7d9f5c8b4", **({"gpu": "h100"} if i % 2 else {})}
        out.append({
            "metadata": {"name": f"llama-7d9f5c8b4-{i:05d}", "namespace": "ml", "uid": f"uid-{i}", "labels": labels},
            "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8000}]}]},
            "status": {"podIP": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                       "conditions": [{"type": "Ready", "status": "False" if i == not_ready else "True"}]},
        })
    return out


def step(configmap: dict, known, pool_pods: list[dict], last_status: dict | None) -> tuple:
    """One reconcile's pure work, as reconcile_pool does it between its reads and its writes."""
    previous = table_in_configmap(configmap, known)
    plan = plan_pool(POOL, SPEC, pool_pods, previous)
    write = not holds(configmap, POOL, plan.table_json)
    manifest = build_configmap(POOL, plan.table, plan.table_json) if write else None
    status = status_patch(compute_status(plan.observation, last_status))
    return plan, manifest, status


def measure(count: int, repeat: int) -> dict[str, dict[str, float]]:
    """Median and p90 (ms) of each case for a pool of `count` pods."""
    all_ready, one_down = pods(count), pods(count, not_ready=count // 2)
    first, _, status = step({}, None, all_ready, None)
    configmap = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "maitred"},
                              "ownerReferences": [{"uid": POOL.uid, "controller": True}]},
                 "data": {TABLE_KEY: first.table_json}}
    known = (first.table_json, first.table)
    cases = {
        "one_pod_changed": lambda: step(configmap, known, one_down, status),
        "after_restart": lambda: step(configmap, None, one_down, status),
        "nothing_changed": lambda: step(configmap, known, all_ready, status),
    }
    assert cases["nothing_changed"]()[1] is None, "an unchanged table is not written again"
    assert cases["one_pod_changed"]()[0].table.version == first.table.version + 1
    results = {}
    for name, run in cases.items():
        run()  # warm up
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        results[name] = {"median_ms": round(statistics.median(times), 2),
                         "p90_ms": round(times[int(0.9 * (len(times) - 1))], 2)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    results = {str(n): measure(n, args.repeat) for n in args.pods}
    report = {
        "meta": {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
                 "pydantic": pydantic.VERSION, "cpus": os.cpu_count(), "repeat": args.repeat,
                 "what": "the operator's pure reconcile step for one pool (ms): table, ConfigMap text, status"},
        "pods": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reconcile.json").write_text(json.dumps(report, indent=2) + "\n")
    for n, cases in results.items():
        print(f"{n} pods: " + ", ".join(f"{case} {r['median_ms']:.1f} ms (p90 {r['p90_ms']:.1f})"
                                         for case, r in cases.items()))


if __name__ == "__main__":
    main()
