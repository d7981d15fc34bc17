"""Which ASGI server and upstream client should carry the router? Each pair measured as a bare proxy, in one run.

The proxy is bench/stack_app.py: the router's hot path (forward the POST body, relay the answer,
SSE chunk by chunk) without admission, balancing, metrics or retries. It runs on each pair of

- server: uvicorn with httptools and uvloop (what `maitred router` runs on), or granian (a Rust
  HTTP server for ASGI apps; one worker, uvloop);
- upstream client: aiohttp (what the router uses) or pyreqwest (Rust reqwest/hyper under Python);

and, for reference, maitred's own router (`--workers 1`), all in front of the same two NGINX ports
(bench/harness.py: fixed completion, 256-event SSE stream). Load: wrk at concurrency 1 and 32 on the
small chat request, 32 on a 220 KB prompt and on the stream. A pair counts only if a stream passes
event by event: through it, the first event of a slow stream (one event every 2 s) must arrive
within 1 s.

Figures per pair: req/s, p50 and p99 (ms), and CPU milliseconds of the proxy's process tree per
request (from /proc/PID/stat), each also as a ratio to uvicorn + aiohttp in the same run. Written to
`http_stack.json` and `http_stack.md`.

    python bench/http_stack.py [--seconds 8] [--rounds 2] [--out bench/results]

Needs wrk, nginx with its echo module (`apt-get install wrk nginx libnginx-mod-http-echo`) and the
`bench` extra (`pip install -e .[bench]`: granian, pyreqwest). All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from harness import (HOST, SMALL_CHAT, STREAM_COMPLETION, LoadSampler, backend_conf, big_chat,  # noqa: E402
                     check_path, machine,
                     keep_best, tree_cpu_s, wait_http, wrk, wrk_retried, write_lua)
from peers import _load, maitred_has_workers, start_maitred  # noqa: E402

from maitred.cli.processes import ProcessGroup, free_port  # noqa: E402

BENCH = Path(__file__).parent
EVENTS = 256
SERVERS = ("uvicorn", "granian")
CLIENTS = ("aiohttp", "pyreqwest")
BASELINE = "uvicorn+aiohttp"
CASES = {
    "json_c1": ("/v1/chat/completions", "small", 1),
    "json_c32": ("/v1/chat/completions", "small", 32),
    "big_c32": ("/v1/chat/completions", "big", 32),
    "stream_c32": ("/v1/completions", "stream", 32),
}


def server_argv(server: str, port: int) -> list[str]:
    """The command line serving `stack_app:app` on `server` at 127.0.0.1:`port` (one process, uvloop)."""
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "stack_app:app", "--app-dir", str(BENCH), "--host", HOST,
                "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--lifespan", "on",
                "--no-access-log", "--log-level", "warning", "--no-server-header", "--no-date-header",
                "--backlog", "4096", "--timeout-keep-alive", "75"]
    return [sys.executable, "-m", "granian", "--interface", "asgi", "--host", HOST, "--port", str(port),
            "--workers", "1", "--loop", "uvloop", "--http", "1", "--backlog", "4096", "--log-level", "warning",
            "--no-access-log", "--working-dir", str(BENCH), "stack_app:app"]


def start_pair(procs: ProcessGroup, name: str, server: str, client: str, upstreams: list[int]) -> int:
    """Start the bare proxy on `server` with `client` in front of `upstreams`; its port once it answers."""
    port = free_port(HOST)
    env = {**os.environ, "STACK_CLIENT": client,
           "STACK_UPSTREAMS": ",".join(f"http://{HOST}:{p}" for p in upstreams)}
    with open(procs.logdir / f"{name}.log", "wb") as log:
        procs.procs[name] = subprocess.Popen(server_argv(server, port), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    wait_http(f"http://{HOST}:{port}/health")
    return port


def first_event_s(port: int, timeout_s: float = 10.0) -> float | None:
    """Seconds from sending a stream request through 127.0.0.1:`port` to its first event; None if none came."""
    started = time.perf_counter()
    try:
        with httpx.stream("POST", f"http://{HOST}:{port}/v1/completions", json=STREAM_COMPLETION,
                          timeout=timeout_s) as resp:
            for chunk in resp.iter_raw():
                if b"data:" in chunk:
                    return round(time.perf_counter() - started, 4)
                if time.perf_counter() - started > timeout_s:
                    break
    except httpx.HTTPError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each wrk run, s")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every wrk run; the best (most req/s) is kept")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed: apt-get install wrk nginx libnginx-mod-http-echo")
    versions = {}
    for package in ("uvicorn", "httptools", "uvloop", "granian", "aiohttp", "pyreqwest"):
        try:
            versions[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            versions[package] = None
    missing = [p for p, v in versions.items() if v is None]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: pip install -e '.[bench]'")
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "seconds_per_run": args.seconds,
            "rounds": args.rounds, "versions": versions, "baseline": BASELINE}
    workdir = Path(tempfile.mkdtemp(prefix="maitred-stack-"))
    with ProcessGroup(workdir) as procs, LoadSampler() as load:
        rows = run_all(procs, workdir, args.seconds, args.rounds)
    meta["loadavg_end"] = machine()["loadavg"]
    meta["load_1min_during_run"] = load.summary()
    write_results(args.out, meta, rows)


def run_all(procs: ProcessGroup, workdir: Path, seconds: float, rounds: int) -> dict:
    main_ports, slow_ports = [free_port(HOST), free_port(HOST)], [free_port(HOST), free_port(HOST)]
    procs.start("backend", ["nginx", "-c", str(backend_conf(workdir, "backend", main_ports, slow_ports)),
                            "-p", str(workdir)])
    for p in main_ports + slow_ports:
        wait_http(f"http://{HOST}:{p}/health")
    has_workers = maitred_has_workers()
    rows: dict[str, dict] = {}
    targets: dict[str, tuple[int, int]] = {}
    # Streaming first: a pair that buffers a stream is left out of the load runs.
    for server in SERVERS:
        for client in CLIENTS:
            name = f"{server}+{client}"
            slow = start_pair(procs, name + "-slow", server, client, slow_ports)
            first = first_event_s(slow)
            procs.kill(name + "-slow")
            rows[name] = {"server": server, "client": client, "first_event_s": first,
                          "streams_event_by_event": first is not None and first < 1.0}
            port = start_pair(procs, name, server, client, main_ports)
            try:
                check_path(f"http://{HOST}:{port}", EVENTS)
            except RuntimeError as exc:
                rows[name]["error"] = str(exc)
                continue
            if rows[name]["streams_event_by_event"]:
                targets[name] = (port, procs.procs[name].pid)
    slow = start_maitred(procs, workdir, "maitred-slow", slow_ports, 1 if has_workers else None)
    first = first_event_s(slow)
    procs.kill("maitred-slow")
    rows["maitred"] = {"server": "uvicorn", "client": "aiohttp", "first_event_s": first,
                       "streams_event_by_event": first is not None and first < 1.0,
                       "note": "maitred router (the full hot path), --workers 1" if has_workers else "maitred router"}
    port = start_maitred(procs, workdir, "maitred", main_ports, 1 if has_workers else None)
    targets["maitred"] = (port, procs.procs["maitred"].pid)
    scripts = {"small": write_lua(workdir, "small", SMALL_CHAT), "big": write_lua(workdir, "big", big_chat()),
               "stream": write_lua(workdir, "stream", STREAM_COMPLETION)}
    for name, (port, _) in targets.items():
        wrk(f"http://{HOST}:{port}/v1/chat/completions", scripts["small"], 8, 1.0)  # warm the pools
    for round_ in range(rounds):
        for case, (path, body, conc) in CASES.items():
            for name, (port, pid) in targets.items():
                cpu0 = tree_cpu_s(pid)
                result = wrk_retried(f"http://{HOST}:{port}{path}", scripts[body], conc, seconds)
                if "requests" in result:
                    result["cpu_ms_per_req"] = round((tree_cpu_s(pid) - cpu0) / result["requests"] * 1000.0, 4)
                result["round"] = round_ + 1
                keep_best(rows[name], case, result)
                print(json.dumps({"pair": name, "case": case, **result}), flush=True)
    return rows


def _ok(result: dict | None) -> dict | None:
    """A wrk result with figures, or None for a missing or failed run."""
    return result if result and "rps" in result else None


def factor_effects(rows: dict) -> dict:
    """Per case, the server's effect (granian / uvicorn) and the client's (pyreqwest / aiohttp) on each figure.

    Each is the geometric mean of the ratio under both choices of the other factor, e.g. the server's
    req/s effect is sqrt(granian+aiohttp / uvicorn+aiohttp * granian+pyreqwest / uvicorn+pyreqwest).
    A factor with a missing pair is left out.
    """
    effects: dict[str, dict] = {}
    for case in CASES:
        effects[case] = {}
        for factor, (a, b), others in (("server: granian / uvicorn", SERVERS[::-1], CLIENTS),
                                       ("client: pyreqwest / aiohttp", CLIENTS[::-1], SERVERS)):
            values = {}
            for key in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req"):
                product, n = 1.0, 0
                for other in others:
                    top = f"{a}+{other}" if factor.startswith("server") else f"{other}+{a}"
                    bottom = f"{b}+{other}" if factor.startswith("server") else f"{other}+{b}"
                    x, y = _ok(rows.get(top, {}).get(case)), _ok(rows.get(bottom, {}).get(case))
                    if x and y and y[key]:
                        product *= x[key] / y[key]
                        n += 1
                values[key] = round(product ** (1 / n), 3) if n == 2 else None
            effects[case][factor] = values
    return effects


def write_results(out: Path, meta: dict, rows: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base = rows.get(BASELINE, {})
    ratios: dict[str, dict] = {}
    for name, row in rows.items():
        ratios[name] = {}
        for case in CASES:
            if _ok(row.get(case)) and _ok(base.get(case)):
                ratios[name][case] = {k: round(row[case][k] / base[case][k], 3) if base[case][k] else None
                                      for k in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req")}
    effects = factor_effects(rows)
    (out / "http_stack.json").write_text(json.dumps({"meta": meta, "rows": rows, "ratios": ratios,
                                                     "effects": effects}, indent=2) + "\n")
    m = meta["machine"]
    v = meta["versions"]
    lines = [
        "# ASGI server and upstream client, as a bare proxy",
        "",
        f"{meta['date']}; {m['cores']} cores ({m['cpu']}), Python {m['python']}; load average at the start "
        f"{m['loadavg']}, at the end {meta['loadavg_end']}, 1-min load during the run {_load(meta)}. "
        "wrk, the NGINX backend and the proxy share the cores. "
        f"{meta['seconds_per_run']:g} s per wrk run, best of {meta['rounds']} rounds. "
        f"uvicorn {v['uvicorn']} (httptools {v['httptools']}, uvloop {v['uvloop']}), granian {v['granian']}, "
        f"aiohttp {v['aiohttp']}, pyreqwest {v['pyreqwest']}. `python bench/http_stack.py`.",
        "",
        f"Ratios to {BASELINE} in the same run (req/s: above 1 is faster; latency and CPU: below 1 is better).",
        "",
        "| pair | streams event by event (first event, s) | case | req/s | p50 (ms) | p99 (ms) | CPU ms per request |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        streams = "yes" if row.get("streams_event_by_event") else "NO"
        for case in CASES:
            r, q = row.get(case), ratios.get(name, {}).get(case) or {}
            if r is None:
                continue
            if "rps" not in r:
                lines.append(f"| {name} | | {case} | failed: {r.get('error', '')[-120:]!r} | | | |")
                continue
            cells = []
            for key, fmt in (("rps", "{:,.0f}"), ("p50_ms", "{:.3f}"), ("p99_ms", "{:.2f}"),
                             ("cpu_ms_per_req", "{:.3f}")):
                cell = fmt.format(r[key])
                if q.get(key) is not None and name != BASELINE:
                    cell += f" ({q[key]:.2f}x)"
                cells.append(cell)
            lines.append(f"| {name} | {streams} ({row.get('first_event_s')}) | {case} | " + " | ".join(cells) + " |")
    lines += ["", "Server against client: each factor's ratio with the other held fixed, as the geometric mean over "
              "the other factor's two choices (granian over uvicorn; pyreqwest over aiohttp).", "",
              "| case | factor | req/s | p50 | p99 | CPU per request |", "|---|---|---|---|---|---|"]
    for case, by_factor in effects.items():
        for factor, values in by_factor.items():
            lines.append(f"| {case} | {factor} | " + " | ".join(
                "-" if values.get(k) is None else f"{values[k]:.2f}x" for k in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req"))
                + " |")
    errors = {n: r["error"] for n, r in rows.items() if r.get("error")}
    if errors:
        lines += ["", "Errors: " + json.dumps(errors)]
    md = "\n".join(lines) + "\n"
    (out / "http_stack.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
