"""The raw-socket backend (raw_backend.py) as a test process, and the `raw_backends` fixture.

A test module uses the fixture by importing it: ``from raw_harness import raw_backends``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from router_harness import HERE, BackendProcess, next_host

RAW_SCRIPT = HERE / "raw_backend.py"


class RawBackend(BackendProcess):
    """One raw_backend.py process, with BackendProcess's interface (wait_ready, url, endpoint, stats, stop)."""

    def __init__(self, name: str, log_dir) -> None:  # not super().__init__(): that starts router_backends.py
        self.name = name
        self.host = next_host()
        self.log_path = log_dir / f"raw-{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, str(RAW_SCRIPT), "--host", self.host], stdout=subprocess.PIPE,
                                     stderr=self._log, start_new_session=True, bufsize=0)
        self.port = None


@pytest.fixture
def raw_backends(fleet):
    """`raw_backends("a", "b")` starts raw backends named so; all stopped after the test."""

    def start(*names: str) -> list[RawBackend]:
        new = [RawBackend(name, fleet.work_dir) for name in names]
        fleet.processes.extend(new)
        for backend in new:
            backend.wait_ready()
        return new

    return start
