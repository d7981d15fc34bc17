"""Bad options are refused at once: exit 2 and an error naming the option, never a traceback or a
server listening somewhere else than asked."""

from __future__ import annotations

import json
import subprocess

import pytest


@pytest.mark.parametrize("command, option, value", [
    ("router", "--port", "99999"),
    ("router", "--port", "0"),
    ("router", "--log-level", "verbose"),
    ("router", "--workers", "0"),
    ("router", "--max-body-bytes", "0"),
    ("sim", "--port", "99999"),
    ("sim", "--log-level", "verbose"),
])
def test_a_bad_option_exits_2_naming_it(tmp_path, command, option, value):
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"pool": "t/p", "endpoints": []}))
    args = ["maitred", command, option, value] + (["--table", str(table)] if command == "router" else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert option in output and "Traceback" not in output, output


def test_a_port_in_use_is_one_error_line_and_exit_1(tmp_path):
    import socket

    table = tmp_path / "table.json"
    table.write_text(json.dumps({"pool": "t/p", "endpoints": []}))
    with socket.socket() as taken:
        taken.bind(("127.0.0.9", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(["maitred", "router", "--table", str(table), "--host", "127.0.0.9", "--port", str(port)],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [f"Error: cannot listen on 127.0.0.9:{port}: Address already in use"]
