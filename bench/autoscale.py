"""Autoscaling: a load ramp, the replica count following it, and the same ramp on a fixed pool of the same cost.

Replicas are `maitred sim` processes on 127.0.0.x addresses, each running at most `--max-num-seqs` (4)
requests at once and queueing the rest, at a speed that makes a request take about 1 s. One
`maitred router --workers 1` balances them (least-connections, `scrapeLoad` on). Every second the bench
plays the operator's autoscaler: it reads the router's `/debug/load` (admin port), and runs the operator's
own arithmetic, :func:`maitred.operator.autoscaling.aggregate`, :func:`~maitred.operator.autoscaling.recommend`
and :meth:`~maitred.operator.autoscaling.Recommender.decide`, on an :class:`~maitred.operator.models.Autoscaling`
spec (`--metric`, `--target`, 1..`--max-replicas`, a scale-down window of `--scale-down-window` s). A new
replica is started at once but enters the routing table only `--provision` s later (a model server loading
its weights); a removed one leaves the table first and is stopped once its own queue is empty.

The load: closed-loop streaming chat clients, each sending one request after another, their number
ramping low -> high -> low over `--duration` s (10% low, 30% up, 30% plateau, 20% down, 10% low). Each
request's TTFT (to its first SSE event) and status are recorded at the client. The same ramp then runs
against a fixed pool of round(mean replicas alive in the autoscaled run) replicas: the same average cost
(a replica costs from its start to its stop, provisioning and draining included).

    python3 bench/autoscale.py [--duration 200] [--out bench/results]

Writes `autoscale.json` (a per-second timeline of both runs, their scale events, failed requests and
summaries) and `autoscale.png` (needs matplotlib: `pip install -e '.[bench]'`; `--render JSON` redraws it).
About 2 x (duration + 20) s. Every process is stopped on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from maitred.cli.processes import ProcessGroup, free_port
from maitred.operator.autoscaling import Recommender, ScaleStep, aggregate, recommend
from maitred.operator.models import Autoscaling

sys.path.insert(0, str(Path(__file__).parent))
from harness import machine, percentile  # noqa: E402

MODEL = "autoscale-model"
ROUTER_HOST = "127.0.0.2"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about the menu of the day."}],
        "max_tokens": 32, "stream": True}
WINDOW_S = 10.0  # the rolling window of the TTFT p99 timeline


def concurrency_at(t_s: float, duration_s: float, low: int, high: int) -> int:
    """Clients wanted at `t_s` s into a ramp of `duration_s` s: 10% low, 30% up, 30% plateau, 20% down, 10% low."""
    x = t_s / duration_s
    if x < 0.1 or x >= 0.9:
        return low
    if x < 0.4:
        return round(low + (high - low) * (x - 0.1) / 0.3)
    if x < 0.7:
        return high
    return round(high - (high - low) * (x - 0.7) / 0.2)


def plateau(duration_s: float) -> tuple[float, float]:
    """Start and end (s) of the ramp's plateau."""
    return 0.4 * duration_s, 0.7 * duration_s


@dataclass
class Replica:
    """One sim process: `name`, `url`; `started`, `ready_at` (due in the table), `removed` (left it), `stopped` (s).

    `listed`: in the routing table (it entered it, once due and healthy, and has not left it).
    """

    name: str
    url: str
    started: float
    ready_at: float
    removed: float | None = None
    stopped: float | None = None
    listed: bool = False


@dataclass
class Pool:
    """The sim replicas behind the router, and the table file it reads (rewritten on every change)."""

    procs: ProcessGroup
    table_path: Path
    args: argparse.Namespace
    replicas: list[Replica] = field(default_factory=list)
    version: int = 0
    serial: int = 0
    dirty: bool = False  # a replica left the table since it was last written

    @property
    def alive(self) -> list[Replica]:
        """Replicas that are started and not yet removed from the table (provisioning or serving)."""
        return [r for r in self.replicas if r.removed is None]

    @property
    def in_table(self) -> list[Replica]:
        return [r for r in self.alive if r.listed]

    def running(self) -> int:
        """Processes alive (what the pool costs): started and not stopped."""
        return sum(r.stopped is None for r in self.replicas)

    def add(self, now: float, provision_s: float) -> None:
        """Start a sim now; it enters the table at now + `provision_s` (see :meth:`sync`)."""
        self.serial += 1
        name = f"sim-{self.serial}"
        host = f"127.0.0.{10 + self.serial % 240}"
        port = free_port(host)
        self.procs.maitred(name, "sim", "--host", host, "--port", str(port), "--model", MODEL,
                           "--speed", f"{self.args.speed:g}", "--max-num-seqs", str(self.args.max_num_seqs),
                           "--seed", str(self.serial), "--log-level", "warning")
        self.replicas.append(Replica(name, f"http://{host}:{port}", now, now + provision_s))

    def remove(self, now: float) -> None:
        """Take the newest alive replica out (one still provisioning first); it is stopped once drained."""
        replica = max(self.alive, key=lambda r: (not r.listed, r.started))
        replica.removed = now
        if replica.listed:
            replica.listed, self.dirty = False, True

    def write_table(self) -> None:
        """Write the routing table of the listed replicas, as a new version (atomically)."""
        self.version += 1
        table = {"pool": "bench/autoscale", "version": self.version, "method": "least-connections",
                 "models": [MODEL], "scrapeLoad": True,
                 "endpoints": [{"id": r.name, "url": r.url} for r in self.in_table],
                 "healthCheck": {"path": "/health", "periodSeconds": 1, "timeoutSeconds": 2}}
        tmp = self.table_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table))
        os.replace(tmp, self.table_path)

    async def sync(self, http: aiohttp.ClientSession, now: float, drain_s: float = 15.0) -> None:
        """Bring the table up to date (provisioned replicas in, once healthy) and stop drained replicas."""
        for replica in self.alive:
            if not replica.listed and replica.ready_at <= now and await _answers(http, replica.url + "/health"):
                replica.listed, self.dirty = True, True  # (not up yet: tried again at the next sync)
        if self.dirty:
            self.write_table()
            self.dirty = False
        for replica in self.replicas:
            if replica.removed is not None and replica.stopped is None and (
                    now - replica.removed > drain_s or await _idle(http, replica.url)):
                self.stop(replica, now)

    def stop(self, replica: Replica, now: float) -> None:
        """SIGTERM the replica's process group (SIGKILL after 5 s) and forget it."""
        proc = self.procs.procs.pop(replica.name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        replica.stopped = now


async def _answers(http: aiohttp.ClientSession, url: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
            return r.status == 200
    return False


async def _idle(http: aiohttp.ClientSession, url: str) -> bool:
    """Whether a sim has nothing running or waiting (its /metrics)."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=1)) as r:
            busy = [line for line in (await r.text()).splitlines()
                    if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting"))]
            return all(float(line.rsplit(" ", 1)[1]) == 0 for line in busy)
    return False


async def client(http: aiohttp.ClientSession, url: str, index: int, clock, wanted, stop: asyncio.Event,
                 records: list[dict]) -> None:
    """One closed-loop client: while `index` < wanted(), send a streamed chat request and record it.

    Record: {"start", "ttft" (s, to the first SSE event; None on failure), "end" (s), "status", "error"}.
    """
    while not stop.is_set():
        if index >= wanted():
            await asyncio.sleep(0.1)
            continue
        start, ttft, status, error = clock(), None, None, None
        try:
            async with http.post(url + "/v1/chat/completions", json=CHAT) as r:
                status = r.status
                done = False
                async for line in r.content:
                    if line.startswith(b"data:"):
                        ttft = ttft if ttft is not None else clock() - start
                        done = done or line.startswith(b"data: [DONE]")
                if status != 200 or not done:
                    error = f"HTTP {status}" + ("" if done else ", stream ended without [DONE]")
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error:
            ttft = None
        records.append({"start": round(start, 3), "ttft": None if ttft is None else round(ttft, 4),
                        "end": round(clock(), 3), "status": status, "error": error})


class Autoscaler:
    """The operator's autoscaling arithmetic on one router's load report a step: the replica count to set.

    `desired`: the count set last; `events`: {"time" (s), "from", "to", "why"} of every change.
    """

    def __init__(self, args: argparse.Namespace, desired: int) -> None:
        self.spec = Autoscaling.model_validate({
            "minReplicas": 1, "maxReplicas": args.max_replicas, "metric": args.metric, "target": args.target,
            "scaleUp": {"stabilizationWindowSeconds": 0, "periodSeconds": 15},
            "scaleDown": {"stabilizationWindowSeconds": args.scale_down_window, "periodSeconds": 15}})
        self.recommender, self.steps, self.desired, self.events = Recommender(0.0), [], desired, []

    def step(self, now: float, report: dict) -> int:
        """The replica count to set at `now` (s), from the router's /debug/load `report`."""
        recommended, why = recommend(aggregate([report]), self.spec, self.desired)
        decided = self.recommender.decide(now, self.spec, self.desired, recommended, self.steps)
        if decided != self.desired:
            self.steps.append(ScaleStep(now, self.desired, decided))
            self.events.append({"time": round(now, 1), "from": self.desired, "to": decided, "why": why})
            self.desired = decided
        self.steps = [s for s in self.steps if s.at > now - 60]  # the step periods are 15 s
        return self.desired


async def run(args: argparse.Namespace, workdir: Path, fixed: int | None) -> dict:
    """One ramp: autoscaled (`fixed` None) or on `fixed` replicas. Returns {"timeline", "requests", "events"}."""
    tag = "autoscaled" if fixed is None else "fixed"
    logdir = workdir / tag
    logdir.mkdir()
    with ProcessGroup(logdir) as procs:
        pool = Pool(procs, logdir / "table.json", args)
        for _ in range(fixed or 1):
            pool.add(0.0, 0.0)
        port, admin = free_port(ROUTER_HOST), free_port(ROUTER_HOST)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=120)) as http:
            while not all(r.listed for r in pool.alive):
                await pool.sync(http, 0.0)
                await asyncio.sleep(0.2)
            procs.maitred("router", "router", "--table", str(pool.table_path), "--host", ROUTER_HOST,
                          "--port", str(port), "--admin-port", str(admin), "--workers", "1", "--no-access-log",
                          "--log-level", "warning")
            url, admin_url = f"http://{ROUTER_HOST}:{port}", f"http://{ROUTER_HOST}:{admin}"
            for _ in range(100):
                if await _answers(http, url + "/healthz"):
                    break
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError(f"the router did not come up: see {logdir}/router.log")
            await asyncio.sleep(2.0)  # a first load scrape
            t0 = time.monotonic()
            clock = lambda: time.monotonic() - t0  # noqa: E731
            wanted = lambda: concurrency_at(clock(), args.duration, args.low, args.high)  # noqa: E731
            stop, records = asyncio.Event(), []
            clients = [asyncio.create_task(client(http, url, i, clock, wanted, stop, records))
                       for i in range(args.high)]
            autoscaler, timeline = Autoscaler(args, len(pool.alive)), []
            try:
                while (now := clock()) < args.duration:
                    async with http.get(admin_url + "/debug/load") as r:
                        report = await r.json()
                    if fixed is None:
                        desired = autoscaler.step(now, report)
                        while len(pool.alive) < desired:
                            pool.add(now, args.provision)
                        while len(pool.alive) > desired:
                            pool.remove(now)
                    await pool.sync(http, now)
                    value = (report["inFlight"] if args.metric == "in-flight" else report["waiting"] or 0) \
                        / max(1, report["liveEndpoints"])
                    timeline.append({"time": round(now, 1), "concurrency": wanted(),
                                     "replicas": len(pool.in_table), "live": report["liveEndpoints"],
                                     "alive": pool.running(), "desired": autoscaler.desired,
                                     "inFlight": report["inFlight"], "waiting": report["waiting"],
                                     "running": report["running"], "value": round(value, 3)})
                    await asyncio.sleep(max(0.0, 1.0 - (clock() - now)))
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*clients, return_exceptions=True), 60)
    for point in timeline:
        since = point["time"] - WINDOW_S
        point["ttftP99"] = percentile([r["ttft"] for r in records
                                       if since < r["start"] <= point["time"] and r["ttft"] is not None], 99)
    return {"timeline": timeline, "requests": records, "events": autoscaler.events}


def summary(result: dict, duration_s: float) -> dict:
    """Replica-seconds (alive, in table), mean replicas, TTFT p50/p99 (s) overall and on the plateau, errors."""
    timeline, records = result["timeline"], result["requests"]
    ok = [r["ttft"] for r in records if r["ttft"] is not None]
    p0, p1 = plateau(duration_s)
    on_plateau = [r["ttft"] for r in records if r["ttft"] is not None and p0 <= r["start"] < p1]
    alive_s = sum(p["alive"] for p in timeline)  # one sample a second
    changes = [e["to"] - e["from"] for e in result["events"]]
    reversals = sum(1 for a, b in itertools.pairwise(changes) if (a > 0) != (b > 0))
    return {"requests": len(records), "errors": sum(r["error"] is not None for r in records),
            "error_samples": sorted({r["error"] for r in records if r["error"]})[:5],
            "replica_seconds": alive_s, "replica_seconds_in_table": sum(p["replicas"] for p in timeline),
            "mean_replicas": round(alive_s / max(1, len(timeline)), 2),
            "max_replicas": max(p["alive"] for p in timeline),
            "ttft_p50_s": percentile(ok, 50), "ttft_p99_s": percentile(ok, 99),
            "plateau_ttft_p50_s": percentile(on_plateau, 50), "plateau_ttft_p99_s": percentile(on_plateau, 99),
            "scale_events": len(changes), "direction_reversals": reversals}


def plot(data: dict, path: Path) -> None:
    """Three panels over time: clients, replicas (autoscaled vs fixed), TTFT p99 (rolling 10 s) of both runs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    auto, fixed = data["autoscaled"]["timeline"], data["fixed"]["timeline"]
    t = lambda tl, key: ([p["time"] for p in tl], [p[key] for p in tl])  # noqa: E731
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, sharex=True, figsize=(9, 8), height_ratios=(1, 1.2, 1.5))
    ax1.plot(*t(auto, "concurrency"), color="black", label="clients (streams in flight wanted)")
    ax1.plot(*t(auto, "inFlight"), color="tab:blue", alpha=0.6, lw=1, label="in flight at the router, autoscaled")
    ax1.set_ylabel("concurrent requests")
    ax2.step(*t(auto, "replicas"), where="post", color="tab:blue", label="autoscaled: in the routing table")
    ax2.step(*t(auto, "alive"), where="post", color="tab:blue", ls="--", lw=1,
             label="autoscaled: running (incl. provisioning, draining)")
    ax2.step(*t(auto, "desired"), where="post", color="tab:green", ls=":", label="autoscaled: desired")
    ax2.step(*t(fixed, "replicas"), where="post", color="tab:orange", label="fixed pool (same mean cost)")
    ax2.set_ylabel("replicas")
    ax3.plot(*t(auto, "ttftP99"), color="tab:blue", label="autoscaled")
    ax3.plot(*t(fixed, "ttftP99"), color="tab:orange", label="fixed pool")
    ax3.set_ylabel(f"TTFT p99, last {WINDOW_S:g} s (s)")
    ax3.set_yscale("log")
    ax3.set_xlabel("time (s)")
    p0, p1 = plateau(data["meta"]["duration_s"])
    for ax in (ax1, ax2, ax3):
        ax.axvspan(p0, p1, color="grey", alpha=0.1, lw=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    a, f = data["autoscaled"]["summary"], data["fixed"]["summary"]
    fig.suptitle(f"maitred autoscaling ({data['meta']['metric']} target {data['meta']['target']:g}/replica), "
                 f"plateau shaded\nplateau TTFT p99: autoscaled {a['plateau_ttft_p99_s']:.2f} s, "
                 f"fixed {f['replicas_fixed']} replicas {f['plateau_ttft_p99_s']:.2f} s; replica-seconds "
                 f"{a['replica_seconds']} vs {f['replica_seconds']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=200.0, help="length of each ramp (s)")
    parser.add_argument("--low", type=int, default=2, help="clients at the start and the end")
    parser.add_argument("--high", type=int, default=24, help="clients on the plateau")
    parser.add_argument("--metric", choices=("in-flight", "queue"), default="in-flight")
    parser.add_argument("--target", type=float, default=4.0, help="the metric's target per replica")
    parser.add_argument("--max-replicas", type=int, default=8)
    parser.add_argument("--scale-down-window", type=int, default=20, help="scale-down stabilization window (s)")
    parser.add_argument("--provision", type=float, default=5.0,
                        help="from starting a replica to its entering the table (s)")
    parser.add_argument("--speed", type=float, default=0.2, help="the sims' speed factor (0.2: ~0.9 s a request)")
    parser.add_argument("--max-num-seqs", type=int, default=4, help="requests a replica runs at once")
    parser.add_argument("--fixed", type=int, default=None, help="the fixed pool's size (default: the autoscaled mean)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only redraw the figure beside an autoscale.json")
    args = parser.parse_args()
    if args.render:
        plot(json.loads(args.render.read_text()), args.render.with_suffix(".png"))
        return
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped like Ctrl-C: every child stopped too
    started = time.time()
    try:
        data = measure(args)
    except KeyboardInterrupt:
        sys.exit("interrupted; every process it started is stopped")
    data["meta"]["started"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "autoscale.json").write_text(json.dumps(data, indent=1))
    plot(data, args.out / "autoscale.png")
    print(f"wrote {args.out / 'autoscale.json'} and {args.out / 'autoscale.png'}")


def measure(args: argparse.Namespace) -> dict:
    """Both ramps, autoscaled then fixed: {"meta", "autoscaled", "fixed"}, each run's timeline, events and summary."""
    with tempfile.TemporaryDirectory(prefix="maitred-autoscale-") as tmp:
        auto = asyncio.run(run(args, Path(tmp), None))
        auto["summary"] = summary(auto, args.duration)
        size = args.fixed or max(1, round(auto["summary"]["mean_replicas"]))
        print(f"autoscaled: {json.dumps(auto['summary'])}\nfixed pool of {size}", flush=True)
        fixed = asyncio.run(run(args, Path(tmp), size))
        fixed["summary"] = {"replicas_fixed": size, **summary(fixed, args.duration)}
        print(f"fixed: {json.dumps(fixed['summary'])}", flush=True)
    meta = {"duration_s": args.duration,
            "clients": [args.low, args.high], "metric": args.metric, "target": args.target,
            "max_replicas": args.max_replicas, "scale_down_window_s": args.scale_down_window,
            "provision_s": args.provision, "sim_speed": args.speed, "max_num_seqs": args.max_num_seqs,
            "request": {k: CHAT[k] for k in ("max_tokens", "stream")}, "machine": machine(),
            "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
    for result in (auto, fixed):  # the summaries hold what the requests said; only the failed ones are kept
        result["failed_requests"] = [r for r in result.pop("requests") if r["error"]]
    return {"meta": meta, "autoscaled": auto, "fixed": fixed}


if __name__ == "__main__":
    main()
