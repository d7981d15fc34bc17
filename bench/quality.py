"""Balancing quality: what each method does for cache hits, throughput and TTFT, through one and several routers.

Four `maitred sim` replicas (a, b, c, d) on 127.0.0.1, each with a KV cache sized so that the scenario's
reusable prefixes need about twice one replica's cache (the four together hold them twice over): a method
that keeps each prefix on one replica fits them all, one that spreads every prefix over every replica
evicts. Scenarios:

- `shared-prefix`: 32 groups x 16 questions; a request is a group's ~2,000-token document followed by a
  short question (16 output tokens), in a shuffled order, 48 in flight.
- `multi-turn`: 32 users x 6 rounds, all users at once; each round resends the conversation so far (a
  shared system prompt, the user's ~600-token context, the earlier questions and answers) plus a question.
- `mixed`: 12 document groups x 8 questions (16 in flight), 16 users x 4 rounds and 48 one-off short prompts
  (8 in flight) at once; answers of 16, 32 and 32 tokens.
- `mixed-slow`: the same load with replica d at 0.2x the others' speed.

Each balancing method the installed router accepts (round-robin, least-connections, least-response-time,
least-load, prefix-affinity, session-affinity) runs through three set-ups: one router (`1 router`), two
router processes that the client alternates between request by request, as a Kubernetes Service spreads
connections (`2 routers`), and one router with `--workers 2` (`2 workers`, when `maitred router` has the
option). sglang-router's `cache_aware` policy runs through one and two of its routers when
`bench/peer_routers.py` can install it. Every request carries `x-session-id` (the user, or the document
group), and is streamed; TTFT is measured at the client, to the first `data:` event.

Each run starts from cold caches: the replicas' prefix caches reset, a new balancer (the table's method
changes), and fresh endpoint ids in the routing table, so the router keeps no latency or load history
(prefix- and session-affinity, which place by a hash of key and endpoint id and keep no such history, get the
same ids in the three set-ups of a repeat, hence the same placement). The runs that the aims compare across
set-ups (shared-prefix round-robin and affinity, multi-turn affinity) are repeated (`--repeats`, default 3)
and their medians reported, since the machine's load drifts; runs go method by method, the set-ups in turn. The
prefix-cache hit ratio and the per-replica shares come from the replicas' own /metrics, as deltas over the
run: `vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total` (tokens) and the count of
`vllm:e2e_request_latency_seconds`.

    python bench/quality.py [--quick] [--speed 0.5] [--out bench/results]

Writes `quality.json` and `quality.md` to the output folder. The replicas run at `--speed` (default 0.5,
so that simulated engine time, not the 2-core machine's CPU, dominates the latencies); the slow replica of
`mixed-slow` at 0.2 x that (`--speed 0.1`). Every request count and time is bounded; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import json
import math
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from maitred.cli.processes import ProcessGroup, free_port, wait_until_up
from maitred.sim.tokens import tokenize

HOST = "127.0.0.1"
MODEL = "quality-model"
REPLICAS = ("a", "b", "c", "d")
SLOW_REPLICA = "d"
SLOW_FACTOR = 0.2  # the slow replica's speed relative to the others
BLOCK_TOKENS = 16  # the sim's KV block size
WANTED_METHODS = ("round-robin", "least-connections", "least-response-time", "least-load", "prefix-affinity",
                  "session-affinity")
AFFINITY_METHODS = ("prefix-affinity", "session-affinity")
#: (scenario, method) runs that the aims compare across set-ups: repeated (--repeats), medians reported.
REPEATED = frozenset({("shared-prefix", m) for m in ("round-robin", *AFFINITY_METHODS)}
                     | {("multi-turn", m) for m in AFFINITY_METHODS})
TOPOLOGIES = ("1 router", "2 routers", "2 workers")
PEER = "sglang cache_aware"
PEER_TOPOLOGIES = ("1 router", "2 routers")

# Words of the generated documents and contexts (any words will do: the sim counts one token per word).
_WORDS = (
    "menu kitchen table guest order course wine sauce bread butter herb garden season market supplier "
    "invoice delivery morning evening service chef waiter booking window terrace corner quiet party "
    "birthday anniversary allergy gluten dairy vegan fish lamb beef cheese dessert coffee tea lemon "
    "pepper salt onion garlic tomato potato river valley harbour street square north south east west "
    "monday tuesday wednesday thursday friday saturday sunday january april july october december "
    "price cost margin stock shelf fridge oven grill pan knife plate glass bottle cellar vintage "
    "red white sparkling sweet dry fresh smoked roasted braised grilled steamed raw crisp tender"
).split()
SYSTEM_PROMPT = ("You are the assistant of a busy restaurant. Answer the guest briefly, politely and "
                 "precisely, from what you know of the guest and the house. ") * 6


# -- workloads -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Item:
    """One independent request: chat `messages`, `max_tokens` output tokens, sent with `session` as x-session-id."""

    session: str
    messages: list[dict]
    max_tokens: int


@dataclass(slots=True)
class Pool:
    """Independent requests, sent in order by `workers` concurrent loops (closed loop)."""

    items: list[Item]
    workers: int


@dataclass(slots=True)
class Conversation:
    """One user's rounds, sequential: each resends the conversation so far plus the next question."""

    session: str
    opening: list[dict]
    questions: list[str]
    max_tokens: int


@dataclass(slots=True)
class Workload:
    """What a scenario sends; `prefix_tokens` is the size of its reusable prefixes (tokens)."""

    pools: list[Pool] = field(default_factory=list)
    conversations: list[Conversation] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(len(p.items) for p in self.pools) + sum(len(c.questions) for c in self.conversations)

    @property
    def concurrency(self) -> int:
        return sum(p.workers for p in self.pools) + len(self.conversations)

    def prefix_tokens(self, doc_sessions: set[str]) -> int:
        """Tokens of the reusable prefixes: each document once, each conversation at its longest."""
        total, seen = 0, set()
        for pool in self.pools:
            for item in pool.items:
                if item.session in doc_sessions and item.session not in seen:
                    seen.add(item.session)
                    total += _tokens(item.messages[:-1]) + len(tokenize(item.messages[-1]["content"]))
        for conv in self.conversations:
            asked = [{"role": "user", "content": q} for q in conv.questions]
            total += _tokens(conv.opening + asked) + len(conv.questions) * (conv.max_tokens + 2)
        return total


def _tokens(messages: list[dict]) -> int:
    """Approximate prompt tokens of chat messages, as the sim counts them (2 template tokens a message)."""
    return sum(len(tokenize(m["content"])) + 2 for m in messages) + 1


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _document(group: int, words: int) -> str:
    rng = random.Random(f"document-{group}")
    return f"Document {group}: notes of the house, part {group}. " + _text(rng, words)


def _question(rng: random.Random, n: int) -> str:
    return (f"Question {n}: what does the text say about the {rng.choice(_WORDS)} and the "
            f"{rng.choice(_WORDS)} on {rng.choice(_WORDS)} {rng.randint(1, 28)}?")


def doc_items(rng: random.Random, groups: int, questions: int, doc_words: int, max_tokens: int,
              tag: str = "doc") -> list[Item]:
    """`groups` x `questions` shared-prefix requests (a group's document, then a short question), shuffled."""
    docs = [_document(g, doc_words) for g in range(groups)]
    items = [Item(f"{tag}-{g}", [{"role": "user", "content": docs[g] + "\n\n" + _question(rng, q)}], max_tokens)
             for g in range(groups) for q in range(questions)]
    rng.shuffle(items)
    return items


def conversations(rng: random.Random, users: int, rounds: int, context_words: int, max_tokens: int,
                  tag: str = "user") -> list[Conversation]:
    """`users` conversations of `rounds` rounds; a shared system prompt, then the user's own context."""
    out = []
    for u in range(users):
        context = f"I am guest {u}. About me and my visits: " + _text(random.Random(f"context-{u}"), context_words)
        opening = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": context},
                   {"role": "assistant", "content": "Thank you, I will keep that in mind."}]
        out.append(Conversation(f"{tag}-{u}", opening, [_question(rng, r) for r in range(rounds)], max_tokens))
    return out


def one_off_items(rng: random.Random, count: int, words: int, max_tokens: int) -> list[Item]:
    """Short prompts that share nothing, each its own session."""
    return [Item(f"once-{i}", [{"role": "user", "content": f"Request {i}: " + _text(rng, words)}], max_tokens)
            for i in range(count)]


@dataclass(slots=True)
class Scenario:
    """A named workload, the replicas' KV capacity for it (blocks), and whether replica d runs slow."""

    name: str
    workload: Workload
    kv_blocks: int
    slow: bool = False
    about: str = ""


SIZES = {  # full run, and --quick; workers: requests in flight from that pool
    False: {"groups": 32, "questions": 16, "doc_workers": 48, "users": 32, "rounds": 6,
            "mixed_groups": 12, "mixed_questions": 8, "mixed_doc_workers": 16, "mixed_users": 16, "mixed_rounds": 4,
            "one_offs": 48, "one_off_workers": 8},
    True: {"groups": 16, "questions": 4, "doc_workers": 16, "users": 16, "rounds": 3,
           "mixed_groups": 4, "mixed_questions": 4, "mixed_doc_workers": 8, "mixed_users": 6, "mixed_rounds": 3,
           "one_offs": 16, "one_off_workers": 4},
}


def build_scenarios(quick: bool, seed: int) -> list[Scenario]:
    """The four scenarios; `quick` scales every count down (about a sixth of the requests)."""
    n = SIZES[quick]
    rng = random.Random(seed)
    shared = Workload([Pool(doc_items(rng, n["groups"], n["questions"], 2000, 16), n["doc_workers"])])
    multi = Workload(conversations=conversations(rng, n["users"], n["rounds"], 600, 32))
    mixed = Workload([Pool(doc_items(rng, n["mixed_groups"], n["mixed_questions"], 2000, 16, tag="mdoc"),
                           n["mixed_doc_workers"]),
                      Pool(one_off_items(rng, n["one_offs"], 80, 32), n["one_off_workers"])],
                     conversations(rng, n["mixed_users"], n["mixed_rounds"], 600, 32, tag="muser"))
    doc_sessions = {i.session for w in (shared, mixed) for p in w.pools for i in p.items
                    if i.session.startswith(("doc-", "mdoc-"))}

    def blocks(w: Workload) -> int:
        # The prefixes need about twice one replica's cache.
        return math.ceil(w.prefix_tokens(doc_sessions) / BLOCK_TOKENS / 2)

    return [
        Scenario("shared-prefix", shared, blocks(shared),
                 about=f"{len(shared.pools[0].items)} requests: document groups x questions, "
                       f"{shared.concurrency} in flight"),
        Scenario("multi-turn", multi, blocks(multi),
                 about=f"{len(multi.conversations)} users x {len(multi.conversations[0].questions)} rounds, all at once"),
        Scenario("mixed", mixed, blocks(mixed),
                 about=f"{mixed.requests} requests: documents, conversations and one-off prompts, "
                       f"{mixed.concurrency} in flight"),
        Scenario("mixed-slow", mixed, blocks(mixed), slow=True,
                 about=f"the mixed load with replica {SLOW_REPLICA} at {SLOW_FACTOR:g}x speed"),
    ]


# -- the client ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """One request as the client saw it; times in s, token counts from the response's usage."""

    ok: bool
    e2e_s: float
    ttft_s: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    endpoint: str = ""
    error: str = ""


async def send(http: aiohttp.ClientSession, base: str, item_session: str, messages: list[dict], max_tokens: int,
               timeout_s: float) -> tuple[Outcome, str]:
    """Stream one chat completion from `base`; returns the outcome and the answer's text."""
    body = orjson.dumps({"model": MODEL, "messages": messages, "max_tokens": max_tokens, "stream": True,
                         "stream_options": {"include_usage": True}})
    headers = {"content-type": "application/json", "x-session-id": item_session}
    started = time.perf_counter()
    ttft, parts, usage = None, [], None
    try:
        async with http.post(base + "/v1/chat/completions", data=body, headers=headers,
                             timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            endpoint = resp.headers.get("x-maitred-endpoint", "")
            if resp.status != 200:
                text = (await resp.text())[:200]
                return Outcome(False, time.perf_counter() - started, endpoint=endpoint,
                               error=f"{resp.status} {text}"), ""
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                if ttft is None:
                    ttft = time.perf_counter() - started
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    break
                chunk = orjson.loads(payload)
                if "error" in chunk:
                    return Outcome(False, time.perf_counter() - started, ttft, endpoint=endpoint,
                                   error=str(chunk["error"])[:200]), ""
                for choice in chunk.get("choices") or ():
                    parts.append((choice.get("delta") or {}).get("content") or "")
                usage = chunk.get("usage") or usage
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return Outcome(False, time.perf_counter() - started, ttft, error=f"{type(exc).__name__}: {exc}"[:200]), ""
    usage = usage or {}
    details = usage.get("prompt_tokens_details") or {}
    return Outcome(True, time.perf_counter() - started, ttft, usage.get("completion_tokens", 0),
                   usage.get("prompt_tokens", 0), details.get("cached_tokens", 0), endpoint), "".join(parts)


async def drive(workload: Workload, bases: list[str], deadline_s: float, timeout_s: float) -> tuple[list[Outcome], float]:
    """Send `workload`, alternating between `bases` request by request; returns the outcomes and the wall time (s).

    No request starts after `deadline_s` seconds; each is cut after `timeout_s` seconds.
    """
    turn = itertools.count()
    outcomes: list[Outcome] = []
    started = time.perf_counter()

    def base() -> str:
        return bases[next(turn) % len(bases)]

    def late() -> bool:
        return time.perf_counter() - started > deadline_s

    async def pool_worker(queue: list[Item]) -> None:
        while queue and not late():
            item = queue.pop()
            outcome, _ = await send(http, base(), item.session, item.messages, item.max_tokens, timeout_s)
            outcomes.append(outcome)

    async def user(conv: Conversation) -> None:
        history = list(conv.opening)
        for question in conv.questions:
            if late():
                return
            messages = [*history, {"role": "user", "content": question}]
            outcome, answer = await send(http, base(), conv.session, messages, conv.max_tokens, timeout_s)
            outcomes.append(outcome)
            if not outcome.ok:
                return
            history = [*messages, {"role": "assistant", "content": answer}]

    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector) as http:
        tasks = []
        for pool in workload.pools:
            queue = list(reversed(pool.items))  # pop() from the end keeps the planned order
            tasks += [pool_worker(queue) for _ in range(pool.workers)]
        tasks += [user(c) for c in workload.conversations]
        await asyncio.gather(*tasks)
    return outcomes, time.perf_counter() - started


# -- the replicas' metrics -------------------------------------------------------------------------------------

_COUNTERS = {"vllm:prefix_cache_queries_total": "queries", "vllm:prefix_cache_hits_total": "hits",
             "vllm:prompt_tokens_total": "prompt", "vllm:generation_tokens_total": "generated",
             "vllm:e2e_request_latency_seconds_count": "requests",
             "vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting"}


async def scrape(urls: dict[str, str]) -> dict[str, dict[str, float]]:
    """Each replica's prefix-cache counters (tokens), request count and queue, from its /metrics."""
    out: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession() as http:
        for name, url in urls.items():
            async with http.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                text = await resp.text()
            values = dict.fromkeys(_COUNTERS.values(), 0.0)
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in _COUNTERS:
                        values[_COUNTERS[sample.name]] += sample.value
            out[name] = values
    return out


async def settle(urls: dict[str, str], timeout_s: float = 30.0) -> dict[str, dict[str, float]]:
    """Wait until no replica runs or queues a request (cut streams end within a step); returns the last scrape."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = await scrape(urls)
        if all(m["running"] + m["waiting"] == 0 for m in metrics.values()) or time.monotonic() > deadline:
            return metrics
        await asyncio.sleep(0.1)


async def reset_caches(urls: dict[str, str]) -> None:
    """Empty every replica's prefix cache (vLLM's POST /reset_prefix_cache)."""
    async with aiohttp.ClientSession() as http:
        for url in urls.values():
            async with http.post(url + "/reset_prefix_cache") as resp:
                await resp.read()


# -- processes -------------------------------------------------------------------------------------------------


def _stop(procs: ProcessGroup, name: str) -> None:
    """Kill one child and forget it, so that stop_all never signals a reused pid."""
    if name in procs.procs:
        procs.kill(name)
        del procs.procs[name]


def wait_up(procs: ProcessGroup, name: str, url: str, timeout_s: float = 60.0) -> None:
    """wait_until_up, and on failure say what the child `name` logged."""
    try:
        wait_until_up(url, timeout_s=timeout_s)
    except RuntimeError as exc:
        log = procs.logdir / f"{name}.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{exc}; {name} logged:\n{tail}") from None


def start_replicas(procs: ProcessGroup, scenario: Scenario, speed: float) -> dict[str, str]:
    """(Re)start the four replicas for `scenario`; returns name -> base URL."""
    for name in REPLICAS:
        _stop(procs, f"sim-{name}")
    urls = {}
    for name in REPLICAS:
        port = free_port(HOST)
        replica_speed = speed * SLOW_FACTOR if scenario.slow and name == SLOW_REPLICA else speed
        # One seed for all: the generated answers, hence the conversations, do not depend on the replica.
        procs.maitred(f"sim-{name}", "sim", "--host", HOST, "--port", str(port), "--model", MODEL,
                      "--speed", f"{replica_speed:g}", "--kv-cache-blocks", str(scenario.kv_blocks),
                      "--seed", "1", "--log-level", "warning")
        urls[name] = f"http://{HOST}:{port}"
    for name, url in urls.items():
        wait_up(procs, f"sim-{name}", url + "/health")
    return urls


class Routers:
    """The maitred routers: `A` and `B` (plain) and `W` (--workers 2, when available), each with its own table file."""

    def __init__(self, procs: ProcessGroup, workdir: Path, options: set[str], with_w: bool,
                 load_factor: float | None = None) -> None:
        self.procs, self.workdir = procs, workdir
        self.load_factor = load_factor  # the table's affinity.loadFactor; None: the router's default
        self.options = options  # the router's command-line options
        self.names = ["A", "B"] + (["W"] if with_w else [])
        self.ports = {n: free_port(HOST) for n in self.names}
        self.version = 0
        self.methods: dict[str, str] = {}  # router name -> the method of its current table

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.ports[name]}"

    def for_topology(self, topology: str) -> list[str]:
        return {"1 router": ["A"], "2 routers": ["A", "B"], "2 workers": ["W"]}[topology]

    def write(self, names: list[str], urls: dict[str, str], method: str, tag: str) -> int:
        """Write a new table version for routers `names`; endpoint ids carry `tag`, so no state carries over."""
        self.version += 1
        table = {"pool": "bench/quality", "version": self.version, "method": method, "models": [MODEL],
                 "endpoints": [{"id": f"{n}.{tag}", "url": u} for n, u in urls.items()],
                 "healthCheck": {"path": "/health", "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 3},
                 "retries": {"attempts": 2}}
        if self.load_factor is not None:
            table["affinity"] = {"loadFactor": self.load_factor}
        for name in names:
            self.methods[name] = method
            path = self.workdir / f"table-{name}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(table))
            os.replace(tmp, path)
        return self.version

    def start(self, urls: dict[str, str]) -> None:
        self.write(self.names, urls, "round-robin", "start")
        for name in self.names:
            extra = []
            if "--workers" in self.options:  # its default may be one worker per core
                extra += ["--workers", "2" if name == "W" else "1"]
            if "--admin-port" in self.options:  # 0: /debug/table on the traffic port, no fixed port shared
                extra += ["--admin-port", "0"]
            self.procs.maitred(f"router-{name}", "router", "--table", str(self.workdir / f"table-{name}.json"),
                               "--host", HOST, "--port", str(self.ports[name]), "--no-access-log",
                               "--log-level", "warning", *extra)
        for name in self.names:
            wait_up(self.procs, f"router-{name}", self.url(name) + "/healthz")

    async def wait_version(self, names: list[str], version: int, timeout_s: float = 20.0) -> None:
        """Until every router in `names` (with --workers, every worker we can reach) serves table `version`."""
        deadline = time.monotonic() + timeout_s
        for name in names:
            probes = 12 if name == "W" else 1  # new connections land on either worker
            seen = 0
            while seen < probes:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"router {name} did not load table version {version}")
                connector = aiohttp.TCPConnector(force_close=True)
                async with aiohttp.ClientSession(connector=connector) as http:
                    async with http.get(self.url(name) + "/debug/table") as resp:
                        table = (await resp.json()).get("table") or {}
                if table.get("version") == version:
                    seen += 1
                else:
                    seen = 0
                    await asyncio.sleep(0.05)


def source_state() -> dict:
    """The commit the router ran from, and whether its sources had uncommitted changes (an editable install)."""
    root = Path(__file__).resolve().parent.parent

    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True, timeout=30)
        return out.stdout.strip() if out.returncode == 0 else ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "router_uncommitted": bool(git("status", "--porcelain", "--", "router"))}


def installed_methods() -> tuple[list[str], list[str]]:
    """The wanted methods the installed router accepts (`maitred.router.table.METHODS`), and the absent ones."""
    from maitred.router.table import METHODS
    return [m for m in WANTED_METHODS if m in METHODS], [m for m in WANTED_METHODS if m not in METHODS]


def router_options() -> set[str]:
    """The long options `maitred router --help` lists (e.g. --workers, --admin-port)."""
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    out = subprocess.run([sys.executable, "-m", "maitred.cli.main", "router", "--help"], capture_output=True,
                         text=True, timeout=60, env=env)
    return set(re.findall(r"(--[a-z][a-z-]+)", out.stdout))


def load_peer_routers(wait_s: float):
    """bench/peer_routers.py (another helper's module), polled for up to `wait_s` s; None if absent or broken."""
    path = Path(__file__).with_name("peer_routers.py")
    deadline = time.monotonic() + wait_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(5)
    if not path.exists():
        return None, "bench/peer_routers.py does not exist"
    sys.path.insert(0, str(path.parent))
    try:
        module = importlib.import_module("peer_routers")
        module.ensure_peer_venv()
    except Exception as exc:  # noqa: BLE001 - any failure only drops the peer rows
        return None, f"sglang-router is not available: {type(exc).__name__}: {exc}"[:300]
    return module, ""


# -- one run ---------------------------------------------------------------------------------------------------


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _by_replica(ok: list[Outcome], names: list[str]) -> dict[str, float | None]:
    """TTFT p99 (ms) per replica, from `x-maitred-endpoint` ("a.run7" -> "a"); empty when no router names it."""
    out = {}
    for name in names:
        mine = [o.ttft_s for o in ok if o.ttft_s is not None and o.endpoint.split(".")[0] == name]
        p99 = _quantile(mine, 0.99)
        if p99 is not None:
            out[name] = round(p99 * 1000, 1)
    return out


def summarize(scenario: str, method: str, topology: str, outcomes: list[Outcome], wall_s: float,
              before: dict, after: dict, load: tuple[float, float]) -> dict:
    """One run's figures: req/s and output tok/s (wall clock), TTFT p50/p99 (ms), hit ratio and shares (replicas)."""
    ok = [o for o in outcomes if o.ok]
    ttfts = [o.ttft_s for o in ok if o.ttft_s is not None]
    delta = {n: {k: after[n][k] - before[n][k] for k in ("queries", "hits", "requests", "prompt", "generated")}
             for n in after}
    queries = sum(d["queries"] for d in delta.values())
    served = sum(d["requests"] for d in delta.values())
    p50, p99 = _quantile(ttfts, 0.5), _quantile(ttfts, 0.99)
    errors = [o.error for o in outcomes if not o.ok]
    return {
        "scenario": scenario, "method": method, "via": topology,
        "requests": len(outcomes), "ok": len(ok), "errors": len(errors), "first_errors": errors[:3],
        "wall_s": round(wall_s, 3),
        "req_per_s": round(len(ok) / wall_s, 2) if wall_s else 0.0,
        "output_tok_per_s": round(sum(o.completion_tokens for o in ok) / wall_s, 1) if wall_s else 0.0,
        "ttft_p50_ms": None if p50 is None else round(p50 * 1000, 1),
        "ttft_p99_ms": None if p99 is None else round(p99 * 1000, 1),
        "e2e_p50_ms": None if not ok else round(_quantile([o.e2e_s for o in ok], 0.5) * 1000, 1),
        "hit_ratio": round(sum(d["hits"] for d in delta.values()) / queries, 4) if queries else None,
        "client_cached_ratio": (round(sum(o.cached_tokens for o in ok) / sum(o.prompt_tokens for o in ok), 4)
                                if sum(o.prompt_tokens for o in ok) else None),
        "shares": {n: round(d["requests"] / served, 3) if served else 0.0 for n, d in delta.items()},
        "replica_requests": {n: int(d["requests"]) for n, d in delta.items()},
        "replica_hit_ratio": {n: round(d["hits"] / d["queries"], 3) if d["queries"] else None
                              for n, d in delta.items()},
        "replica_ttft_p99_ms": _by_replica(ok, list(delta)),
        "loadavg_1m": {"start": round(load[0], 2), "end": round(load[1], 2)},
    }


async def measured_run(scenario: Scenario, urls: dict[str, str], bases: list[str], method: str, topology: str,
                       deadline_s: float, timeout_s: float) -> dict:
    """Reset the replicas' caches, send the scenario's load through `bases`, and summarize it."""
    await settle(urls)
    await reset_caches(urls)
    before = await scrape(urls)
    load_start = os.getloadavg()[0]
    outcomes, wall_s = await drive(scenario.workload, bases, deadline_s, timeout_s)
    after = await settle(urls)
    return summarize(scenario.name, method, topology, outcomes, wall_s, before, after,
                     (load_start, os.getloadavg()[0]))


def _print_run(row: dict, elapsed_s: float) -> None:
    shares = " ".join(f"{n}:{100 * s:.0f}%" for n, s in row["shares"].items())
    hit = "-" if row["hit_ratio"] is None else f"{100 * row['hit_ratio']:.1f}%"
    print(f"  {row['scenario']:<13} {row['method']:<20} {row['via']:<9} {row['req_per_s']:7.1f} req/s "
          f"{row['output_tok_per_s']:7.0f} tok/s  TTFT p50 {row['ttft_p50_ms']} p99 {row['ttft_p99_ms']} ms  "
          f"hit {hit}  {shares}  errors {row['errors']}  ({elapsed_s:.0f} s, load {row['loadavg_1m']['end']})",
          flush=True)


_MEDIAN_FIELDS = ("wall_s", "req_per_s", "output_tok_per_s", "ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "hit_ratio",
                  "client_cached_ratio")


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (scenario, method, set-up): repeated runs give the median of each figure, the mean share."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["scenario"], row["method"], row["via"]), []).append(row)
    out = []
    for runs in groups.values():
        row = {k: v for k, v in runs[0].items() if k != "repeat"}
        row["runs"] = len(runs)
        if len(runs) > 1:
            for name in _MEDIAN_FIELDS:
                values = sorted(r[name] for r in runs if r[name] is not None)
                row[name] = statistics.median(values) if values else None
            row["shares"] = {n: round(statistics.fmean(r["shares"][n] for r in runs), 3) for n in row["shares"]}
            for name in ("requests", "ok", "errors"):
                row[name] = sum(r[name] for r in runs)
            row["first_errors"] = [e for r in runs for e in r["first_errors"]][:3]
            row["loadavg_1m"] = {"start": runs[0]["loadavg_1m"]["start"], "end": runs[-1]["loadavg_1m"]["end"]}
            for name in ("req_per_s", "ttft_p50_ms", "hit_ratio"):
                row[name + "_each"] = [r[name] for r in runs]
        out.append(row)
    return out


# -- aims ------------------------------------------------------------------------------------------------------


def check_aims(rows: list[dict]) -> list[dict]:
    """The issue's aims, each with the figures it compares and whether it holds."""
    by = {(r["scenario"], r["method"], r["via"]): r for r in rows}
    aims = []
    for scenario in ("shared-prefix", "multi-turn"):
        for method in AFFINITY_METHODS:
            single = by.get((scenario, method, "1 router"))
            for via in ("2 routers", "2 workers"):
                multi = by.get((scenario, method, via))
                if not single or not multi or single["hit_ratio"] is None or multi["hit_ratio"] is None:
                    continue
                hit_keep = multi["hit_ratio"] / single["hit_ratio"] if single["hit_ratio"] else 0.0
                ttft_x = multi["ttft_p50_ms"] / single["ttft_p50_ms"]
                aims.append({"aim": f"{scenario}, {method} through {via}: hit ratio >= 95% of 1 router's",
                             "value": f"{100 * multi['hit_ratio']:.1f}% vs {100 * single['hit_ratio']:.1f}% "
                                      f"({100 * hit_keep:.0f}%)", "met": hit_keep >= 0.95})
                aims.append({"aim": f"{scenario}, {method} through {via}: TTFT p50 <= 1.2x 1 router's",
                             "value": f"{multi['ttft_p50_ms']:.0f} vs {single['ttft_p50_ms']:.0f} ms ({ttft_x:.2f}x)",
                             "met": ttft_x <= 1.2})
    for via in TOPOLOGIES:
        base = by.get(("shared-prefix", "round-robin", via))
        for method in AFFINITY_METHODS:
            row = by.get(("shared-prefix", method, via))
            if base and row and base["req_per_s"]:
                x = row["req_per_s"] / base["req_per_s"]
                aims.append({"aim": f"shared-prefix, {method} through {via}: req/s >= 2x round-robin's",
                             "value": f"{row['req_per_s']:.1f} vs {base['req_per_s']:.1f} req/s ({x:.2f}x)",
                             "met": x >= 2.0})
    for via in TOPOLOGIES:
        for method in ("least-response-time", "least-load"):
            healthy, slow = by.get(("mixed", method, via)), by.get(("mixed-slow", method, via))
            if healthy and slow and healthy["ttft_p99_ms"] and slow["ttft_p99_ms"]:
                x = slow["ttft_p99_ms"] / healthy["ttft_p99_ms"]
                aims.append({"aim": f"mixed, {method} through {via}: TTFT p99 with replica d at {SLOW_FACTOR:g}x "
                                    f"<= 1.3x all-healthy",
                             "value": f"{slow['ttft_p99_ms']:.0f} vs {healthy['ttft_p99_ms']:.0f} ms ({x:.2f}x)",
                             "met": x <= 1.3})
    return aims


# -- results ---------------------------------------------------------------------------------------------------


def _fmt(value, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def write_results(out: Path, meta: dict, runs: list[dict], rows: list[dict], aims: list[dict]) -> None:
    """quality.json (every run, the per-set-up summary and the aims) and quality.md (the summary's tables)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps({"meta": meta, "summary": rows, "aims": aims, "runs": runs},
                                                 indent=2) + "\n")
    (out / "quality.md").write_text(render_markdown(meta, rows, aims))


def render_markdown(meta: dict, rows: list[dict], aims: list[dict]) -> str:
    """The tables of quality.md, from what quality.json holds."""
    lines = [f"Balancing quality, {meta['date']}, {meta['cpus']} cores shared by 4 simulated replicas, the routers "
             f"and the client; load average (1 min) {meta['loadavg_start'][0]:.1f} at the start, "
             f"{meta['loadavg_end'][0]:.1f} at the end; {meta['wall_s'] / 60:.1f} min in all"
             f"{' (--quick)' if meta['quick'] else ''}; commit {meta.get('commit', '?')}.", "",
             f"Replicas at {meta['speed']:g}x speed (mixed-slow: d at {meta['speed'] * SLOW_FACTOR:g}x). "
             "TTFT: streamed requests, at the client. hit: prompt tokens served from the replicas' prefix caches "
             "(their /metrics, over the run). share: requests per replica a/b/c/d. runs: repeated runs give the "
             "median of each figure (each run in quality.json).", ""]
    for note in meta["notes"]:
        lines.append(f"- {note}")
    if meta["notes"]:
        lines.append("")
    for name, scenario in meta["scenarios"].items():
        mine = [r for r in rows if r["scenario"] == name]
        if not mine:
            continue
        slow = scenario["slow"]
        lines += [f"### {name}", "",
                  f"{scenario['about']}; KV cache {scenario['kv_blocks']:,} blocks of 16 tokens per replica "
                  f"(prefixes: about twice that).", "",
                  "| method | via | runs | req/s | output tok/s | TTFT p50 (ms) | TTFT p99 (ms) | hit | share a/b/c/d "
                  "| errors |" + (" TTFT p99 a/b/c/d (ms) |" if slow else ""),
                  "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if slow else "")]
        for r in mine:
            shares = "/".join(f"{100 * s:.0f}" for s in r["shares"].values())
            line = (f"| {r['method']} | {r['via']} | {r['runs']} | {r['req_per_s']:.1f} | {r['output_tok_per_s']:.0f} | "
                    f"{_fmt(r['ttft_p50_ms'], '.0f')} | {_fmt(r['ttft_p99_ms'], '.0f')} | "
                    f"{_fmt(None if r['hit_ratio'] is None else 100 * r['hit_ratio'], '.1f')}% | {shares} | "
                    f"{r['errors']} |")
            if slow:
                by = r.get("replica_ttft_p99_ms") or {}
                line += (" " + "/".join(f"{by[n]:.0f}" if n in by else "-" for n in REPLICAS) + " |"
                         if by else " - |")
            lines.append(line)
        lines.append("")
    lines += ["### Aims", "", "| aim | measured | met |", "|---|---|---|"]
    lines += [f"| {a['aim']} | {a['value']} | {'yes' if a['met'] else '**no**'} |" for a in aims]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------------------------


async def run_all(procs: ProcessGroup, workdir: Path, args, scenarios: list[Scenario], methods: list[str],
                  topologies: list[str], options: set[str], peers,
                  progress: Callable[[dict, float], None]) -> list[dict]:
    rows: list[dict] = []
    routers: Routers | None = None
    run_tag = itertools.count(1)
    for scenario in scenarios:
        print(f"{scenario.name}: {scenario.about}; {scenario.kv_blocks} KV blocks per replica", flush=True)
        urls = await asyncio.to_thread(start_replicas, procs, scenario, args.speed)
        if routers is None:
            routers = Routers(procs, workdir, options, "2 workers" in topologies, args.load_factor)
            await asyncio.to_thread(routers.start, urls)
        # Method by method, the set-ups one after the other, so that the runs an aim compares are close in
        # time (the machine's load drifts); the compared runs are repeated and their medians reported.
        for method in methods:
            for repeat in range(args.repeats if (scenario.name, method) in REPEATED else 1):
                for topology in topologies:
                    names = routers.for_topology(topology)
                    t0 = time.perf_counter()
                    if any(routers.methods.get(n) == method for n in names):  # a new balancer, no history
                        other = "least-connections" if method == "round-robin" else "round-robin"
                        await routers.wait_version(names, routers.write(names, urls, other, "switch"))
                    # Fresh endpoint ids drop the router's per-endpoint history (latency, load). The affinity
                    # methods place by a hash of key and endpoint id: one id set per repeat, so that every
                    # set-up of a repeat sees the same placement and the comparison is of the set-ups alone.
                    tag = (f"{scenario.name}.{repeat}" if method in AFFINITY_METHODS else f"run{next(run_tag)}")
                    version = routers.write(names, urls, method, tag)
                    await routers.wait_version(names, version)
                    row = await measured_run(scenario, urls, [routers.url(n) for n in names], method, topology,
                                             args.run_deadline, args.timeout)
                    row["repeat"] = repeat
                    rows.append(row)
                    progress(row, time.perf_counter() - t0)
        if peers is not None:
            for topology in PEER_TOPOLOGIES:
                t0 = time.perf_counter()
                count = 1 if topology == "1 router" else 2
                ports = [free_port(HOST) for _ in range(count)]
                names = [f"sglang-{i}" for i in range(count)]
                try:
                    for name, port in zip(names, ports):
                        await asyncio.to_thread(peers.start_sglang_router, list(urls.values()), "cache_aware", port,
                                                procs, name=name)
                    row = await measured_run(scenario, urls, [f"http://{HOST}:{p}" for p in ports], PEER, topology,
                                             args.run_deadline, args.timeout)
                    rows.append(row)
                    progress(row, time.perf_counter() - t0)
                except RuntimeError as exc:
                    print(f"  {PEER} through {topology}: {exc}"[:500], flush=True)
                finally:
                    for name in names:
                        _stop(procs, name)
    return rows


def print_tracebacks(logdir: Path, chars: int = 3000) -> None:
    """Show the first Python traceback of each child's log (a router's 500s), before the logs are removed."""
    for log in sorted(logdir.glob("*.log")):
        text = log.read_text(errors="replace")
        start = text.find("Traceback (most recent call last)")
        if start >= 0:
            print(f"--- {log.name}: {text.count('Traceback (most recent call last)')} tracebacks; the first:\n"
                  f"{text[start:start + chars]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a quarter of the requests (a smoke run)")
    parser.add_argument("--speed", type=float, default=0.5, help="the replicas' speed factor (default 0.5)")
    parser.add_argument("--seed", type=int, default=11, help="seed of the request mix")
    parser.add_argument("--scenarios", default="", help="comma-separated subset of the scenarios")
    parser.add_argument("--methods", default="", help="comma-separated subset of the methods")
    parser.add_argument("--topologies", default="", help="comma-separated subset of: 1 router, 2 routers, 2 workers")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs of each set-up for the runs the aims compare across set-ups, median reported "
                             "(default 3; 1 with --quick)")
    parser.add_argument("--load-factor", type=float, default=None,
                        help="the routing table's affinity.loadFactor (default: the router's, 1.25)")
    parser.add_argument("--no-peers", action="store_true", help="leave sglang-router out")
    parser.add_argument("--peer-wait", type=float, default=0.0,
                        help="seconds to wait for bench/peer_routers.py to appear")
    parser.add_argument("--run-deadline", type=float, default=120.0, help="no request starts later in a run (s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only rewrite quality.md beside a quality.json from its contents (no runs)")
    args = parser.parse_args()
    if args.render:
        data = json.loads(args.render.read_text())
        args.render.with_name("quality.md").write_text(render_markdown(data["meta"], data["summary"], data["aims"]))
        return

    started, load_start = time.time(), os.getloadavg()
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    notes: list[str] = []
    scenarios = build_scenarios(args.quick, args.seed)
    if args.scenarios:
        wanted = args.scenarios.split(",")
        scenarios = [s for s in scenarios if s.name in wanted]
    methods, absent = installed_methods()
    if absent:
        notes.append(f"skipped, not accepted by the installed router: {', '.join(absent)}")
    if args.methods:
        methods = [m for m in methods if m in args.methods.split(",")]
    topologies = list(TOPOLOGIES)
    options = router_options()
    if "--workers" not in options:
        topologies.remove("2 workers")
        notes.append("skipped `2 workers`: `maitred router --help` has no --workers")
    if args.topologies:
        topologies = [t for t in topologies if t in args.topologies.split(",")]
    peers = None
    if not args.no_peers:
        peers, why = load_peer_routers(args.peer_wait)
        if peers is None:
            notes.append(f"skipped {PEER}: {why}")
    for note in notes:
        print("note:", note, flush=True)

    with tempfile.TemporaryDirectory(prefix="maitred-quality-") as tmp, ProcessGroup(Path(tmp)) as procs:
        try:
            rows = asyncio.run(run_all(procs, Path(tmp), args, scenarios, methods, topologies, options, peers,
                                       _print_run))
        finally:
            print_tracebacks(Path(tmp))
    summary = aggregate(rows)
    aims = check_aims(summary)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "python": platform.python_version(),
            "quick": args.quick, "speed": args.speed, "slow_factor": SLOW_FACTOR, "seed": args.seed,
            "repeats": args.repeats, "affinity_load_factor": args.load_factor,
            "methods": methods, "topologies": topologies, "notes": notes,
            "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "wall_s": round(time.time() - started, 1), **source_state(),
            "scenarios": {s.name: {"about": s.about, "kv_blocks": s.kv_blocks, "requests": s.workload.requests,
                                   "concurrency": s.workload.concurrency, "slow": s.slow} for s in scenarios}}
    if peers is not None:
        meta["peer_versions"] = peers.installed_versions()
    write_results(args.out, meta, rows, summary, aims)
    print("\naims:")
    for aim in aims:
        print(f"  {'met ' if aim['met'] else 'MISS'}  {aim['aim']}: {aim['value']}")
    print(f"\n{len(rows)} runs in {meta['wall_s'] / 60:.1f} min; results in {args.out}/quality.md", flush=True)


if __name__ == "__main__":
    main()
