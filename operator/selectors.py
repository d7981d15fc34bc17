"""Kubernetes label selectors: does a pod's label set match, and the selector's string form.

The semantics are those of ``k8s.io/apimachinery/pkg/labels``: every ``matchLabels`` pair and every
``matchExpressions`` requirement must hold; ``NotIn`` and ``DoesNotExist`` hold for a missing key.
The string form (``app=x,tier in (a,b),!canary``) is what the API server accepts as a
``labelSelector`` query and what the scale subresource reads from ``status.selector``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from maitred.operator.models import LabelSelector, LabelSelectorRequirement

#: The label the operator puts on a template's pods, and the selector it uses when the pool gives none.
POOL_LABEL = "maitred.dev/pool"


def matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """True if `labels` satisfy `selector`. An empty selector matches everything (as in Kubernetes)."""
    if any(labels.get(key) != value for key, value in selector.match_labels.items()):
        return False
    return all(_holds(req, labels) for req in selector.match_expressions)


def _holds(req: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    present = req.key in labels
    if req.operator == "In":
        return present and labels[req.key] in req.values
    if req.operator == "NotIn":
        return not present or labels[req.key] not in req.values
    if req.operator == "Exists":
        return present
    return not present  # DoesNotExist


def to_string(selector: LabelSelector) -> str:
    """The selector as a ``labelSelector`` string, e.g. ``app=llama,tier in (a,b),!canary``.

    Terms are sorted, so equal selectors give equal strings.
    """
    terms = [f"{key}={value}" for key, value in sorted(selector.match_labels.items())]
    for req in sorted(selector.match_expressions, key=lambda r: (r.key, r.operator, r.values)):
        if req.operator == "Exists":
            terms.append(req.key)
        elif req.operator == "DoesNotExist":
            terms.append(f"!{req.key}")
        else:
            op = "in" if req.operator == "In" else "notin"
            terms.append(f"{req.key} {op} ({','.join(sorted(req.values))})")
    return ",".join(terms)


_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def selector_problem(selector: LabelSelector) -> str | None:
    """Why the API server would refuse `selector` as a labelSelector, or None if it would take it.

    The rules of k8s.io/apimachinery (IsQualifiedName, IsValidLabelValue): a key is an optional DNS
    subdomain prefix of at most 253 characters and '/', then a name of at most 63; a value at most 63.
    The CRD checks the characters; the lengths of the parts it cannot.
    """
    keys = [*selector.match_labels, *(r.key for r in selector.match_expressions)]
    values = [*selector.match_labels.values(), *(v for r in selector.match_expressions for v in r.values)]
    for key in keys:
        prefix, _, name = key.rpartition("/")
        if len(name) > 63:
            return f"label key {key!r}: name part must be no more than 63 characters"
        if not _NAME.match(name):
            return f"label key {key!r}: name part must consist of alphanumeric characters, '-', '_' or '.'"
        if "/" in key and (len(prefix) > 253 or not _PREFIX.match(prefix)):
            return f"label key {key!r}: prefix part must be a DNS subdomain of at most 253 characters"
    for value in values:
        if len(value) > 63 or not _VALUE.match(value):
            return f"label value {value!r}: must be at most 63 alphanumeric characters, '-', '_' or '.'"
    return None


def pool_selector(name: str) -> LabelSelector:
    """The selector of a pool that gives a template but no selector: its own label."""
    return LabelSelector(match_labels={POOL_LABEL: name})
