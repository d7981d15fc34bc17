"""Real processes for the router tests: `maitred router`, `maitred sim` and the purpose-built backends.

Each process runs in its own process group (``start_new_session``), so that stopping it also stops
anything it started, and a test can SIGKILL one replica. Addresses are distinct 127.0.0.x (the
router tests own 127.0.0.0/24; the cluster tests start at 127.0.1.1).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
BACKEND_SCRIPT = HERE / "router_backends.py"
MODEL = "test-model"
SIM_MODEL = "sim-model"

#: Worker processes of each router a test starts without naming --workers: the router suite runs
#: once with 1 (CI's first pass) and once with 2 (MAITRED_TEST_ROUTER_WORKERS=2, its second pass).
ROUTER_WORKERS = int(os.environ.get("MAITRED_TEST_ROUTER_WORKERS", "1"))

# Hosts 127.0.0.11 .. 127.0.0.250, handed out in turn so that neighbouring tests never share one.
_hosts = itertools.cycle(f"127.0.0.{i}" for i in range(11, 251))


def next_host() -> str:
    """A loopback address for the next process."""
    return next(_hosts)


def free_port(host: str) -> int:
    """A port that is free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll `check` until it returns something truthy; its value. Raises AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            last_exc = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 5.0) -> None:
    """Stop `proc` and its process group: `sig` first, SIGKILL after `grace_s`."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything left in the group
    except ProcessLookupError:
        pass
    proc.wait()


class BackendProcess:
    """One purpose-built replica (see router_backends.py), in its own process group."""

    def __init__(self, name: str, log_dir: Path, **options) -> None:
        self.name = name
        self.host = next_host()
        args = [sys.executable, str(BACKEND_SCRIPT), "--name", name, "--host", self.host]
        for key, value in options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self.log_path = log_dir / f"backend-{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log,
                                     start_new_session=True, bufsize=0)
        self.port: int | None = None

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        """Block until the backend prints READY <port>. Raises RuntimeError with its log if it dies."""
        deadline = time.monotonic() + timeout_s
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                data = os.read(self.proc.stdout.fileno(), 256)  # unbuffered: select sees what is left
                if not data:
                    break
                line += data
        if not line.startswith(b"READY "):
            raise RuntimeError(f"backend {self.name} did not start: {self.log_path.read_text()[-2000:]}")
        self.port = int(line.split()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def endpoint(self, weight: int = 1) -> dict:
        """This backend as a routing-table endpoint."""
        return {"id": self.name, "url": self.url, "weight": weight}

    def stats(self) -> dict:
        """What the backend saw (GET /stats, straight to it)."""
        return httpx.get(self.url + "/stats", timeout=5, trust_env=False).json()

    def control(self, **settings) -> dict:
        """Change the backend's fault settings at run time."""
        return httpx.post(self.url + "/control", json=settings, timeout=5, trust_env=False).json()

    def kill(self) -> None:
        """SIGKILL the replica, as the OOM killer or a node failure would."""
        stop_group(self.proc, signal.SIGKILL, grace_s=5.0)

    def stop(self) -> None:
        stop_group(self.proc)
        self._log.close()


class SimProcess:
    """`maitred sim` (the project's simulated vLLM server) serving SIM_MODEL, in its own process group."""

    def __init__(self, name: str, log_dir: Path, *flags: str) -> None:
        self.name = name
        self.host = next_host()
        self.port = free_port(self.host)
        self.log_path = log_dir / f"sim-{name}.log"
        self._log = open(self.log_path, "wb")
        args = ["maitred", "sim", "--host", self.host, "--port", str(self.port), "--model", SIM_MODEL,
                "--log-level", "warning", *flags]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def endpoint(self, weight: int = 1) -> dict:
        return {"id": self.name, "url": self.url, "weight": weight}

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"maitred sim exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            return httpx.get(self.url + "/health", timeout=2, trust_env=False).status_code == 200

        wait_for(up, timeout_s, f"maitred sim {self.name} to answer /health")

    def stop(self) -> None:
        stop_group(self.proc)
        self._log.close()


class RouterProcess:
    """`maitred router --table FILE` on a fresh 127.0.0.x address, with its admin port (/metrics,
    /debug/table) on another free port of it: `client` talks to the traffic port, `admin` to the admin port."""

    def __init__(self, table: dict, work_dir: Path, extra_args: list[str] = (), table_path: Path | None = None) -> None:
        """`table_path`: a table file the test laid out itself (else `table` is written to work_dir/table.json)."""
        self.host = next_host()
        self.port = free_port(self.host)
        self.admin_port = free_port(self.host)
        while self.admin_port == self.port:
            self.admin_port = free_port(self.host)
        self.table_path = table_path or work_dir / "table.json"
        self.table = dict(table)
        self.table.setdefault("version", 1)
        if table_path is None:
            write_atomically(self.table_path, self.table)
        self.log_path = work_dir / "router.log"
        self._log = open(self.log_path, "wb")
        if "--workers" not in extra_args:
            extra_args = ["--workers", str(ROUTER_WORKERS), *extra_args]
        if "--admin-port" not in extra_args:
            extra_args = ["--admin-port", str(self.admin_port), *extra_args]
        else:  # the test's own; 0: none, and /metrics and /debug/table are on the traffic port
            self.admin_port = int(extra_args[list(extra_args).index("--admin-port") + 1]) or self.port
        args = ["maitred", "router", "--table", str(self.table_path), "--host", self.host, "--port", str(self.port),
                "--no-access-log", "--log-level", "warning", *extra_args]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=30, trust_env=False)
        self.admin = httpx.Client(base_url=self.admin_url, timeout=30, trust_env=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until the router answers /healthz and has applied its first table."""

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited with {self.proc.returncode}: {self.log()}")
            return self.client.get("/healthz").status_code == 200

        wait_for(up, timeout_s, "the router to answer /healthz")
        self.wait_version(self.table["version"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def debug(self) -> dict:
        """GET /debug/table (admin port)."""
        return self.admin.get("/debug/table").json()

    def endpoints(self) -> dict[str, dict]:
        """Per-endpoint state from /debug/table, by id."""
        return {e["id"]: e for e in self.debug()["endpoints"]}

    def metrics_text(self) -> str:
        """GET /metrics (admin port), as Prometheus reads it."""
        return self.admin.get("/metrics").text

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """GET /metrics (admin port), parsed: {(name, ((label, value), ...)): value}."""
        return parse_metrics(self.metrics_text())

    def wait_version(self, version: int, timeout_s: float = 10.0) -> None:
        """Block until /debug/table shows table `version` in force (in every worker, if there are several,
        and every worker accepts connections)."""

        def applied() -> bool:
            debug = self.debug()
            if "workers" in debug:
                return all(w["tableVersion"] == version and w["listening"] for w in debug["workers"])
            return (debug["table"] or {}).get("version") == version

        wait_for(applied, timeout_s, f"routing table version {version} to be applied")

    def write_table(self, table: dict, wait: bool = True) -> None:
        """Replace the table file atomically; with `wait`, until the router applies it."""
        self.table = dict(table)
        write_atomically(self.table_path, self.table)
        if wait:
            self.wait_version(self.table["version"])

    def update_table(self, **changes) -> None:
        """Write the current table with `changes` and the next version, and wait until it is applied."""
        self.write_table({**self.table, **changes, "version": self.table["version"] + 1})

    def stop(self) -> None:
        self.client.close()
        self.admin.close()
        stop_group(self.proc)
        self._log.close()


def write_atomically(path: Path, data: dict | bytes) -> None:
    """Write `path` as a ConfigMap volume or an editor does: a temporary file renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    os.replace(tmp, path)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text format to {(name, sorted label pairs): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(metrics: dict, name: str, **labels) -> float:
    """The sum of `name` samples whose labels include `labels` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= set(ls))


def table(backends, method: str = "least-connections", **extra) -> dict:
    """A routing table over `backends` (BackendProcess or (backend, weight) pairs)."""
    endpoints = [b.endpoint() if isinstance(b, BackendProcess) else b[0].endpoint(b[1]) for b in backends]
    return {"pool": "test/pool", "version": 1, "method": method, "models": [MODEL], "endpoints": endpoints,
            "healthCheck": {"path": "/health", "periodSeconds": 0.5, "timeoutSeconds": 1, "failureThreshold": 3},
            **extra}


def chat_body(text: str = "hello", stream: bool = False, **extra) -> dict:
    """A chat-completions request body for the test model."""
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": stream, **extra}


@dataclass
class Result:
    """One request of a load run: when it started and ended (s, monotonic), and what came back."""

    started: float
    ended: float = 0.0
    status: int = 0
    backend: str | None = None
    error: str | None = None
    body: bytes = b""


def run_load(url: str, path: str = "/v1/chat/completions", *, requests: int | None = None,
             duration_s: float | None = None, concurrency: int = 6, body: dict | None = None,
             timeout_s: float = 30.0) -> list[Result]:
    """Send POSTs from `concurrency` workers until `requests` were sent or `duration_s` passed.

    Each result names the backend that answered (its x-backend header); a failure to get any
    answer is recorded in `error` rather than raised.
    """
    return asyncio.run(_load(url, path, requests, duration_s, concurrency, body or chat_body(), timeout_s))


async def _load(url, path, requests, duration_s, concurrency, body, timeout_s) -> list[Result]:
    results: list[Result] = []
    deadline = time.monotonic() + duration_s if duration_s else None
    payload = json.dumps(body).encode()
    headers = {"content-type": "application/json"}

    def more() -> bool:
        if requests is not None and len(results) >= requests:
            return False
        return deadline is None or time.monotonic() < deadline

    async def worker(client: httpx.AsyncClient) -> None:
        while more():
            result = Result(started=time.monotonic())
            results.append(result)
            try:
                resp = await client.post(path, content=payload, headers=headers)
                result.status, result.backend, result.body = resp.status_code, resp.headers.get("x-backend"), resp.content
            except httpx.HTTPError as exc:
                result.error = f"{type(exc).__name__}: {exc}"
            result.ended = time.monotonic()

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results
