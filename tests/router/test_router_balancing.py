"""The balancing methods, one by one, with injected randomness (no processes, no clocks)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from maitred.router.balancing import make_balancer
from maitred.router.endpoints import DEFAULT_LATENCY_MS, EndpointState


def endpoints(*ids: str, **fields) -> list[EndpointState]:
    """EndpointStates named `ids`; keyword lists give per-endpoint fields, e.g. in_flight=[3, 1]."""
    states = [EndpointState(id=i, url=f"http://127.0.0.{n + 11}:8000") for n, i in enumerate(ids)]
    for name, values in fields.items():
        for state, value in zip(states, values):
            setattr(state, name, value)
    return states


def picks(balancer, eps, n: int) -> str:
    return "".join(balancer.pick(eps).id for _ in range(n))


# --- round-robin -------------------------------------------------------------------------------

def test_round_robin_cycles_through_every_endpoint_in_list_order():
    seq = picks(make_balancer("round-robin", rng=random.Random(1)), endpoints("a", "b", "c"), 9)
    assert seq[:3] in ("abc", "bca", "cab")
    assert seq == seq[:3] * 3


def test_round_robin_replicas_start_at_different_places():
    firsts = {make_balancer("round-robin", rng=random.Random(seed)).pick(endpoints("a", "b", "c")).id
              for seed in range(20)}
    assert firsts == {"a", "b", "c"}


# --- least-connections -------------------------------------------------------------------------

def test_least_connections_picks_the_fewest_in_flight():
    balancer = make_balancer("least-connections", rng=random.Random(0))
    eps = endpoints("a", "b", "c", in_flight=[3, 1, 2])
    assert picks(balancer, eps, 5) == "bbbbb"


def test_least_connections_rotates_among_ties():
    balancer = make_balancer("least-connections", rng=random.Random(0))
    assert sorted(picks(balancer, endpoints("a", "b", "c"), 3)) == ["a", "b", "c"]
    tied_two = picks(balancer, endpoints("a", "b", "c", in_flight=[0, 0, 5]), 6)
    assert Counter(tied_two) == {"a": 3, "b": 3}


def test_least_connections_follows_in_flight_as_it_changes():
    balancer = make_balancer("least-connections", rng=random.Random(0))
    eps = endpoints("a", "b", "c")
    for _ in range(9):  # what the proxy does: acquire on the pick, no release yet
        balancer.pick(eps).acquire()
    assert [e.in_flight for e in eps] == [3, 3, 3]


# --- weighted ----------------------------------------------------------------------------------

def test_smooth_weighted_interleaves_5_1_1_as_nginx_does():
    balancer = make_balancer("weighted", rng=random.Random(0))
    eps = endpoints("a", "b", "c", weight=[5, 1, 1])
    assert picks(balancer, eps, 14) == "aabacaa" * 2


@pytest.mark.parametrize("order", ["abc", "cba", "bca"])
def test_smooth_weighted_sequence_does_not_depend_on_list_order(order):
    weights = {"a": 5, "b": 1, "c": 1}
    eps = endpoints(*order, weight=[weights[i] for i in order])
    assert picks(make_balancer("weighted"), eps, 7) == "aabacaa"


def test_weighted_never_picks_weight_zero_and_refuses_all_zero():
    balancer = make_balancer("weighted")
    eps = endpoints("a", "b", "c", weight=[3, 1, 0])
    assert Counter(picks(balancer, eps, 400)) == {"a": 300, "b": 100}
    with pytest.raises(ValueError, match="weight above zero"):
        make_balancer("weighted").pick(endpoints("a", weight=[0]))


# --- least-response-time (peak EWMA, power of two choices) -----------------------------------------

def test_peak_ewma_prefers_the_cheaper_of_two():
    for seed in range(10):
        balancer = make_balancer("least-response-time", rng=random.Random(seed))
        eps = endpoints("slow", "fast", latency_ewma_ms=[100.0, 10.0])
        assert balancer.pick(eps).id == "fast"


def test_peak_ewma_cost_counts_requests_in_flight():
    balancer = make_balancer("least-response-time", rng=random.Random(0))
    # fast: 10 ms x (20 + 1) = 210 > slow: 100 ms x (0 + 1) = 100
    eps = endpoints("slow", "fast", latency_ewma_ms=[100.0, 10.0], in_flight=[0, 20])
    assert balancer.pick(eps).id == "slow"


def test_power_of_two_choices_never_picks_the_most_expensive_of_three():
    balancer = make_balancer("least-response-time", rng=random.Random(7))
    eps = endpoints("a", "b", "worst", latency_ewma_ms=[10.0, 20.0, 500.0])
    chosen = Counter(picks(balancer, eps, 300))
    assert "w" not in chosen and chosen["a"] > chosen["b"] > 0


def test_peak_ewma_jumps_to_a_peak_and_decays_back_over_seconds():
    state = EndpointState(id="a", url="http://127.0.0.11:1")
    assert state.latency_ewma_ms == DEFAULT_LATENCY_MS
    state.observe_latency(50.0, now_s=100.0)
    assert state.latency_ewma_ms == 50.0  # first sample
    state.observe_latency(400.0, now_s=100.5)
    assert state.latency_ewma_ms == 400.0  # a peak replaces the average at once
    state.observe_latency(40.0, now_s=101.5)  # 1 s later: weight exp(-0.1) on the old value
    assert 360.0 < state.latency_ewma_ms < 370.0
    state.observe_latency(40.0, now_s=161.5)  # a minute later the peak is forgotten
    assert state.latency_ewma_ms < 41.0


def test_unknown_method_names_the_known_ones():
    with pytest.raises(KeyError, match="least-connections"):
        make_balancer("random")
