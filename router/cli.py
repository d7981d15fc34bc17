"""`maitred router`: run the router from a routing-table file (standalone) or a ConfigMap."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import typer
import uvicorn

from maitred.router.app import create_app
from maitred.router.core import Router
from maitred.router.admission import DEFAULT_MAX_BODY_BYTES
from maitred.router.sources import watch_configmap, watch_file


def router_command(
    table: Path = typer.Option(None, "--table", help="Routing-table JSON file; reloaded when it changes."),
    configmap: str = typer.Option(None, "--configmap", metavar="NS/NAME",
                                  help="Routing-table ConfigMap (key table.json), watched through the Kubernetes API."),
    kubeconfig: Path = typer.Option(None, "--kubeconfig", help="Kubeconfig for --configmap (default: $KUBECONFIG,"
                                    " else the in-cluster service account)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8080, help="Port to listen on."),
    max_body_bytes: int = typer.Option(DEFAULT_MAX_BODY_BYTES, help="Largest request body accepted, in bytes (413 past it)."),
    access_log: bool = typer.Option(True, help="One JSON log line per proxied request."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Run the router in front of a pool's endpoints."""
    source = _table_source(table, configmap, kubeconfig)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("maitred.access").setLevel(logging.INFO if access_log else logging.WARNING)
    router = Router(max_body_bytes=max_body_bytes)
    app = create_app(router, source=source)
    # proxy_headers=False: the proxy appends the peer's address to X-Forwarded-For itself. With
    # uvicorn's default, a peer on 127.0.0.1 (a sidecar) had its X-Forwarded-For taken as the
    # client, so the router appended the client twice and lost the hop.
    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools", lifespan="on", access_log=False,
                server_header=False, date_header=False, log_level=log_level, backlog=4096,
                timeout_keep_alive=75, proxy_headers=False)


def _table_source(table: Path | None, configmap: str | None, kubeconfig: Path | None):
    """The table source the options ask for: exactly one of --table and --configmap."""
    if (table is None) == (configmap is None):
        raise typer.BadParameter("give exactly one of --table FILE and --configmap NS/NAME", param_hint="--table")
    if table is not None:
        return functools.partial(watch_file, table)
    namespace, _, name = configmap.partition("/")
    if not namespace or not name or "/" in name:
        raise typer.BadParameter(f"{configmap!r} is not NAMESPACE/NAME", param_hint="--configmap")
    return functools.partial(watch_configmap, namespace, name, kubeconfig=kubeconfig)
