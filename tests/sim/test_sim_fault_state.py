"""Fault decisions without a server: seeded error draws, the full-queue rule, the one-way refusal."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from maitred.sim.config import FaultConfig
from maitred.sim.faults import Faults
from maitred.sim.listener import ListenerControl


class QueueOf:
    def __init__(self, beyond_slots: int) -> None:
        self.num_queued_beyond_slots = beyond_slots
        self.num_waiting = max(beyond_slots, 0)


def test_error_draws_follow_the_rate_and_repeat_with_the_seed():
    def draws(seed: int) -> list[bool]:
        faults = Faults(FaultConfig(error_rate=0.3), seed, ListenerControl())
        return [faults.injected_error() is not None for _ in range(1000)]

    assert draws(1) == draws(1)
    assert 200 < sum(draws(1)) < 400
    never = Faults(FaultConfig(), 1, ListenerControl())
    assert all(never.injected_error() is None for _ in range(100))


def test_only_429_and_503_errors_carry_retry_after():
    for status, header in ((429, [(b"retry-after", b"5")]), (503, [(b"retry-after", b"5")]), (500, [])):
        error = Faults(FaultConfig(error_rate=1, error_status=status, retry_after_s=5), 0, ListenerControl())
        assert error.injected_error().headers() == header


def test_max_waiting_counts_requests_that_would_wait_beyond_the_slots():
    faults = Faults(FaultConfig(max_waiting=2), 0, ListenerControl())
    assert faults.overloaded(QueueOf(-3)) is None  # free slots
    assert faults.overloaded(QueueOf(1)) is None  # one waits: this one would be the second
    assert faults.overloaded(QueueOf(2)).status == 503
    zero = Faults(FaultConfig(max_waiting=0), 0, ListenerControl())
    assert zero.overloaded(QueueOf(-1)) is None and zero.overloaded(QueueOf(0)).status == 503


def test_update_merges_validates_and_changes_nothing_on_error():
    faults = Faults(FaultConfig(), 0, ListenerControl())
    assert faults.update({"extra_latency_ms": 10}).extra_latency_ms == 10
    with pytest.raises(ValidationError):
        faults.update({"error_rate": 0.5, "unknown": 1})
    assert faults.config.error_rate == 0.0 and faults.config.extra_latency_ms == 10


def test_refusing_connections_needs_a_server_and_cannot_be_undone():
    # The refusal itself is checked on a real process (test_sim_faults.py).
    faults = Faults(FaultConfig(), 0, ListenerControl())
    with pytest.raises(RuntimeError, match="no listening server"):
        faults.update({"refuse_connections": True})
    assert faults.config.refuse_connections is False
    refusing = Faults(FaultConfig(refuse_connections=True), 0, ListenerControl())
    with pytest.raises(RuntimeError, match="restart"):
        refusing.update({"refuse_connections": False})
