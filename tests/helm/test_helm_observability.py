"""The chart's monitoring: the PodMonitor on the routers' admin port, the Grafana dashboard ConfigMap and
the PrometheusRule alerts, as helm renders them (no cluster). That every metric they query exists in a
live router's /metrics is tests/router/test_router_observability.py."""

from __future__ import annotations

import json
import re

import promql_parser
from helm_harness import CHART, find, one

from maitred.operator.children import ROUTER_ADMIN_PORT, ROUTER_LABEL, build_router_deployment, PoolRef
from maitred.operator.models import PoolSpec

DASHBOARD = CHART / "files" / "dashboards" / "maitred-router.json"
MONITORING = ("podMonitor.enabled=true,grafanaDashboard.enabled=true,prometheusRule.enabled=true")


def test_monitoring_is_off_by_default(helm):
    kinds = {d["kind"] for d in helm.template()}
    assert not kinds & {"PodMonitor", "ServiceMonitor", "PrometheusRule", "ConfigMap"}


def test_the_pod_monitor_scrapes_the_admin_port_of_the_router_pods_the_operator_writes(helm):
    monitor = one(helm.template("--set", MONITORING), "PodMonitor")
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("admin", "/metrics")
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_maitred_dev_router_of"], "targetLabel": "pool"} \
        in endpoint["relabelings"]
    # The router pods the operator writes match the selector, and their admin port has that name.
    pod = build_router_deployment(PoolRef("ml", "llama", "uid"), PoolSpec.model_validate(
        {"endpoints": [{"url": "http://10.0.0.1:8000"}]}))["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["selector"]["matchExpressions"] == [{"key": ROUTER_LABEL, "operator": "Exists"}]
    (container,) = pod["spec"]["containers"]
    assert {"name": "admin", "containerPort": ROUTER_ADMIN_PORT, "protocol": "TCP"} in container["ports"]
    assert container["args"][container["args"].index("--admin-port") + 1] == str(ROUTER_ADMIN_PORT)


def test_the_dashboard_is_a_configmap_for_grafanas_sidecar_with_promql_panels(helm):
    docs = helm.template("--set", MONITORING, "--set", "grafanaDashboard.namespace=monitoring",
                         "--set", "grafanaDashboard.annotations.grafana_folder=LLM")
    configmap = one(docs, "ConfigMap", "maitred-dashboard", "monitoring")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    (key,) = configmap["data"]
    dashboard = json.loads(configmap["data"][key])
    assert dashboard == json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "maitred-router" and dashboard["title"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 12
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert re.search(r"\bmaitred_[a-z_]+", target["expr"]), (panel["title"], target["expr"])
            promql_parser.parse(target["expr"].replace("$__rate_interval", "1m"))  # raises on bad PromQL
            assert target["datasource"]["uid"] == "${datasource}"
    titles = {p["title"] for p in panels}
    assert {"Time to first token", "Inter-token latency", "End-to-end request latency", "Tokens/s"} <= titles
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "pool", "model"}


def test_the_alerts_cover_no_endpoint_errors_ejections_and_ttft_with_the_thresholds_given(helm):
    docs = helm.template("--set", MONITORING, "--set", "prometheusRule.errorRatio=0.1,prometheusRule.ttftP99Seconds=2.5",
                         "--set", "prometheusRule.alertLabels.team=ml,prometheusRule.labels.release=prom")
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(rules) == {"MaitredNoEndpointAvailable", "MaitredHighErrorRate", "MaitredEndpointEjected",
                          "MaitredHighTimeToFirstToken"}
    assert rules["MaitredNoEndpointAvailable"]["labels"] == {"severity": "critical", "team": "ml"}
    assert "maitred_endpoint_healthy" in rules["MaitredNoEndpointAvailable"]["expr"]
    assert rules["MaitredHighErrorRate"]["expr"].rstrip().endswith("> 0.1")
    assert "maitred_ejections_total" in rules["MaitredEndpointEjected"]["expr"]
    ttft = rules["MaitredHighTimeToFirstToken"]["expr"]
    assert "histogram_quantile(0.99" in ttft and "maitred_ttft_seconds_bucket" in ttft and ttft.rstrip().endswith("> 2.5")
    for alert in rules.values():
        promql_parser.parse(alert["expr"])  # raises on bad PromQL
        # Prometheus' templates reach the rule unrendered by helm.
        assert "{{ $labels.namespace }}" in alert["annotations"]["summary"] or "{{ $labels.endpoint }}" in \
            alert["annotations"]["summary"], alert["annotations"]
        assert "by (namespace, pool" in alert["expr"]


def test_watched_namespaces_limit_the_pod_monitor(helm):
    docs = helm.template("--set", MONITORING, "--set", "watchNamespaces={ml}")
    assert one(docs, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    assert find(docs, "ServiceMonitor") == []
