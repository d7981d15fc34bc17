"""The children of a pool as manifests: owned by the pool, named after it, wired to each other."""

from __future__ import annotations

import pytest

import orjson

from maitred.operator.children import (
    PoolRef, build_children, build_configmap, build_deployment, build_router_deployment, build_service)
from maitred.operator.models import PoolSpec
from maitred.operator.routing import build_routing_table
from maitred.operator.selectors import matches

POOL = PoolRef(namespace="ml", name="llama", uid="u-1", generation=1)
TEMPLATE = {"metadata": {"labels": {"app": "llama", "team": "a"}},
            "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai", "ports": [{"containerPort": 8000}]}]}}


def pool_spec(**kw) -> PoolSpec:
    return PoolSpec.model_validate({"selector": {"matchLabels": {"app": "llama"}}, "template": TEMPLATE, **kw})


def test_every_child_is_owned_by_the_pool_as_its_controller():
    for child in build_children(POOL, pool_spec()) + [build_configmap(POOL, build_routing_table(pool_spec(), []))]:
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("AIServicePool", "llama", "u-1", True)
        assert child["metadata"]["namespace"] == "ml"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "maitred"


def test_the_deployment_runs_the_template_with_the_pool_replicas_and_its_pods_match_the_selector():
    deployment = build_deployment(POOL, pool_spec(replicas=4))

    assert deployment["metadata"]["name"] == "llama"
    assert deployment["spec"]["replicas"] == 4
    assert deployment["spec"]["selector"] == {"matchLabels": {"app": "llama"}}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels == {"app": "llama", "team": "a", "maitred.dev/pool": "llama"}
    assert deployment["spec"]["template"]["spec"] == TEMPLATE["spec"]


def test_a_template_without_selector_gets_the_pool_label_as_selector():
    spec = PoolSpec.model_validate({"template": TEMPLATE})

    deployment = build_deployment(POOL, spec)

    assert deployment["spec"]["selector"] == {"matchLabels": {"maitred.dev/pool": "llama"}}
    assert deployment["spec"]["template"]["metadata"]["labels"]["maitred.dev/pool"] == "llama"


def test_no_template_no_deployment():
    assert build_deployment(POOL, PoolSpec.model_validate({"selector": {"matchLabels": {"app": "x"}}})) is None


def test_the_router_reads_its_configmap_and_is_probed_on_healthz_and_readyz():
    spec = pool_spec(router={"replicas": 3, "port": 9090, "resources": {"limits": {"cpu": "1"}}})

    router = build_router_deployment(POOL, spec, image="registry.local/maitred:dev")

    pod = router["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert router["metadata"]["name"] == "llama-router" and router["spec"]["replicas"] == 3
    assert container["image"] == "registry.local/maitred:dev"
    assert container["args"][:3] == ["router", "--configmap", "ml/llama-routing"]
    args = container["args"]
    assert args[args.index("--port") + 1] == "9090"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"] == {"limits": {"cpu": "1"}}
    assert pod["serviceAccountName"] == "llama-router"


def option(container: dict, name: str) -> str:
    args = container["args"]
    return args[args.index(name) + 1]


@pytest.mark.parametrize("router, workers", [
    ({}, "2"),  # no CPU figure: two workers
    ({"resources": {"requests": {"cpu": "1500m"}}}, "2"),  # the request, rounded up
    ({"resources": {"requests": {"cpu": 4}, "limits": {"cpu": 8}}}, "4"),
    ({"resources": {"limits": {"cpu": "2500m"}}}, "2"),  # no request: the limit, rounded down
    ({"resources": {"requests": {"cpu": "250m"}}}, "1"),
    ({"workers": 3, "resources": {"requests": {"cpu": "8"}}}, "3"),  # said outright
])
def test_router_pods_run_one_worker_per_requested_core(router, workers):
    pod = build_router_deployment(POOL, pool_spec(router=router))["spec"]["template"]["spec"]
    assert option(pod["containers"][0], "--workers") == workers


def test_router_pods_drain_open_streams_for_drain_seconds_before_kubernetes_kills_them():
    pod = build_router_deployment(POOL, pool_spec(router={"drainSeconds": 600}))["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert option(container, "--drain-seconds") == "600"
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause + 600  # SIGTERM after the pause, then the drain


def test_a_pool_router_image_wins_over_the_operator_default():
    spec = pool_spec(router={"image": "mine:1"})

    assert build_router_deployment(POOL, spec, image="default:1")["spec"]["template"]["spec"]["containers"][0][
        "image"] == "mine:1"


def test_the_router_pods_are_never_selected_as_replicas():
    """A template-only pool selects maitred.dev/pool=<name>: its router's pods must not carry that label."""
    spec = PoolSpec.model_validate({"template": TEMPLATE})
    router_labels = build_router_deployment(POOL, spec)["spec"]["template"]["metadata"]["labels"]
    replica_selector = build_deployment(POOL, spec)["spec"]["selector"]

    assert not matches(PoolSpec.model_validate({"selector": replica_selector, "template": TEMPLATE}).selector,
                       router_labels)


def test_the_service_selects_the_router_pods_on_the_router_port():
    spec = pool_spec(router={"port": 9090, "serviceType": "NodePort"})
    service = build_service(POOL, spec)
    router_labels = build_router_deployment(POOL, spec)["spec"]["template"]["metadata"]["labels"]

    assert service["metadata"]["name"] == "llama-router"
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0]["port"] == 9090
    assert all(router_labels[k] == v for k, v in service["spec"]["selector"].items())


def test_the_configmap_holds_the_table_as_the_router_reads_it():
    table = build_routing_table(pool_spec(), [], pool="ml/llama")

    configmap = build_configmap(POOL, table)

    assert configmap["metadata"]["name"] == "llama-routing"
    assert orjson.loads(configmap["data"]["table.json"])["pool"] == "ml/llama"


def test_the_router_may_read_its_own_configmap_and_nothing_else():
    role = next(c for c in build_children(POOL, pool_spec()) if c["kind"] == "Role")

    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["llama-routing"],
                              "verbs": ["get", "list", "watch"]}]


def test_a_node_drain_takes_the_router_pods_one_at_a_time():
    pdb = next(c for c in build_children(POOL, pool_spec(router={"replicas": 3})) if c["kind"] == "PodDisruptionBudget")
    router = build_router_deployment(POOL, pool_spec(router={"replicas": 3}))
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == router["spec"]["selector"]["matchLabels"]


def test_router_pods_take_the_operators_defaults_and_the_pools_own_settings_win():
    from maitred.operator.models import RouterPodSettings

    defaults = RouterPodSettings.model_validate({
        "nodeSelector": {"pool": "cpu"}, "tolerations": [{"key": "router", "operator": "Exists"}],
        "priorityClassName": "high", "imagePullSecrets": [{"name": "regcred"}], "logLevel": "warning",
        "podAnnotations": {"team": "ml"}, "resources": {"requests": {"cpu": "3"}}, "logFormat": "json"})
    spec = pool_spec(router={"nodeSelector": {"pool": "edge"}, "logLevel": "debug",
                             "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone"}]})

    deployment = build_router_deployment(POOL, spec, defaults=defaults)
    template = deployment["spec"]["template"]
    pod, (container,) = template["spec"], template["spec"]["containers"]
    assert pod["nodeSelector"] == {"pool": "edge"}  # the pool's own
    assert pod["topologySpreadConstraints"] == [{"maxSkew": 1, "topologyKey": "zone"}]
    assert pod["tolerations"] == [{"key": "router", "operator": "Exists"}]  # the defaults'
    assert (pod["priorityClassName"], pod["imagePullSecrets"]) == ("high", [{"name": "regcred"}])
    assert template["metadata"]["annotations"] == {"team": "ml"}
    assert container["resources"] == {"requests": {"cpu": "3"}}
    assert (option(container, "--log-level"), option(container, "--workers")) == ("debug", "3")
    assert option(container, "--log-format") == "json"
    bare = build_router_deployment(POOL, pool_spec())["spec"]["template"]["spec"]
    assert "nodeSelector" not in bare and "imagePullSecrets" not in bare
