"""`maitred router --workers N`: N worker processes serve one port, one supervisor does the rest.

    supervisor ── table source (file or ConfigMap), health checks, load scrapes, worker restarts
        │  shared block (maitred.router.shared): in flight, health, latency, reported load
        │  table.json in the run folder + a generation counter: each table, once validated
        ├── worker 0 ── uvicorn on host:port and host:admin_port (both SO_REUSEPORT): proxy; /metrics, /debug/table
        └── worker 1 ── ...

Health checks and metric scrapes therefore happen once per router, not once per worker; every
worker balances on the in-flight counts of all of them; any worker answers `/metrics` and
`/debug/table` on the admin port for the router as a whole (counters through prometheus-client's
multiprocess mode).
A table reaches every worker within `FOLLOW_PERIOD_S` of the supervisor applying it.

A worker that dies is started again (its in-flight cells are cleared: its requests died with
it). SIGTERM or SIGINT to the supervisor stops the workers gracefully (each drains its open
requests, as uvicorn does), then the supervisor. A worker whose supervisor is gone stops itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

log = logging.getLogger("maitred.router.workers")

#: How often a worker looks for a new table generation, in s.
FOLLOW_PERIOD_S = 0.05
#: How often the supervisor looks for dead workers, in s, and the pause before starting one again.
MONITOR_PERIOD_S = 0.2
RESTART_DELAY_S = 1.0
#: Exit code of a worker that could not listen: the supervisor gives up instead of restarting it.
EXIT_CANNOT_LISTEN = 3
#: How long past its drain bound (s) a worker may take to exit before it is killed.
STOP_MARGIN_S = 5.0
TABLE_FILE = "table.json"
STATE_FILE = "state.bin"


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to start (picklable: it crosses a spawn)."""

    run_dir: str
    workers: int
    slots: int
    host: str
    port: int
    max_body_bytes: int
    log_level: str
    access_log: bool
    drain_seconds: float
    admin_port: int = 0  # 0: none (/metrics and /debug/table on the traffic port)
    log_format: str = "text"


def run(spec_args: dict, source_factory) -> int:
    """Run the supervisor and `spec_args["workers"]` workers until SIGTERM/SIGINT; the exit code.

    `spec_args`: the :class:`WorkerSpec` fields except `run_dir` and `slots`. `source_factory()`
    gives the table source coroutine function (see :mod:`maitred.router.sources`).
    """
    from maitred.router.shared import DEFAULT_SLOTS

    run_dir = Path(tempfile.mkdtemp(prefix="maitred-router-"))
    try:
        metrics_dir = run_dir / "metrics"
        metrics_dir.mkdir()
        _multiprocess_metrics(metrics_dir)
        spec = WorkerSpec(run_dir=str(run_dir), slots=DEFAULT_SLOTS, **spec_args)
        return asyncio.run(_supervise(spec, source_factory()))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _multiprocess_metrics(metrics_dir: Path) -> None:
    """Switch prometheus-client to multiprocess mode, here and in the workers (which inherit the variable).

    The library picks its value class when imported, from the environment; the supervisor may
    have imported it already, so the choice is made again (before any metric exists).
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


async def _supervise(spec: WorkerSpec, source) -> int:
    from maitred.router.core import Router
    from maitred.router.shared import SharedState

    run_dir = Path(spec.run_dir)
    shared = SharedState(run_dir / STATE_FILE, spec.workers, spec.slots, create=True)
    router: Router

    def publish() -> None:
        # The file first, then the generation: a worker that sees the new generation reads the new file.
        table = router.endpoints.table
        document = {"table": table.model_dump(mode="json", by_alias=True) if table else None,
                    "slots": dict(router.slots.by_id), "tableError": router.table_error}
        tmp = run_dir / f".{TABLE_FILE}.tmp"
        tmp.write_bytes(orjson.dumps(document))
        os.replace(tmp, run_dir / TABLE_FILE)
        shared.bump_table_generation(time.monotonic_ns())

    router = Router(max_body_bytes=spec.max_body_bytes, shared=shared, worker=-1, publish=publish)
    await router.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    context = multiprocessing.get_context("spawn")
    procs = [_start_worker(context, spec, i) for i in range(spec.workers)]
    tasks = [*router.start_checks(), asyncio.create_task(source(router))]
    exit_code = 0
    try:
        while not stop.is_set():
            for i, proc in enumerate(procs):
                if proc.exitcode is None:
                    continue
                if proc.exitcode == EXIT_CANNOT_LISTEN:
                    log.error("worker %d could not listen on %s; stopping", i, _addresses(spec))
                    exit_code = 1
                    stop.set()
                    break
                log.error("worker %d (pid %d) exited with %s; starting it again", i, proc.pid, proc.exitcode)
                await asyncio.sleep(RESTART_DELAY_S)
                procs[i] = _start_worker(context, spec, i)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), MONITOR_PERIOD_S)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()
    finally:
        await asyncio.to_thread(_stop_workers, procs, spec.drain_seconds + STOP_MARGIN_S)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await router.close()
        shared.close()
    return exit_code


def _addresses(spec: WorkerSpec) -> str:
    ports = f"{spec.port} and {spec.admin_port}" if spec.admin_port else str(spec.port)
    return f"{spec.host}:{ports}"


def _start_worker(context, spec: WorkerSpec, index: int):
    proc = context.Process(target=worker_main, args=(spec, index, os.getpid()), name=f"worker-{index}",
                           daemon=False)
    proc.start()
    return proc


def _stop_workers(procs, within_s: float) -> None:
    """SIGTERM every worker, wait up to `within_s` (s) for all to drain and exit, SIGKILL what is left."""
    for proc in procs:
        if proc.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + within_s
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.exitcode is None:
            log.error("worker %s did not stop within %.0f s; killing it", proc.name, within_s)
            proc.kill()
            proc.join()


def worker_main(spec: WorkerSpec, index: int, supervisor_pid: int) -> None:
    """A worker process: the router's app on its own SO_REUSEPORT socket, following the published tables."""
    import functools

    from maitred.router.app import create_app
    from maitred.router.core import Router
    from maitred.router.serve import listen_socket, serve
    from maitred.router.shared import SharedState

    from maitred.router.cli import logging_setup

    logging_setup(spec.log_level, spec.access_log, spec.log_format, static={"worker": index})
    socks = []
    try:
        for port in (spec.port, spec.admin_port) if spec.admin_port else (spec.port,):
            socks.append(listen_socket(spec.host, port, reuse_port=True))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", spec.host, port, exc.strerror or exc)
        raise SystemExit(EXIT_CANNOT_LISTEN) from None
    shared = SharedState(Path(spec.run_dir) / STATE_FILE, spec.workers, spec.slots)
    shared.clear_worker(index)
    shared.set_worker_status(index, pid=os.getpid(), listening=0, table_version=-1, applied_at_ns=0,
                             table_generation=-1)
    router = Router(max_body_bytes=spec.max_body_bytes, shared=shared, worker=index)
    source = functools.partial(follow_tables, Path(spec.run_dir), supervisor_pid=supervisor_pid)
    # The app starts (and applies the table) before uvicorn listens: until then the kernel gives this
    # worker no connection, so /debug/table says when it does.
    serve(create_app(router, source=source, checks=False, admin_port=spec.admin_port or None), socks,
          spec.log_level, spec.drain_seconds, on_listening=lambda: shared.set_worker_status(index, listening=1),
          on_draining=router.hold.close)


async def follow_tables(run_dir: Path, router, supervisor_pid: int) -> None:
    """Apply each table the supervisor publishes (checked every `FOLLOW_PERIOD_S`), until cancelled.

    Wakes the requests held for a cold start when a verdict changed (the supervisor's health checks
    write them; a table applied wakes them itself). Also stops this worker (SIGTERM to itself, so that
    open requests drain) if the supervisor is gone.
    """
    from maitred.router.table import RoutingTable

    shared, index = router.shared, router.worker
    seen = health_seen = -1
    while True:
        generation = shared.table_generation
        if generation != seen:
            seen = generation
            _apply_published(run_dir / TABLE_FILE, router, RoutingTable)
            table = router.endpoints.table
            shared.set_worker_status(index, table_version=table.version if table else -1,
                                     applied_at_ns=time.monotonic_ns(), table_generation=generation)
        if shared.health_generation != health_seen:
            health_seen = shared.health_generation
            router.hold.wake()
        if os.getppid() != supervisor_pid:
            log.error("the supervisor (pid %d) is gone; stopping", supervisor_pid)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        await asyncio.sleep(FOLLOW_PERIOD_S)


def _apply_published(path: Path, router, table_type) -> None:
    try:
        document = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return  # nothing published yet
    if document["table"] is not None:
        table = table_type.model_validate(document["table"])
        if table != router.endpoints.table:
            router.apply_table(table, document["slots"])
    # The supervisor logged the refusal and counted it; a worker only shows it (/debug/table, /readyz).
    router.table_error = document["tableError"]
