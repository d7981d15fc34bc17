"""The CRD in crds/ is the one the models generate, and its schema is one the API server can take."""

from __future__ import annotations

from pathlib import Path

import yaml

from maitred.operator.crd import build_crd, render_crd
from maitred.operator.models import PoolSpec
from maitred.router.table import METHODS

CRD_FILE = Path(__file__).parents[2] / "crds" / "aiservicepools.maitred.dev.yaml"


def walk(node, path=""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


def test_the_crd_file_is_generated_from_the_models():
    assert CRD_FILE.read_text() == render_crd(), (
        "crds/ is stale: run `python -m maitred.operator.crd > crds/aiservicepools.maitred.dev.yaml`")


def test_the_schema_is_structural():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        if "properties" in node:
            assert node.get("type") == "object", path
            assert "additionalProperties" not in node, path
        if "default" in node:
            assert node["default"] is not None, path


def test_the_method_enum_is_the_router_methods():
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert tuple(spec["properties"]["balancing"]["properties"]["method"]["enum"]) == METHODS


def test_every_spec_field_of_the_models_is_in_the_schema():
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    fields = {f.alias or name for name, f in PoolSpec.model_fields.items()}
    assert set(spec["properties"]) == fields


def test_scale_subresource_and_columns():
    version = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {"specReplicasPath": ".spec.replicas",
                                                "statusReplicasPath": ".status.replicas",
                                                "labelSelectorPath": ".status.selector"}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Method", "Ready", "Router", "Endpoints", "Load", "Age"]
