"""The AIServicePool resource (maitred.dev/v1alpha1) as pydantic models: the spec a user writes, the status
the operator reports.

These models are the single source of the CRD's schema (:mod:`maitred.operator.crd` generates it, a test
checks that ``crds/`` agrees), and the operator parses every pool with them. The health-check, retry and
timeout blocks are the router's own models from :mod:`maitred.router.table`, so a pool's settings reach
the routing table unchanged. Field names are camelCase on the wire, as in Kubernetes.

CEL rules sit beside the fields they check (``x-kubernetes-validations``), so that ``kubectl apply`` of a
bad pool fails with a message that names the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from maitred.router.table import Affinity, HealthCheck, Method, Retries, Timeouts

GROUP = "maitred.dev"
VERSION = "v1alpha1"
KIND = "AIServicePool"
PLURAL = "aiservicepools"
SINGULAR = "aiservicepool"
SHORT_NAMES = ("aisp",)
API_VERSION = f"{GROUP}/{VERSION}"

#: Bounds that keep the CEL rules' estimated cost within the API server's budget.
MAX_LABELS = 64
MAX_ITEMS = 256


def _cel(rule: str, message: str, field_path: str | None = None, reason: str = "FieldValueInvalid",
         message_expression: str | None = None) -> dict:
    """One ``x-kubernetes-validations`` entry (`message_expression`: CEL that builds the message, e.g. with the value)."""
    entry = {"rule": rule, "message": message, "reason": reason}
    if message_expression:
        entry["messageExpression"] = message_expression
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def _rules(*rules: dict) -> dict:
    return {"x-kubernetes-validations": list(rules)}


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


#: A label value, as Kubernetes defines it: at most 63 of [A-Za-z0-9-_.], beginning and ending alphanumeric, or empty.
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
#: A label key: an optional DNS-subdomain prefix and '/', then a name of at most 63 of [A-Za-z0-9-_.],
#: beginning and ending alphanumeric (k8s.io/apimachinery validation.IsQualifiedName).
LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
             r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LabelKey = Annotated[str, Field(max_length=317, pattern=LABEL_KEY)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
#: Label values are at most 63 characters in Kubernetes; saying so also bounds the CEL rules' cost.
Labels = dict[LabelKey, LabelValue]

#: An http(s) URL whose port, if given, is a number in 1..65535 (an IPv6 host in brackets).
URL_PATTERN = (r"^https?://(\[[0-9A-Fa-f:.]+\]|[^/\s:\[\]@]+)"
               r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?(/.*)?$")


class LabelSelectorRequirement(_Model):
    """One set-based requirement, as in Kubernetes: `key` `operator` `values`."""

    model_config = ConfigDict(json_schema_extra=_rules(
        _cel("self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0)"
             " : (!has(self.values) || size(self.values) == 0)",
             "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist", ".values"),
    ))

    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[LabelValue, ...] = Field(default=(), max_length=MAX_ITEMS)


class LabelSelector(_Model):
    """A Kubernetes label selector: all of matchLabels and all of matchExpressions must hold."""

    model_config = ConfigDict(json_schema_extra=_rules(
        _cel("(has(self.matchLabels) && size(self.matchLabels) > 0)"
             " || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
             "selector must not be empty: give matchLabels or matchExpressions (an empty selector would match"
             " every pod in the namespace)", reason="FieldValueRequired"),
    ))

    match_labels: Labels = Field(default_factory=dict, json_schema_extra={"maxProperties": MAX_LABELS})
    match_expressions: tuple[LabelSelectorRequirement, ...] = Field(default=(), max_length=MAX_LABELS)


class StaticEndpoint(_Model):
    """An upstream outside the cluster (or any fixed URL), routed to beside the pool's pods."""

    url: str = Field(pattern=URL_PATTERN, max_length=2048,
                     description="base URL, e.g. http://10.1.2.3:8000 (a port, if any, in 1..65535)")
    weight: int = Field(default=1, ge=0, description="relative share for `weighted`; 0 takes no traffic")


class WeightRule(_Model):
    """Pods that match `selector` get `weight` (the first matching rule wins; pods no rule matches get 1)."""

    selector: LabelSelector
    weight: int = Field(ge=0)


class Balancing(_Model):
    """How the router picks an endpoint: a method of the router, per-pod weights by labels, affinity settings."""

    method: Method = "least-connections"
    weights: tuple[WeightRule, ...] = Field(default=(), max_length=MAX_LABELS)
    affinity: Affinity = Field(default=Affinity(), description=(
        "for prefix-affinity and session-affinity: sessionHeader, the request header naming a session;"
        " loadFactor, pass over an endpoint above loadFactor x (its share of the load + 1) requests"))


Quantity = int | str


class Resources(_Model):
    """Compute resources of a container, as in Kubernetes (`cpu: 500m`, `memory: 256Mi`)."""

    limits: dict[str, Quantity] = Field(default_factory=dict, json_schema_extra={"maxProperties": 16})
    requests: dict[str, Quantity] = Field(default_factory=dict, json_schema_extra={"maxProperties": 16})


_ANY_OBJECT = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
_ANY_LIST = {"type": "array", "items": _ANY_OBJECT}


class RouterPodSettings(_Model):
    """How the router pods are placed and run; each field unset here falls back to the operator's defaults
    (the chart's `router:` values, `maitred operator --router-pod-defaults`). The pod fields are Kubernetes'
    own (a PodSpec's), checked by the API server when the router Deployment is written."""

    resources: Resources | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = Field(default=None, json_schema_extra=_ANY_LIST)
    affinity: dict[str, Any] | None = Field(default=None, json_schema_extra=_ANY_OBJECT)
    topology_spread_constraints: list[dict[str, Any]] | None = Field(default=None, json_schema_extra=_ANY_LIST)
    priority_class_name: str | None = Field(default=None, min_length=1)
    image_pull_secrets: list[dict[str, str]] | None = Field(default=None, description="[{name: secret}]")
    pod_annotations: dict[str, str] | None = None
    log_level: Literal["debug", "info", "warning", "error"] | None = None
    log_format: Literal["json", "text"] | None = None

    def over(self, defaults: "RouterPodSettings") -> "RouterPodSettings":
        """These settings, with each unset field taken from `defaults`."""
        fields = RouterPodSettings.model_fields
        mine = {k: v for k, v in self.model_dump(exclude_none=True).items() if k in fields}
        return RouterPodSettings.model_validate({**defaults.model_dump(exclude_none=True), **mine})


class RouterSpec(RouterPodSettings):
    """The pool's router Deployment and Service (`<pool>-router`)."""

    replicas: int = Field(default=2, ge=0)
    port: int = Field(default=8080, ge=1, le=65535)
    image: str | None = Field(default=None, min_length=1, description="default: the operator's --router-image")
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    workers: int | None = Field(default=None, ge=1, le=64, description=(
        "worker processes per router pod; default: from the CPU request (rounded up), else the CPU limit,"
        " else 2"))
    drain_seconds: int = Field(default=30, ge=0, le=3600, description=(
        "on shutdown, how long open requests (long streams) may run before the router pod exits; the pod's"
        " termination grace period is set from it"))


class ScaleUpRules(_Model):
    """How fast a pool grows (HPA's `behavior.scaleUp`): the least replica count recommended over the
    last `stabilizationWindowSeconds` wins, and at most max(`stepReplicas`, `stepPercent` % of the
    replicas) are added per `periodSeconds`."""

    stabilization_window_seconds: int = Field(default=0, ge=0, le=3600)
    step_replicas: int = Field(default=4, ge=1, le=1000)
    step_percent: int = Field(default=100, ge=1, le=1000)
    period_seconds: int = Field(default=15, ge=1, le=1800)


class ScaleDownRules(_Model):
    """How fast a pool shrinks (HPA's `behavior.scaleDown`): the greatest replica count recommended over
    the last `stabilizationWindowSeconds` wins, and at most max(`stepReplicas`, `stepPercent` % of the
    replicas) are removed per `periodSeconds`."""

    stabilization_window_seconds: int = Field(default=300, ge=0, le=3600)
    step_replicas: int = Field(default=1, ge=1, le=1000)
    step_percent: int = Field(default=100, ge=1, le=100)
    period_seconds: int = Field(default=15, ge=1, le=1800)


AutoscalingMetric = Literal["queue", "in-flight", "kv-cache"]


class Autoscaling(_Model):
    """Scaling the template's replicas on the load the routers report (:mod:`maitred.operator.autoscaling`).

    desired = ceil(ready replicas x value / target), unchanged while |value / target - 1| <= tolerance,
    within [minReplicas, maxReplicas], smoothed by `scaleUp` and `scaleDown` as a HorizontalPodAutoscaler
    is. With `minReplicas: 0` the pool scales to zero when idle, and the routers hold requests (at most
    `maxHeldRequests` per router, for `holdSeconds`) while it scales up again.
    """

    model_config = ConfigDict(json_schema_extra=_rules(
        _cel("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
             "minReplicas must not exceed maxReplicas", ".minReplicas"),
        _cel("self.metric != 'kv-cache' || self.target <= 1.0",
             "the target of kv-cache is a share of the KV cache: 0 < target <= 1", ".target"),
    ))

    min_replicas: int = Field(default=1, ge=0, le=10000, description="0: scale to zero when idle")
    max_replicas: int = Field(ge=1, le=10000)
    metric: AutoscalingMetric = Field(default="queue", description=(
        "queue: requests waiting per replica (the replicas' own queue, plus requests the routers hold);"
        " in-flight: requests the routers have open per replica; kv-cache: mean KV-cache usage (0..1)"))
    target: float = Field(gt=0, description="the value per replica to keep (kv-cache: a share, e.g. 0.8)")
    tolerance: float = Field(default=0.1, ge=0, lt=1, description=(
        "no change while the value is within this share of the target (HPA's tolerance)"))
    scale_up: ScaleUpRules = Field(default=ScaleUpRules(), description=(
        "stabilizationWindowSeconds (default 0), and at most max(stepReplicas, stepPercent %) more replicas"
        " per periodSeconds (default 4 or 100 % per 15 s)"))
    scale_down: ScaleDownRules = Field(default=ScaleDownRules(), description=(
        "stabilizationWindowSeconds (default 300), and at most max(stepReplicas, stepPercent %) fewer"
        " replicas per periodSeconds (default 100 % per 15 s)"))
    hold_seconds: float = Field(default=120.0, gt=0, le=3600, description=(
        "with minReplicas 0: how long a router holds a request while no replica is ready, before a 503"))
    max_held_requests: int = Field(default=1000, ge=1, le=100000, description=(
        "with minReplicas 0: requests each router holds at most; more get a 503 with Retry-After"))


class TemplateMetadata(_Model):
    """The labels and annotations of the replicas' pods."""

    model_config = ConfigDict(extra="allow")

    labels: Labels = Field(default_factory=dict, json_schema_extra={"maxProperties": MAX_LABELS})
    annotations: dict[str, str] = Field(default_factory=dict)


class PodTemplate(_Model):
    """A pod template, as in a Deployment; `spec` is a Kubernetes PodSpec, checked by the API server."""

    model_config = ConfigDict(extra="allow")

    metadata: TemplateMetadata = Field(default_factory=TemplateMetadata)
    spec: dict[str, Any] = Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})


_PORT_RULE = _cel(
    "type(self) == int ? (self >= 1 && self <= 65535) : self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')"
    " && self.matches('[a-z]') && size(self) <= 15",
    "port must be a number in 1..65535 or the name of a container port (an IANA service name)",
    # The API server prints an int-or-string's value as "": say what it was.
    message_expression="'port must be a number in 1..65535 or the name of a container port (an IANA service name),"
                       " not ' + string(self)")

_TEMPLATE_MATCHES_SELECTOR = _cel(
    "!has(self.template) || !has(self.selector) || !has(self.selector.matchLabels)"
    " || self.selector.matchLabels.all(k, has(self.template.metadata) && has(self.template.metadata.labels)"
    " && k in self.template.metadata.labels && self.template.metadata.labels[k] == self.selector.matchLabels[k])",
    "the template's labels must include every label of selector.matchLabels, with the same value",
    ".template.metadata.labels")

_SELECTOR_FIXED_WITH_TEMPLATE = _cel(
    "!has(self.template) || !has(oldSelf.template)"
    " || (has(self.selector) == has(oldSelf.selector) && (!has(self.selector) || self.selector == oldSelf.selector))",
    "selector is immutable while the pool has a template (a Deployment's selector cannot change):"
    " delete the pool and create it again, or remove the template first", ".selector")

_AUTOSCALING_NEEDS_TEMPLATE = _cel(
    "!has(self.autoscaling) || has(self.template)",
    "autoscaling needs a template: maitred scales only the replicas it runs (for pods picked by a selector,"
    " scale their own Deployment)", ".autoscaling")

_AUTOSCALING_WITHOUT_STATIC_ENDPOINTS = _cel(
    "!has(self.autoscaling) || !has(self.endpoints) || size(self.endpoints) == 0",
    "autoscaling scales the template's replicas on their load: a pool with static endpoints cannot be"
    " autoscaled (their load would count as the replicas')", ".autoscaling")

_SOMETHING_TO_ROUTE_TO = _cel(
    "has(self.selector) || has(self.template) || (has(self.endpoints) && size(self.endpoints) > 0)",
    "at least one of selector, template or endpoints is required", reason="FieldValueRequired")


class PoolSpec(_Model):
    """What a pool routes to and how.

    Replicas come from pods that match `selector`, or from a Deployment of `template` that the operator
    owns (with `replicas` replicas; the selector defaults to the pool's own label), plus the static
    `endpoints`. Raises :class:`pydantic.ValidationError` on a bad spec (the CRD refuses most of those first).
    """

    model_config = ConfigDict(json_schema_extra=_rules(_SOMETHING_TO_ROUTE_TO, _TEMPLATE_MATCHES_SELECTOR,
                                                       _SELECTOR_FIXED_WITH_TEMPLATE, _AUTOSCALING_NEEDS_TEMPLATE,
                                                       _AUTOSCALING_WITHOUT_STATIC_ENDPOINTS))

    replicas: int = Field(default=1, ge=0, description=(
        "replicas of the template's Deployment (scale subresource); without a template it is ignored (the"
        " pods the selector matches are the replicas) and the pool says so in its Progressing condition"))
    selector: LabelSelector | None = Field(default=None, description=(
        "the pods that are the pool's replicas (matchLabels and matchExpressions, as in a Deployment);"
        " with a template and no selector, the pool's own label maitred.dev/pool=<name>"))
    template: PodTemplate | None = Field(default=None, description=(
        "a pod template: maitred then owns a Deployment <name> of it with `replicas` replicas"))
    endpoints: tuple[StaticEndpoint, ...] = Field(
        default=(), max_length=MAX_ITEMS, description="static upstreams [{url, weight}], routed to beside the pods")
    port: int | str = Field(default=8000, json_schema_extra=_rules(_PORT_RULE),
                            description="the replicas' port: a number, or a container port's name")
    models: tuple[str, ...] = Field(default=(), max_length=MAX_ITEMS,
                                    description="served model names; requests for others get 404")
    balancing: Balancing = Field(default=Balancing(), description=(
        "method: the router's balancing method; weights: [{selector, weight}], the first rule that matches a pod"
        " gives its weight (1 if none does); affinity: {sessionHeader, loadFactor} of the affinity methods"))
    health_check: HealthCheck = Field(default=HealthCheck(), description=(
        "the router's active checks: GET path every periodSeconds, eject an endpoint after failureThreshold"
        " failures, take it back after successThreshold successes"))
    retries: Retries = Field(default=Retries(), description=(
        "retries on another endpoint before the first byte reached the client: attempts after the first try"
        " (0: off), perTryTimeoutSeconds to response headers, onStatus: backend statuses worth a retry"))
    timeouts: Timeouts = Field(default=Timeouts(), description=(
        "upstream timeouts in seconds: connectSeconds, idleSeconds between two chunks, requestSeconds in all"))
    router: RouterSpec = Field(default=RouterSpec(), description=(
        "the router Deployment and Service <name>-router: replicas, port, image, resources, serviceType"))
    autoscaling: Autoscaling | None = Field(default=None, description=(
        "scale the template's replicas on load (needs a template): minReplicas (0: scale to zero), maxReplicas,"
        " metric (queue, in-flight, kv-cache) and its target per replica; spec.replicas is then the"
        " autoscaler's to set"))


class EndpointStatus(_Model):
    """One endpoint of the routing table, as `kubectl get aisp -o yaml` shows it."""

    name: str
    address: str = Field(description="host:port")
    ready: bool = True
    weight: int = 1


class Condition(_Model):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str = Field(description="RFC 3339, UTC")


class ScaleEvent(_Model):
    """One change of spec.replicas by the autoscaler."""

    time: str = Field(description="RFC 3339, UTC")
    from_replicas: int = Field(alias="from")
    to_replicas: int = Field(alias="to")


class AutoscalingStatus(_Model):
    """What the autoscaler last saw and decided."""

    metric: str
    target: float
    value: float | None = Field(default=None, description="the metric's value per ready replica (None: no report)")
    desired_replicas: int = Field(description="the replica count the autoscaler last set or kept")
    routers_reporting: int = 0
    held_requests: int = 0
    last_scale_time: str | None = None
    recent_scales: tuple[ScaleEvent, ...] = Field(default=(), max_length=64, description=(
        "the scale events within the longest step period: the step limits count them across operator restarts"))
    message: str = ""


class PoolStatus(_Model):
    """What the operator observed; `replicas` and `selector` serve the scale subresource (HPA, kubectl scale)."""

    observed_generation: int | None = None
    replicas: int = 0
    ready_replicas: int = 0
    selector: str = Field(default="", description="label selector in string form (app=x,tier in (a,b))")
    ready: str = Field(default="", description="readyReplicas/desired, for kubectl get")
    router: str = Field(default="", description="available/desired pods of the router Deployment, for kubectl get")
    endpoint_count: int = 0
    table_version: int = 0
    endpoints: tuple[EndpointStatus, ...] = ()
    autoscaling: AutoscalingStatus | None = None
    load: str | None = Field(default=None, description="the autoscaling metric's value / target, for kubectl get")
    conditions: tuple[Condition, ...] = Field(default=(), json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
