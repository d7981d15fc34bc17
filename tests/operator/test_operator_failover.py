"""Failover between two real operator processes sharing a kopf peering object: the standby takes over soon
after the active one is killed (SIGKILL: no goodbye, its entry stays behind for the peering lifetime),
and an operator restarted in place acts at once, since the replica started last outranks the others.

Times in seconds, from the kill to the moment the routing table shows a change made right after it.
"""

from __future__ import annotations

import time

import pytest

from maitred.operator.timing import PEERING_LIFETIME_S, newest_wins_priority

from operator_harness import template, wait_for


def latest_start(log: str) -> str:
    """The log of a process's latest start (procs.spawn writes its command line at each start)."""
    return log.rsplit("\n$ ", 1)[-1]


def two_operators(pools, start_operator):
    """The first operator started, then a second one, which outranks it; the pool `llama` served."""
    standby = start_operator()
    pools.apply("llama", {"replicas": 1, "template": template("llama")})
    pools.wait_endpoints("llama", 1)
    active = start_operator()
    wait_for(lambda: "Pausing operations in favour of" in standby.log(), 30, "the first operator to stand by")
    return standby, active


@pytest.mark.cluster
def test_a_standby_takes_over_within_15_s_of_the_active_operator_being_killed(
        pools, start_operator, replicas_kubelet):
    standby, active = two_operators(pools, start_operator)
    paused_log = standby.log()

    active.kill()
    killed_at = time.monotonic()
    pools.kubectl("scale", "aisp/llama", "--replicas=2")
    pools.wait_endpoints("llama", 2, timeout_s=60)
    took = time.monotonic() - killed_at

    print(f"failover after SIGKILL: {took:.1f} s")
    assert took < 15.0, f"the standby acted {took:.1f} s after the active operator was killed"
    assert "Resuming operations" in standby.log()[len(paused_log):]


@pytest.mark.cluster
def test_an_operator_restarted_in_place_acts_at_once(pools, start_operator, replicas_kubelet):
    standby, active = two_operators(pools, start_operator)
    paused_log = standby.log()

    active.kill()  # its peering entry stays behind, alive for PEERING_LIFETIME_S
    killed_at = time.monotonic()
    active.restart()
    pools.kubectl("scale", "aisp/llama", "--replicas=2")
    pools.wait_endpoints("llama", 2, timeout_s=60)
    took = time.monotonic() - killed_at

    print(f"restart in place: {took:.1f} s")
    assert took < PEERING_LIFETIME_S, f"{took:.1f} s: the restarted operator waited for its dead entry"
    wait_for(lambda: "2 endpoint(s)" in latest_start(active.log()), 10, "the restarted operator to say it wrote it")
    assert "Resuming operations" not in standby.log()[len(paused_log):], "the standby never had to take over"


def test_a_replica_started_a_millisecond_later_always_outranks_the_earlier_one():
    now = time.time()
    assert all(newest_wins_priority(now + 0.001) > newest_wins_priority(now) for _ in range(1000))
