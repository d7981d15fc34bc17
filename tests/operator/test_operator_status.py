"""compute_conditions / compute_status: Ready, Progressing and Degraded as a user reads them in kubectl."""

from __future__ import annotations

import dataclasses

from maitred.operator.status import Observation, RouterObservation, compute_conditions, compute_status


def by_type(conditions) -> dict:
    return {c.type: (c.status, c.reason) for c in conditions}


def test_all_replicas_ready():
    obs = Observation(generation=2, desired=3, matched=3, ready=3, selector="app=x", table_endpoints=3)

    assert by_type(compute_conditions(obs, now="T")) == {
        "Ready": ("True", "EndpointsReady"), "Progressing": ("False", "AllReplicasReady"),
        "Degraded": ("False", "AsExpected"), "RouterAvailable": ("True", "NoRouterReplicas")}


def test_scaling_up_is_progressing_and_still_ready():
    obs = Observation(generation=2, desired=5, matched=5, ready=3, selector="app=x")

    conditions = by_type(compute_conditions(obs, now="T"))

    assert conditions["Ready"][0] == "True"
    assert conditions["Progressing"] == ("True", "WaitingForPods")


def test_a_selector_that_matches_nothing_is_degraded():
    obs = Observation(generation=1, desired=0, matched=0, ready=0, selector="app=nothing")

    conditions = by_type(compute_conditions(obs, now="T"))

    assert conditions["Ready"] == ("False", "NoMatchingPods")
    assert conditions["Degraded"] == ("True", "NoMatchingPods")


def test_pods_that_never_become_ready_are_degraded_and_the_last_good_table_is_named():
    obs = Observation(generation=1, desired=2, matched=2, ready=0, selector="app=x", kept_last_good=True,
                      table_endpoints=2, table_version=7)

    conditions = compute_conditions(obs, now="T")

    assert by_type(conditions)["Degraded"] == ("True", "NoReadyEndpoints")
    assert "keeping the last good routing table (version 7)" in conditions[0].message


def test_a_template_scaled_to_zero_is_not_degraded():
    obs = Observation(generation=1, desired=0, matched=0, ready=0, managed=True, selector="maitred.dev/pool=x")

    assert by_type(compute_conditions(obs, now="T"))["Degraded"] == ("False", "AsExpected")


def test_a_failed_write_is_degraded_with_its_message():
    obs = Observation(generation=1, desired=1, matched=1, ready=1, selector="app=x",
                      error="Service x-router: quota exceeded")

    degraded = compute_conditions(obs, now="T")[2]

    assert (degraded.status, degraded.reason, degraded.message) == ("True", "ReconcileFailed",
                                                                    "Service x-router: quota exceeded")


def test_transition_times_move_only_when_a_status_changes():
    ready = Observation(generation=1, desired=1, matched=1, ready=1, selector="app=x")
    first = [c.model_dump(by_alias=True) for c in compute_conditions(ready, now="T1")]

    again = compute_conditions(ready, first, now="T2")
    lost = compute_conditions(Observation(generation=1, desired=1, matched=1, ready=0, selector="app=x"), first,
                              now="T3")

    assert {c.last_transition_time for c in again} == {"T1"}
    assert {c.type: c.last_transition_time for c in lost} == {"Ready": "T3", "Progressing": "T3", "Degraded": "T3",
                                                              "RouterAvailable": "T1"}


def test_the_status_serves_the_scale_subresource_and_kubectl_columns():
    obs = Observation(generation=4, desired=3, matched=3, ready=2, selector="app=x", table_endpoints=2,
                      table_version=9)

    status = compute_status(obs, now="T").model_dump(by_alias=True)

    assert (status["replicas"], status["readyReplicas"], status["selector"]) == (3, 2, "app=x")
    assert (status["ready"], status["endpointCount"], status["tableVersion"]) == ("2/3", 2, 9)
    assert status["observedGeneration"] == 4


def test_a_spec_that_cannot_be_served_is_degraded_as_invalid():
    obs = Observation(generation=4, desired=0, matched=0, ready=0, error="invalid spec: url: port must be 1-65535",
                      error_reason="InvalidSpec")

    degraded = next(c for c in compute_conditions(obs, now="T") if c.type == "Degraded")

    assert (degraded.status, degraded.reason, degraded.observed_generation) == ("True", "InvalidSpec", 4)
    assert "port must be 1-65535" in degraded.message


def test_replicas_without_a_template_are_said_to_be_ignored():
    obs = Observation(generation=1, desired=2, matched=2, ready=2, selector="app=x", ignored_replicas=5)

    progressing = next(c for c in compute_conditions(obs, now="T") if c.type == "Progressing")

    assert (progressing.status, progressing.reason) == ("False", "AllReplicasReady")
    assert "spec.replicas (5) is ignored without a template" in progressing.message


READY = Observation(generation=2, desired=2, matched=2, ready=2, selector="app=x", table_endpoints=2)


def test_ready_needs_an_available_router_pod():
    available = dataclasses.replace(READY, router=RouterObservation(desired=2, available=1))
    conditions = by_type(compute_conditions(available, now="T"))
    assert conditions["Ready"] == ("True", "EndpointsReady")
    assert conditions["RouterAvailable"] == ("True", "RouterAvailable")
    assert compute_status(available, now="T").router == "1/2"


def test_router_pods_starting_are_progressing_not_degraded():
    starting = dataclasses.replace(READY, router=RouterObservation(desired=2, available=0))
    conditions = by_type(compute_conditions(starting, now="T"))
    assert conditions["Ready"] == ("False", "RouterUnavailable")
    assert conditions["Progressing"] == ("True", "WaitingForRouter")
    assert conditions["Degraded"] == ("False", "AsExpected")


def test_a_router_image_that_cannot_be_pulled_is_degraded_and_not_ready():
    stuck = dataclasses.replace(READY, router=RouterObservation(
        desired=2, available=0, problem=("ImagePullBackOff", 'pod r-1: Back-off pulling image "nope:1"')))
    conditions = compute_conditions(stuck, now="T")
    kinds = by_type(conditions)
    assert kinds["Ready"] == ("False", "RouterUnavailable")
    assert kinds["RouterAvailable"] == ("False", "ImagePullBackOff")
    assert kinds["Degraded"] == ("True", "ImagePullBackOff")
    assert "nope:1" in next(c for c in conditions if c.type == "Ready").message
