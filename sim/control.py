"""The control paths, on Starlette: faults admin, metrics, prefix-cache reset, version, and OpenAI-style 404s.

- GET  /admin/faults         -> the current FaultConfig as JSON
- POST /admin/faults         -> merge a JSON object of FaultConfig fields; returns the new FaultConfig
- GET  /metrics              -> Prometheus exposition (vLLM names)
- POST /reset_prefix_cache   -> forget cached blocks not in use (as vLLM's endpoint of that name)
- GET  /version              -> {"version": ...}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from maitred.sim.metrics import CONTENT_TYPE
from maitred.sim.protocol import ApiError, bad_request, parse_json

if TYPE_CHECKING:
    from maitred.sim.app import SimState

VERSION = "0.1.0"


def error_response(error: ApiError) -> Response:
    """An ApiError as a Starlette response."""
    headers = {k.decode(): v.decode() for k, v in error.headers()}
    return Response(error.body(), status_code=error.status, media_type="application/json", headers=headers)


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _state(request: Request) -> SimState:
    return request.app.state.sim


async def get_faults(request: Request) -> Response:
    return _json(_state(request).faults.config.model_dump())


async def post_faults(request: Request) -> Response:
    try:
        patch = parse_json(await request.body())
        config = _state(request).faults.update(patch)
    except ApiError as error:
        return error_response(error)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        return error_response(bad_request(f"invalid faults: {problems}"))
    except RuntimeError as exc:
        return error_response(ApiError(409, str(exc), type="conflict_error", param="refuse_connections"))
    return _json(config.model_dump())


async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE)


async def reset_prefix_cache(request: Request) -> Response:
    if _state(request).engine.reset_prefix_cache():
        return Response(status_code=200)
    return error_response(ApiError(409, "some cached blocks are in use by running requests; the rest were freed",
                                   type="conflict_error"))


async def version(request: Request) -> Response:
    return _json({"version": f"maitred-sim {VERSION}"})


async def http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths (404) and wrong methods (405) in OpenAI's error format."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = f"{request.method} {request.url.path}: {exc.detail if isinstance(exc, HTTPException) else exc}"
    return error_response(ApiError(status, message, type="invalid_request_error" if status < 500 else "server_error"))


ROUTES = [
    Route("/admin/faults", get_faults, methods=["GET"]),
    Route("/admin/faults", post_faults, methods=["POST"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/reset_prefix_cache", reset_prefix_cache, methods=["POST"]),
    Route("/version", version, methods=["GET"]),
]
