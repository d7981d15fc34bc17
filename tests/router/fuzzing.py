"""Shared pieces of the fuzz tests (test_fuzz_*.py): hypothesis settings and strategies for outside input.

Settings: every fuzz test runs a fixed number of cases (`cases(n)`), derandomized and with no example
database, so that CI runs the same cases every time and a failure reproduces anywhere. Two
environment variables run longer or other cases:

- ``MAITRED_FUZZ_SCALE=10`` multiplies every test's case count (raise pytest's ``--timeout`` too);
- ``MAITRED_FUZZ_RANDOM=1`` draws fresh random cases on each run (hypothesis prints how to
  reproduce a failure).

The seed corpus is the ``@example`` decorators on the tests: inputs that once broke a parser, or
that are worth trying every run whatever hypothesis draws.
"""

from __future__ import annotations

import json
import os
import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SCALE = float(os.environ.get("MAITRED_FUZZ_SCALE", "1"))
RANDOM = os.environ.get("MAITRED_FUZZ_RANDOM", "") not in ("", "0")


def cases(n: int, **overrides) -> settings:
    """Hypothesis settings for `n` cases (times MAITRED_FUZZ_SCALE): no deadline, reproducible, no database."""
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=not RANDOM, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
                    print_blob=True, **overrides)


# --- text and JSON values ---------------------------------------------------------------------------

#: Lone surrogates: what a JavaScript client writes when it cuts a string inside an emoji.
SURROGATES = ("\ud83d", "\ude00", "\ud800", "\udfff")
#: Numbers at the edges of what JSON parsers hold: 64-bit bounds, past them, and Python's int-digit limit.
EDGE_INTS = (0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64 - 1, 2**64, 10**100, 10**4000)


def texts(max_size: int = 20) -> st.SearchStrategy[str]:
    """Any text: every Unicode character, lone surrogates often, a few awkward ones (NUL, RTL, BOM)."""
    alphabet = st.one_of(st.characters(codec=None), st.sampled_from(SURROGATES),
                         st.sampled_from(("\x00", "\u202e", "\ufeff", "\n", '"', "\\", "\U0001f600")))
    return st.text(alphabet, max_size=max_size)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(EDGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True), texts(),
)


def json_values(max_leaves: int = 20) -> st.SearchStrategy:
    """JSON values (as Python objects), with NaN, infinities, huge integers and lone surrogates."""
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(texts(8), inner, max_size=5)), max_leaves=max_leaves)


@st.composite
def encoded(draw, value_strategy) -> bytes:
    """A JSON value written as bytes as a client might: escaped, or raw UTF-8 (with surrogates: invalid UTF-8)."""
    value = draw(value_strategy)
    try:
        text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    except ValueError:  # an integer past Python's digit limit
        return b"1" * 5000
    return text.encode("utf-8", "surrogatepass")


#: Values a mutation puts in place of a field: wrong types, edge numbers, strings pydantic's lax mode
#: converts to numbers, lone surrogates.
ODD_VALUES = (None, True, False, 0, -1, 1, 0.5, -0.0, 5e-324, 1.7976931348623157e308, float("inf"), float("-inf"),
              float("nan"), *EDGE_INTS, "", " ", "0", "12", " 3 ", "-1", "1e999", "1e-999", "inf", "Infinity", "-inf",
              "nan", "NaN", "0x10", "1_000", "true", "null", "\ud83d", "a\udfffb", "\x00", "\U0001f600" * 3,
              "http://", "http://[::1", "http://h:99999", "/", "x" * 300, [], {}, [None], {"": None}, [[[]]])
#: Byte strings a mutation inserts into an encoded document.
SNIPPETS = (b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"\\u", b"\\ud83d", b"\\udfff", b"\xff", b"\xed\xa0\xbd",
            b"\x00", b"1e400", b"-1e400", b"NaN", b"Infinity", b"-", b"0", b"18446744073709551616", b"\xef\xbb\xbf",
            b" ", b"\n", b"null", b"true", b'"model"', b'"model":', b"1" * 400)


class Mutator:
    """A small mutational fuzzer, seeded: a few edits to a JSON document or to its bytes.

    Hypothesis draws the documents and the seed (so runs are reproducible and failures shrink); the
    mutator derives many inputs from each draw, at a few microseconds apiece, which is how the fuzz
    tests reach their case counts in CI's time (a hypothesis draw of a whole table costs ~10 ms).
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def value(self):
        """An odd value, or a small structure of them."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.7:
            return rng.choice(ODD_VALUES)
        if roll < 0.85:
            return "".join(rng.choice(("a", "\ud83d", "\ude00", "é", "\u202e", '"', "\\", "\x00"))
                           for _ in range(rng.randrange(8)))
        if roll < 0.95:
            return [self.value() for _ in range(rng.randrange(3))]
        return {rng.choice(("model", "id", "url", "a", "")): self.value() for _ in range(rng.randrange(3))}

    def tree(self, doc, edits: int | None = None):
        """`doc` (JSON as Python objects, not changed) with 1-3 edits at random places inside it."""
        for _ in range(edits or self.rng.randint(1, 3)):
            doc = self._edit(doc)
        return doc

    def _edit(self, node):
        rng = self.rng
        if isinstance(node, dict) and node and rng.random() < 0.75:
            key = rng.choice(list(node))
            roll = rng.random()
            out = dict(node)
            if roll < 0.6:
                out[key] = self._edit(node[key])
            elif roll < 0.75:
                del out[key]
            elif roll < 0.9:
                out[key + rng.choice(("", "x", "_", "\ud83d"))] = self.value()
            else:
                out[key.upper() if key != key.upper() else key.lower()] = out.pop(key)
            return out
        if isinstance(node, list) and node and rng.random() < 0.75:
            at = rng.randrange(len(node))
            roll = rng.random()
            out = list(node)
            if roll < 0.6:
                out[at] = self._edit(node[at])
            elif roll < 0.75:
                del out[at]
            elif roll < 0.9:
                out.insert(at, node[rng.randrange(len(node))])  # a duplicate
            else:
                out.append(self.value())
            return out
        if rng.random() < 0.2:
            return [node] if rng.random() < 0.5 else {"value": node}
        return self.value()

    def encode(self, doc) -> bytes:
        """`doc` as JSON bytes, escaped or raw UTF-8 (lone surrogates raw: invalid UTF-8)."""
        try:
            text = json.dumps(doc, ensure_ascii=self.rng.random() < 0.5)
        except ValueError:  # an integer past Python's digit limit
            text = '{"model": ' + "1" * 5000 + "}"
        return text.encode("utf-8", "surrogatepass")

    def bytes(self, data: bytes, edits: int | None = None) -> bytes:
        """`data` with 1-4 byte-level edits: truncated, bytes flipped, snippets inserted, bytes deleted."""
        rng = self.rng
        out = bytearray(data)
        for _ in range(edits or rng.randint(1, 4)):
            at = rng.randint(0, len(out))
            roll = rng.random()
            if roll < 0.15:
                del out[at:]
            elif roll < 0.45 and at < len(out):
                out[at] = rng.randrange(256)
            elif roll < 0.85:
                out[at:at] = rng.choice(SNIPPETS)
            elif at < len(out):
                del out[at:at + rng.randint(1, 8)]
        return bytes(out)


def deep(depth: int, open_: str = "[", close: str = "]") -> bytes:
    """JSON nested `depth` levels deep (past orjson's limit of 1,024 and Python's recursion limit)."""
    return (open_ * depth + close * depth).encode()


# --- OpenAI request bodies ----------------------------------------------------------------------------

MODEL = "test-model"  # as router_harness.MODEL (not imported: this module has no process helpers)

messages = st.lists(st.fixed_dictionaries(
    {}, optional={"role": st.sampled_from(("system", "developer", "user", "assistant", "tool", "", "System")),
                  "content": st.one_of(texts(30), st.lists(st.fixed_dictionaries(
                      {"type": st.sampled_from(("text", "image_url"))},
                      optional={"text": texts(10), "image_url": st.one_of(texts(10), st.fixed_dictionaries(
                          {"url": texts(10)}))}), max_size=2))}), max_size=3)


@st.composite
def request_objects(draw) -> dict:
    """An OpenAI-shaped request object (chat or completions); the fuzz tests then break its fields."""
    obj = {"model": draw(st.one_of(st.just(MODEL), texts()))}
    if draw(st.booleans()):
        obj["messages"] = draw(messages)
    else:
        obj["prompt"] = draw(st.one_of(texts(30), st.lists(st.integers(), max_size=5), st.lists(texts(5), max_size=3)))
    for key, value in (("stream", st.booleans()), ("user", texts(10)), ("prompt_cache_key", texts(10)),
                       ("max_tokens", st.integers(0, 10))):
        if draw(st.booleans()):
            obj[key] = draw(value)
    return obj


def request_bodies() -> st.SearchStrategy[bytes]:
    """Request bodies: OpenAI-shaped JSON, any JSON, deep nesting, or any bytes (the tests mutate them further)."""
    return st.one_of(
        encoded(request_objects()), encoded(request_objects()), encoded(json_values(8)),
        st.sampled_from((1, 2, 100, 1023, 1024, 1025, 5000, 100_000)).map(deep),
        st.sampled_from((1, 1023, 1024, 3000)).map(lambda d: b'{"model":' + deep(d)),
        st.binary(max_size=200), st.just(b""),
    )
