"""Fixtures for the simulator tests: real `maitred sim` processes on free 127.0.0.x ports, always stopped.

- `start_sim(*flags)`: start one for this test; returns a `SimProcess` once it accepts connections.
- `start_module_sim(*flags)`: the same, shared by a module's tests; `.many([flags], [flags])` starts several
  at once.
- `sim`: one default simulator shared by a module's tests (tests that change its faults put them back).
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

_MAITRED = Path(sys.executable).with_name("maitred")
_START_TIMEOUT_S = 20.0


def free_address() -> tuple[str, int]:
    """A random 127.0.0.x address (x in 2..254) and a port free on it right now."""
    host = f"127.0.0.{random.randint(2, 254)}"
    with socket.socket() as probe:
        probe.bind((host, 0))
        return host, probe.getsockname()[1]


class SimProcess:
    """A `maitred sim` subprocess; its output goes to `log_path`."""

    def __init__(self, flags: list[str], log_path: Path) -> None:
        self.host, self.port = free_address()
        self.base_url = f"http://{self.host}:{self.port}"
        self.log_path = log_path
        command = [str(_MAITRED), "sim", "--host", self.host, "--port", str(self.port), *flags]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        """Wait until the server accepts connections (it may answer /health with 503 by design)."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"maitred sim exited with {self.proc.returncode}:\n{self.log()}")
            try:
                # A bare connect: cheap enough to poll (an httpx.get builds an SSL context each time).
                socket.create_connection((self.host, self.port), timeout=1.0).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"maitred sim did not listen within {_START_TIMEOUT_S} s:\n{self.log()}")

    def stop(self) -> None:
        if self.alive:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Starter:
    """Starts simulators into one folder and stops all of them at the end of a fixture's scope."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[SimProcess] = []

    def __call__(self, *flags: str) -> SimProcess:
        return self.many(list(flags))[0]

    def many(self, *flag_lists: list[str]) -> list[SimProcess]:
        """Start several at once (they import in parallel), return them once all listen."""
        sims = []
        for flags in flag_lists:
            sims.append(SimProcess(flags, self.folder / f"sim{len(self.started)}.log"))
            self.started.append(sims[-1])
        for sim in sims:
            sim.wait_ready()
        return sims

    def stop_all(self) -> None:
        for sim in self.started:
            sim.stop()


@pytest.fixture
def start_sim(tmp_path):
    """`start_sim("--speed", "2")` -> a ready SimProcess; all are stopped after the test."""
    starter = Starter(tmp_path)
    yield starter
    starter.stop_all()


@pytest.fixture(scope="module")
def start_module_sim(tmp_path_factory):
    """Like `start_sim`, for simulators shared by a module's tests (stopped after the module)."""
    starter = Starter(tmp_path_factory.mktemp("sims"))
    yield starter
    starter.stop_all()


@pytest.fixture(scope="module")
def sim(start_module_sim):
    """A default simulator (speed 1, model sim-model) shared by the module's tests."""
    return start_module_sim()
