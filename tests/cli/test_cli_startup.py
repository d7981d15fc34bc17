"""What `maitred` imports at start-up: each subcommand loads what it needs and nothing of the others.

Every test runs the CLI in a fresh interpreter through a tiny wrapper that calls `maitred.cli.main.main()`
and, however it ends, writes the names in `sys.modules` to a file; the test then looks at that list.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from maitred.cli.processes import free_port

ROOT = Path(__file__).resolve().parents[2]

# Runs `maitred ARGS...` (the arguments after -c's code) and records every module imported by the end.
# uvicorn, once it has shut down on SIGTERM, raises the signal again with the handler it found; this one
# turns it into SystemExit, so that the `finally` runs.
WRAPPER = """
import json, os, signal, sys
sys.argv[0] = "maitred"
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
try:
    from maitred.cli.main import main
    main()
finally:
    with open(os.environ["MAITRED_MODULES_OUT"], "w") as out:
        json.dump(sorted(sys.modules), out)
"""

OPENAI_SDK = {"openai"}
OPERATOR_STACK = {"kopf", "kubernetes", "kubernetes_asyncio", "maitred.operator"}
DEMO_ONLY = {"openai", "httpx", "maitred.cli.demo", "maitred.cli.demo_run"}


def loaded(modules: list[str], packages: set[str]) -> set[str]:
    """Those of `packages` (top-level or dotted names) of which `modules` holds the package or a submodule."""
    return {p for p in packages if any(m == p or m.startswith(p + ".") for m in modules)}


def run_cli(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `maitred ARGS...` to the end; its result and the modules it had imported."""
    out = tmp_path / "modules.json"
    env = {**os.environ, "MAITRED_MODULES_OUT": str(out)}
    done = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, env=env,
                          timeout=120)
    return done, json.loads(out.read_text())


@pytest.mark.parametrize("args", [["--help"], ["router", "--help"], ["sim", "--help"], ["operator", "--help"],
                                  ["demo", "--help"]])
def test_help_loads_neither_the_openai_sdk_nor_the_kubernetes_stack(tmp_path, args):
    done, modules = run_cli(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert "Usage: maitred" in done.stdout
    assert loaded(modules, OPENAI_SDK | {"httpx", "kopf", "kubernetes", "kubernetes_asyncio"}) == set()


def test_the_top_level_help_still_lists_every_subcommand(tmp_path):
    done, _ = run_cli(tmp_path, "--help")
    for name in ("router", "operator", "demo", "sim"):
        assert f" {name} " in done.stdout
    assert "--version" in done.stdout


def test_router_help_imports_no_other_subcommand(tmp_path):
    done, modules = run_cli(tmp_path, "router", "--help")
    assert done.returncode == 0, done.stderr
    assert "--table" in done.stdout and "--configmap" in done.stdout
    assert loaded(modules, OPERATOR_STACK | DEMO_ONLY | {"maitred.sim"}) == set()


def test_sim_help_imports_no_other_subcommand(tmp_path):
    done, modules = run_cli(tmp_path, "sim", "--help")
    assert done.returncode == 0, done.stderr
    assert "--speed" in done.stdout
    assert loaded(modules, OPERATOR_STACK | DEMO_ONLY | {"maitred.router.cli"}) == set()


def test_a_running_router_loads_neither_the_openai_sdk_nor_the_operator_stack(tmp_path):
    """The router serving a table file, stopped with SIGTERM as Kubernetes stops it."""
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"pool": "test/startup", "endpoints": []}))
    out = tmp_path / "modules.json"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, "router", "--table", str(table), "--port", str(port),
                             "--log-level", "warning"],
                            env={**os.environ, "MAITRED_MODULES_OUT": str(out)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_healthz(f"http://127.0.0.1:{port}/healthz", proc)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert out.exists(), f"the router did not exit cleanly on SIGTERM (rc {proc.returncode}):\n{output[-3000:]}"
    modules = json.loads(out.read_text())
    assert "maitred.router.app" in modules or "maitred.router.workers" in modules  # it did run the router
    assert loaded(modules, OPENAI_SDK | OPERATOR_STACK) == set()
    assert loaded(modules, DEMO_ONLY | {"rich", "maitred.sim"}) == set()


def _wait_for_healthz(url: str, proc: subprocess.Popen) -> None:
    """Poll `url` until it answers 200; fail with the process's output if it exits first or never answers."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the router exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} never answered")


def test_version_prints_the_packaged_version(tmp_path):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    done = subprocess.run([sys.executable, "-m", "maitred.cli.main", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"maitred {version}\n"
