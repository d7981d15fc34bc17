"""Every pool in examples/ is one the API server takes (the CRD installed by the chart) and one the
operator can serve: it parses with the operator's models and yields its children."""

from __future__ import annotations

import pytest
import yaml

from helm_harness import REPO

from maitred.operator.children import DEFAULT_ROUTER_IMAGE, PoolRef, build_children
from maitred.operator.models import PoolSpec

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def pools_in(path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "AIServicePool"]


def test_there_are_examples_for_vllm_sglang_static_endpoints_and_the_simulator():
    assert {p.name for p in EXAMPLES} >= {"vllm-pool.yaml", "sglang-pool.yaml", "static-endpoints.yaml",
                                          "sim-pool.yaml"}
    assert all(pools_in(p) for p in EXAMPLES)


def test_the_examples_apply_to_the_api_server(install_release, kubectl, namespace):
    install_release("maitred")
    for path in EXAMPLES:
        kubectl("apply", "-n", namespace, "-f", str(path))
        for pool in pools_in(path):
            stored = yaml.safe_load(kubectl("get", "-n", namespace, "aisp", pool["metadata"]["name"],
                                            "-o", "yaml").stdout)
            # Fields the API server did not know would have been refused (kubectl validates strictly)
            # or pruned; what was written is what is stored, plus the CRD's defaults.
            assert stored["spec"]["balancing"]["method"] == pool["spec"]["balancing"]["method"]
            assert stored["spec"]["healthCheck"]["path"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_operator_can_serve_each_example(path):
    for pool in pools_in(path):
        spec = PoolSpec.model_validate(pool["spec"])
        children = build_children(PoolRef("ml", pool["metadata"]["name"], "uid"), spec)
        kinds = [c["kind"] for c in children]
        assert kinds.count("Deployment") == (2 if spec.template else 1)


def test_the_simulator_example_uses_the_charts_image():
    container = pools_in(REPO / "examples" / "sim-pool.yaml")[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == DEFAULT_ROUTER_IMAGE
    assert container["args"][0] == "sim"


def test_the_first_pool_in_the_install_notes_applies(install_release, cluster_helm, kubectl, namespace):
    system = install_release("maitred", "--set", f"watchNamespaces={{{namespace}}}")
    notes = cluster_helm.run("get", "notes", "maitred", "--namespace", system).stdout
    assert f"kubectl apply -n {namespace} -f - <<'EOF'" in notes
    assert f"kubectl -n {namespace} scale aisp/demo --replicas=3" in notes
    heredoc = notes.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    kubectl("apply", "-n", namespace, "-f", "-", input=heredoc)
    stored = yaml.safe_load(kubectl("get", "-n", namespace, "aisp", "demo", "-o", "yaml").stdout)
    example = pools_in(REPO / "examples" / "sim-pool.yaml")[0]
    assert stored["spec"]["models"] == example["spec"]["models"] == ["demo-model"]
    container = stored["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == DEFAULT_ROUTER_IMAGE
    assert container["args"] == example["spec"]["template"]["spec"]["containers"][0]["args"]
