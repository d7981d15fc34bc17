"""Token usage read from a response's tail, and stream statistics, without parsing the body.

OpenAI-compatible servers put `usage` after `choices` (a whole response), or in the last event
before `data: [DONE]` (a stream whose client asked for `stream_options.include_usage`):

    {"id": ..., "choices": [...], "usage": {"prompt_tokens": 12, "completion_tokens": 40,
     "total_tokens": 52, "prompt_tokens_details": {"cached_tokens": 8}}}

So the router looks only at the last few KiB of a body (the last two chunks of a stream), finds the
last `"usage": {` there and reads the integers it needs from that object: a few microseconds
whatever the body's size, and no JSON document is ever built. A `"usage"` that is a string value,
or a key inside a string (escaped, so never a bare `"usage"`), is passed over.
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: How far from a whole body's end `usage` is looked for, in bytes.
TAIL_BYTES = 8192

_KEY = b'"usage"'
_OPEN = re.compile(rb'"usage"\s*:\s*\{')
_FIELD = re.compile(rb'"(prompt_tokens|completion_tokens|cached_tokens)"\s*:\s*(\d+)')


class Usage(NamedTuple):
    """Tokens of one request as the server counted them; `cached` is prompt tokens served from its prefix cache."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0


def find_usage(data: bytes, start: int = 0) -> Usage | None:
    """The last `usage` object in `data[start:]`, or None if there is none (or it names no token count)."""
    end = len(data)
    for _ in range(4):  # a few string values "usage" after the object would be odd; more are not looked at
        at = data.rfind(_KEY, start, end)
        if at < 0:
            return None
        opened = _OPEN.match(data, at)
        if opened is not None:
            # The object ends at the first "}" that closes no inner object (*_tokens_details).
            pos = opened.end()
            while True:
                close = data.find(b"}", pos)
                inner = data.find(b"{", pos, close)
                if close < 0 or inner < 0:
                    break
                pos = data.find(b"}", inner) + 1
                if pos == 0:
                    close = -1
                    break
            fields = dict(_FIELD.findall(data, opened.end(), close if close >= 0 else len(data)))
            if not fields:
                return None
            return Usage(int(fields.get(b"prompt_tokens", 0)), int(fields.get(b"completion_tokens", 0)),
                         int(fields.get(b"cached_tokens", 0)))
        end = at
    return None


def usage_of_body(body: bytes) -> Usage | None:
    """The usage of a whole response body (looked for in its last `TAIL_BYTES`)."""
    return find_usage(body, max(0, len(body) - TAIL_BYTES))


def usage_of_tail(previous: bytes, last: bytes) -> Usage | None:
    """The usage in a stream's last two chunks (the usage event may be cut between them)."""
    found = find_usage(last) if _KEY in last else None
    if found is None and previous:
        joined = previous[-TAIL_BYTES:] + last
        if _KEY in joined:
            found = find_usage(joined)
    return found
