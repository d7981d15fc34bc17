"""The autoscaler's loop: one task per pool with ``spec.autoscaling``, every `period_s` seconds.

Each evaluation reads the pool fresh, asks each of its router pods for its load (``GET /debug/load``
on the admin port, at most :data:`REPORT_TIMEOUT_S`), turns the reports into a replica count with
:mod:`maitred.operator.autoscaling`, and writes it through the pool's scale subresource, with an Event
that says why (``ScaledUp``: "from 2 to 4: queue 7.5 per replica, target 2"). The value, the target and
the decision go to ``status.autoscaling`` and the ``Load`` column.

A person who sets ``spec.replicas`` meanwhile (``kubectl scale``) is overruled at the next evaluation:
the autoscaler goes on from the count it set last (kept in the status), and the Event
(``ReplicasOverruled``) says so. Only the operator replica that may act (peering) evaluates.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable, Iterable, Mapping

import aiohttp

from maitred.operator import models
from maitred.operator.autoscaling import PoolLoad, Recommender, ScaleStep, aggregate, figure, metric_value, recommend
from maitred.operator.children import ROUTER_ADMIN_PORT
from maitred.operator.kube import Kube, object_path

log = logging.getLogger("maitred.operator.autoscaler")

#: Seconds between two evaluations of a pool (``maitred operator --autoscale-period``).
DEFAULT_PERIOD_S = 3.0
#: Seconds a router pod has to answer ``/debug/load``.
REPORT_TIMEOUT_S = 1.0
#: The fields of a pool's status that the autoscaler writes (the reconcile leaves them be, and removes them
#: with autoscaling).
STATUS_FIELDS = frozenset({"autoscaling", "load"})


def autoscaled(spec: Mapping) -> bool:
    """True if a pool's spec (the camelCase dict) asks for autoscaling: `autoscaling`, with a template."""
    return bool(spec.get("autoscaling")) and bool(spec.get("template"))


class PoolAutoscaler:
    """The autoscaler of one pool (`namespace`/`name`). `may_act()`: whether this operator replica acts.

    `clock()` gives wall-clock seconds (the scale events in the status are wall-clock times).
    """

    def __init__(self, namespace: str, name: str, *, kube: Kube, http: aiohttp.ClientSession,
                 router_pods: Callable[[], Iterable[dict]], may_act: Callable, period_s: float = DEFAULT_PERIOD_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.namespace, self.name = namespace, name
        self.kube, self.http, self.router_pods, self.may_act = kube, http, router_pods, may_act
        self.period_s, self.clock = period_s, clock
        self.recommender = Recommender(started_at=clock())
        self._task: asyncio.Task | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"autoscaler {self.key}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        acting, last_error = False, None
        while True:
            await asyncio.sleep(self.period_s)
            try:
                if not await self.may_act(self.namespace):
                    acting = False
                    continue
                if not acting:  # acting again after another replica did: its recommendations are not ours
                    self.recommender = Recommender(started_at=self.clock())
                    acting = True
                await self.evaluate()
                last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API server away, a bug: say so (once), try again next period
                error = f"{type(exc).__name__}: {exc}"
                log.log(logging.WARNING if error != last_error else logging.DEBUG,
                        "pool %s: autoscaling: %s", self.key, error)
                last_error = error

    async def evaluate(self) -> int | None:
        """One evaluation; the replica count set, or None if nothing was written to spec.replicas."""
        path = object_path(models.API_VERSION, models.KIND, self.namespace, self.name)
        body = await self.kube.get(path)
        if body is None:
            return None
        try:
            spec = models.PoolSpec.model_validate(body.get("spec") or {})
        except ValueError:
            return None  # the reconcile reports an invalid spec
        rules = spec.autoscaling
        if rules is None or spec.template is None:
            return None
        previous = (body.get("status") or {}).get("autoscaling") or {}
        now = self.clock()
        reports = await self._reports()
        load = aggregate(reports)
        current = spec.replicas
        last = previous.get("desiredReplicas")
        overruled = last is not None and last != current
        base = last if overruled else current
        steps = _steps(previous.get("recentScales") or ())
        if not reports:
            recommended, why = base, "no router reported its load"
        else:
            recommended, why = recommend(load, rules, base)
        desired = self.recommender.decide(now, rules, base, recommended, steps)
        if desired != base:
            steps.append(ScaleStep(now, base, desired))
        # The decision first, then the write: an operator that dies in between finds its own decision in
        # the status, and applies it, rather than taking its own write for a person's.
        version = await self._write_status(body, rules, load, desired, why, steps, now, previous)
        if desired == current:
            return None
        # Only onto the spec read (409 otherwise): a `kubectl scale` meanwhile is seen, and said, next period.
        await self.kube.request("PATCH", path + "/scale", content_type="application/merge-patch+json",
                                body={"metadata": {"resourceVersion": version}, "spec": {"replicas": desired}})
        await self._tell(body, current, base, desired, why, overruled, rules)
        return desired

    async def _reports(self) -> list[dict]:
        """The ``/debug/load`` answers of the pool's router pods (those that answered in time)."""
        urls = [url for pod in self.router_pods() if (url := load_url(pod))]
        timeout = aiohttp.ClientTimeout(total=REPORT_TIMEOUT_S)

        async def one(url: str) -> dict | None:
            try:
                async with self.http.get(url, timeout=timeout) as resp:
                    if resp.status == 200:
                        return await resp.json()
                    log.debug("pool %s: %s answered %d", self.key, url, resp.status)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.debug("pool %s: %s: %s", self.key, url, exc)
            return None

        return [r for r in await asyncio.gather(*(one(u) for u in urls)) if isinstance(r, dict)]

    async def _tell(self, body: dict, current: int, base: int, desired: int, why: str, overruled: bool,
                    rules: models.Autoscaling) -> None:
        if overruled:
            reason = "ReplicasOverruled"
            message = (f"spec.replicas was set to {current} while autoscaling is on; set to {desired}"
                       f" (min {rules.min_replicas}, max {rules.max_replicas}): {why}")
        else:
            reason = "ScaledUp" if desired > current else "ScaledDown"
            message = f"from {current} to {desired}: {why}"
        log.info("pool %s: %s %s", self.key, reason, message)
        await self.kube.post_event(body, "Normal", reason, message)

    async def _write_status(self, body: dict, rules: models.Autoscaling, load: PoolLoad, desired: int, why: str,
                            steps: list[ScaleStep], now: float, previous: dict) -> str:
        """status.autoscaling and status.load, if they changed (a merge patch: the reconcile's fields stay).
        Returns the pool's resourceVersion after it."""
        value = metric_value(load, rules.metric)
        longest = max(rules.scale_up.period_seconds, rules.scale_down.period_seconds)
        stepped = bool(steps) and steps[-1].at == now
        status = models.AutoscalingStatus(
            metric=rules.metric, target=rules.target, value=None if value is None else round(value, 3),
            desired_replicas=desired, routers_reporting=load.routers, held_requests=load.held,
            last_scale_time=_rfc3339(now) if stepped else previous.get("lastScaleTime"),
            recent_scales=tuple(models.ScaleEvent(time=_rfc3339(s.at), from_replicas=s.before, to_replicas=s.after)
                                for s in steps if s.at > now - longest)[-64:],
            message=why)
        # None as null, so that the merge patch removes a value that is no longer known.
        patch = {"autoscaling": status.model_dump(mode="json", by_alias=True),
                 "load": f"{'-' if value is None else figure(round(value, 2))}/{figure(rules.target)}"}
        current = body.get("status") or {}
        stored = {k: v for k, v in patch["autoscaling"].items() if v is not None}  # what the API server keeps
        if stored == current.get("autoscaling") and patch["load"] == current.get("load"):
            return body["metadata"]["resourceVersion"]
        written = await self.kube.patch_pool_status(self.namespace, self.name, patch)
        return written["metadata"]["resourceVersion"]


def load_url(pod: dict) -> str | None:
    """``http://<pod IP>:<admin port>/debug/load`` of a router pod that has an IP and is not terminating, else
    None. Not only ready ones: a router that is not ready (no table yet, or no live endpoint) still reports,
    and its report says so."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    port = next((p["containerPort"] for c in (pod.get("spec") or {}).get("containers") or ()
                 for p in c.get("ports") or () if p.get("name") == "admin"), ROUTER_ADMIN_PORT)
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/debug/load"


def _steps(events: Iterable[dict]) -> list[ScaleStep]:
    steps = []
    for event in events:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            steps.append(ScaleStep(_parse_rfc3339(event["time"]), int(event["from"]), int(event["to"])))
    return steps


def _rfc3339(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_rfc3339(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


class Autoscalers:
    """The autoscalers of every pool that has ``spec.autoscaling`` and a template: started, kept, stopped."""

    def __init__(self, make: Callable[[str, str], PoolAutoscaler]) -> None:
        self._make = make
        self._by_key: dict[str, PoolAutoscaler] = {}
        self._stopping: set[asyncio.Task] = set()

    def sync(self, body: dict) -> None:
        """Start or stop the autoscaler of the pool `body` as its spec asks."""
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        wanted = autoscaled(body.get("spec") or {})
        running = self._by_key.get(key)
        if wanted and running is None:
            scaler = self._by_key[key] = self._make(meta["namespace"], meta["name"])
            scaler.start()
            log.info("pool %s: autoscaling on", key)
        elif not wanted and running is not None:
            del self._by_key[key]  # at once: a sync that turns it on again starts a new one
            self._stopping.add(task := asyncio.get_running_loop().create_task(running.stop()))
            task.add_done_callback(self._stopping.discard)
            log.info("pool %s: autoscaling off", key)

    async def forget(self, namespace: str, name: str) -> None:
        scaler = self._by_key.pop(f"{namespace}/{name}", None)
        if scaler is not None:
            await scaler.stop()
            log.info("pool %s: autoscaling off", scaler.key)

    async def stop(self) -> None:
        for key in list(self._by_key):
            await self.forget(*key.split("/", 1))
