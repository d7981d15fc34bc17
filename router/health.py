"""Endpoint health: active checks on the table's health path, and passive ejection of failing endpoints.

An endpoint turns unhealthy after `failureThreshold` failed checks in a row, or after
`failureThreshold` connection failures or 5xx answers in a row on real requests (passive ejection,
Envoy's "consecutive 5xx" outlier detection). It turns healthy again after `successThreshold`
passed checks in a row. A backend's 4xx is an answer for the client and never counts against it.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from maitred.router.endpoints import EndpointRegistry, EndpointState

log = logging.getLogger("maitred.router.health")


class HealthChecker:
    """Runs active checks for every endpoint of the current table and records passive outcomes."""

    def __init__(self, endpoints: EndpointRegistry) -> None:
        self._endpoints = endpoints
        self._wake = asyncio.Event()

    def kick(self) -> None:
        """Check at once (after a table change) instead of waiting for the period."""
        self._wake.set()

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Check every endpoint each `periodSeconds`, until cancelled."""
        while True:
            table = self._endpoints.table
            if table is not None and len(self._endpoints):
                await asyncio.gather(*(self._check(session, s) for s in self._endpoints))
            period = table.health_check.period_seconds if table else 1.0
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=period)
            except TimeoutError:
                pass

    async def _check(self, session: aiohttp.ClientSession, state: EndpointState) -> None:
        hc = self._endpoints.table.health_check
        try:
            async with session.get(state.url + hc.path, timeout=aiohttp.ClientTimeout(total=hc.timeout_seconds)) as resp:
                await resp.read()
                ok, reason = 200 <= resp.status < 300, f"health check answered HTTP {resp.status}"
        except TimeoutError:
            ok, reason = False, f"health check timed out after {hc.timeout_seconds:g} s"
        except aiohttp.ClientError as exc:
            ok, reason = False, f"health check failed: {describe(exc)}"
        if ok:
            self.check_passed(state)
        else:
            self.check_failed(state, reason)

    def check_passed(self, state: EndpointState) -> None:
        """Record a passed active check."""
        state.check_failures = 0
        if state.healthy:
            # Successes count only while unhealthy: an ejection (perhaps by another worker process
            # of this router) starts the count towards `successThreshold` from zero.
            state.check_successes = 0
            state.health_reason = "health check passed"
            return
        state.check_successes += 1
        if state.check_successes >= self._endpoints.table.health_check.success_threshold:
            state.consecutive_failures = 0
            self._endpoints.set_health(state, True, "health check passed")
            log.info("endpoint %s is healthy again", state.id)

    def check_failed(self, state: EndpointState, reason: str) -> None:
        """Record a failed active check; eject after `failureThreshold` in a row."""
        state.check_successes = 0
        state.check_failures += 1
        threshold = self._endpoints.table.health_check.failure_threshold
        if state.healthy and state.check_failures >= threshold:
            self._endpoints.set_health(state, False, f"{reason} ({state.check_failures} times in a row)")
            log.warning("endpoint %s is unhealthy: %s", state.id, reason)
        elif state.healthy:
            state.health_reason = f"{reason} ({state.check_failures} of {threshold} failures before ejection)"
        else:
            state.health_reason = f"{reason} ({state.check_failures} times in a row)"

    def request_succeeded(self, state: EndpointState) -> None:
        """Record an answer from the endpoint (2xx-4xx)."""
        state.consecutive_failures = 0

    def request_failed(self, state: EndpointState, reason: str) -> None:
        """Record a connection failure or 5xx; eject after `failureThreshold` in a row."""
        state.count_failure()
        table = self._endpoints.table
        threshold = table.health_check.failure_threshold if table else 3
        if state.healthy and state.consecutive_failures >= threshold:
            state.check_successes = 0
            self._endpoints.set_health(
                state, False, f"ejected after {state.consecutive_failures} failed requests in a row: {reason}"
            )
            log.warning("endpoint %s ejected: %s", state.id, reason)


def describe(exc: BaseException) -> str:
    """A short, user-facing description of an upstream error (no traceback)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed by the endpoint before a response"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "response cut off by the endpoint"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"connection error ({exc.strerror or exc})"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
