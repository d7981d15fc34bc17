"""Purpose-built upstreams for the router tests: a small OpenAI-compatible server with switchable faults.

Run as a script, one process per replica, so that a test can SIGKILL a replica or have it reset
connections for real::

    python router_backends.py --name a --host 127.0.0.11 [--delay-s 0.1] [--chunks 60 ...]

It binds port 0 and prints ``READY <port>`` on stdout once it listens. What it serves:

- ``POST /v1/chat/completions`` and ``/v1/completions``: OpenAI answers, streamed (SSE) when the
  body says ``"stream": true``. Every answer names the replica in the header ``x-backend``.
- ``/v1/upload`` (any other ``/v1/*``, any method): ``{"sha256", "bytes", "method", "path_qs",
  "headers", "backend"}`` of the request it received.
- ``GET /v1/endless``: an SSE stream of a chunk every 50 ms until the client leaves.
- ``GET /health``: 200.
- ``GET /metrics``: with ``report_running`` set, vLLM's load gauges as a busy replica reports them:
  ``vllm:num_requests_running`` = ``report_running`` + the requests in flight here, and
  ``vllm:num_requests_waiting`` = ``report_waiting``; without it, 404 (a server with no load report).
- ``GET /stats``: what it saw (arrival times of ``/v1`` requests, resets, disconnects).
- ``POST /control``: change the fault settings at run time, e.g. ``{"reset_next": 10}``.

Faults (flags, or keys of ``/control``): ``reset_next`` resets (TCP RST) the next N connections of
any request but /stats, /control and /metrics; ``status`` answers every model request with that status
(``retry_after`` adds a Retry-After header); ``max_prompt_chars`` answers 400
``context_length_exceeded`` past that prompt size; ``reset_after_chunks`` resets a stream after N
chunks; ``close_reused`` closes a connection, unanswered, when a second request arrives on it (a
server whose keep-alive timeout ran out just as the client reused the connection). Times are wall-clock seconds (``time.time()``), comparable with the test process.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import socket
import struct
import sys
import time

import orjson
from aiohttp import web

MODEL_PATHS = ("/v1/chat/completions", "/v1/completions")
UNCOUNTED = ("/stats", "/control", "/metrics")


def openai_error(message: str, type_: str, code: str, param: str | None = None) -> bytes:
    """An OpenAI-format error body."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


class Backend:
    """One replica's settings and what it observed."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.name = args.name
        self.api_key = args.api_key
        self.cfg = {
            "delay_s": args.delay_s,
            "chunks": args.chunks,
            "interval_s": args.interval_s,
            "first_delay_s": args.first_delay_s,
            "reset_after_chunks": args.reset_after_chunks,
            "reset_next": args.reset_next,
            "status": args.status,
            "retry_after": args.retry_after,
            "max_prompt_chars": args.max_prompt_chars,
            "close_reused": args.close_reused,
            "report_running": args.report_running,
            "report_waiting": args.report_waiting,
        }
        self.peers: set = set()  # (host, port) of client connections that carried a request
        self.arrivals: list[list] = []  # [time_s, path] of every /v1 request
        self.health_checks = 0
        self.resets = 0
        self.stale_closes = 0
        self.disconnects: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0

    # --- faults -------------------------------------------------------------------------------

    @web.middleware
    async def faults(self, request: web.Request, handler):
        if request.path in UNCOUNTED:
            return await handler(request)
        if request.path == "/health":
            self.health_checks += 1
        elif self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            # As `vllm serve --api-key`: every /v1 path needs the key; /health does not.
            return web.Response(status=401, body=openai_error("Unauthorized", "invalid_request_error", "unauthorized"),
                                content_type="application/json")
        else:
            self.arrivals.append([time.time(), request.path])
        peer = request.transport.get_extra_info("peername") if request.transport else None
        reused = peer in self.peers
        self.peers.add(peer)
        if self.cfg["close_reused"] and reused:
            # As a server whose keep-alive timeout ran out just as the client reused the connection.
            self.stale_closes += 1
            request.transport.close()
            await asyncio.sleep(3600)
        if self.cfg["reset_next"] > 0:
            self.cfg["reset_next"] -= 1
            self.resets += 1
            reset(request)
            # The connection is gone; nothing can be sent. Park until aiohttp drops the handler.
            await asyncio.sleep(3600)
        if request.path == "/health":  # not a request in flight: it would show in maxInFlight and /metrics
            return await handler(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    # --- handlers -----------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        """This replica's model list, as vLLM serves it."""
        return json_response({"object": "list", "data": [{"id": f"model-of-{self.name}", "object": "model"}]})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics(self, request: web.Request) -> web.Response:
        if self.cfg["report_running"] is None:
            raise web.HTTPNotFound()
        running = self.cfg["report_running"] + self.in_flight
        text = (f"# TYPE vllm:num_requests_running gauge\n"
                f"vllm:num_requests_running{{model_name=\"m\"}} {running}\n"
                f"# TYPE vllm:num_requests_waiting gauge\n"
                f"vllm:num_requests_waiting{{model_name=\"m\"}} {self.cfg['report_waiting']}\n")
        return web.Response(text=text, content_type="text/plain")

    async def stats(self, request: web.Request) -> web.Response:
        return json_response({
            "name": self.name, "requests": len(self.arrivals), "arrivals": self.arrivals,
            "healthChecks": self.health_checks, "resets": self.resets, "staleCloses": self.stale_closes, "disconnects": self.disconnects,
            "inFlight": self.in_flight, "maxInFlight": self.max_in_flight, "cfg": self.cfg,
        })

    async def control(self, request: web.Request) -> web.Response:
        self.cfg.update(await request.json())
        return json_response(self.cfg)

    async def upload(self, request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return json_response({"sha256": digest.hexdigest(), "bytes": size, "backend": self.name,
                              "method": request.method, "path_qs": request.path_qs,
                              "headers": [[k.lower(), v] for k, v in request.headers.items()]},
                             headers={"x-backend": self.name})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        req = orjson.loads(body)
        cfg = self.cfg
        if cfg["status"]:
            return self.fixed_status()
        prompt = prompt_text(req)
        if cfg["max_prompt_chars"] and len(prompt) > cfg["max_prompt_chars"]:
            return web.Response(status=400, content_type="application/json", headers={"x-backend": self.name},
                                body=openai_error(
                                    f"This model's maximum context length is {cfg['max_prompt_chars']} characters; "
                                    f"your prompt has {len(prompt)}.", "invalid_request_error",
                                    "context_length_exceeded", "messages"))
        chat = request.path == "/v1/chat/completions"
        if req.get("stream"):
            return await self.stream(request, req, chat)
        if cfg["delay_s"]:
            await asyncio.sleep(cfg["delay_s"])
        text = f"hello from {self.name}"
        return json_response(completion(req, chat, text, self.name), headers={"x-backend": self.name})

    def fixed_status(self) -> web.Response:
        status = self.cfg["status"]
        headers = {"x-backend": self.name}
        if self.cfg["retry_after"] is not None:
            headers["Retry-After"] = str(self.cfg["retry_after"])
        kinds = {429: ("rate_limit_exceeded", "Rate limit reached; try again in 7 s."),
                 503: ("overloaded", "The server is overloaded; try again later."),
                 400: ("bad_request", "Bad request from the backend itself.")}
        code, message = kinds.get(status, ("error", f"HTTP {status}"))
        return web.Response(status=status, headers=headers, content_type="application/json",
                            body=openai_error(f"{message} ({self.name})", "backend_error", code))

    async def stream(self, request: web.Request, req: dict, chat: bool) -> web.StreamResponse:
        cfg = self.cfg
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "x-backend": self.name})
        await resp.prepare(request)
        await asyncio.sleep(cfg["first_delay_s"])
        n = cfg["chunks"]
        for i in range(n):
            if i:
                await asyncio.sleep(cfg["interval_s"])
            if cfg["reset_after_chunks"] is not None and i == cfg["reset_after_chunks"]:
                await asyncio.sleep(0.05)
                self.resets += 1
                reset(request)
                await asyncio.sleep(3600)
            event = sse(chunk(req, chat, f"t{i} ", self.name, i))
            if i == n - 1:
                event += sse(chunk(req, chat, "", self.name, i, finish="stop")) + b"data: [DONE]\n\n"
            await resp.write(event)
        await resp.write_eof()
        return resp

    async def endless(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-backend": self.name})
        await resp.prepare(request)
        i = 0
        try:
            while True:
                await resp.write(b"data: " + orjson.dumps({"i": i}) + b"\n\n")
                i += 1
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            # The router closed its upstream connection: that is the cancellation under test.
            self.disconnects.append(time.time())
            raise

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.faults], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/control", self.control)
        app.router.add_get("/v1/endless", self.endless)
        app.router.add_get("/v1/models", self.models)
        for path in MODEL_PATHS:
            app.router.add_post(path, self.completions)
        app.router.add_route("*", "/v1/{rest:.*}", self.upload)
        return app


def reset(request: web.Request) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0), as a crashing server or a middlebox does."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def prompt_text(req: dict) -> str:
    if "messages" in req:
        return "".join(str(m.get("content", "")) for m in req["messages"] if isinstance(m, dict))
    return str(req.get("prompt", ""))


def completion(req: dict, chat: bool, text: str, name: str) -> dict:
    usage = {"prompt_tokens": len(prompt_text(req).split()), "completion_tokens": 3, "total_tokens": 0}
    usage["total_tokens"] = usage["prompt_tokens"] + 3
    if chat:
        return {"id": f"chatcmpl-{name}", "object": "chat.completion", "created": int(time.time()),
                "model": req.get("model"), "system_fingerprint": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop", "logprobs": None}], "usage": usage}
    return {"id": f"cmpl-{name}", "object": "text_completion", "created": int(time.time()),
            "model": req.get("model"), "system_fingerprint": name,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}], "usage": usage}


def chunk(req: dict, chat: bool, text: str, name: str, i: int, finish: str | None = None) -> dict:
    if chat:
        delta = {"content": text} if not finish else {}
        if i == 0 and not finish:
            delta["role"] = "assistant"
        return {"id": f"chatcmpl-{name}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": req.get("model"), "system_fingerprint": name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    return {"id": f"cmpl-{name}", "object": "text_completion", "created": int(time.time()),
            "model": req.get("model"), "system_fingerprint": name,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}


def sse(data: dict) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def json_response(data, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--delay-s", type=float, default=0.0, help="wait before a non-streamed answer")
    p.add_argument("--chunks", type=int, default=5, help="content chunks per stream")
    p.add_argument("--interval-s", type=float, default=0.01, help="gap between stream chunks")
    p.add_argument("--first-delay-s", type=float, default=0.0, help="wait before the first stream chunk")
    p.add_argument("--reset-after-chunks", type=int, default=None)
    p.add_argument("--reset-next", type=int, default=0)
    p.add_argument("--status", type=int, default=0)
    p.add_argument("--retry-after", default=None)
    p.add_argument("--max-prompt-chars", type=int, default=0)
    p.add_argument("--close-reused", type=int, default=0, help="1: close a connection when a second request comes on it")
    p.add_argument("--report-running", type=float, default=None,
                   help="serve /metrics: running = this + requests in flight here")
    p.add_argument("--report-waiting", type=float, default=0.0, help="waiting requests /metrics reports")
    p.add_argument("--api-key", default=None, help="every /v1 request needs `Authorization: Bearer KEY` (else 401)")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(Backend(args).app(), access_log=None, handle_signals=True)
    await runner.setup()
    site = web.TCPSite(runner, args.host, 0, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(parse_args(sys.argv[1:])))
