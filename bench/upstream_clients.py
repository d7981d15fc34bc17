"""Which async HTTP client should carry the router's upstream requests? aiohttp against httpx.

Both clients send the same POST to the same backend (`maitred sim --zero-latency`) over pooled keep-alive
connections, `concurrency` at a time, in one process on one event loop (uvloop), as the router does.
The figure is requests per second of the client's process: the faster client leaves more of the core to
the router's own work.

    python bench/upstream_clients.py [--requests 20000] [--concurrency 32] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).parent))
from overhead import CHAT, HOST  # noqa: E402

from maitred.cli.processes import free_port, wait_until_up  # noqa: E402

BODY = json.dumps(CHAT).encode()
HEADERS = {"content-type": "application/json"}


async def with_aiohttp(url: str, total: int, concurrency: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False) as session:
        async def one() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
        return await _drive(one, total, concurrency)


async def with_httpx(url: str, total: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:
        async def one() -> None:
            resp = await client.post(url, content=BODY, headers=HEADERS)
            assert resp.status_code == 200, resp.status_code
        return await _drive(one, total, concurrency)


async def _drive(one, total: int, concurrency: int) -> float:
    """Requests per second for `total` calls of `one`, `concurrency` at a time."""
    for _ in range(concurrency):
        await one()  # warm the pool
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    port = free_port(HOST)
    sim = subprocess.Popen([sys.executable, "-m", "maitred.cli.main", "sim", "--host", HOST, "--port", str(port),
                            "--model", "bench-model", "--zero-latency", "--log-level", "warning"],
                           start_new_session=True)
    try:
        wait_until_up(f"http://{HOST}:{port}/health")
        url = f"http://{HOST}:{port}/v1/chat/completions"
        results = {}
        for name, run in (("aiohttp", with_aiohttp), ("httpx", with_httpx)) * 2:  # twice, interleaved
            rps = uvloop.run(run(url, args.requests, args.concurrency))
            results[name] = max(results.get(name, 0.0), rps)
            print(f"{name}: {rps:,.0f} req/s", flush=True)
    finally:
        os.killpg(sim.pid, signal.SIGTERM)
        sim.wait()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "requests": args.requests, "concurrency": args.concurrency,
            "versions": {"aiohttp": aiohttp.__version__, "httpx": httpx.__version__}}
    (args.out / "upstream_clients.json").write_text(json.dumps({"meta": meta, "req_per_s": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
