"""Approximate tokens and seeded generated text.

No real tokenizer: a token is a whitespace-separated word of at most 16 characters; longer runs of non-space
characters (code, base64, URLs) count one token per 4 characters, which is what BPE tokenizers give for such
text on average. English prose then gets about 1 token per word (real tokenizers: about 1.3).
"""

from __future__ import annotations

import random
import re
import zlib

import orjson

_TOKEN_RE = re.compile(r"(?<!\S)\S{1,16}(?!\S)|\S{1,4}")

# Words of generated text; each generated token is one of them, with a leading space as BPE tokens have.
_VOCAB = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have "
    "an they you were her she there been one all we their has would when if so no will more can out up "
    "about into them some time could these two may first then do any like my now over such our man me "
    "even most made after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world still own see men "
    "work long get here between both life being under never day same another know while last might us "
    "great old year off come since against go came right used take three model token cache batch request "
    "server router replica latency prefix stream queue step engine kernel memory block"
).split()

_STREAM_LEN = 8192  # length of the pre-drawn word stream; a request reads a window of it


def tokenize(text: str) -> list[str]:
    """Split text into approximate tokens, e.g. "Hello world" -> ["Hello", "world"]."""
    return _TOKEN_RE.findall(text)


def render_chat(messages: list[tuple[str, str]]) -> str:
    """Render (role, content) messages into one prompt text, like a chat template would.

    Each message costs 2 template tokens (`<|role|>` and `<|end|>`), and the prompt ends with the assistant
    header, so a conversation that grows by whole turns keeps its earlier text as a prefix (prefix cache hits).
    """
    parts = [f"<|{role}|> {content} <|end|>" for role, content in messages]
    parts.append("<|assistant|>")
    return "\n".join(parts)


class TextGenerator:
    """Seeded, deterministic generated text.

    At start, a stream of `_STREAM_LEN` words is drawn from a generator seeded with `seed`. A request reads
    the window of the stream that starts at `offset(prompt, request_seed)`, so the same prompt (and request
    seed) always gets the same text, and nothing random happens per request (cheap in the hot path).
    Each word is kept as UTF-8 text and as a JSON string literal, ready to be spliced into a response.
    """

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self._seed_mix = zlib.crc32(str(seed).encode())
        indices = rng.choices(range(len(_VOCAB)), k=_STREAM_LEN)
        self._words = [" " + _VOCAB[i] for i in indices]
        self._json_words = [orjson.dumps(w) for w in self._words]
        self._first_json_words = [orjson.dumps(_VOCAB[i].capitalize()) for i in indices]

    def offset(self, prompt: str, request_seed: int | None = None) -> int:
        """Start of a request's window in the stream, from a CRC-32 of the prompt (stable across runs)."""
        mix = zlib.crc32(prompt.encode(), self._seed_mix)
        if request_seed is not None:
            mix ^= zlib.crc32(str(request_seed).encode())
        return mix % _STREAM_LEN

    def token_json(self, offset: int, index: int) -> bytes:
        """The `index`-th generated token of a request as a JSON string literal, e.g. b'" cache"'."""
        position = (offset + index) % _STREAM_LEN
        return self._first_json_words[position] if index == 0 else self._json_words[position]

    def text(self, offset: int, num_tokens: int) -> str:
        """The whole generated text of `num_tokens` tokens."""
        if num_tokens <= 0:
            return ""
        words = [self._words[(offset + i) % _STREAM_LEN] for i in range(num_tokens)]
        words[0] = words[0][1:].capitalize()
        return "".join(words)

    def embedding(self, text: str, dim: int) -> list[float]:
        """A deterministic unit vector of `dim` floats for `text` (same text, same vector)."""
        rng = random.Random(zlib.crc32(text.encode(), self._seed_mix))
        vector = [rng.gauss(0.0, 1.0) for _ in range(dim)]
        norm = sum(x * x for x in vector) ** 0.5 or 1.0
        return [x / norm for x in vector]
