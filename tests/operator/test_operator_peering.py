"""Who acts among operator replicas, by kopf's rule, from a peering object's status as plain dicts."""

from __future__ import annotations

import datetime

from maitred.operator.peering import outranked

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)


def peer(priority: int, seen_s_ago: float = 1, lifetime_s: int = 60) -> dict:
    seen = NOW - datetime.timedelta(seconds=seen_s_ago)
    return {"priority": priority, "lifetime": lifetime_s, "lastseen": seen.isoformat()}


def test_a_live_peer_of_higher_priority_outranks():
    assert outranked({"me": peer(5), "other": peer(10)}, 5, NOW)
    assert not outranked({"me": peer(10), "other": peer(5)}, 10, NOW)


def test_a_dead_peer_outranks_no_one():
    assert not outranked({"me": peer(5), "gone": peer(10, seen_s_ago=61)}, 5, NOW)


def test_a_tie_pauses_both_as_kopf_does_but_one_alone_acts():
    assert outranked({"me": peer(7), "twin": peer(7)}, 7, NOW)
    assert not outranked({"me": peer(7)}, 7, NOW)


def test_kopf_timestamps_without_zone_are_utc():
    assert outranked({"other": {"priority": 9, "lifetime": 60, "lastseen": "2026-01-01T11:59:30"}}, 1, NOW)
