"""maitred beside the Rust routers, vllm-router and sglang-router, in one run on one machine.

Paths compared in the same run, each in front of the same two NGINX backend ports (round robin):
direct to the backend, NGINX as a reverse proxy, maitred (`--workers 1`, and `--workers 2` where
`maitred router` has the option), vllm-router 0.1.17 and sglang-router 0.3.2 (policy round_robin,
from their own venv: bench/peer_routers.py).

Backends (NGINX, one worker, see bench/harness.py): a fixed chat completion; an SSE stream of 256
events flushed one by one; a slow stream, one event every 2 s, for open-stream capacity.

Figures:

- latency at concurrency 1, small JSON: p50 and p99, and what each path adds to the direct call (ms);
- throughput at concurrency 32 and 128 (wrk), small JSON and a 220 KB prompt: req/s, p99 (ms);
- 256-event streams at concurrency 32: streams/s, p99 of the whole stream (ms);
- CPU seconds of the router's process tree per 10,000 requests (from /proc/PID/stat, utime + stime);
- open-stream capacity: 1,000 and 5,000 slow streams held open at once (opened at 250/s): the router's
  memory (MB, idle and peak; RSS summed over its processes, and PSS, which splits the pages that forked
  workers share), each stream's first-event latency while they open, and that of 100 new streams opened one
  by one while all are open (p99, s).

Machines differ 2x from day to day, so only ratios within one run are claimed: peers.md gives each
figure of maitred as a ratio to vllm-router's and sglang-router's.

    python bench/peers.py [--quick] [--seconds 8] [--rounds 2] [--streams 1000 5000] [--out bench/results]

Needs wrk, nginx and NGINX's echo module (Debian: `apt-get install wrk nginx libnginx-mod-http-echo`),
and PyPI the first time (the peers' venv). Each wrk run is repeated `--rounds` times, case by case across the
paths, and the round with the most req/s kept. A full run takes about 15 min; `--quick` (2 s runs, one round,
200 and 1,000 streams) about 3 min.
All traffic goes to 127.0.0.1; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).parent))
from harness import (HOST, SMALL_CHAT, STREAM_COMPLETION, LoadSampler, backend_conf, big_chat,  # noqa: E402
                     check_path, machine,
                     open_streams, proxy_conf, tree_cpu_s, tree_pss_bytes, tree_rss_bytes, wait_http, wrk,
                     wrk_retried, keep_best, write_lua)
from peer_routers import (PEER_VERSIONS, ensure_peer_venv, start_sglang_router,  # noqa: E402
                          start_vllm_router)

from maitred.cli.processes import ProcessGroup, free_port  # noqa: E402

EVENTS = 256
#: Load cases: name -> (request path, body builder, concurrency).
CASES = {
    "json_c1": ("/v1/chat/completions", "small", 1),
    "json_c32": ("/v1/chat/completions", "small", 32),
    "json_c128": ("/v1/chat/completions", "small", 128),
    "big_c32": ("/v1/chat/completions", "big", 32),
    "big_c128": ("/v1/chat/completions", "big", 128),
    "stream_c32": ("/v1/completions", "stream", 32),
}
ROUTERS = ("maitred-w1", "maitred-w2", "vllm-router", "sglang-router")


@functools.cache
def router_help() -> str:
    """The text of this maitred's `maitred router --help`."""
    return subprocess.run([sys.executable, "-m", "maitred.cli.main", "router", "--help"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "200"}).stdout


def maitred_has_workers() -> bool:
    """Whether this maitred's `router` command takes `--workers N`."""
    return "--workers" in router_help()


def start_maitred(procs: ProcessGroup, workdir: Path, name: str, ports: list[int], workers: int | None) -> int:
    """Start `maitred router` (round-robin over `ports`) as `name`; returns its port once it is ready."""
    table = workdir / f"table-{name}.json"
    table.write_text(json.dumps({
        "pool": "bench/" + name, "version": 1, "method": "round-robin",
        "endpoints": [{"id": f"nginx-{p}", "url": f"http://{HOST}:{p}"} for p in ports],
        "healthCheck": {"path": "/health", "periodSeconds": 30}}))
    port = free_port(HOST)
    args = ["router", "--table", str(table), "--host", HOST, "--port", str(port), "--no-access-log",
            "--log-level", "warning"]
    if workers is not None:
        args += ["--workers", str(workers)]
    if "--admin-port" in router_help():  # 0: no separate admin port (its default, 9091, would be shared)
        args += ["--admin-port", "0"]
    procs.maitred(name, *args)
    wait_http(f"http://{HOST}:{port}/readyz")
    return port


def start_router(kind: str, procs: ProcessGroup, workdir: Path, ports: list[int], has_workers: bool,
                 suffix: str = "") -> tuple[int, int]:
    """Start router `kind` in front of `ports`; returns (its port, its pid)."""
    name = kind + suffix
    if kind == "maitred-w1":
        port = start_maitred(procs, workdir, name, ports, 1 if has_workers else None)
    elif kind == "maitred-w2":
        port = start_maitred(procs, workdir, name, ports, 2)
    else:
        port = free_port(HOST)
        start = start_vllm_router if kind == "vllm-router" else start_sglang_router
        start([f"http://{HOST}:{p}" for p in ports], "round_robin", port, procs, name=name)
    return port, procs.procs[name].pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s runs, 200 and 1,000 open streams")
    parser.add_argument("--seconds", type=float, default=None, help="duration of each wrk run, s (default 8, quick 2)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of every wrk run; the best (most req/s) is kept (default 2, quick 1)")
    parser.add_argument("--streams", type=int, nargs="+", default=None,
                        help="open-stream counts (default 1000 5000, quick 200 1000)")
    parser.add_argument("--parts", nargs="+", choices=("throughput", "capacity"), default=["throughput", "capacity"],
                        help="which parts to run (both by default)")
    parser.add_argument("--open-rate", type=float, default=250.0, help="streams opened per second, /s")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    rounds = args.rounds or (1 if args.quick else 2)
    streams = args.streams or ([200, 1000] if args.quick else [1000, 5000])
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed: apt-get install wrk nginx libnginx-mod-http-echo")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the routers: 5,000 streams x 2 sockets
    ensure_peer_venv()
    has_workers = maitred_has_workers()
    notes = [] if has_workers else ["maitred router has no --workers option here: the maitred-w2 row is left out "
                                    "and maitred-w1 runs without the option"]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "seconds_per_run": seconds,
            "rounds": rounds,
            "streams": streams, "open_rate_per_s": args.open_rate, "quick": args.quick, "versions": PEER_VERSIONS,
            "note": "wrk, the backend and the router share the machine's cores"}
    workdir = Path(tempfile.mkdtemp(prefix="maitred-peers-"))
    with ProcessGroup(workdir) as procs, LoadSampler() as load:
        paths, capacity = run_all(procs, workdir, seconds, rounds, streams, args.open_rate, has_workers, notes, args.parts)
    meta["loadavg_end"] = machine()["loadavg"]
    meta["load_1min_during_run"] = load.summary()
    write_results(args.out, meta, paths, capacity, notes)


def run_all(procs: ProcessGroup, workdir: Path, seconds: float, rounds: int, streams: list[int], open_rate: float,
            has_workers: bool, notes: list[str], parts: list[str]) -> tuple[dict, dict]:
    main_ports = [free_port(HOST), free_port(HOST)]
    slow_ports = [free_port(HOST), free_port(HOST)]
    procs.start("backend", ["nginx", "-c", str(backend_conf(workdir, "backend", main_ports, slow_ports)),
                            "-p", str(workdir)])
    proxy_port, proxy_slow_port = free_port(HOST), free_port(HOST)
    procs.start("nginx-proxy", ["nginx", "-c", str(proxy_conf(workdir, "nginx-proxy", {
        proxy_port: main_ports, proxy_slow_port: slow_ports})), "-p", str(workdir)])
    for p in main_ports + [proxy_port]:
        wait_http(f"http://{HOST}:{p}/health")
    targets: dict[str, tuple[int, int | None]] = {"direct": (main_ports[0], None),
                                                  "nginx": (proxy_port, procs.procs["nginx-proxy"].pid)}
    kinds = [k for k in ROUTERS if has_workers or k != "maitred-w2"]
    for kind in kinds:
        targets[kind] = start_router(kind, procs, workdir, main_ports, has_workers)
    scripts = {"small": write_lua(workdir, "small", SMALL_CHAT), "big": write_lua(workdir, "big", big_chat()),
               "stream": write_lua(workdir, "stream", STREAM_COMPLETION)}
    for name, (port, _) in targets.items():
        check_path(f"http://{HOST}:{port}", EVENTS)
    time.sleep(1.0)

    paths: dict[str, dict] = {name: {} for name in targets}
    for name, (port, _) in targets.items():
        wrk(f"http://{HOST}:{port}/v1/chat/completions", scripts["small"], 8, 1.0)  # warm connection pools
    if "throughput" not in parts:
        rounds = 0
    # Case by case, every path in turn, `rounds` times: a burst of load from elsewhere on the machine
    # then hits one run of each path rather than all runs of one; the best round is kept.
    for round_ in range(rounds):
        for case, (path, body, conc) in CASES.items():
            for name, (port, pid) in targets.items():
                cpu0 = tree_cpu_s(pid) if pid else None
                result = wrk_retried(f"http://{HOST}:{port}{path}", scripts[body], conc, seconds)
                if pid and "requests" in result:
                    result["cpu_s_per_10k"] = round((tree_cpu_s(pid) - cpu0) / result["requests"] * 10_000, 3)
                result["round"] = round_ + 1
                keep_best(paths[name], case, result)
                print(json.dumps({"path": name, "case": case, **result}), flush=True)
    for name in kinds:  # the throughput routers leave; fresh ones measure the open streams
        procs.kill(name)

    capacity: dict[str, dict] = {}
    slow_targets = {"direct": (slow_ports[0], None), "nginx": (proxy_slow_port, procs.procs["nginx-proxy"].pid)}
    for kind in kinds if "capacity" in parts else ():
        slow_targets[kind] = start_router(kind, procs, workdir, slow_ports, has_workers, suffix="-slow")
    for name, (port, pid) in slow_targets.items() if "capacity" in parts else ():
        capacity[name] = {"idle_rss_mb": round(tree_rss_bytes(pid) / 2**20, 1) if pid else None,
                          "idle_pss_mb": round(tree_pss_bytes(pid) / 2**20, 1) if pid else None}
        for count in streams:
            hold = max(4.0, min(10.0, seconds + 2))
            result = uvloop.run(open_streams(port, count, open_rate, hold, pid=pid))
            capacity[name][str(count)] = result
            print(json.dumps({"path": name, "open_streams": count, **result}), flush=True)
            time.sleep(2.0)  # let the closed streams' upstream connections go
        if name in kinds:
            procs.kill(name + "-slow")
    return paths, capacity


def write_results(out: Path, meta: dict, paths: dict, capacity: dict, notes: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    derived = derive(paths, capacity)
    (out / "peers.json").write_text(json.dumps({"meta": meta, "notes": notes, "paths": paths, "capacity": capacity,
                                                **derived}, indent=2) + "\n")
    md = render_md(meta, notes, paths, capacity, derived)
    (out / "peers.md").write_text(md)
    print(md)


def _metrics(paths: dict, capacity: dict) -> dict[str, dict[str, float | None]]:
    """Each compared figure per path: label -> {path: value} (None where a part did not run)."""
    direct = paths.get("direct", {}).get("json_c1")
    figures: dict[str, dict[str, float | None]] = {}

    def add(key: str, fn) -> None:
        figures[key] = {}
        for name, cases in paths.items():
            try:
                figures[key][name] = fn(cases)
            except (KeyError, TypeError):
                figures[key][name] = None

    add("added p50 c=1 (ms)", lambda c: round(c["json_c1"]["p50_ms"] - direct["p50_ms"], 3))
    add("added p99 c=1 (ms)", lambda c: round(c["json_c1"]["p99_ms"] - direct["p99_ms"], 3))
    for case, label in (("json_c32", "JSON c=32"), ("json_c128", "JSON c=128"), ("big_c32", "220 KB c=32"),
                        ("big_c128", "220 KB c=128")):
        add(f"req/s {label}", lambda c, case=case: c[case]["rps"])
        add(f"p99 {label} (ms)", lambda c, case=case: c[case]["p99_ms"])
    add("streams/s, 256 events, c=32", lambda c: c["stream_c32"]["rps"])
    add("p99 stream c=32 (ms)", lambda c: c["stream_c32"]["p99_ms"])
    add("CPU s per 10k req, JSON c=32", lambda c: c["json_c32"]["cpu_s_per_10k"])
    add("CPU s per 10k req, 220 KB c=32", lambda c: c["big_c32"]["cpu_s_per_10k"])
    add("CPU s per 10k streams, c=32", lambda c: c["stream_c32"]["cpu_s_per_10k"])
    for count in sorted({k for v in capacity.values() for k in v if k.isdigit()}, key=int):
        for field, label in (("peak_rss_mb", f"RSS with {int(count):,} open streams (MB)"),
                             ("peak_pss_mb", f"PSS with {int(count):,} open streams (MB)"),
                             ("first_event_p99_s", f"first-event p99 while opening {int(count):,} (s)"),
                             ("probe_p99_s", f"first-event p99 of a new stream, {int(count):,} open (s)"),
                             ("failed", f"failed of {int(count):,} streams")):
            figures[label] = {name: (cap.get(count) or {}).get(field) for name, cap in capacity.items()}
    figures["idle RSS (MB)"] = {name: cap.get("idle_rss_mb") for name, cap in capacity.items()}
    figures["idle PSS (MB)"] = {name: cap.get("idle_pss_mb") for name, cap in capacity.items()}
    return figures


def derive(paths: dict, capacity: dict) -> dict:
    """Ratios of maitred's figures to the peers', and the issue's aims checked."""
    figures = _metrics(paths, capacity)
    ratios: dict[str, dict[str, float | None]] = {}
    for label, values in figures.items():
        ratios[label] = {}
        for mine in ("maitred-w1", "maitred-w2"):
            for peer in ("vllm-router", "sglang-router"):
                a, b = values.get(mine), values.get(peer)
                ratios[label][f"{mine}/{peer}"] = round(a / b, 3) if a is not None and b not in (None, 0) else None
    aims = {}
    for mine in ("maitred-w1", "maitred-w2"):
        if mine not in paths:
            continue
        added = figures["added p50 c=1 (ms)"].get(mine)
        aims[f"{mine}: added p50 <= 0.3 ms"] = {"value": added, "met": added is not None and added <= 0.3}
        ratio = ratios["req/s JSON c=32"].get(f"{mine}/vllm-router")
        aims[f"{mine}: req/s c=32 >= 60% of vllm-router's"] = {"value": ratio, "met": ratio is not None and ratio >= 0.6}
        key = "first-event p99 of a new stream, 5,000 open (s)"
        if key in figures:
            p99 = figures[key].get(mine)
            aims[f"{mine}: first-event p99 with 5,000 open streams <= 0.5 s"] = {
                "value": p99, "met": p99 is not None and p99 <= 0.5}
    return {"figures": figures, "ratios": ratios, "aims": aims}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) >= 100:
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _load(meta: dict) -> str:
    load = meta.get("load_1min_during_run") or {}
    return f"{load.get('min')}..{load.get('max')} (mean {load.get('mean')})" if load else "not sampled"


def render_md(meta: dict, notes: list[str], paths: dict, capacity: dict, derived: dict) -> str:
    m = meta["machine"]
    cols = [c for c in ("direct", "nginx", "maitred-w1", "maitred-w2", "vllm-router", "sglang-router")
            if c in paths or c in capacity]
    ratio_cols = [f"{a}/{b}" for a in ("maitred-w1", "maitred-w2") if a in paths
                  for b in ("vllm-router", "sglang-router")]
    lines = [
        f"# maitred beside vllm-router {meta['versions']['vllm-router']} and sglang-router "
        f"{meta['versions']['sglang-router']}",
        "",
        f"{meta['date']}; {m['cores']} cores ({m['cpu']}), Linux {m['kernel']}, Python {m['python']}; "
        f"load average at the start {m['loadavg']}, at the end {meta['loadavg_end']} (1, 5, 15 min), 1-min load "
        f"during the run {_load(meta)}. "
        f"wrk, the NGINX backend and the router share the cores. {meta['seconds_per_run']:g} s per wrk run, best of "
        f"{meta['rounds']} rounds; streams opened at {meta['open_rate_per_s']:g}/s"
        f"{' (quick run)' if meta['quick'] else ''}. `python bench/peers.py`.",
        "",
    ]
    lines += [f"Note: {n}" for n in notes] + ([""] if notes else [])
    lines += ["Ratios are maitred's figure over the peer's, in the same run: above 1 is more req/s but also more "
              "latency, memory or CPU.", "",
              "| figure | " + " | ".join(cols) + " | " + " | ".join(ratio_cols) + " |",
              "|---" * (1 + len(cols) + len(ratio_cols)) + "|"]
    for label, values in derived["figures"].items():
        cells = [_fmt(values.get(c)) for c in cols]
        rcells = [_fmt(derived["ratios"][label].get(rc)) for rc in ratio_cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(rcells) + " |")
    lines += ["", "Aims (issue 8):", ""]
    for aim, result in derived["aims"].items():
        lines.append(f"- {aim}: {_fmt(result['value'])} — {'met' if result['met'] else 'not met'}")
    errors = {f"{name} {count}": r["errors"] for name, cap in capacity.items() for count, r in cap.items()
              if isinstance(r, dict) and r.get("errors")}
    if errors:
        lines += ["", "Open-stream errors (first few): " + json.dumps(errors)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
