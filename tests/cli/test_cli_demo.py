"""`maitred demo`, run as a user runs it: it prints its tables, survives the kill, and leaves nothing behind."""

from __future__ import annotations

import re
import subprocess

from maitred.cli.demo import METHODS, MODEL


def demo_processes() -> list[str]:
    """Command lines of processes the demo starts (its replicas serve MODEL; its router reads a maitred-demo- table)."""
    lines = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout.splitlines()
    return [line for line in lines if MODEL in line or "maitred-demo-" in line]


def test_the_demo_compares_every_method_and_keeps_serving_after_a_replica_dies():
    assert demo_processes() == []
    done = subprocess.run(["maitred", "demo", "--requests", "45", "--concurrency", "9"], capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for method in METHODS:
        assert method in out
    after = re.search(r"Sent after the kill: (\d+) of (\d+) succeeded", out)
    assert after, out[-2000:]
    assert int(after.group(2)) > 0 and after.group(1) == after.group(2)
    assert "Traceback" not in out + done.stderr
    assert demo_processes() == []
