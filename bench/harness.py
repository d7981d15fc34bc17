"""What bench/peers.py and bench/http_stack.py share: NGINX backends, wrk, process CPU and memory, an open-stream client.

- NGINX backends (:func:`backend_conf`): a fixed chat completion on `/v1/chat/completions`, an SSE
  stream of `events` events on `/v1/completions` (each event flushed on its own, chunked, with the
  echo module: Debian's `libnginx-mod-http-echo`), and on separate ports a slow stream, one event
  every `slow_interval_s` seconds, for open-stream capacity.
- :func:`wrk`: POST a body from a file at a concurrency, for a time; requests/s and latency percentiles.
- :func:`tree_cpu_s`, :func:`tree_rss_bytes`: CPU time and resident memory of a process and its
  descendants (a router with worker processes), from /proc.
- :func:`open_streams`: hold N streams open at once from one asyncio process and time each one's
  first event.

Every load is bounded in count and time and goes to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from overhead import FIXED_COMPLETION, _ms  # noqa: E402

HOST = "127.0.0.1"
MODEL = "bench-model"
CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
ECHO_MODULE_PATHS = ("/usr/lib/nginx/modules/ngx_http_echo_module.so", "/usr/share/nginx/modules/ngx_http_echo_module.so")

SMALL_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
STREAM_COMPLETION = {"model": MODEL, "prompt": "Say hello.", "max_tokens": 256, "stream": True}
_WORDS = ("the quick brown fox jumps over a lazy dog while seven model servers answer prompts about "
          "routing tables caches tokens and streams").split()


def big_chat(size_bytes: int = 220 * 1024) -> dict:
    """A chat request whose JSON is about `size_bytes` bytes long (a long prompt: a document to summarise)."""
    words, length, i = [], 0, 0
    while length < size_bytes - 120:
        word = _WORDS[(i * 7 + i // 13) % len(_WORDS)]
        words.append(word)
        length += len(word) + 1
        i += 1
    return {"model": MODEL, "messages": [{"role": "user", "content": " ".join(words)}], "max_tokens": 16}


def sse_event(i: int) -> str:
    """The i-th event of a text-completion stream, as the backends send it (without the blank line)."""
    return ('data: {"id":"cmpl-bench","object":"text_completion","created":0,"model":"' + MODEL
            + '","choices":[{"index":0,"text":" tok' + str(i % 10) + '","logprobs":null,"finish_reason":null}]}')


def echo_module() -> str | None:
    """The path of NGINX's echo module, or None if it is not installed."""
    return next((p for p in ECHO_MODULE_PATHS if os.path.exists(p)), None)


def nginx_dirs(workdir: Path) -> str:
    """NGINX temp paths inside `workdir` (created), as http-block directives."""
    for sub in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
        (workdir / sub).mkdir(exist_ok=True)
    return (f"client_body_temp_path {workdir}/body; proxy_temp_path {workdir}/proxy; "
            f"fastcgi_temp_path {workdir}/fcgi; uwsgi_temp_path {workdir}/uwsgi; scgi_temp_path {workdir}/scgi;")


def backend_conf(workdir: Path, name: str, main_ports: list[int], slow_ports: list[int], events: int = 256,
                 slow_events: int = 40, slow_interval_s: float = 2.0) -> Path:
    """Config of an NGINX backend (one worker process): fixed completion, SSE and slow SSE. Returns its path.

    On each of `main_ports`: `/v1/chat/completions` answers FIXED_COMPLETION; `/v1/completions` an SSE
    stream of `events` events and `data: [DONE]`, flushed one by one (chunked). On each of `slow_ports`,
    `/v1/completions` sends its first event at once and then one every `slow_interval_s` s, `slow_events`
    in all. Both answer `/health` and `/v1/models`; other paths 404.
    """
    module = echo_module()
    if module is None:
        raise RuntimeError("NGINX's echo module is needed for the SSE backends: apt-get install libnginx-mod-http-echo")
    models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]})
    common = (f"location = /health {{ return 200 'OK'; }}\n"
              f"      location = /v1/models {{ default_type application/json; return 200 '{models}'; }}\n"
              f"      location / {{ return 404; }}")
    stream = "\n".join(f"        echo '{sse_event(i)}\\n'; echo_flush;" for i in range(events))
    slow = "\n".join(f"        echo '{sse_event(i)}\\n'; echo_flush; echo_sleep {slow_interval_s:g};"
                     for i in range(slow_events))
    listen_main = " ".join(f"listen {HOST}:{p};" for p in main_ports)
    listen_slow = " ".join(f"listen {HOST}:{p};" for p in slow_ports)
    slow_server = f"""
    server {{ {listen_slow}
      location = /v1/completions {{ default_type text/event-stream;
{slow}
        echo 'data: [DONE]\\n';
      }}
      {common}
    }}""" if slow_ports else ""
    conf = workdir / f"{name}.conf"
    conf.write_text(f"""
load_module {module};
worker_processes 1; worker_rlimit_nofile 20000; daemon off; pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log error;
events {{ worker_connections 19000; }}
http {{
    access_log off; {nginx_dirs(workdir)}
    keepalive_requests 1000000; keepalive_timeout 300s; client_max_body_size 64m; client_body_buffer_size 1m;
    server {{ {listen_main}
      location = /v1/chat/completions {{ echo_read_request_body; echo_exec /fixed-completion; }}
      location = /fixed-completion {{ internal; default_type application/json; return 200 '{FIXED_COMPLETION}'; }}
      location = /v1/completions {{ default_type text/event-stream;
{stream}
        echo 'data: [DONE]\\n';
      }}
      {common}
    }}{slow_server}
}}
""")
    return conf


def proxy_conf(workdir: Path, name: str, routes: dict[int, list[int]]) -> Path:
    """Config of NGINX as a reverse proxy (one worker): each listen port in `routes` to its upstream ports.

    Keep-alive upstream connections, no response buffering (streams pass event by event), request
    bodies up to 1 MiB kept in memory. Returns the config's path.
    """
    blocks = []
    for listen, upstreams in routes.items():
        servers = " ".join(f"server {HOST}:{p};" for p in upstreams)
        blocks.append(f"""
    upstream up_{listen} {{ {servers} keepalive 512; }}
    server {{ listen {HOST}:{listen};
      location / {{ proxy_pass http://up_{listen}; proxy_http_version 1.1; proxy_set_header Connection "";
                   proxy_buffering off; proxy_read_timeout 300s; }} }}""")
    conf = workdir / f"{name}.conf"
    conf.write_text(f"""
worker_processes 1; worker_rlimit_nofile 20000; daemon off; pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log error;
events {{ worker_connections 19000; }}
http {{
    access_log off; {nginx_dirs(workdir)}
    keepalive_requests 1000000; keepalive_timeout 300s; client_max_body_size 64m; client_body_buffer_size 1m;
{"".join(blocks)}
}}
""")
    return conf


def write_lua(workdir: Path, name: str, body: dict) -> Path:
    """A wrk script POSTing `body` as JSON (read from a file, so any size works). Returns its path."""
    data = workdir / f"{name}.json"
    data.write_text(json.dumps(body))
    script = workdir / f"{name}.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f'local f = assert(io.open("{data}", "rb"))\nwrk.body = f:read("*a")\nf:close()\n')
    return script


def wrk(url: str, script: Path, connections: int, seconds: float, threads: int | None = None) -> dict:
    """Run wrk for `seconds` s at `connections` connections; {"rps", "requests", "p50_ms", "p90_ms", "p99_ms"}.

    Raises RuntimeError if wrk saw non-2xx answers or socket errors.
    """
    threads = threads or (1 if connections == 1 else 2)
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s",
         "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),
            "p90_ms": _ms(re.search(r"90%\s+([\d.]+\w+)", out).group(1)),
            "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))}


def wrk_retried(url: str, script: Path, connections: int, seconds: float, tries: int = 2) -> dict:
    """:func:`wrk`, tried up to `tries` times; a run that still fails gives {"error": message} instead of raising.

    One failed run (a stall on a machine shared with other work) then costs one figure, not the whole benchmark.
    """
    message = ""
    for attempt in range(tries):
        try:
            result = wrk(url, script, connections, seconds)
            if attempt:
                result["tries"] = attempt + 1
            return result
        except (RuntimeError, subprocess.SubprocessError) as exc:
            message = str(exc)[-600:]
    return {"error": message}


def keep_best(results: dict, key: str, result: dict) -> None:
    """Keep `result` under `key` if it has more req/s than the one there (an error only where there is none)."""
    old = results.get(key)
    if old is None or ("rps" in result and ("rps" not in old or result["rps"] > old["rps"])):
        results[key] = result


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, ()))
    return found


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its live descendants (/proc/PID/stat)."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) * CLOCK_TICK_S  # utime, stime
    return total


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its live descendants, in bytes (sum of RSS: shared pages count once per process)."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_BYTES
        except OSError:
            continue
    return total


def tree_pss_bytes(pid: int) -> int:
    """Proportional set size of `pid` and its live descendants, in bytes: shared pages split among their sharers.

    Fairer than the RSS sum for a router that forks workers. Falls back to RSS where smaps_rollup is unreadable.
    """
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            total += tree_rss_bytes(p) if p == pid else 0
    return total


def wait_http(url: str, ok=lambda r: r.status_code == 200, timeout_s: float = 30.0) -> None:
    """Poll GET `url` until `ok(response)`; RuntimeError after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ok(httpx.get(url, timeout=1.0)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not ready within {timeout_s:g} s")


def check_path(base: str, events: int) -> None:
    """One request of each kind through `base`: the completion, the big prompt, and a whole stream of `events` events.

    Raises RuntimeError if any is not answered in full (a path that mangles streams does not count).
    """
    with httpx.Client(timeout=10.0) as client:
        r = client.post(base + "/v1/chat/completions", json=SMALL_CHAT)
        if r.status_code != 200 or "chatcmpl-bench" not in r.text:
            raise RuntimeError(f"{base}: completion answered {r.status_code} {r.text[:200]}")
        r = client.post(base + "/v1/chat/completions", json=big_chat())
        if r.status_code != 200:
            raise RuntimeError(f"{base}: big prompt answered {r.status_code} {r.text[:200]}")
        r = client.post(base + "/v1/completions", json=STREAM_COMPLETION)
        got = r.text.count('data: {"id":"cmpl-bench"')
        if r.status_code != 200 or got != events or "data: [DONE]" not in r.text:
            raise RuntimeError(f"{base}: stream answered {r.status_code} with {got} of {events} events")


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) of `values`, nearest rank; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100.0 * len(ordered) + 0.5) - 1))]


async def open_streams(port: int, count: int, rate_per_s: float, hold_s: float, probes: int = 100,
                       pid: int | None = None, first_event_timeout_s: float = 10.0) -> dict:
    """Open `count` SSE streams to 127.0.0.1:`port` at `rate_per_s` a second, hold them all `hold_s` s, close them.

    Each stream POSTs STREAM_COMPLETION to /v1/completions over its own connection and is timed from
    connect to its first event (while opening: `first_event_*`). Once all are open, `probes` more
    streams are opened one after another, spread over `hold_s`, and timed the same way (`probe_*`: the
    first event of a new request while `count` are open). With `pid`, the
    resident memory of that process tree is sampled every 0.5 s and its peak reported.

    Returns {"opened", "failed", "first_event_p50_s", "first_event_p99_s", "first_event_max_s",
    "probe_p50_s", "probe_p99_s", "peak_rss_mb", "peak_pss_mb" (MB), "errors" (up to 5 messages)}. Bounded: the whole
    call ends within count/rate + hold_s + 3 * first_event_timeout_s s.
    """
    body = json.dumps(STREAM_COMPLETION).encode()
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nAccept: text/event-stream\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    firsts: list[float] = []
    errors: list[str] = []
    failed = 0
    start = loop.time() + 0.2
    ramp_end = start + count / rate_per_s
    release = asyncio.Event()
    peak_rss = peak_pss = 0

    async def first_event(writer_box: list) -> float:
        t0 = loop.time()
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        writer_box.append(writer)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        seen = b""
        while b"data:" not in seen:
            chunk = await reader.read(65536)
            if not chunk:
                raise RuntimeError("closed before the first event")
            seen = seen[-8:] + chunk
        return loop.time() - t0, reader

    async def one(i: int) -> None:
        nonlocal failed
        await asyncio.sleep(max(0.0, start + i / rate_per_s - loop.time()))
        box: list = []
        try:
            elapsed, reader = await asyncio.wait_for(first_event(box), first_event_timeout_s)
            firsts.append(elapsed)
            drain = loop.create_task(_drain(reader))
            await release.wait()
            drain.cancel()
        except (OSError, RuntimeError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            failed += 1
            if len(errors) < 5:
                errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if box:
                box[0].close()

    async def sample_rss() -> None:
        nonlocal peak_rss, peak_pss
        while pid is not None:
            peak_rss = max(peak_rss, tree_rss_bytes(pid))
            peak_pss = max(peak_pss, tree_pss_bytes(pid))
            await asyncio.sleep(0.5)

    sampler = loop.create_task(sample_rss())
    tasks = [loop.create_task(one(i)) for i in range(count)]
    await asyncio.sleep(max(0.0, ramp_end - loop.time()) + 0.5)
    probe_times: list[float] = []
    probe_deadline = loop.time() + max(hold_s, 1.0)
    for _ in range(probes):
        if loop.time() > probe_deadline:
            break
        box: list = []
        try:
            elapsed, _ = await asyncio.wait_for(first_event(box), first_event_timeout_s)
            probe_times.append(elapsed)
        except (OSError, RuntimeError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            if len(errors) < 5:
                errors.append(f"probe {type(exc).__name__}: {exc}")
        finally:
            if box:
                box[0].close()
        await asyncio.sleep(hold_s / max(probes, 1))
    await asyncio.sleep(max(0.0, probe_deadline - loop.time()))
    if pid is not None:
        peak_rss, peak_pss = max(peak_rss, tree_rss_bytes(pid)), max(peak_pss, tree_pss_bytes(pid))
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), first_event_timeout_s * 2)
    sampler.cancel()
    return {"opened": len(firsts), "failed": failed,
            "first_event_p50_s": _round(percentile(firsts, 50)), "first_event_p99_s": _round(percentile(firsts, 99)),
            "first_event_max_s": _round(max(firsts) if firsts else None),
            "probe_p50_s": _round(percentile(probe_times, 50)), "probe_p99_s": _round(percentile(probe_times, 99)),
            "peak_rss_mb": round(peak_rss / 2**20, 1) if pid is not None else None,
            "peak_pss_mb": round(peak_pss / 2**20, 1) if pid is not None else None, "errors": errors}


async def _drain(reader: asyncio.StreamReader) -> None:
    """Read and drop a stream's bytes until it ends (so the server's sends never block)."""
    while await reader.read(65536):
        pass


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def machine() -> dict:
    """The machine the run is on: CPU model, cores, kernel, Python, and the load average (1, 5, 15 min)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "kernel": os.uname().release, "python": sys.version.split()[0],
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


class LoadSampler:
    """Samples the 1-minute load average every `period_s` seconds in a daemon thread while in a `with` block.

    `summary()` gives {"min", "mean", "max", "samples"}: how busy the machine was with other work too
    (on 2 cores, a benchmark alone brings it to about 2-3).
    """

    def __init__(self, period_s: float = 10.0) -> None:
        self.period_s, self.samples = period_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> "LoadSampler":
        self.samples.append(os.getloadavg()[0])
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)

    def summary(self) -> dict:
        values = self.samples or [os.getloadavg()[0]]
        return {"min": round(min(values), 2), "mean": round(sum(values) / len(values), 2),
                "max": round(max(values), 2), "samples": len(values)}

