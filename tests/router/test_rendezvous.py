"""Weighted rendezvous hashing with bounded loads (router/balancing/rendezvous.py), as pure functions.

What a pool's owner relies on: a key's home is the same in every process; endpoints take keys in
proportion to their weights; adding or removing an endpoint moves only the keys it must; a key whose
home is over the load bound goes to its next choice, and nothing is ever left without an endpoint.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

import pytest

from maitred.router.balancing.rendezvous import bounds, key_digest, pick, preference

SESSIONS = [f"session-{i}" for i in range(1000)]


@dataclass
class Ep:
    id: str
    weight: int = 1


def pool(*ids: str, weights: tuple[int, ...] = ()) -> list[Ep]:
    return [Ep(i, weights[n] if weights else 1) for n, i in enumerate(ids)]


def home(session: str, endpoints: list[Ep]) -> str:
    """Where an unloaded pool sends `session`."""
    return endpoints[pick(key_digest(session.encode()), endpoints, [0.0] * len(endpoints), 1.25)].id


def homes(endpoints: list[Ep], sessions=SESSIONS) -> dict[str, str]:
    return {s: home(s, endpoints) for s in sessions}


def test_a_key_has_the_same_home_in_processes_with_different_hash_seeds():
    script = ("import json, sys; sys.path.insert(0, %r); from test_rendezvous import homes, pool; "
              "print(json.dumps(homes(pool('a', 'b', 'c', 'd'), [f'session-{i}' for i in range(200)])))"
              % os.path.dirname(__file__))
    seen = []
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        seen.append(json.loads(out.stdout))
    here = homes(pool("a", "b", "c", "d"), [f"session-{i}" for i in range(200)])
    assert seen[0] == seen[1] == here


def test_the_order_of_the_endpoint_list_does_not_change_any_home():
    endpoints = pool("a", "b", "c", "d", "e")
    shuffled = endpoints[:]
    random.Random(3).shuffle(shuffled)
    assert homes(endpoints) == homes(shuffled)


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (1, 1, 2, 4)], ids=["equal", "1-1-2-4"])
def test_each_endpoint_is_home_to_a_share_of_keys_proportional_to_its_weight(weights):
    endpoints = pool("a", "b", "c", "d", weights=weights)
    count = Counter(homes(endpoints, [f"k{i}" for i in range(20_000)]).values())
    for endpoint in endpoints:
        assert count[endpoint.id] / 20_000 == pytest.approx(endpoint.weight / sum(weights), abs=0.015), count


def test_adding_a_fifth_endpoint_moves_about_a_fifth_of_the_sessions_all_to_it():
    before = homes(pool("a", "b", "c", "d"))
    after = homes(pool("a", "b", "c", "d", "e"))
    moved = {s for s in SESSIONS if before[s] != after[s]}
    assert 0.10 <= len(moved) / len(SESSIONS) <= 0.30, len(moved)
    assert {after[s] for s in moved} == {"e"}


def test_removing_an_endpoint_moves_only_its_sessions_and_spreads_them_over_the_rest():
    before = homes(pool("a", "b", "c", "d"))
    after = homes(pool("a", "c", "d"))
    moved = {s for s in SESSIONS if before[s] != after[s]}
    assert moved == {s for s in SESSIONS if before[s] == "b"}
    landed = Counter(after[s] for s in moved)
    assert set(landed) == {"a", "c", "d"} and min(landed.values()) >= len(moved) / 6, landed


def test_a_key_whose_home_is_over_the_bound_goes_to_its_second_choice():
    endpoints = pool("a", "b", "c", "d")
    key = key_digest(b"session-7")
    first, second = preference(key, endpoints)[:2]
    loads = [0.0] * 4
    assert pick(key, endpoints, loads, 1.25) == first
    loads[first] = 4.0  # bound: 1.25 x (4 / 4 + 1) = 2.5
    assert pick(key, endpoints, loads, 1.25) == second
    loads[first] = 2.0  # bound: 1.25 x (2 / 4 + 1) = 1.875: still over
    assert pick(key, endpoints, loads, 1.25) == second
    loads[first] = 1.0  # bound 1.5625: back home
    assert pick(key, endpoints, loads, 1.25) == first


def test_the_bound_is_the_load_factor_times_the_mean_load_plus_one_scaled_by_weight():
    assert bounds(pool("a", "b", "c", "d"), [8, 0, 0, 0], 1.25) == [3.75] * 4
    assert bounds(pool("a", "b", weights=(1, 3)), [4, 4], 1.5) == [1.5 * (2 + 1), 1.5 * (6 + 1)]


def test_whatever_the_loads_the_pick_is_under_its_bound_or_the_least_loaded():
    rng = random.Random(5)
    for _ in range(2000):
        endpoints = pool(*"abcdef"[:rng.randint(1, 6)], weights=())
        for e in endpoints:
            e.weight = rng.randint(1, 4)
        loads = [float(rng.choice((0, 1, 3, 50, 400))) for _ in endpoints]
        factor = rng.choice((1.0, 1.25, 2.0))
        i = pick(rng.getrandbits(64), endpoints, loads, factor)
        assert loads[i] <= bounds(endpoints, loads, factor)[i]
        busy = [load + 1 for load in loads]  # at least 1 each: nothing is under a bound of 1e-4 x (share + 1)
        assert busy[pick(rng.getrandbits(64), endpoints, busy, 1e-4)] == min(busy)
