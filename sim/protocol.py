"""OpenAI request parsing and the errors it raises (pure functions: bytes and dicts in, dataclasses out).

Parsing is hand-written over `orjson.loads` rather than pydantic models: the simulator is a benchmark backend,
and it reads only a handful of fields (unknown fields are ignored, as vLLM ignores unsupported sampling options).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from maitred.sim.tokens import render_chat, tokenize

DEFAULT_MAX_TOKENS = 16


class ApiError(Exception):
    """An error answered in OpenAI's format: {"error": {"message", "type", "param", "code"}}.

    status: HTTP status; retry_after_s: adds a `Retry-After` header when set.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | int | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> bytes:
        """The JSON body."""
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return orjson.dumps({"error": error})

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Extra response headers (`Retry-After`)."""
        if self.retry_after_s is None:
            return []
        return [(b"retry-after", str(self.retry_after_s).encode())]


def bad_request(message: str, param: str | None = None) -> ApiError:
    """A 400 invalid_request_error."""
    return ApiError(400, message, param=param)


@dataclass(slots=True)
class GenerateRequest:
    """A chat or text completion request, reduced to what the simulator uses.

    prompt: the prompt text (chat messages rendered); tokens: its approximate tokens (str) or given token ids.
    """

    kind: str  # "chat" | "completion"
    model: str
    prompt: str
    tokens: list[Any]
    max_tokens: int
    stream: bool
    include_usage: bool
    seed: int | None


@dataclass(slots=True)
class EmbeddingRequest:
    """An embeddings request: one entry of `texts`/`token_lists` per input (same length)."""

    model: str
    texts: list[str]
    token_lists: list[list[Any]] = field(default_factory=list)
    base64: bool = False


def parse_json(body: bytes) -> dict[str, Any]:
    """Decode a JSON object body; ApiError 400 if it is not one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    return data


def parse_model(data: dict[str, Any], models: list[str]) -> str:
    """The requested model; the first served model when absent (as vLLM does). 404 if not served."""
    model = data.get("model")
    if model is None:
        return models[0]
    if not isinstance(model, str):
        raise bad_request("`model` must be a string", "model")
    if model not in models:
        raise ApiError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
    return model


def parse_chat(data: dict[str, Any], models: list[str], max_model_len: int) -> GenerateRequest:
    """Parse a /v1/chat/completions body (already decoded). Raises ApiError (400, 404)."""
    model = parse_model(data, models)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` must be a non-empty list", "messages")
    prompt = render_chat([_message(m, i) for i, m in enumerate(messages)])
    max_tokens = _max_tokens(data, ("max_completion_tokens", "max_tokens"))
    return _generate_request("chat", data, model, prompt, tokenize(prompt), max_tokens, max_model_len)


def parse_completion(data: dict[str, Any], models: list[str], max_model_len: int) -> GenerateRequest:
    """Parse a /v1/completions body (already decoded). Raises ApiError (400, 404)."""
    model = parse_model(data, models)
    prompt, tokens = _prompt(data.get("prompt"))
    max_tokens = _max_tokens(data, ("max_tokens",))
    return _generate_request("completion", data, model, prompt, tokens, max_tokens, max_model_len)


def parse_embedding(data: dict[str, Any], models: list[str]) -> EmbeddingRequest:
    """Parse a /v1/embeddings body: `input` is a string, a list of strings, token ids, or lists of token ids."""
    model = parse_model(data, models)
    raw = data.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and _is_token_ids(raw)):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise bad_request("`input` must be a string, a list of strings or a list of token id lists", "input")
    request = EmbeddingRequest(model, [])
    for item in raw:
        if isinstance(item, str):
            request.texts.append(item)
            request.token_lists.append(tokenize(item))
        elif isinstance(item, list) and item and _is_token_ids(item):
            request.texts.append(" ".join(map(str, item)))
            request.token_lists.append(item)
        else:
            raise bad_request("each `input` entry must be a string or a non-empty list of token ids", "input")
    encoding = data.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise bad_request("`encoding_format` must be 'float' or 'base64'", "encoding_format")
    request.base64 = encoding == "base64"
    return request


# -- helpers --------------------------------------------------------------------------------------------------


def _generate_request(
    kind: str, data: dict[str, Any], model: str, prompt: str, tokens: list[Any], max_tokens: int, max_model_len: int
) -> GenerateRequest:
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("`stream` must be a boolean", "stream")
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("`stream_options` must be an object", "stream_options")
    include_usage = bool(options and options.get("include_usage"))
    n = data.get("n", 1)
    if n not in (1, None):
        raise bad_request("the simulator supports only n=1", "n")
    seed = data.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise bad_request("`seed` must be an integer", "seed")
    if len(tokens) + max_tokens > max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{len(tokens) + max_tokens} tokens ({len(tokens)} in the prompt, {max_tokens} in the completion). "
            "Please reduce the length of the prompt or completion.",
            "max_tokens",
        )
    return GenerateRequest(kind, model, prompt, tokens, max_tokens, stream, include_usage, seed)


def _message(message: Any, index: int) -> tuple[str, str]:
    param = f"messages.[{index}]"
    if not isinstance(message, dict):
        raise bad_request("each message must be an object with `role` and `content`", param)
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise bad_request("each message needs a string `role`", f"{param}.role")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return role, content or ""
    if isinstance(content, list):
        return role, " ".join(_content_part(part, f"{param}.content") for part in content)
    raise bad_request("message `content` must be a string or a list of content parts", f"{param}.content")


def _content_part(part: Any, param: str) -> str:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise bad_request("each content part must be an object with a `type`", param)
    if part["type"] == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise bad_request("a text content part needs a string `text`", param)
        return text
    return f"<|{part['type']}|>"  # images, audio: one placeholder token each


def _prompt(prompt: Any) -> tuple[str, list[Any]]:
    # A batch of one prompt is accepted; larger batches are not simulated.
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt, tokenize(prompt)
    if isinstance(prompt, list) and prompt and _is_token_ids(prompt):
        return " ".join(map(str, prompt)), prompt
    if isinstance(prompt, list) and len(prompt) > 1:
        raise bad_request("the simulator supports one prompt per request, not a batch", "prompt")
    raise bad_request("`prompt` must be a string or a non-empty list of token ids", "prompt")


def _is_token_ids(items: list[Any]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) for t in items)


def _max_tokens(data: dict[str, Any], names: tuple[str, ...]) -> int:
    for name in names:
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad_request(f"`{name}` must be an integer >= 1", name)
        return value
    return DEFAULT_MAX_TOKENS
