"""`--log-format json|text`: one schema (timestamp, level, logger, message) for the router, the operator and
the simulator, uvicorn's own lines included. (The router's access line: tests/router/test_router_observability.py.)"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from maitred.cli.processes import free_port

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.mark.parametrize("command", ["router", "sim", "operator"])
def test_an_unknown_log_format_exits_2_naming_the_option(tmp_path, command):
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"pool": "t/p", "endpoints": []}))
    args = ["maitred", command, "--log-format", "xml"] + (["--table", str(table)] if command == "router" else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert "--log-format" in done.stdout + done.stderr and "Traceback" not in done.stderr


def json_lines(text: str) -> list[dict]:
    """Every line of `text` as a JSON object (fails on a line that is not one)."""
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= set(record), record
        assert TIMESTAMP.fullmatch(record["timestamp"]), record
    return records


def test_the_simulator_logs_json_lines_uvicorns_included(tmp_path):
    host, port = "127.0.0.1", free_port("127.0.0.1")
    log = tmp_path / "sim.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "maitred.cli.main", "sim", "--host", host, "--port", str(port),
                                 "--log-format", "json"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{host}:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"maitred sim did not start: {log.read_text()}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    records = json_lines(log.read_text())
    assert any(r["logger"].startswith("uvicorn") and "running on" in r["message"].lower() for r in records), records


def test_the_operator_logs_json_lines(tmp_path):
    missing = tmp_path / "no-such-kubeconfig"
    done = subprocess.run([sys.executable, "-m", "maitred.cli.main", "operator", "--log-format", "json",
                           "--kubeconfig", str(missing)], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    *logged, last = [line for line in done.stderr.splitlines() if line.strip()]
    assert last.startswith("maitred operator:")  # the one-line error for people, not a log line
    records = json_lines("\n".join(logged))
    assert records and all(r["level"] in ("debug", "info", "warning", "error") for r in records)
