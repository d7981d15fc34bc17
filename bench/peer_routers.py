"""The Rust routers maitred is compared with: vllm-router and sglang-router, in a venv of their own.

Both are PyPI packages wrapping a Rust router in a Python launcher. They go into a separate venv
(`~/.cache/maitred/peers-venv`, or `$MAITRED_PEERS_VENV`), created once and reused, so that their
pinned dependencies never touch maitred's environment:

    from peer_routers import ensure_peer_venv, start_vllm_router, start_sglang_router
    ensure_peer_venv()                      # ~1 min the first time (pip), then ~0.3 s
    with ProcessGroup(workdir) as procs:
        start_sglang_router(["http://127.0.0.1:8001", "http://127.0.0.1:8002"], "cache_aware", 9000, procs)
        ...                                 # the router answers on http://127.0.0.1:9000

How each is run (from their `--help`):

- vllm-router 0.1.17: the `vllm-router` entry point, `--worker-urls URL... --policy P`
  (random, round_robin, cache_aware, kv_aware, power_of_two, consistent_hash, sticky_least_loaded).
  It checks the workers' `/health` before it listens, so it is ready once its port answers.
- sglang-router 0.3.2: `python -m sglang_router.launch_router --worker-urls URL... --policy P`
  (random, round_robin, cache_aware, power_of_two, manual). It listens first and registers the
  workers afterwards; `GET /readiness` reports `healthy_workers`, which is what `wait` polls.

Both are given loopback-only listeners (the router and its Prometheus port), a 1 s worker start-up
check interval (the default 30 s would stall every start) and a log level of warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import httpx

from maitred.cli.processes import ProcessGroup, free_port

HOST = "127.0.0.1"
#: The versions compared with; the venv is (re)installed when it holds others.
PEER_VERSIONS = {"vllm-router": "0.1.17", "sglang-router": "0.3.2"}
#: The policies each router accepts, from its `--help`.
VLLM_POLICIES = ("random", "round_robin", "cache_aware", "kv_aware", "power_of_two", "consistent_hash",
                 "sticky_least_loaded")
SGLANG_POLICIES = ("random", "round_robin", "cache_aware", "power_of_two", "manual")


def peer_venv_path() -> Path:
    """Where the peers' venv lives: `$MAITRED_PEERS_VENV`, else `~/.cache/maitred/peers-venv`."""
    default = Path.home() / ".cache" / "maitred" / "peers-venv"
    return Path(os.environ.get("MAITRED_PEERS_VENV", default)).expanduser()


def installed_versions(venv: Path | None = None) -> dict[str, str | None]:
    """The versions of the peers installed in `venv` (None for one that is missing)."""
    python = (venv or peer_venv_path()) / "bin" / "python"
    if not python.exists():
        return dict.fromkeys(PEER_VERSIONS)
    code = ("import importlib.metadata as m, json\n"
            "def v(n):\n"
            "    try: return m.version(n)\n"
            "    except m.PackageNotFoundError: return None\n"
            f"print(json.dumps({{n: v(n) for n in {list(PEER_VERSIONS)!r}}}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return dict.fromkeys(PEER_VERSIONS)
    return json.loads(out.stdout)


def ensure_peer_venv(quiet: bool = True) -> Path:
    """Create the peers' venv and install the pinned routers if they are not there yet; returns its path.

    Safe to call from several processes at once (a file lock serialises the install). Needs PyPI
    the first time (about a minute); later calls only check the versions (~0.3 s).
    """
    venv = peer_venv_path()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / (venv.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed_versions(venv) == PEER_VERSIONS:
            return venv
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        pins = [f"{name}=={version}" for name, version in PEER_VERSIONS.items()]
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", *(["-q"] if quiet else []), *pins],
                       check=True, timeout=1800)
        found = installed_versions(venv)
        if found != PEER_VERSIONS:
            raise RuntimeError(f"peer venv {venv} holds {found}, wanted {PEER_VERSIONS}")
    return venv


def vllm_router_argv(urls: Sequence[str], policy: str, port: int, host: str = HOST,
                     extra: Sequence[str] = ()) -> list[str]:
    """The command line that runs vllm-router on `host:port` in front of `urls` with `policy`."""
    if policy not in VLLM_POLICIES:
        raise ValueError(f"vllm-router has no policy {policy!r}; it has {', '.join(VLLM_POLICIES)}")
    return [str(peer_venv_path() / "bin" / "vllm-router"), "--host", host, "--port", str(port),
            "--worker-urls", *urls, "--policy", policy,
            "--prometheus-host", HOST, "--prometheus-port", str(free_port(HOST)),
            "--worker-startup-check-interval", "1", "--log-level", "warning", *extra]


def sglang_router_argv(urls: Sequence[str], policy: str, port: int, host: str = HOST,
                       extra: Sequence[str] = ()) -> list[str]:
    """The command line that runs sglang-router on `host:port` in front of `urls` with `policy`."""
    if policy not in SGLANG_POLICIES:
        raise ValueError(f"sglang-router has no policy {policy!r}; it has {', '.join(SGLANG_POLICIES)}")
    return [str(peer_venv_path() / "bin" / "python"), "-m", "sglang_router.launch_router",
            "--host", host, "--port", str(port), "--worker-urls", *urls, "--policy", policy,
            "--prometheus-host", HOST, "--prometheus-port", str(free_port(HOST)),
            "--worker-startup-check-interval", "1", "--log-level", "warn", *extra]


def start_vllm_router(urls: Sequence[str], policy: str, port: int, procs: ProcessGroup, *,
                      name: str = "vllm-router", host: str = HOST, extra: Sequence[str] = (),
                      wait: bool = True, timeout_s: float = 60.0) -> subprocess.Popen:
    """Start vllm-router as `name` in `procs` (which stops it); with `wait`, return once it routes.

    Logs go to `procs.logdir/NAME.log`. Raises RuntimeError if it is not ready within `timeout_s` s.
    """
    ensure_peer_venv()
    proc = procs.start(name, vllm_router_argv(urls, policy, port, host, extra))
    if wait:
        wait_router_ready(proc, host, port, len(urls), timeout_s, procs.logdir / f"{name}.log")
    return proc


def start_sglang_router(urls: Sequence[str], policy: str, port: int, procs: ProcessGroup, *,
                        name: str = "sglang-router", host: str = HOST, extra: Sequence[str] = (),
                        wait: bool = True, timeout_s: float = 60.0) -> subprocess.Popen:
    """Start sglang-router as `name` in `procs` (which stops it); with `wait`, return once every worker is in.

    Logs go to `procs.logdir/NAME.log`. Raises RuntimeError if it is not ready within `timeout_s` s.
    """
    ensure_peer_venv()
    proc = procs.start(name, sglang_router_argv(urls, policy, port, host, extra))
    if wait:
        wait_router_ready(proc, host, port, len(urls), timeout_s, procs.logdir / f"{name}.log")
    return proc


def wait_router_ready(proc: subprocess.Popen, host: str, port: int, workers: int, timeout_s: float = 60.0,
                      log: Path | None = None) -> None:
    """Poll the router until it has `workers` healthy workers (`/readiness`), or answers `/health` if it lacks it.

    Raises RuntimeError (with the log's tail) if the process exits or `timeout_s` seconds pass.
    """
    base = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"router on {base} exited with {proc.returncode}{_tail(log)}")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            ready = httpx.get(base + "/readiness", timeout=1.0)
            if ready.status_code == 200 and ready.json().get("healthy_workers", workers) >= workers:
                return
            if ready.status_code == 404 and httpx.get(base + "/health", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"router on {base} was not ready within {timeout_s:g} s{_tail(log)}")


def _tail(log: Path | None, chars: int = 2000) -> str:
    if log is None or not log.exists():
        return ""
    return "; its log ends:\n" + log.read_text(errors="replace")[-chars:]


if __name__ == "__main__":
    print(ensure_peer_venv(quiet=False))
    print(installed_versions())
