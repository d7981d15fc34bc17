"""The autoscaler's arithmetic (maitred.operator.autoscaling), with plain numbers: HPA's rules."""

from __future__ import annotations

import pytest

from maitred.operator.autoscaling import (PoolLoad, Recommender, ScaleStep, aggregate, metric_value, queue_floor,
                                         recommend)
from maitred.operator.models import Autoscaling


def spec(**fields) -> Autoscaling:
    return Autoscaling.model_validate({"minReplicas": 1, "maxReplicas": 10, "target": 2, **fields})


def test_reports_of_the_same_replicas_count_once_and_each_routers_own_requests_add_up():
    reports = [{"liveEndpoints": 2, "waiting": 6.0, "running": 4.0, "kvCacheUsage": 0.5, "inFlight": 5, "held": 0},
               {"liveEndpoints": 2, "waiting": 7.0, "running": 4.0, "kvCacheUsage": 0.4, "inFlight": 3, "held": 1}]
    load = aggregate(reports)
    assert (load.live, load.waiting, load.in_flight, load.held, load.routers) == (2, 7.0, 8.0, 1, 2)
    assert metric_value(load, "queue") == 4.0  # (7 waiting + 1 held) / 2 ready
    assert metric_value(load, "in-flight") == 4.5
    assert metric_value(load, "kv-cache") == 0.5


def test_desired_is_ceil_of_ready_times_value_over_target():
    load = PoolLoad(live=1, waiting=7.5)
    assert recommend(load, spec(), current=1) == (4, "queue 7.5 per replica, target 2")
    assert recommend(PoolLoad(live=4, waiting=1.0), spec(), current=4)[0] == 1  # no running figure: HPA's rule


def test_within_the_tolerance_nothing_changes():
    for waiting in (3.7, 4.0, 4.4):  # 2 ready, target 2: ratio 0.925 .. 1.1
        count, why = recommend(PoolLoad(live=2, waiting=waiting), spec(), current=2)
        assert count == 2 and "within tolerance" in why
    assert recommend(PoolLoad(live=2, waiting=4.6), spec(), current=2)[0] == 3


def test_starting_replicas_do_not_count_so_the_same_load_never_scales_twice():
    # Scaled 1 -> 4 for a queue of 8; the three new replicas are not ready yet and the queue is unchanged.
    assert recommend(PoolLoad(live=1, waiting=8.0), spec(), current=4)[0] == 4


def test_demand_with_no_ready_replica_asks_for_at_least_one():
    assert recommend(PoolLoad(live=0, held=1), spec(minReplicas=0), current=0)[0] == 1
    assert recommend(PoolLoad(live=0, held=7), spec(minReplicas=0), current=0)[0] == 4
    assert recommend(PoolLoad(live=0, held=3), spec(minReplicas=0, metric="kv-cache", target=0.8), current=0)[0] == 1
    # No report and no demand: keep what there is (replicas starting, or replicas that report nothing).
    assert recommend(PoolLoad(live=0), spec(minReplicas=0), current=2)[0] == 2
    assert recommend(PoolLoad(live=3), spec(), current=3) == (3, "no load report")


def test_scale_up_window_takes_the_least_recommendation_and_scale_down_window_the_greatest():
    rules = spec(scaleUp={"stabilizationWindowSeconds": 10}, scaleDown={"stabilizationWindowSeconds": 30})
    r = Recommender(started_at=0.0)
    assert r.decide(100, rules, current=4, recommended=8) == 8
    assert r.decide(101, rules, current=8, recommended=3) == 8  # 8 within the last 30 s
    assert r.decide(125, rules, current=8, recommended=3) == 8
    assert r.decide(132, rules, current=8, recommended=3) == 3  # the 8 left the window
    # Up: a burst of one evaluation within the window is not enough.
    assert r.decide(133, rules, current=3, recommended=9) == 3  # min(3 at 132, 9) over the last 10 s
    assert r.decide(143, rules, current=3, recommended=9) == 7  # only 9s left; at most 3 + 4 per 15 s


def test_a_fresh_operator_does_not_scale_down_before_it_watched_a_whole_window():
    rules = spec(scaleDown={"stabilizationWindowSeconds": 60})
    r = Recommender(started_at=1000.0)
    assert r.decide(1001, rules, current=4, recommended=1) == 4
    assert r.decide(1059, rules, current=4, recommended=1) == 4
    assert r.decide(1061, rules, current=4, recommended=1) == 1  # every recommendation of 60 s says 1


def test_steps_are_limited_per_period_counting_the_scale_events_given():
    rules = spec(maxReplicas=100, scaleUp={"stepReplicas": 2, "stepPercent": 50, "periodSeconds": 60},
                 scaleDown={"stabilizationWindowSeconds": 0, "stepReplicas": 1, "stepPercent": 10, "periodSeconds": 60})
    r = Recommender(started_at=0.0)
    assert r.decide(10, rules, current=10, recommended=40) == 15  # max(10 + 2, 10 x 1.5)
    # 20 s later, still within the period that began at 10: the 5 added count against it.
    assert r.decide(30, rules, current=15, recommended=40, steps=[ScaleStep(10, 10, 15)]) == 15
    assert r.decide(71, rules, current=15, recommended=40, steps=[ScaleStep(10, 10, 15)]) == 23  # 15 x 1.5
    assert r.decide(200, rules, current=20, recommended=1) == 18  # max(1, 10 % of 20) fewer
    assert r.decide(201, rules, current=18, recommended=1, steps=[ScaleStep(200, 20, 18)]) == 18


def test_the_result_stays_within_min_and_max():
    r = Recommender(started_at=0.0)
    rules = spec(minReplicas=2, maxReplicas=3, scaleDown={"stabilizationWindowSeconds": 0})
    assert r.decide(1, rules, current=2, recommended=9) == 3
    assert r.decide(2, rules, current=3, recommended=0) == 2
    assert r.decide(3, rules, current=7, recommended=7) == 3  # set by hand above max: back within bounds


@pytest.mark.parametrize("fields, message", [
    ({"minReplicas": 5, "maxReplicas": 2, "target": 1}, None),
    ({"maxReplicas": 2, "target": 0}, "greater than 0"),
])
def test_the_model_refuses_what_the_crd_refuses(fields, message):
    if message is None:  # min > max is a CEL rule of the CRD, not of the model
        Autoscaling.model_validate(fields)
        return
    with pytest.raises(ValueError, match=message):
        Autoscaling.model_validate(fields)


def test_an_empty_queue_does_not_scale_a_busy_pool_down_to_its_minimum():
    # 24 clients on replicas that run 4 at a time each, target 1 waiting per replica.
    busy = spec(target=1)
    assert recommend(PoolLoad(live=5, waiting=4.0, running=20.0), busy, current=5)[0] == 5  # HPA alone: 4
    assert recommend(PoolLoad(live=6, waiting=0.0, running=24.0), busy, current=6)[0] == 5  # HPA alone: 1
    assert recommend(PoolLoad(live=8, waiting=0.0, running=24.0), busy, current=8)[0] == 6
    assert queue_floor(PoolLoad(live=3, waiting=0.0, running=0.0), 1) == 0  # idle: back to minReplicas
    # Up, HPA's rule as it is: 1 replica, 8 waiting, target 2 -> 4.
    assert recommend(PoolLoad(live=1, waiting=8.0, running=1.0), spec(), current=1)[0] == 4


def test_replicas_still_starting_are_not_scaled_away_while_the_load_is_above_target():
    # Scaled 1 -> 4; one ready, its queue 3 (above the target 2): never fewer than 4 while that lasts.
    assert recommend(PoolLoad(live=1, waiting=3.0), spec(), current=4)[0] == 4
    assert recommend(PoolLoad(live=4, waiting=16.0), spec(), current=2)[0] == 8


def test_held_requests_scale_only_a_pool_at_zero():
    # Replicas exist but none is ready (a crashing image): more of them would not help.
    assert recommend(PoolLoad(live=0, held=40), spec(minReplicas=0), current=2) == (2, "no load report")


def test_from_zero_the_scale_up_window_does_not_delay_the_first_replica():
    rules = spec(minReplicas=0, scaleUp={"stabilizationWindowSeconds": 60})
    r = Recommender(started_at=0.0)
    assert r.decide(10, rules, current=0, recommended=0) == 0
    assert r.decide(20, rules, current=0, recommended=1) == 1


def test_scale_down_steps_round_as_hpa_does():
    rules = spec(scaleDown={"stabilizationWindowSeconds": 0, "stepReplicas": 1, "stepPercent": 50})
    assert Recommender(started_at=0.0).decide(100, rules, current=3, recommended=1) == 2  # ceil(3 x 0.5)


def test_figures_a_router_gets_wrong_count_as_not_reported():
    load = aggregate([{"liveEndpoints": "2", "waiting": -3, "running": None, "kvCacheUsage": float("nan"),
                       "inFlight": True, "held": "x"}, {"liveEndpoints": 1, "waiting": 2.0}])
    assert (load.live, load.waiting, load.running, load.kv_cache_usage, load.in_flight, load.held) == (
        1, 2.0, None, None, 0.0, 0)
