"""What `maitred demo` runs (see :mod:`maitred.cli.demo`): the replicas, the router, the traffic, the tables.

Kept apart from the command's signature so that `maitred --help` does not import the OpenAI SDK, rich or httpx.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from maitred.cli.demo import HOST, METHODS, MODEL, REPLICAS, WEIGHTS
from maitred.cli.processes import ProcessGroup, free_port, wait_until_up

SYSTEM_PROMPT = "You are a helpful assistant for a busy restaurant. Answer briefly and politely. " * 8
LONG_CONTEXT = " ".join(f"Course {i}: a seasonal dish with herbs, butter and a glass of wine." for i in range(120))


@dataclass(slots=True)
class Result:
    """One request as the client saw it; times in s."""

    endpoint: str
    ok: bool
    e2e_s: float
    ttft_s: float | None = None
    error: str = ""
    started_at: float = 0.0  # time.perf_counter() when sent
    prompt_tokens: int = 0
    cached_tokens: int = 0


def run_demo(requests: int, concurrency: int, seed: int) -> None:
    """Run three simulated replicas and the router on 127.0.0.1, drive traffic through each method, print tables."""
    console = Console(width=None if Console().is_terminal else 110)  # piped: wide enough for the table
    with tempfile.TemporaryDirectory(prefix="maitred-demo-") as tmp, ProcessGroup(Path(tmp)) as procs:
        workdir = Path(tmp)
        urls = _start_replicas(procs)
        table_path = workdir / "table.json"
        router_port, admin_port = free_port(HOST), free_port(HOST)
        _write_table(table_path, urls, "round-robin", version=1)
        procs.maitred("router", "router", "--table", str(table_path), "--host", HOST, "--port", str(router_port),
                      "--admin-port", str(admin_port), "--log-level", "warning")
        router_url, admin_url = f"http://{HOST}:{router_port}", f"http://{HOST}:{admin_port}"
        wait_until_up(router_url + "/readyz")
        console.print(f"[bold]maitred demo[/]: replicas {', '.join(f'{n} ({s:g}x speed)' for n, s in REPLICAS.items())}"
                      f", router at {router_url} (metrics at {admin_url}/metrics)")
        results = asyncio.run(_run(router_url, admin_url, table_path, urls, requests, concurrency, seed, procs,
                                   console))
        console.print(_method_table(results))
        console.print(_failover_table(results["failover"], results["killed_at"]))


def _start_replicas(procs: ProcessGroup) -> dict[str, str]:
    urls = {}
    for i, (name, speed) in enumerate(REPLICAS.items()):
        port = free_port(HOST)
        procs.maitred(f"replica-{name}", "sim", "--host", HOST, "--port", str(port), "--model", MODEL, "--speed", str(speed),
                      "--seed", str(i), "--log-level", "warning")
        urls[name] = f"http://{HOST}:{port}"
    for url in urls.values():
        wait_until_up(url + "/health")
    return urls


def _write_table(path: Path, urls: dict[str, str], method: str, version: int) -> None:
    """Write the routing table atomically, as the operator does, so the router never reads half a file."""
    table = {"pool": "demo/llama-8b", "version": version, "method": method, "models": [MODEL],
             "endpoints": [{"id": n, "url": u, "weight": WEIGHTS[n]} for n, u in urls.items()],
             "healthCheck": {"path": "/health", "periodSeconds": 0.5, "timeoutSeconds": 1, "failureThreshold": 2},
             "retries": {"attempts": 2}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table))
    os.replace(tmp, path)


async def _wait_for_version(admin_url: str, version: int) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(100):
            table = (await http.get(admin_url + "/debug/table")).json()["table"]
            if table and table["version"] == version:
                return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"the router did not load table version {version}")


async def _run(router_url, admin_url, table_path, urls, requests, concurrency, seed, procs, console) -> dict:
    client = openai.AsyncOpenAI(base_url=router_url + "/v1", api_key="demo", max_retries=0, timeout=60)
    results: dict = {}
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for version, method in enumerate(METHODS, start=2):
            _write_table(table_path, urls, method, version)
            await _wait_for_version(admin_url, version)
            await _reset_caches(urls)
            task = progress.add_task(method, total=requests)
            results[method] = await _load(client, seed, requests, concurrency, lambda: progress.advance(task))
        _write_table(table_path, urls, "least-connections", len(METHODS) + 2)
        await _wait_for_version(admin_url, len(METHODS) + 2)
        task = progress.add_task("failover (kill a)", total=requests)
        done = 0
        killed_at = float("inf")

        def advance() -> None:
            nonlocal done, killed_at
            done += 1
            progress.advance(task)
            if done == requests // 3:
                procs.kill("replica-a")
                killed_at = time.perf_counter()
                progress.update(task, description="failover (a killed)")

        results["failover"] = await _load(client, seed, requests, concurrency, advance)
        results["killed_at"] = killed_at
    await client.close()
    return results


async def _reset_caches(urls: dict[str, str]) -> None:
    """Empty every replica's prefix cache (vLLM's /reset_prefix_cache), so each method starts cold."""
    async with httpx.AsyncClient() as http:
        for url in urls.values():
            await http.post(url + "/reset_prefix_cache")


async def _load(client, seed: int, total: int, concurrency: int, on_done) -> list[Result]:
    """Send `total` turns of `concurrency + 4` conversations, `concurrency` at a time; the same turns for a seed."""
    rng = random.Random(seed)
    # A quarter of the conversations are about a long document (the menu), given in their first turn.
    conversations = [[{"role": "system", "content": SYSTEM_PROMPT}]
                     + ([{"role": "user", "content": f"Menu {k}: {LONG_CONTEXT}"}] if k % 4 == 0 else [])
                     for k in range(concurrency + 4)]
    busy: set[int] = set()
    results: list[Result] = []

    async def worker() -> None:
        while len(results) + len(busy) < total:
            k = rng.choice([i for i in range(len(conversations)) if i not in busy])
            busy.add(k)
            plan = _plan(rng, conversations[k])
            started_at = time.perf_counter()
            result = await _one(client, plan)
            result.started_at = started_at
            if result.ok:
                conversations[k] += [plan["messages"][-1], {"role": "assistant", "content": plan["answer"]}]
            busy.discard(k)
            results.append(result)
            on_done()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def _plan(rng: random.Random, history: list[dict]) -> dict:
    """The next turn of a conversation: 60% streamed chat, 25% chat, 15% completions."""
    kind = rng.choices(("stream", "chat", "completion"), weights=(60, 25, 15))[0]
    question = f"Which table is free for {rng.randint(2, 8)} guests at {rng.randint(6, 10)} pm?"
    return {"kind": kind, "messages": [*history, {"role": "user", "content": question}],
            "max_tokens": rng.randint(16, 64), "answer": ""}


async def _one(client: openai.AsyncOpenAI, plan: dict) -> Result:
    """Send one planned request; the answer's text goes into plan["answer"] for the conversation's next turn."""
    started = time.perf_counter()
    endpoint = "?"
    messages = plan["messages"]
    try:
        if plan["kind"] == "stream":
            stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                          max_tokens=plan["max_tokens"],
                                                          stream_options={"include_usage": True})
            endpoint = stream.response.headers.get("x-maitred-endpoint", "?")
            ttft, parts, usage = None, [], None
            async for chunk in stream:
                if ttft is None:
                    ttft = time.perf_counter() - started
                parts.extend(c.delta.content or "" for c in chunk.choices)
                usage = chunk.usage or usage
            plan["answer"] = "".join(parts)
            return _result(endpoint, started, usage, ttft)
        if plan["kind"] == "chat":
            raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=messages,
                                                                        max_tokens=plan["max_tokens"])
            reply = raw.parse()
            plan["answer"] = reply.choices[0].message.content or ""
        else:
            prompt = "\n".join(m["content"] for m in messages)
            raw = await client.completions.with_raw_response.create(model=MODEL, prompt=prompt,
                                                                   max_tokens=plan["max_tokens"])
            reply = raw.parse()
            plan["answer"] = reply.choices[0].text
        return _result(raw.headers.get("x-maitred-endpoint", "?"), started, reply.usage)
    except openai.APIError as exc:
        response = getattr(exc, "response", None)
        if response is not None:
            endpoint = response.headers.get("x-maitred-endpoint", endpoint)
        return Result(endpoint, False, time.perf_counter() - started, error=str(exc))


def _result(endpoint: str, started: float, usage, ttft: float | None = None) -> Result:
    details = getattr(usage, "prompt_tokens_details", None)
    return Result(endpoint, True, time.perf_counter() - started, ttft,
                  prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                  cached_tokens=getattr(details, "cached_tokens", 0) or 0)


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return f"{values[min(len(values) - 1, int(q * len(values)))] * 1000:.0f}"


def _cached(rows: list[Result]) -> str:
    prompt = sum(r.prompt_tokens for r in rows)
    return f"{100 * sum(r.cached_tokens for r in rows) / prompt:.0f}%" if prompt else "-"


def _method_table(results: dict[str, list[Result]]) -> Table:
    table = Table(title="Requests by method and replica (TTFT on streamed requests; times in ms; "
                        "cached: prompt tokens served from the replica's prefix cache)")
    for column in ("method", "replica", "share", "TTFT\np50", "TTFT\np99", "e2e\np50", "e2e\np99", "cached",
                   "errors"):
        table.add_column(column, justify="left" if column in ("method", "replica") else "right", no_wrap=True)
    for method in METHODS:
        rows = results[method]
        for i, replica in enumerate(REPLICAS):
            mine = [r for r in rows if r.endpoint == replica]
            table.add_row(method if i == 0 else "", f"{replica} {REPLICAS[replica]:g}x",
                          f"{100 * len(mine) / len(rows):.0f}%",
                          _ms([r.ttft_s for r in mine if r.ok and r.ttft_s is not None], 0.5),
                          _ms([r.ttft_s for r in mine if r.ok and r.ttft_s is not None], 0.99),
                          _ms([r.e2e_s for r in mine if r.ok], 0.5), _ms([r.e2e_s for r in mine if r.ok], 0.99),
                          _cached(mine), str(sum(not r.ok for r in mine)), end_section=i == len(REPLICAS) - 1)
        ttft_all = [r.ttft_s for r in rows if r.ok and r.ttft_s is not None]
        e2e_all = [r.e2e_s for r in rows if r.ok]
        table.add_row("", "[bold]all[/]", "", _ms(ttft_all, 0.5), _ms(ttft_all, 0.99), _ms(e2e_all, 0.5),
                      _ms(e2e_all, 0.99), f"[bold]{_cached(rows)}[/]", str(sum(not r.ok for r in rows)),
                      end_section=True)
    return table


def _failover_table(rows: list[Result], killed_at: float) -> Table:
    table = Table(title="Failover: replica a killed a third of the way through (least-connections)")
    for column in ("replica", "sent before the kill", "failed", "sent after the kill", "failed "):
        table.add_column(column, justify="left" if column == "replica" else "right")
    before = [r for r in rows if r.started_at < killed_at]
    after = [r for r in rows if r.started_at >= killed_at]
    for replica in (*REPLICAS, "?"):
        mine_before = [r for r in before if r.endpoint == replica]
        mine_after = [r for r in after if r.endpoint == replica]
        if mine_before or mine_after:
            table.add_row(replica, str(len(mine_before)), str(sum(not r.ok for r in mine_before)),
                          str(len(mine_after)), str(sum(not r.ok for r in mine_after)))
    table.caption = (
        f"Sent after the kill: {sum(r.ok for r in after)} of {len(after)} succeeded. Sent before it: "
        f"{sum(r.ok for r in before)} of {len(before)}; the failures were in flight on a when it died, "
        "and a stream that has started cannot be retried elsewhere."
    )
    return table
