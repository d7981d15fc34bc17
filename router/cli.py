"""`maitred router`: run the router from a routing-table file (standalone) or a ConfigMap.

Only typer is imported at module level: the router's own modules (uvicorn, aiohttp, the app) load
when the command runs, so that `maitred --help` and the other subcommands do not pay for them.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import typer

from maitred.router.limits import DEFAULT_MAX_BODY_BYTES

#: How long open requests may run after SIGTERM by default, in s (Kubernetes' default grace period is 30 s).
DEFAULT_DRAIN_SECONDS = 30.0
#: The admin port (/metrics, /debug/table) by default; 0 turns it off (they are then on the traffic port).
DEFAULT_ADMIN_PORT = 9091


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def router_command(
    table: Path = typer.Option(None, "--table", help="Routing-table JSON file; reloaded when it changes."),
    configmap: str = typer.Option(None, "--configmap", metavar="NS/NAME",
                                  help="Routing-table ConfigMap (key table.json), watched through the Kubernetes API."),
    kubeconfig: Path = typer.Option(None, "--kubeconfig", help="Kubeconfig for --configmap (default: $KUBECONFIG,"
                                    " else the in-cluster service account)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8080, min=1, max=65535, help="Port to listen on."),
    admin_port: int = typer.Option(DEFAULT_ADMIN_PORT, "--admin-port", min=0, max=65535,
                                   help="Port of /metrics and /debug/table (on --host), apart from the traffic"
                                        " port, which then answers them 404; 0: no admin port, they are served"
                                        " on the traffic port."),
    workers: int = typer.Option(None, "--workers", min=1, max=64, show_default="the cores this process may use",
                                help="Worker processes serving the port; health checks, load scrapes and the"
                                     " table source run once, in a supervisor, and all workers share endpoint state."),
    max_body_bytes: int = typer.Option(DEFAULT_MAX_BODY_BYTES, min=1,
                                       help="Largest request body accepted, in bytes (413 past it)."),
    drain_seconds: float = typer.Option(DEFAULT_DRAIN_SECONDS, min=0,
                                        help="On SIGTERM, how long open requests (streams) may still run, in s."),
    access_log: bool = typer.Option(True, help="One log line per proxied request (logger maitred.access)."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
    log_format: str = typer.Option("text", help="text (for people) or json (one object a line, for log collectors)."),
) -> None:
    """Run the router in front of a pool's endpoints."""
    from maitred.cli import logs

    log_level = logs.option_choice(log_level, logs.LEVELS, "--log-level")
    log_format = logs.option_choice(log_format, logs.FORMATS, "--log-format")
    if admin_port == port:
        raise typer.BadParameter(f"{admin_port} is the traffic port (--port); give another, or 0 for none",
                                 param_hint="--admin-port")
    source = _table_source(table, configmap, kubeconfig)
    workers = workers or default_workers()
    _check_can_listen(host, port)
    if admin_port:
        _check_can_listen(host, admin_port)
    if workers == 1:
        _run_single(source, host, port, admin_port, max_body_bytes, access_log, log_level, log_format,
                    drain_seconds)
        return
    from maitred.router import workers as multi

    logging_setup(log_level, access_log, log_format)
    raise typer.Exit(multi.run(
        {"workers": workers, "host": host, "port": port, "admin_port": admin_port, "max_body_bytes": max_body_bytes,
         "log_level": log_level, "log_format": log_format, "access_log": access_log, "drain_seconds": drain_seconds},
        source_factory=lambda: source))


def logging_setup(log_level: str, access_log: bool, log_format: str = "text", static: dict | None = None) -> None:
    """Log lines to stderr at `log_level` in `log_format` (see maitred.cli.logs); the access log at INFO only
    if asked for. `static`: fields of every line (a worker's index)."""
    import logging

    from maitred.cli import logs

    logs.configure(log_level, log_format, static)
    logging.getLogger("maitred.access").setLevel(logging.INFO if access_log else logging.WARNING)


def _run_single(source, host: str, port: int, admin_port: int, max_body_bytes: int, access_log: bool,
                log_level: str, log_format: str, drain_seconds: float) -> None:
    from maitred.router.app import create_app
    from maitred.router.core import Router
    from maitred.router.serve import listen_socket, serve

    logging_setup(log_level, access_log, log_format)
    router = Router(max_body_bytes=max_body_bytes)
    socks = [listen_socket(host, port, reuse_port=False)]
    if admin_port:
        socks.append(listen_socket(host, admin_port, reuse_port=False))
    serve(create_app(router, source=source, admin_port=admin_port or None), socks, log_level, drain_seconds,
          on_draining=router.hold.close)


def _check_can_listen(host: str, port: int) -> None:
    """Exit 1 with one line if `host`:`port` cannot be listened on (in use, not an address here).

    Checked without SO_REUSEPORT, so that a port another router's workers hold (with SO_REUSEPORT) counts
    as in use: two routers must never split one port's connections between them.
    """
    from maitred.router.serve import listen_socket

    try:
        listen_socket(host, port, reuse_port=False).close()
    except OSError as exc:
        typer.echo(f"Error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None


def _table_source(table: Path | None, configmap: str | None, kubeconfig: Path | None):
    """The table source the options ask for: exactly one of --table and --configmap."""
    from maitred.router.sources import watch_configmap, watch_file

    if (table is None) == (configmap is None):
        raise typer.BadParameter("give exactly one of --table FILE and --configmap NS/NAME", param_hint="--table")
    if table is not None:
        return functools.partial(watch_file, table)
    namespace, _, name = configmap.partition("/")
    if not namespace or not name or "/" in name:
        raise typer.BadParameter(f"{configmap!r} is not NAMESPACE/NAME", param_hint="--configmap")
    return functools.partial(watch_configmap, namespace, name, kubeconfig=kubeconfig)
