"""The AIServicePool CustomResourceDefinition, generated from the pydantic models in :mod:`maitred.operator.models`.

``python -m maitred.operator.crd > crds/aiservicepools.maitred.dev.yaml`` writes it; a test checks that the
file in ``crds/`` is what this module generates, so the operator and the API server never disagree.

Pydantic emits JSON Schema (2020-12); the API server wants a *structural* OpenAPI v3 schema. The
translation: ``$ref`` inlined, ``Optional[X]`` becomes X (absent means None), ``int | str`` becomes
``x-kubernetes-int-or-string``, a number ``exclusiveMinimum`` becomes ``minimum`` + ``exclusiveMinimum:
true`` (and so for the maximum), open objects become ``x-kubernetes-preserve-unknown-fields``, and a default that is a whole
object becomes ``{}`` so that the API server fills in the nested defaults itself.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from maitred.operator import models

_DROP = {"title", "additionalProperties"}


def spec_schema() -> dict:
    """The structural schema of ``spec``."""
    return _schema_of(models.PoolSpec)


def status_schema() -> dict:
    """The structural schema of ``status``."""
    return _schema_of(models.PoolStatus)


def _schema_of(model: type) -> dict:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    raw.pop("description", None)  # the class docstring is for developers; build_crd() describes spec and status
    return _structural(raw, raw.get("$defs", {}))


def _structural(node: dict, defs: dict) -> dict:
    """Translate one JSON-Schema node (recursively) into a structural OpenAPI v3 node."""
    node = dict(node)
    node.pop("$defs", None)
    if "$ref" in node:
        # The referencing field's own description (if any) says more than the model's docstring.
        target = {k: v for k, v in defs[node.pop("$ref").rsplit("/", 1)[-1]].items() if k != "description"}
        node = {**target, **node}
    if "anyOf" in node:
        node = _merge_any_of(node)
        if "anyOf" in node or "x-kubernetes-int-or-string" in node:
            return _finish(node, defs)
        return _structural(node, defs)
    return _finish(node, defs)


def _merge_any_of(node: dict) -> dict:
    options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
    types = sorted(o.get("type", "") for o in options)
    if types == ["integer", "string"]:
        node["x-kubernetes-int-or-string"] = True
        return node
    if len(options) == 1:
        return {**options[0], **node}
    node["anyOf"] = options
    return node


def _finish(node: dict, defs: dict) -> dict:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key == "patternProperties":  # dict[Key, Value]: not structural; the key's pattern becomes CEL
            ((pattern, value_schema),) = value.items()
            out["additionalProperties"] = _structural(value_schema, defs)
            out.setdefault("x-kubernetes-validations", []).append(_key_rule(pattern, node.get("propertyNames")))
        elif key == "propertyNames":
            continue  # see patternProperties
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "default":
            if value is None:
                continue
            out[key] = {} if isinstance(value, dict) and "properties" in _resolve(node, defs) else value
        else:
            out[key] = value
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = _structural(extra, defs)
    elif extra is True or (out.get("type") == "object" and "properties" not in out
                           and "additionalProperties" not in out):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "object" and "properties" in out and extra is True:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "array" and isinstance(out.get("default"), list) is False and "default" in out:
        out["default"] = list(out["default"])
    return out


def _key_rule(pattern: str, names: dict | None) -> dict:
    """The CEL rule that checks a map's keys against `pattern` (a structural schema cannot say it)."""
    assert "'" not in pattern and "\\" not in pattern, "the pattern must be a plain CEL string"
    limit = (names or {}).get("maxLength")
    rule = f"self.all(k, {f'size(k) <= {limit} && ' if limit else ''}k.matches('{pattern}'))"
    return {"rule": rule, "message": "keys must be label keys: an optional DNS-subdomain prefix and '/', then at most"
                                     " 63 characters of [A-Za-z0-9-_.], beginning and ending with a letter or digit",
            "reason": "FieldValueInvalid"}


def _resolve(node: dict, defs: dict) -> dict:
    return defs[node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else node


#: The pool's name becomes the router Service's name `<name>-router`: a DNS label of at most 63 characters.
NAME_RULE = {
    "rule": "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 56",
    "message": "metadata.name must be at most 56 lowercase letters, digits and '-', starting with a letter"
               " (the router Service <name>-router must be a DNS label)",
    "reason": "FieldValueInvalid",
}


def build_crd() -> dict:
    """The whole CustomResourceDefinition as a dict (apiextensions.k8s.io/v1)."""
    version = {
        "name": models.VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": {
            "type": "object",
            "description": "A pool of AI model-server replicas behind one maitred router.",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": {"description": "What the pool routes to and how; see `kubectl explain aisp.spec`.",
                         **spec_schema()},
                "status": {"description": "What the operator observed; replicas and selector serve the scale"
                                          " subresource (kubectl scale, HorizontalPodAutoscaler).",
                           **status_schema()},
            },
            "required": ["spec"],
            "x-kubernetes-validations": [NAME_RULE],
        }},
        "subresources": {
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        "additionalPrinterColumns": [
            {"name": "Method", "type": "string", "jsonPath": ".spec.balancing.method"},
            {"name": "Ready", "type": "string", "jsonPath": ".status.ready",
             "description": "ready replicas / desired replicas"},
            {"name": "Router", "type": "string", "jsonPath": ".status.router",
             "description": "available/desired router pods"},
            {"name": "Endpoints", "type": "integer", "jsonPath": ".status.endpointCount",
             "description": "endpoints in the routing table"},
            {"name": "Load", "type": "string", "jsonPath": ".status.load",
             "description": "autoscaling: the metric's value per ready replica / its target"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{models.PLURAL}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": list(models.SHORT_NAMES),
                "categories": ["maitred"],
            },
            "versions": [version],
        },
    }


def render_crd() -> str:
    """The CRD as YAML text, as kept in ``crds/``."""
    header = "# Generated by `python -m maitred.operator.crd` from operator/models.py: do not edit.\n"
    return header + yaml.dump(build_crd(), Dumper=_NoAliases, sort_keys=False, width=120)


class _NoAliases(yaml.SafeDumper):
    """Writes shared sub-schemas out in full: anchors and aliases would puzzle a reader of the CRD."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


if __name__ == "__main__":
    sys.stdout.write(render_crd())
