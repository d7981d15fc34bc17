"""Request parsing, approximate tokens and generated text (pure functions)."""

from __future__ import annotations

import pytest

from maitred.sim.protocol import ApiError, parse_chat, parse_completion, parse_embedding, parse_json
from maitred.sim.tokens import TextGenerator, render_chat, tokenize

MODELS = ["m1", "m2"]


def test_tokens_are_words_and_long_runs_count_one_token_per_four_characters():
    assert tokenize("Hello  world\n how are you?") == ["Hello", "world", "how", "are", "you?"]
    assert tokenize("x" * 20) == ["xxxx"] * 5
    assert len(tokenize("a " * 1000)) == 1000


def test_a_conversation_that_grows_by_turns_keeps_its_rendered_prefix():
    turn1 = [("system", "be brief"), ("user", "hi")]
    turn2 = turn1 + [("assistant", "hello"), ("user", "how are you")]
    first, second = tokenize(render_chat(turn1)), tokenize(render_chat(turn2))
    assert second[: len(first) - 1] == first[:-1]  # all but the trailing assistant header


def test_generated_text_is_deterministic_per_seed_and_prompt():
    a, b, other = TextGenerator(1), TextGenerator(1), TextGenerator(2)
    text = a.text(a.offset("prompt"), 20)
    assert text == b.text(b.offset("prompt"), 20)
    assert len(text.split()) == 20
    assert text != other.text(other.offset("prompt"), 20)
    assert a.text(a.offset("prompt", 7), 20) != text
    # The streamed tokens spell the same text.
    offset = a.offset("prompt")
    import orjson

    assert "".join(orjson.loads(a.token_json(offset, i)) for i in range(20)) == text


def test_chat_request_fields_and_defaults():
    request = parse_chat({"messages": [{"role": "user", "content": "one two three"}]}, MODELS, 1000)
    assert request.model == "m1"  # the first served model when absent
    assert request.max_tokens == 16 and not request.stream and not request.include_usage
    request = parse_chat(
        {"model": "m2", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
         "max_completion_tokens": 5, "max_tokens": 9, "stream": True, "stream_options": {"include_usage": True}},
        MODELS, 1000,
    )
    assert (request.model, request.max_tokens, request.stream, request.include_usage) == ("m2", 5, True, True)


def test_completion_prompt_may_be_token_ids():
    request = parse_completion({"prompt": [1, 2, 3], "max_tokens": 4}, MODELS, 1000)
    assert request.tokens == [1, 2, 3] and request.max_tokens == 4


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"content": "x"}]}, 400, "messages.[0].role"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "stream"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2000}, 400, "max_tokens"),
    ],
)
def test_bad_chat_requests_get_clear_errors(body, status, param):
    with pytest.raises(ApiError) as info:
        parse_chat(body, MODELS, 1000)
    assert (info.value.status, info.value.param) == (status, param)


def test_bad_bodies_and_inputs():
    with pytest.raises(ApiError, match="not valid JSON"):
        parse_json(b"{")
    with pytest.raises(ApiError, match="JSON object"):
        parse_json(b"[1]")
    with pytest.raises(ApiError, match="one prompt per request"):
        parse_completion({"prompt": ["a", "b"]}, MODELS, 1000)
    with pytest.raises(ApiError) as info:
        parse_embedding({"input": [{"x": 1}]}, MODELS)
    assert info.value.param == "input"
    assert len(parse_embedding({"input": ["a", "b c"]}, MODELS).token_lists) == 2
    assert parse_embedding({"input": [5, 6]}, MODELS).token_lists == [[5, 6]]
