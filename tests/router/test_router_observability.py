"""What the router tells about itself: the admin port, the LLM metrics (model label, TTFT, inter-token and
end-to-end latency, tokens from usage), the log format, traceparent, and that every metric the chart's
Grafana dashboard and alerts query exists in a live router's /metrics.

Real routers in front of `maitred sim` (vLLM's usage and stream_options.include_usage) and the
purpose-built backends; the expected token counts are those the responses themselves carried.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import orjson
import promql_parser
from prometheus_client.parser import text_string_to_metric_families
from router_harness import MODEL, ROUTER_WORKERS, SIM_MODEL, chat_body, metric, table, wait_for

CHART = Path(__file__).resolve().parents[2] / "helm" / "maitred"
DASHBOARD = CHART / "files" / "dashboards" / "maitred-router.json"
RULES = CHART / "templates" / "prometheusrule.yaml"


def sim_table(*sims, **extra) -> dict:
    return {**table([]), "models": [SIM_MODEL], "endpoints": [s.endpoint() for s in sims], **extra}


def sim_body(text: str, stream: bool = False, include_usage: bool | None = None, **extra) -> dict:
    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 12,
            "stream": stream, **extra}
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    return body


def stream_events(resp: httpx.Response) -> list[dict]:
    """The JSON objects of an SSE response's data events ([DONE] left out)."""
    return [orjson.loads(line[6:]) for line in resp.text.splitlines()
            if line.startswith("data: {")]


def usage_of(resp: httpx.Response, stream: bool) -> dict | None:
    if not stream:
        return resp.json().get("usage")
    usages = [e["usage"] for e in stream_events(resp) if e.get("usage")]
    return usages[-1] if usages else None


def test_metrics_and_debug_table_are_on_the_admin_port_and_404_on_the_traffic_port(backends, router):
    (a,) = backends(("a", {}))
    r = router(table([a]))
    for path in ("/metrics", "/debug/table"):
        refused = r.client.get(path)
        assert refused.status_code == 404, (path, refused.text)
        assert refused.headers["x-maitred-error"] == "not_found"
        assert refused.json()["error"]["code"] == "not_found" and "admin port" in refused.json()["error"]["message"]
    assert "maitred_table_version 1.0" in r.admin.get("/metrics").text
    assert r.admin.get("/debug/table").json()["table"]["version"] == 1
    # Probes stay on the traffic port (and the admin port answers them too).
    for client in (r.client, r.admin):
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    # The admin port proxies nothing.
    before = a.stats()["requests"]
    on_admin = r.admin.post("/v1/chat/completions", json=chat_body())
    assert on_admin.status_code == 404 and on_admin.json()["error"]["code"] == "not_found"
    assert a.stats()["requests"] == before
    assert r.client.post("/v1/chat/completions", json=chat_body()).status_code == 200


def test_admin_port_0_keeps_metrics_and_debug_table_on_the_traffic_port(backends, router):
    (a,) = backends(("a", {}))
    r = router(table([a]), "--admin-port", "0")
    assert r.client.get("/metrics").status_code == 200
    assert r.client.get("/debug/table").json()["table"]["version"] == 1
    assert "maitred_requests_in_flight" in r.client.get("/metrics").text


def test_the_admin_port_cannot_be_the_traffic_port(tmp_path):
    import subprocess

    path = tmp_path / "t.json"
    path.write_text(json.dumps(table([])))
    done = subprocess.run(["maitred", "router", "--table", str(path), "--port", "18080", "--admin-port", "18080"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "--admin-port" in done.stdout + done.stderr


def test_llm_metrics_come_from_the_answers_usage_and_streams_alone_have_ttft(fleet, router):
    (sim,) = fleet.sims("s")
    r = router(sim_table(sim))
    cases = [(False, None), (True, True), (True, False), (False, None), (True, True)]
    expected = {"prompt": 0, "completion": 0, "cached": 0}
    elapsed_streams = []
    for i, (stream, include_usage) in enumerate(cases):
        # The same document opens every prompt, so that the simulator's prefix cache serves some of it.
        resp = r.client.post("/v1/chat/completions",
                             json=sim_body("a long shared document " * 40 + f"question {i}", stream, include_usage))
        assert resp.status_code == 200, resp.text
        if stream:
            elapsed_streams.append(resp.elapsed.total_seconds())
        usage = usage_of(resp, stream)
        assert (usage is not None) == (include_usage is not False), (stream, include_usage, usage)
        if usage:
            expected["prompt"] += usage["prompt_tokens"]
            expected["completion"] += usage["completion_tokens"]
            expected["cached"] += usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    assert expected["cached"] > 0, "the simulator's prefix cache served nothing: the test shows less than it should"

    m = r.metrics()
    labels = {"endpoint": "s", "model": SIM_MODEL}
    assert metric(m, "maitred_requests_total", status="200", **labels) == 5
    assert metric(m, "maitred_request_duration_seconds_count", **labels) == 5
    assert metric(m, "maitred_ttft_seconds_count", **labels) == 3  # the streams, not the whole answers
    assert metric(m, "maitred_inter_token_latency_seconds_count", **labels) == 3
    assert metric(m, "maitred_prompt_tokens_total", **labels) == expected["prompt"]
    assert metric(m, "maitred_completion_tokens_total", **labels) == expected["completion"]
    assert metric(m, "maitred_cached_prompt_tokens_total", **labels) == expected["cached"]
    # Each stream's inter-token latency spans 11 gaps between its first and last chunk, all of it inside
    # the time the client waited for the stream.
    assert 0 < metric(m, "maitred_inter_token_latency_seconds_sum", **labels) * 11 <= sum(elapsed_streams)
    assert metric(m, "maitred_ttft_seconds_sum", **labels) <= sum(elapsed_streams)
    # The +Inf bucket holds every observation.
    assert metric(m, "maitred_ttft_seconds_bucket", le="+Inf", **labels) == 3


def test_the_model_label_is_bounded(backends, router):
    (a,) = backends(("a", {}))
    listed = router(table([a]))  # the table lists MODEL
    assert listed.client.post("/v1/chat/completions", json={**chat_body(), "model": "not-listed"}).status_code == 404
    assert listed.client.post("/v1/chat/completions", content=b"{not json").status_code == 400
    assert listed.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    m = listed.metrics()
    assert metric(m, "maitred_requests_total", model="other", endpoint="none", status="404") == 1
    assert metric(m, "maitred_requests_total", model="other", endpoint="none", status="400") == 1
    assert metric(m, "maitred_requests_total", model=MODEL, endpoint="a", status="200") == 1
    assert not [ls for (n, ls), _ in m.items() if dict(ls).get("model") == "not-listed"]

    # No models in the table: names as the clients give them, up to 32 per worker process, then `other`.
    unlisted = router({**table([a]), "models": []})
    names = [f"model-{i}" for i in range(70)]
    for name in names:
        assert unlisted.client.post("/v1/chat/completions", json={**chat_body(), "model": name}).status_code == 200
    m = unlisted.metrics()
    seen = {dict(ls)["model"]: v for (n, ls), v in m.items() if n == "maitred_requests_total"}
    assert sum(seen.values()) == 70
    assert set(seen) <= set(names) | {"other"} and "other" in seen
    assert len(seen) <= 32 * ROUTER_WORKERS + 1


def test_traceparent_and_tracestate_reach_the_backend_unchanged(backends, router):
    (a,) = backends(("a", {}))
    r = router(table([a]))
    trace = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
             "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"}
    resp = r.client.post("/v1/upload", content=b"{}", headers=trace)
    assert resp.status_code == 200
    received = dict(resp.json()["headers"])
    assert {k: received.get(k) for k in trace} == trace


def test_json_log_lines_share_one_schema_and_the_access_line_never_holds_the_prompt_or_key(fleet, router):
    (sim,) = fleet.sims("s")
    r = router(sim_table(sim), "--access-log", "--log-level", "info", "--log-format", "json")
    secret_key, secret_prompt = "sk-very-secret-key-123", "MY SECRET PROMPT 42"
    resp = r.client.post("/v1/chat/completions", json=sim_body(secret_prompt, True, True),
                         headers={"Authorization": f"Bearer {secret_key}", "x-request-id": "req-obs-1"})
    assert resp.status_code == 200
    usage = usage_of(resp, True)

    def access_line():
        for line in r.log_path.read_text().splitlines():
            record = json.loads(line)
            if record["logger"] == "maitred.access" and record.get("requestId") == "req-obs-1":
                return record
        return None

    line = wait_for(access_line, 10, "the access line")
    text = r.log_path.read_text()
    for raw in text.splitlines():  # every line, uvicorn's and the supervisor's too, is one JSON object
        record = json.loads(raw)
        assert {"timestamp", "level", "logger", "message"} <= set(record), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"]), record
    assert secret_key not in text and "SECRET PROMPT" not in text
    assert line["level"] == "info" and line["message"] == "POST /v1/chat/completions 200"
    assert {k: line[k] for k in ("model", "endpoint", "status", "attempts", "stream")} == {
        "model": SIM_MODEL, "endpoint": "s", "status": 200, "attempts": 1, "stream": True}
    assert (line["promptTokens"], line["completionTokens"], line["cachedTokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"], usage["prompt_tokens_details"]["cached_tokens"])
    assert line["bytes"] == len(resp.content)
    assert 0 < line["ttftMs"] <= line["durationMs"]
    if ROUTER_WORKERS > 1:
        assert line["worker"] in range(ROUTER_WORKERS)


def test_text_log_lines_carry_the_access_fields_as_key_value(backends, router):
    (a,) = backends(("a", {}))
    r = router(table([a]), "--access-log", "--log-level", "info", "--log-format", "text")
    assert r.client.post("/v1/chat/completions", json=chat_body(), headers={"x-request-id": "req-text-1"}).status_code == 200
    line = wait_for(lambda: next((x for x in r.log_path.read_text().splitlines() if "requestId=req-text-1" in x), None),
                    10, "the access line")
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO maitred\.access( \[worker \d\])?: "
                    r"POST /v1/chat/completions 200 ", line), line
    for field in (f"model={MODEL}", "endpoint=a", "status=200", "attempts=1", "stream=false", "promptTokens=",
                  "completionTokens=3", "bytes="):
        assert field in line, (field, line)


def dashboard_queries() -> list[str]:
    """The PromQL of the dashboard's panels and variables, Grafana's variables filled in as Grafana does."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if isinstance(variable.get("query"), dict):  # label_values(SELECTOR, label): Grafana's, around PromQL
            query = re.fullmatch(r"label_values\((.*), *\w+\)", variable["query"]["query"])
            exprs.append(query.group(1))
    return [e.replace("$__rate_interval", "1m") for e in exprs]


def rule_queries() -> list[str]:
    """The PromQL of the chart's alert rules (the `expr: |` blocks of the template, helm's values as 1)."""
    lines, exprs = RULES.read_text().splitlines(), []
    for i, line in enumerate(lines):
        if line.strip() == "expr: |":
            indent, body = len(line) - len(line.lstrip()), []
            for more in lines[i + 1:]:
                if more.strip() and len(more) - len(more.lstrip()) <= indent:
                    break
                body.append(more)
            exprs.append(re.sub(r"\{\{.*?\}\}", "1", "\n".join(body)))
    return exprs


def selector_names(node) -> set[str]:
    """The metric names of every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        return {node.name} if node.name else set()
    if isinstance(node, promql_parser.MatrixSelector):
        return selector_names(node.vector_selector)
    children = [getattr(node, a, None) for a in ("lhs", "rhs", "expr", "param")] + list(getattr(node, "args", None) or [])
    return set().union(*(selector_names(c) for c in children if c is not None))


def query_names() -> dict[str, set[str]]:
    """The metric names the chart's dashboard queries and its alert rules use, by where (PromQL parsed)."""
    return {where: set().union(*(selector_names(promql_parser.parse(e)) for e in exprs))
            for where, exprs in (("dashboard", dashboard_queries()), ("alerts", rule_queries()))}


def test_every_metric_the_dashboard_and_the_alerts_query_is_in_a_live_routers_metrics(fleet, backends, router):
    (sim,) = fleet.sims("s")
    (bad,) = backends(("bad", {"status": 502}))
    r = router({**sim_table(sim), "endpoints": [sim.endpoint(), bad.endpoint()], "method": "round-robin",
                "retries": {"attempts": 2, "onStatus": [502]}})
    for stream in (False, True):
        assert r.client.post("/v1/chat/completions", json=sim_body("hello", stream, True if stream else None)
                             ).status_code == 200
    # Round-robin sends some request to `bad` first: its 502 is retried on the simulator.
    for _ in range(20):
        if metric(r.metrics(), "maitred_retries_total"):
            break
        assert r.client.post("/v1/chat/completions", json=sim_body("again")).status_code == 200
    text = r.metrics_text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {s.name for f in families.values() for s in f.samples}

    def exported(name: str) -> bool:
        if name not in samples:
            return False
        for suffix in ("_bucket", "_sum", "_count"):  # a histogram's series: the family must be a histogram
            if name.endswith(suffix) and name[:-len(suffix)] in families:
                return families[name[:-len(suffix)]].type == "histogram"
        return True

    names = query_names()
    assert len(names["dashboard"]) >= 10 and len(names["alerts"]) >= 4, names
    assert len(rule_queries()) == 4
    for where, used in names.items():
        missing = sorted(n for n in used if not exported(n))
        assert not missing, f"the {where} queries metrics a live router does not export: {missing}"
