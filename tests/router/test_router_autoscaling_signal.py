"""The load an autoscaler reads from a router: `/debug/load` and the pool-load metrics, against real
`maitred sim` replicas that run one request at a time (`--max-num-seqs 1`), so that the rest queue; and
every metric the autoscaling examples (examples/autoscaling/, KEDA and prometheus-adapter) query exists
in a live router's /metrics.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import httpx
import promql_parser
import yaml
from router_harness import SIM_MODEL, metric, table, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "autoscaling"
REQUESTS = 8


def sim_table(*sims, **extra) -> dict:
    return {**table([]), "models": [SIM_MODEL], "endpoints": [s.endpoint() for s in sims], **extra}


def long_chat(url: str, results: list) -> None:
    """A chat request long enough (400 tokens, about 2.5 s on the simulator) to keep its replica busy."""
    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "tell me a long story"}],
            "max_tokens": 400, "ignore_eos": True}
    with httpx.Client(base_url=url, timeout=120, trust_env=False) as client:
        results.append(client.post("/v1/chat/completions", json=body).status_code)


def test_debug_load_and_the_pool_metrics_report_the_replicas_queues(fleet, router):
    sims = fleet.sims("a", "b", flags=("--max-num-seqs", "1"))
    # least-connections reads no load report: scrapeLoad alone makes the router scrape them.
    r = router(sim_table(*sims, scrapeLoad=True))
    wait_for(lambda: r.admin.get("/debug/load").json()["reporting"] == 2, 10, "both replicas to report")
    results: list[int] = []
    threads = [threading.Thread(target=long_chat, args=(r.url, results), daemon=True) for _ in range(REQUESTS)]
    for thread in threads:
        thread.start()

    def queued() -> dict | None:
        # One request runs on each replica, the other six wait in their queues.
        report = r.admin.get("/debug/load").json()
        ok = (report["inFlight"], report["running"], report["waiting"]) == (REQUESTS, 2.0, REQUESTS - 2.0)
        return report if ok else None

    report = wait_for(queued, 20, f"{REQUESTS} requests in flight, 2 running, {REQUESTS - 2} waiting")
    assert report["pool"] == "test/pool" and report["tableVersion"] == 1
    assert (report["endpoints"], report["liveEndpoints"], report["reporting"], report["held"]) == (2, 2, 2, 0)
    assert 0 < report["kvCacheUsage"] <= 1
    m = r.metrics()
    # The figures of a later scrape: the queues move as requests end, but not faster than one at a time.
    assert metric(m, "maitred_pool_requests_running") == 2
    assert REQUESTS - 4 <= metric(m, "maitred_pool_requests_waiting") <= REQUESTS - 2
    assert 0 < metric(m, "maitred_pool_kv_cache_usage_ratio") <= 1
    assert metric(m, "maitred_endpoints_live") == 2 and metric(m, "maitred_requests_held") == 0
    for thread in threads:
        thread.join(120)
    assert results == [200] * REQUESTS
    wait_for(lambda: r.admin.get("/debug/load").json()["waiting"] == 0, 10, "the queues to empty")


def test_with_no_load_report_the_pool_metrics_have_no_sample(backends, router):
    (a,) = backends(("a", {}))  # serves no /metrics, and the method reads none anyway
    r = router(table([a]))
    report = r.admin.get("/debug/load").json()
    assert (report["liveEndpoints"], report["reporting"]) == (1, 0)
    assert (report["waiting"], report["running"], report["kvCacheUsage"]) == (None, None, None)
    text = r.metrics_text()
    for name in ("maitred_pool_requests_waiting", "maitred_pool_requests_running", "maitred_pool_kv_cache_usage_ratio"):
        assert f"# TYPE {name} gauge" in text
        assert not re.search(rf"^{name}[ {{]", text, re.M), f"{name} has a sample though nothing reports"
    assert "NaN" not in text
    assert metric(r.metrics(), "maitred_endpoints_live") == 1


def example_queries() -> list[str]:
    """The PromQL of examples/autoscaling: the KEDA trigger's query, and the adapter rule in the HPA file's
    comment (its <<.LabelMatchers>> filled in as prometheus-adapter does)."""
    keda = yaml.safe_load((EXAMPLES / "keda-scaledobject.yaml").read_text())
    queries = [t["metadata"]["query"] for t in keda["spec"]["triggers"] if t["type"] == "prometheus"]
    hpa_text = (EXAMPLES / "hpa-prometheus-adapter.yaml").read_text()
    hpa = yaml.safe_load(hpa_text)
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "AIServicePool"
    lines = hpa_text.splitlines()
    start = lines.index("#   rules:")
    end = lines.index("#", start)  # the rule ends at the first empty comment line
    commented = "\n".join(line.removeprefix("# ") for line in lines[start:end])
    rules = yaml.safe_load(commented)["rules"]["external"]
    names = {m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert {rule["name"]["as"] for rule in rules} == names
    queries += [rule["metricsQuery"].replace("<<.LabelMatchers>>", 'namespace="default", pool="llama"')
                for rule in rules]
    queries += [rule["seriesQuery"] for rule in rules]
    return queries


def test_every_metric_the_autoscaling_examples_query_is_in_a_live_routers_metrics(fleet, router):
    (sim,) = fleet.sims("s")
    r = router(sim_table(sim, scrapeLoad=True))
    wait_for(lambda: r.admin.get("/debug/load").json()["reporting"] == 1, 10, "the replica to report")
    queries = example_queries()
    assert len(queries) == 3
    for query in queries:
        promql_parser.parse(query)  # valid PromQL, or this raises
    used = set().union(*(re.findall(r"maitred_[a-z_]+", q) for q in queries))
    assert {"maitred_pool_requests_waiting", "maitred_requests_held"} <= used
    samples = {name for name, _ in r.metrics()}
    assert not sorted(used - samples), f"the examples query metrics a live router does not export: {used - samples}"
