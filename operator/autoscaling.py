"""The autoscaler's arithmetic: from the routers' load reports to a replica count, with the semantics of
Kubernetes' HorizontalPodAutoscaler (pkg/controller/podautoscaler: replica_calculator.go, horizontal.go).

Pure: no I/O and no clock (times are passed in, in seconds), so every rule is tested with plain numbers.
:mod:`maitred.operator.autoscaler` does the polling and the writing.

1. **Aggregate** the routers' ``/debug/load`` reports (:func:`aggregate`). Every router scrapes the same
   replicas, so their figures of the replicas (waiting, running, KV cache, live endpoints) are one
   figure seen several times: the largest is taken. What each router counts of its own (its in-flight
   requests, the requests it holds during a cold start) is added up.
2. **The metric's value per ready replica** (:func:`metric_value`): ``queue`` = (waiting + held) / ready,
   ``in-flight`` = (in-flight + held) / ready, ``kv-cache`` = the mean usage.
3. **Recommend** (:func:`recommend`): desired = ceil(ready x value / target), or no change while
   |value / target - 1| <= tolerance, and never against the value's direction; for ``queue``, never below
   :func:`queue_floor` on the way down. Like HPA it counts only ready replicas: replicas that are starting
   take no load yet, and counting them would scale up once more for the same load (the duplicate step an
   operator restarted mid-scale would otherwise take). From zero ready replicas, any demand (a held
   request) asks for ceil(demand / target), at least 1.
4. **Stabilize** (:meth:`Recommender.decide`): up to the least recommendation of the scale-up window, down
   to the greatest of the scale-down window (HPA's ``stabilizationWindowSeconds``); then the step limits,
   at most max(stepReplicas, stepPercent %) per period, counted over the scale events of that period;
   then [minReplicas, maxReplicas].
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from maitred.operator.models import Autoscaling


@dataclass(frozen=True)
class PoolLoad:
    """A pool's load, aggregated over its routers' reports.

    `live`: endpoints live (largest report); `waiting`, `running`: requests at the replicas (None: no
    replica reports it); `kv_cache_usage`: mean 0..1 (None: none reports it); `in_flight`, `held`:
    requests open to the replicas, and held for a cold start, summed over the routers; `routers`: the
    reports aggregated.
    """

    live: int = 0
    waiting: float | None = None
    running: float | None = None
    kv_cache_usage: float | None = None
    in_flight: float = 0.0
    held: int = 0
    routers: int = 0


def aggregate(reports: Iterable[Mapping]) -> PoolLoad:
    """One :class:`PoolLoad` from the routers' ``/debug/load`` answers (camelCase dicts, see the router's README).

    A figure that is not a finite number >= 0 (absent, null, a string) counts as not reported.
    """
    reports = list(reports)

    def figures(key: str) -> list[float]:
        return [float(v) for r in reports if _is_figure(v := r.get(key))]

    def largest(key: str) -> float | None:
        values = figures(key)
        return max(values) if values else None

    return PoolLoad(
        live=int(largest("liveEndpoints") or 0),
        waiting=largest("waiting"),
        running=largest("running"),
        kv_cache_usage=None if (kv := largest("kvCacheUsage")) is None else min(kv, 1.0),
        in_flight=sum(figures("inFlight")),
        held=int(sum(figures("held"))),
        routers=len(reports),
    )


def _is_figure(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def metric_value(load: PoolLoad, metric: str) -> float | None:
    """The value of `metric` per ready replica; None when it cannot be known (no ready replica, or the
    replicas do not report the figure). Raises ValueError for an unknown metric."""
    if metric == "kv-cache":
        return load.kv_cache_usage if load.live else None
    if metric not in ("queue", "in-flight"):
        raise ValueError(f"unknown autoscaling metric {metric!r}")
    if not load.live or (metric == "queue" and load.waiting is None and not load.held):
        return None
    return demand(load, metric) / load.live


def demand(load: PoolLoad, metric: str) -> float:
    """The requests that `metric` counts: those held, plus the replicas' queue (queue) or the routers'
    requests in flight (in-flight)."""
    if metric == "queue":
        return load.held + (load.waiting or 0.0)
    if metric == "in-flight":
        return load.held + load.in_flight
    return float(load.held)


def recommend(load: PoolLoad, spec: Autoscaling, current: int) -> tuple[int, str]:
    """The replica count the load asks for (before stabilization and limits), and why, for the Event.

    `current`: spec.replicas now. Without a value (no ready replica, no report) the recommendation is
    `current`, except a pool at zero that demand finds: ceil(demand / target), at least 1 (kv-cache: 1).
    (A pool whose replicas exist but are not ready, crashing maybe, is not scaled further on its held
    requests.) Never against the value's direction: above the target it is at least `current` (replicas
    still starting count as taking no load, as in HPA), below it at most `current`.
    """
    value = metric_value(load, spec.metric)
    target = figure(spec.target)
    if value is None:
        wanted = demand(load, spec.metric)
        if current == 0 and wanted > 0:
            count = 1 if spec.metric == "kv-cache" else max(1, math.ceil(wanted / spec.target))
            return count, f"{figure(wanted)} request(s) waiting and no replica ready"
        return current, "no load report"
    why = f"{spec.metric} {figure(value)} per replica, target {target}"
    ratio = value / spec.target
    if abs(ratio - 1.0) <= spec.tolerance + 1e-9:  # 4.4 / 4 is 1.1000000000000001
        return current, why + " (within tolerance)"
    count = math.ceil(load.live * ratio - 1e-9)
    if ratio > 1.0:
        return max(count, current), why
    if spec.metric == "queue":
        count = max(count, queue_floor(load, spec.target))
    return min(count, current), why


def queue_floor(load: PoolLoad, target: float) -> int:
    """The fewest replicas that keep at most `target` requests waiting per replica, if each runs what the
    ready ones run now: ceil(demand / (running per replica + target)), demand = waiting + running + held.

    A queue is not a utilization: it is 0 whenever the pool keeps up, so HPA's rule alone recommends
    minReplicas as soon as the queue empties, and the pool swings between too few and too many replicas
    (bench/autoscale.py saw 13 scale events, 5 of them reversals, in 120 s of steady load). This floor bounds
    a scale-down by what the running requests show; 0 if the replicas do not report what they run.
    """
    if load.running is None or not load.live:
        return 0
    demand = (load.waiting or 0.0) + load.running + load.held
    return math.ceil(demand / (load.running / load.live + target) - 1e-9)


@dataclass(frozen=True)
class ScaleStep:
    """One change of the replica count, `at` (s, on the caller's clock) from `before` to `after`."""

    at: float
    before: int
    after: int


class Recommender:
    """The stabilization windows and step limits of one pool (HPA's behavior), over time.

    `started_at` (s): when this operator began to watch the pool (or to act again, after another replica
    acted). Its recommendations are kept in memory, so a restarted operator knows none from before: it
    does not scale down until it has watched for a whole scale-down window (HPA would take its first recommendation alone as the window's). The scale
    events that the step limits count are given by the caller (kept in the pool's status), so they
    survive a restart.
    """

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self._recommendations: deque[tuple[float, int]] = deque()

    def decide(self, now: float, spec: Autoscaling, current: int, recommended: int,
               steps: Iterable[ScaleStep] = ()) -> int:
        """The replica count to set at `now` (s): `recommended` stabilized, limited and clamped.

        `current`: the count the autoscaler set last (or spec.replicas); `steps`: the recent scale events.
        """
        self._recommendations.append((now, recommended))
        longest = max(spec.scale_up.stabilization_window_seconds, spec.scale_down.stabilization_window_seconds)
        while self._recommendations and self._recommendations[0][0] < now - longest:
            self._recommendations.popleft()
        up_cutoff = now - spec.scale_up.stabilization_window_seconds
        down_cutoff = now - spec.scale_down.stabilization_window_seconds
        up = min([r for t, r in self._recommendations if t >= up_cutoff] or [recommended])
        down = max([r for t, r in self._recommendations if t >= down_cutoff] or [recommended])
        if now - self.started_at < spec.scale_down.stabilization_window_seconds:
            down = max(down, current)  # a window not yet watched in full: no scale-down
        if current == 0:
            up = recommended  # the idle zeros of the window would hold held requests past holdSeconds
        desired = up if up > current else down if down < current else current
        desired = _limit_step(now, spec, current, desired, list(steps))
        return max(spec.min_replicas, min(spec.max_replicas, desired))


def _limit_step(now: float, spec: Autoscaling, current: int, desired: int, steps: list[ScaleStep]) -> int:
    """`desired` within the step limits, counting the changes of the limit's period (HPA's policies, selectPolicy Max)."""
    if desired > current:
        rules = spec.scale_up
        added = sum(s.after - s.before for s in steps if s.at > now - rules.period_seconds and s.after > s.before)
        start = current - added  # the count at the start of the period
        ceiling = max(start + rules.step_replicas, math.ceil(start * (1 + rules.step_percent / 100)))
        return max(current, min(desired, ceiling))
    if desired < current:
        rules = spec.scale_down
        removed = sum(s.before - s.after for s in steps if s.at > now - rules.period_seconds and s.after < s.before)
        start = current + removed
        floor = min(start - rules.step_replicas, math.ceil(start * (1 - rules.step_percent / 100) - 1e-9))
        return min(current, max(desired, floor))
    return desired


def figure(value: float) -> str:
    """A figure for people, to 4 significant digits: 7.5, 2, 0.425, 1e-09."""
    return f"{value:.4g}"
