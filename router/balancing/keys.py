"""Affinity keys: what in a request decides where it goes, as a 64-bit digest every process computes alike.

Pure functions of the request (:class:`~maitred.router.balancing.RequestView`); the digests feed
:mod:`~maitred.router.balancing.rendezvous`.

**The prefix key** (:func:`prefix_key`) stands for the part of the prompt that a replica's prefix cache
can reuse, chosen so that three kinds of traffic land well:

- *a system prompt every request of the pool shares* must not make every request one key (it would
  pile onto one endpoint and be spread only by the load bound, conversation-blind). So a system prompt
  alone is never the key: the key always reaches into the first message after it;
- *a conversation* must keep its key across turns, while each turn appends messages. So the key stops at
  the first non-system message, which every turn resends unchanged;
- *requests that open with one long document* (then differ in the question after it) should meet where
  the document is cached. So the key takes only the first `KEY_CHARS` characters of that message, about
  256 tokens: as OpenAI routes on "a hash of the initial prefix, typically the first 256 tokens"
  (platform.openai.com, guide "Prompt caching").

The rule, for chat: the model, the *leading* system and developer messages (roles and text, at most
`MAX_SYSTEM_CHARS` characters), and the role and first `KEY_CHARS` characters of the first message
after them. Only leading ones: a system message that a framework inserts later in the conversation
would otherwise change the key from that turn on. For completions (and embeddings): the model and the
first `KEY_CHARS` characters of the prompt (the first of a batch; for token ids, the first `KEY_TOKENS`).
The model is in the key because the same prefix under another model (a LoRA adapter) shares no cache.

What it cannot tell apart: conversations whose first message is the same short text ("Hi") share a
key, and completions that all open with one template longer than `KEY_CHARS` are one key. A client
that knows better says so with OpenAI's `prompt_cache_key`, or (for `session-affinity`) a session header.

**The session key** (:func:`session_key`): the session header's value (the table's
``affinity.sessionHeader``), else the body's `user`, else its `prompt_cache_key`, else the prefix key.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Any

from maitred.router.balancing import RequestView
from maitred.router.balancing.rendezvous import key_digest

KEY_CHARS = 1024  # about 256 tokens
KEY_TOKENS = 256  # for prompts given as token ids
MAX_SYSTEM_CHARS = 1 << 16  # a longer system prompt costs more to hash than it tells apart
SYSTEM_ROLES = frozenset({"system", "developer"})


def prefix_key(body: Any) -> int | None:
    """The prefix key of an OpenAI request body (chat, completions, embeddings), or None if it has no prompt.

    O(system prompt + `KEY_CHARS`) characters hashed, whatever the length of the conversation.
    """
    if not isinstance(body, dict):
        return None
    h = blake2b(digest_size=8, person=b"maitred-prefix")
    model = body.get("model")
    _feed(h, b"m", model if isinstance(model, str) else "")
    messages = body.get("messages")
    if isinstance(messages, list):
        found = _feed_chat(h, messages)
    else:
        prompt = body.get("prompt", body.get("input"))
        found = _feed_prompt(h, prompt)
    return int.from_bytes(h.digest(), "little") if found else None


def cache_key(body: Any) -> int | None:
    """The digest of the body's OpenAI `prompt_cache_key`, if it has a non-empty one."""
    return _field_key(body, "prompt_cache_key")


def affinity_key(body: Any) -> int | None:
    """`prefix-affinity`'s key: `prompt_cache_key` if given, else :func:`prefix_key`."""
    key = cache_key(body)
    return key if key is not None else prefix_key(body)


def session_key(request: RequestView) -> int | None:
    """`session-affinity`'s key: session header, else `user`, else `prompt_cache_key`, else the prefix key."""
    value = request.header(request.affinity.session_header.encode("latin-1"))
    if value:
        return key_digest(value)
    body = request.body
    for key in (_field_key(body, "user"), cache_key(body)):
        if key is not None:
            return key
    return prefix_key(body)


def _field_key(body: Any, name: str) -> int | None:
    value = body.get(name) if isinstance(body, dict) else None
    if isinstance(value, str) and value:
        return key_digest(value.encode("utf-8", "surrogatepass"))
    return None


def _feed(h, tag: bytes, text: str) -> None:
    """Add one tagged, length-prefixed piece, so that ("ab", "c") and ("a", "bc") hash apart."""
    data = text.encode("utf-8", "surrogatepass")
    h.update(b"%s%d:" % (tag, len(data)))
    h.update(data)


def _feed_chat(h, messages: list) -> bool:
    """Leading system/developer messages, then the first other message's first KEY_CHARS. False if empty."""
    system_chars = 0
    found = False
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        role = role if isinstance(role, str) else ""
        if role in SYSTEM_ROLES:
            text = _content_text(message.get("content"), MAX_SYSTEM_CHARS - system_chars)
            system_chars += len(text)
            _feed(h, b"r", role)
            _feed(h, b"s", text)
            found = True
            continue
        _feed(h, b"r", role)
        _feed(h, b"c", _content_text(message.get("content"), KEY_CHARS))
        return True
    return found


def _content_text(content: Any, limit: int) -> str:
    """A message's text, at most `limit` characters: a string, or its parts' text (an image part by its URL)."""
    if isinstance(content, str):
        return content[:limit]
    if not isinstance(content, list):
        return ""
    pieces, size = [], 0
    for part in content:
        if size >= limit:
            break
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if not isinstance(text, str):
            image = part.get("image_url")
            text = image.get("url") if isinstance(image, dict) else image
            text = f"<{part.get('type')}>{text if isinstance(text, str) else ''}"
        pieces.append(text[:limit - size])
        size += len(pieces[-1])
    return "\n".join(pieces)


def _feed_prompt(h, prompt: Any) -> bool:
    """A completion prompt (or embedding input): text, a batch of texts, token ids or batches of them."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch: its first prompt
    if isinstance(prompt, str) and prompt:
        _feed(h, b"p", prompt[:KEY_CHARS])
        return True
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt[:KEY_TOKENS]):
        _feed(h, b"t", ",".join(map(str, prompt[:KEY_TOKENS])))
        return True
    return False
