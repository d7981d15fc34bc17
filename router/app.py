"""The router's ASGI app: the raw proxy for `/v1/*`, FastAPI for everything else.

Control paths: `/healthz` (alive), `/readyz` (a table with a live endpoint is loaded), `/metrics`
(Prometheus), `/debug/table` (the table and each endpoint's state), `/debug/load` (the pool's load, which
the operator autoscales on: :meth:`~maitred.router.core.Router.load_report`), and `GET /v1/models`.

With an admin port (`--admin-port`, as Envoy keeps its admin interface apart), `/metrics` and
`/debug/*` are served there only, so that a Service or load balancer in front of the traffic
port never exposes them: the traffic port answers them 404, and the admin port serves nothing but
them, `/healthz` and `/readyz`. Both ports are sockets of one server; a request's port tells them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from fastapi import FastAPI, Request, Response
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from maitred.router.asgi import Receive, Scope, Send
from maitred.router.core import Router
from maitred.router.errors import error_body, send_error
from maitred.router.proxy import Proxy

#: A table source: a coroutine that feeds tables to the router until cancelled.
TableSource = Callable[[Router], Awaitable[None]]
#: With an admin port: the paths served there and not on the traffic port.
ADMIN_ONLY = frozenset({"/metrics", "/debug/table", "/debug/load"})
#: With an admin port: everything it serves.
ADMIN_PATHS = ADMIN_ONLY | {"/healthz", "/readyz"}


def create_app(router: Router, source: TableSource | None = None, checks: bool = True,
               admin_port: int | None = None):
    """The ASGI app for `router`; `source` runs for the app's lifetime (e.g. a file watcher).

    `checks`: run the health checks and load scrapes in this process (a worker of a multi-process
    router leaves them to its supervisor, which shares their verdicts). `admin_port`: the port whose
    requests get `ADMIN_PATHS` (and only those); None: every path on every port.
    """
    control = _control_app(router, source, checks)
    proxy = Proxy(router)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if admin_port is not None and (scope.get("server") or (None, None))[1] == admin_port:
                if path in ADMIN_PATHS:
                    return await control(scope, receive, send)
                return await _not_found(scope, send, "the admin port serves " + ", ".join(sorted(ADMIN_PATHS)))
            if path.startswith("/v1/") and not (scope["method"] in ("GET", "HEAD") and path == "/v1/models"):
                return await proxy(scope, receive, send)
            if admin_port is not None and path in ADMIN_ONLY:
                return await _not_found(scope, send, f"{path} is served on the router's admin port")
        await control(scope, receive, send)

    return app


async def _not_found(scope: Scope, send: Send, why: str) -> None:
    """404 in OpenAI's format, as the control app answers a path it does not know."""
    await send_error(send, 404, f"no route for {scope['method']} {scope['path']}: {why}", "invalid_request_error",
                     "not_found")


def _control_app(router: Router, source: TableSource | None, checks: bool) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await router.start()
        tasks = router.start_checks() if checks else []
        if source is not None:
            tasks.append(asyncio.create_task(source(router)))
        # Everything built so far lives as long as the process: move it out of the collector's sight, so
        # that full collections, which walk every tracked object, stop adding tens of ms to the p99.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            router.metrics.flush()
            await router.close()

    app = FastAPI(title="maitred router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        if router.ready:
            live = len(router.endpoints.live)
            return _json({"status": "ready", "liveEndpoints": live} if live else
                         {"status": "ready", "liveEndpoints": 0, "reason": "no live endpoint: requests are held for a cold start"})
        table = router.endpoints.table
        reason = router.table_error if table is None and router.table_error else (
            "no routing table loaded" if table is None else "no live endpoint")
        return _json({"status": "not ready", "reason": reason}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        router.metrics.before_scrape()
        return Response(generate_latest(router.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/debug/table")
    async def debug_table() -> Response:
        return _json(router.snapshot())

    @app.get("/debug/load")
    async def debug_load() -> Response:
        return _json(router.load_report())

    @app.api_route("/v1/models", methods=["GET", "HEAD"])
    async def models(request: Request) -> Response:
        table = router.endpoints.table
        if table and table.models:
            names = list(table.models)
        else:
            names = await _backend_models(router, request.headers.get("authorization"))
            if isinstance(names, Response):
                return names
        return _json({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": table.pool if table else "maitred"}
            for name in names]})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException) -> Response:
        # The router's own errors, in OpenAI's format like those of the proxied paths (not FastAPI's {"detail"}).
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        message = (f"no route for {request.method} {request.url.path}" if exc.status_code in (404, 405)
                   else str(exc.detail))
        return Response(error_body(message, "invalid_request_error", code), status_code=exc.status_code,
                        media_type="application/json", headers={"x-maitred-error": code, **(exc.headers or {})})

    return app


def _json(data, status_code: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status_code, media_type="application/json")


async def _backend_models(router: Router, authorization: str | None) -> list[str] | Response:
    """The union of the live endpoints' own /v1/models lists (when the table names no models).

    Asked with the client's Authorization, since a replica started with an API key (`vllm serve
    --api-key`) refuses the list without it. If no replica answered with a list, the answer is not an
    empty list but the reason: a replica's own 401/403 passed through (the client's key is wrong),
    503 if no endpoint is live, else 502.
    """
    headers = {"Authorization": authorization} if authorization else {}

    async def fetch(url: str) -> list[str] | tuple[int, bytes, str]:
        try:
            async with router.session.get(url + "/v1/models", headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=2)) as resp:
                body = await resp.read()
                if resp.status != 200:
                    return resp.status, body, resp.content_type
                data = orjson.loads(body)
                return [m["id"] for m in data.get("data", []) if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
            return 502, error_body(f"endpoint {url} gave no model list: {type(exc).__name__}", "upstream_error",
                                   "upstream_error"), "application/json"

    live = router.endpoints.live
    if not live:
        return Response(error_body("no endpoint is available to list the models", "service_unavailable",
                                   "no_endpoint_available"), status_code=503, media_type="application/json",
                        headers={"x-maitred-error": "no_endpoint_available", "retry-after": "1"})
    answers = await asyncio.gather(*(fetch(s.url) for s in live))
    lists = [a for a in answers if isinstance(a, list)]
    if lists:
        return sorted({name for names in lists for name in names})
    refused = [a for a in answers if a[0] in (401, 403)]
    status, body, content_type = refused[0] if refused else (502, error_body(
        f"no endpoint answered with a model list (HTTP {', '.join(str(a[0]) for a in answers)})",
        "upstream_error", "upstream_error"), "application/json")
    return Response(body, status_code=status, media_type=content_type or "application/json")
