"""OpenAI response bodies and SSE chunks (pure: they compute bytes, the handlers send them).

Streamed chunks are spliced from per-request byte templates and pre-encoded JSON words, so that a token
costs a few byte concatenations rather than building and serialising a dict.
"""

from __future__ import annotations

import base64
import itertools
import os
import struct
import time
from typing import Any

import orjson

from maitred.sim.protocol import GenerateRequest
from maitred.sim.tokens import TextGenerator

DONE = b"data: [DONE]\n\n"

# Response ids: a per-process random prefix and a counter (unique and cheaper than uuid4 per request).
_ID_PREFIX = os.urandom(6).hex()
_ids = itertools.count(1)


def new_id(kind: str) -> str:
    """A response id, "chatcmpl-..." for chat, "cmpl-..." for completions, "embd-..." for embeddings."""
    prefix = {"chat": "chatcmpl", "completion": "cmpl"}.get(kind, "embd")
    return f"{prefix}-{_ID_PREFIX}{next(_ids):x}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """OpenAI's `usage` object, with `prompt_tokens_details.cached_tokens` (prefix cache hits, tokens)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion_body(request: GenerateRequest, text: str, cached_tokens: int) -> bytes:
    """A whole (non-streamed) chat.completion or text_completion object; finish_reason is always "length"."""
    header: dict[str, Any] = {"id": new_id(request.kind), "created": int(time.time()), "model": request.model}
    if request.kind == "chat":
        header["object"] = "chat.completion"
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": "length"}
    else:
        header["object"] = "text_completion"
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
    header["choices"] = [choice]
    header["usage"] = usage(len(request.tokens), request.max_tokens, cached_tokens)
    return orjson.dumps(header)


class ChunkWriter:
    """SSE `data:` events of one streamed request.

    chat: chat.completion.chunk objects with a `delta` (the first one carries the role);
    completion: text_completion objects with `text`. The last token's chunk has finish_reason "length".
    """

    __slots__ = ("_head", "_first_delta", "_delta", "_tail", "_last_tail", "_generator", "_offset", "_last")

    def __init__(self, request: GenerateRequest, generator: TextGenerator, offset: int) -> None:
        chat = request.kind == "chat"
        obj = b"chat.completion.chunk" if chat else b"text_completion"
        self._head = (
            b'data: {"id":"' + new_id(request.kind).encode() + b'","object":"' + obj + b'","created":'
            + str(int(time.time())).encode() + b',"model":' + orjson.dumps(request.model) + b","
        )
        if chat:
            self._first_delta = b'"choices":[{"index":0,"delta":{"role":"assistant","content":'
            self._delta = b'"choices":[{"index":0,"delta":{"content":'
            self._tail = b'},"logprobs":null,"finish_reason":null}]}\n\n'
            self._last_tail = b'},"logprobs":null,"finish_reason":"length"}]}\n\n'
        else:
            self._first_delta = self._delta = b'"choices":[{"index":0,"text":'
            self._tail = b',"logprobs":null,"finish_reason":null}]}\n\n'
            self._last_tail = b',"logprobs":null,"finish_reason":"length"}]}\n\n'
        self._generator = generator
        self._offset = offset
        self._last = request.max_tokens - 1

    def token(self, index: int) -> bytes:
        """The event carrying generated token `index` (0-based)."""
        word = self._generator.token_json(self._offset, index)
        delta = self._first_delta if index == 0 else self._delta
        tail = self._last_tail if index == self._last else self._tail
        return b"".join((self._head, delta, word, tail))

    def usage(self, usage_obj: dict[str, Any]) -> bytes:
        """The final event of `stream_options.include_usage`: no choices, the usage."""
        return b"".join((self._head, b'"choices":[],"usage":', orjson.dumps(usage_obj), b"}\n\n"))


def embeddings_body(model: str, vectors: list[list[float]], prompt_tokens: int, as_base64: bool) -> bytes:
    """An embeddings list; base64 packs each vector as little-endian float32, as OpenAI does."""
    data = []
    for index, vector in enumerate(vectors):
        embedding: Any = vector
        if as_base64:
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    body = {
        "id": new_id("embedding"),
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return orjson.dumps(body)


def models_body(models: list[str], max_model_len: int) -> bytes:
    """The /v1/models list (computed once)."""
    created = int(time.time())
    data = [
        {"id": m, "object": "model", "created": created, "owned_by": "maitred-sim", "root": m, "parent": None,
         "max_model_len": max_model_len}
        for m in models
    ]
    return orjson.dumps({"object": "list", "data": data})
