"""The inference endpoints, in raw ASGI (the hot path): chat, completions, embeddings.

Each request: read and parse the body, apply the faults, submit to the engine, then either wait for the
whole completion or stream one SSE event per token as the engine's steps produce them. A client that
disconnects cancels its sequence (the engine frees its slot and blocks) through a watcher on `receive`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from maitred.sim import responses
from maitred.sim.asgi import SSE_HEADERS, Receive, Scope, Send, read_body, send_error, send_response
from maitred.sim.engine import Engine, RequestTooLarge, Sequence
from maitred.sim.protocol import (
    ApiError,
    GenerateRequest,
    bad_request,
    parse_chat,
    parse_completion,
    parse_embedding,
    parse_json,
)
from maitred.sim.transport import reset_connection

if TYPE_CHECKING:
    from maitred.sim.app import SimState

_ABORTED_ERROR = ApiError(503, "the request was aborted (server shutting down)", type="service_unavailable")


class InferenceHandlers:
    """ASGI callables for the inference paths of one app (`chat`, `completions`, `embeddings`)."""

    def __init__(self, state: SimState) -> None:
        self._state = state
        self._models = state.config.models
        self._max_model_len = state.config.max_model_len

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(receive, send, chat=True)

    async def completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(receive, send, chat=False)

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        if body is None:
            return
        state = self._state
        try:
            request = parse_embedding(parse_json(body), self._models)
            await self._before_engine()
            seqs = [self._submit(tokens, 0, stream=False) for tokens in request.token_lists]
        except ApiError as error:
            await send_error(send, error)
            return
        try:
            await asyncio.gather(*(seq.done for seq in seqs))
        finally:
            for seq in seqs:
                state.engine.cancel(seq)
        if any(seq.state != "finished" for seq in seqs):
            await send_error(send, _ABORTED_ERROR)
            return
        dim = state.config.embedding_dim
        vectors = [state.generator.embedding(text, dim) for text in request.texts]
        prompt_tokens = sum(seq.prompt_len for seq in seqs)
        await send_response(send, 200, responses.embeddings_body(request.model, vectors, prompt_tokens,
                                                                  request.base64))

    # -- chat and completions -------------------------------------------------------------------------------

    async def _generate(self, receive: Receive, send: Send, *, chat: bool) -> None:
        body = await read_body(receive)
        if body is None:
            return
        state = self._state
        try:
            data = parse_json(body)
            parse = parse_chat if chat else parse_completion
            request = parse(data, self._models, self._max_model_len)
            await self._before_engine()
            seq = self._submit(request.tokens, request.max_tokens, stream=request.stream)
        except ApiError as error:
            await send_error(send, error)
            return
        # In zero-latency mode a non-streamed request ends within a few loop turns, so its watcher (a task
        # per request) would cost more than the slot it could free early.
        watch = request.stream or not state.config.zero_latency
        watcher = _watch_disconnect(receive, state.engine, seq) if watch else None
        try:
            if request.stream:
                await self._stream(send, request, seq)
            else:
                await seq.done
                if seq.state != "finished":
                    await send_error(send, _ABORTED_ERROR)
                    return
                text = state.generator.text(state.generator.offset(request.prompt, request.seed), request.max_tokens)
                await send_response(send, 200, responses.completion_body(request, text, seq.cached_tokens))
        finally:
            if watcher is not None:
                watcher.cancel()
            state.engine.cancel(seq)  # no-op once finished; frees the slot if the handler was interrupted

    async def _stream(self, send: Send, request: GenerateRequest, seq: Sequence) -> None:
        """Send one SSE event per token as soon as the engine emits it, then usage (if asked) and [DONE].

        Tokens that are ready together (several steps passed since the last write) leave in one write.
        """
        reset_after = self._state.faults.config.reset_after_chunks  # fixed for the whole response
        if reset_after == 0:
            await _reset(send)
            return
        generator = self._state.generator
        writer = responses.ChunkWriter(request, generator, generator.offset(request.prompt, request.seed))
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        events_sent = 0
        sent = 0
        while True:
            events = [writer.token(i) for i in range(sent, seq.generated)]
            sent = seq.generated
            complete = sent >= request.max_tokens
            if complete:
                if request.include_usage:
                    events.append(writer.usage(responses.usage(seq.prompt_len, sent, seq.cached_tokens)))
                events.append(responses.DONE)
            if reset_after is not None and events_sent + len(events) >= reset_after:
                body = b"".join(events[: reset_after - events_sent])
                await send({"type": "http.response.body", "body": body, "more_body": True})
                await _reset(send)
                return
            events_sent += len(events)
            if complete or seq.ended:
                # Ended early (client gone, server stopping): close the body without [DONE].
                await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
                return
            if events:
                await send({"type": "http.response.body", "body": b"".join(events), "more_body": True})
            await seq.progress()

    # -- shared steps --------------------------------------------------------------------------------------------

    async def _before_engine(self) -> None:
        """Faults that act before the engine: injected errors, then extra latency (raise ApiError)."""
        faults = self._state.faults
        error = faults.injected_error()
        if error is not None:
            raise error
        extra_ms = faults.config.extra_latency_ms
        if extra_ms > 0:
            await asyncio.sleep(extra_ms / 1e3)

    def _submit(self, tokens: list, max_tokens: int, *, stream: bool) -> Sequence:
        state = self._state
        error = state.faults.overloaded(state.engine)
        if error is not None:
            raise error
        try:
            return state.engine.submit(tokens, max_tokens, stream=stream)
        except RequestTooLarge as exc:
            raise bad_request(str(exc), "max_tokens") from None


async def _reset(send: Send) -> None:
    """Reset the client's connection (the `reset_after_chunks` fault)."""
    if not await reset_connection(send):
        # Not under uvicorn: failing the app is the closest thing, the server then drops the connection.
        raise RuntimeError("reset_after_chunks: no transport to abort")


def _watch_disconnect(receive: Receive, engine: Engine, seq: Sequence) -> asyncio.Task[dict]:
    """A task that cancels `seq` in the engine if the client disconnects (the body was read already)."""

    def on_message(task: asyncio.Task[dict]) -> None:
        if not task.cancelled() and task.exception() is None and task.result()["type"] == "http.disconnect":
            engine.cancel(seq)

    task = asyncio.ensure_future(receive())
    task.add_done_callback(on_message)
    return task
