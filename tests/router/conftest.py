"""Fixtures for the router tests: start real backends (purpose-built ones or `maitred sim`) and a real
router, and always stop them.

`backends` and `router` are per test. The `module_*` twins are shared by the tests of one module,
for tests that only read (they save the ~2 s a router takes to start on a busy machine).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from router_harness import BackendProcess, RouterProcess, SimProcess


class Fleet:
    """Processes started for one scope; `stop()` stops every one of them."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.processes: list[BackendProcess | SimProcess | RouterProcess] = []

    def backends(self, *specs: tuple[str, dict]) -> list[BackendProcess]:
        """Start replicas (name, options) in parallel; returns them once all listen."""
        new = [BackendProcess(name, self.work_dir, **options) for name, options in specs]
        self.processes.extend(new)
        for backend in new:
            backend.wait_ready()
        return new

    def sims(self, *names: str, flags: tuple[str, ...] = ()) -> list[SimProcess]:
        """Start `maitred sim` replicas named `names` in parallel, each with the command-line `flags`
        (e.g. ("--max-num-seqs", "1")); returns them once all are healthy."""
        new = [SimProcess(name, self.work_dir, *flags) for name in names]
        self.processes.extend(new)
        for sim in new:
            sim.wait_ready()
        return new

    def router(self, table: dict, *extra_args: str, table_path: Path | None = None) -> RouterProcess:
        """Start `maitred router` on `table` (or on the file at `table_path`, which holds it); returns it
        once it has applied the table."""
        work = self.work_dir / f"router{sum(isinstance(p, RouterProcess) for p in self.processes)}"
        work.mkdir()
        proc = RouterProcess(table, work, list(extra_args), table_path=table_path)
        self.processes.append(proc)
        proc.wait_ready()
        return proc

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    fleet.stop()


@pytest.fixture
def backends(fleet):
    """`backends(("a", {...}), ("b", {...}))` starts replicas in parallel; all stopped after the test."""
    return fleet.backends


@pytest.fixture
def router(fleet):
    """`router(table, *extra_args)` starts `maitred router` on the table; stopped after the test."""
    return fleet.router


@pytest.fixture(scope="module")
def module_fleet(tmp_path_factory):
    fleet = Fleet(tmp_path_factory.mktemp("router-module"))
    yield fleet
    fleet.stop()
