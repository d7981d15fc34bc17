"""Router overhead benchmark: added latency and throughput of maitred against a direct call and NGINX.

Backends: the simulator in zero-latency mode (`maitred sim --zero-latency`, streaming and not) and
NGINX answering a fixed completion (the fastest backend there is, so that the router's own cost
shows). Paths compared in one run: direct to the backend, through maitred, through NGINX as a
reverse proxy. Load: wrk (POST with a Lua script) at concurrency 1 (latency) and 32 (throughput).

    python bench/overhead.py [--seconds 8] [--out bench/results]

Writes `overhead.json` and `overhead.md` to the output folder. Needs `wrk` and `nginx` on PATH
(Debian: `apt-get install wrk nginx`); rows needing NGINX are left out without it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from maitred.cli.processes import ProcessGroup, free_port, wait_until_up

HOST = "127.0.0.1"
CHAT = {"model": "bench-model", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
FIXED_COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
})


def nginx_conf(workdir: Path, fixed_port: int, upstreams: dict[str, tuple[int, int]]) -> Path:
    """NGINX: a fixed-completion backend, and a reverse proxy with keep-alive upstreams."""
    locations = "\n".join(
        f"""    server {{ listen {HOST}:{port}; access_log off;
      location / {{ proxy_pass http://up_{name}; proxy_http_version 1.1; proxy_set_header Connection "";
                   proxy_buffering off; }} }}
    upstream up_{name} {{ server {HOST}:{backend}; keepalive 64; }}"""
        for name, (port, backend) in upstreams.items()
    )
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {workdir}/nginx.pid; error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off; client_body_temp_path {workdir}/body; proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fcgi; uwsgi_temp_path {workdir}/uwsgi; scgi_temp_path {workdir}/scgi;
    keepalive_requests 1000000;
    server {{ listen {HOST}:{fixed_port};
      location / {{ default_type application/json; return 200 '{FIXED_COMPLETION}'; }} }}
{locations}
}}
""")
    return conf


def wrk(url: str, body: dict, connections: int, seconds: float, workdir: Path) -> dict:
    """Run wrk; returns {"rps", "p50_ms", "p99_ms"}."""
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [[{json.dumps(body)}]]\n"
    )
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}\n{httpx.post(url, json=body).text[:300]}")
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),
            "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each wrk run, s")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    has_nginx = shutil.which("nginx") is not None
    workdir = Path(tempfile.mkdtemp(prefix="maitred-bench-"))
    for sub in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
        (workdir / sub).mkdir()
    with ProcessGroup(workdir) as procs:
        rows = run_all(procs, workdir, args.seconds, has_nginx)
    write_results(rows, args.out, args.seconds)


def run_all(procs: ProcessGroup, workdir: Path, seconds: float, has_nginx: bool) -> list[dict]:
    sim_port, fixed_port = free_port(HOST), free_port(HOST)
    procs.maitred("sim", "sim", "--host", HOST, "--port", str(sim_port), "--model", "bench-model", "--zero-latency",
                  "--log-level", "warning")
    backends = {"sim": sim_port}
    if has_nginx:
        backends["nginx-fixed"] = fixed_port
    routers: dict[tuple[str, str], int] = {}
    for name, port in backends.items():
        table = workdir / f"table-{name}.json"
        table.write_text(json.dumps({"pool": "bench/" + name, "version": 1, "method": "least-connections",
                                     "endpoints": [{"id": name, "url": f"http://{HOST}:{port}"}],
                                     "healthCheck": {"path": "/health", "periodSeconds": 30}}))
        routers[("maitred", name)] = free_port(HOST)
        procs.maitred(f"maitred-{name}", "router", "--table", str(table), "--host", HOST,
                      "--port", str(routers[("maitred", name)]), "--no-access-log", "--log-level", "warning",
                      "--admin-port", "0",  # no admin port: two routers run at once, 9091 would be shared
                      "--workers", "1")  # one process, as the README table says
    if has_nginx:
        proxy_ports = {name: (free_port(HOST), port) for name, port in backends.items()}
        for name, (port, _) in proxy_ports.items():
            routers[("nginx", name)] = port
        conf = nginx_conf(workdir, fixed_port, proxy_ports)
        procs.start("nginx", ["nginx", "-c", str(conf), "-p", str(workdir)])
    wait_until_up(f"http://{HOST}:{sim_port}/health")
    for (_, _), port in routers.items():
        wait_until_up(f"http://{HOST}:{port}/v1/models")
    time.sleep(1.0)

    cases = [("sim", "non-streaming", CHAT), ("sim", "streaming", {**CHAT, "stream": True})]
    if has_nginx:
        cases.insert(0, ("nginx-fixed", "non-streaming", CHAT))
    rows = []
    for backend, kind, body in cases:
        paths = {"direct": backends[backend]}
        paths.update({via: routers[(via, backend)] for via in ("maitred", "nginx") if (via, backend) in routers})
        for via, port in paths.items():
            url = f"http://{HOST}:{port}/v1/chat/completions"
            wrk(url, body, 8, 1.0, workdir)  # warm the connection pools
            c1 = wrk(url, body, 1, seconds, workdir)
            c32 = wrk(url, body, 32, seconds, workdir)
            row = {"backend": backend, "kind": kind, "via": via, "c1": c1, "c32": c32}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def write_results(rows: list[dict], out: Path, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "python": platform.python_version(),
            "seconds_per_run": seconds, "load": "wrk, POST /v1/chat/completions"}
    (out / "overhead.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"Router overhead, {meta['date']}, {meta['cpus']} cores (load generator, backend and router share them).",
             "", "| backend | response | path | p50 c=1 (ms) | added p50 c=1 (ms) | p99 c=1 (ms) | req/s c=32 | p50 c=32 (ms) | p99 c=32 (ms) |",
             "|---|---|---|---|---|---|---|---|---|"]
    direct = {(r["backend"], r["kind"]): r for r in rows if r["via"] == "direct"}
    for r in rows:
        base = direct[(r["backend"], r["kind"])]["c1"]["p50_ms"]
        added = "" if r["via"] == "direct" else f"+{r['c1']['p50_ms'] - base:.3f}"
        lines.append(f"| {r['backend']} | {r['kind']} | {r['via']} | {r['c1']['p50_ms']:.3f} | {added} | "
                     f"{r['c1']['p99_ms']:.3f} | {r['c32']['rps']:,.0f} | {r['c32']['p50_ms']:.2f} | {r['c32']['p99_ms']:.2f} |")
    (out / "overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
