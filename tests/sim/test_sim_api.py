"""The OpenAI/vLLM-compatible API of a real `maitred sim`, checked with the openai SDK and httpx."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

MESSAGES = [{"role": "user", "content": "one two three four"}]
PROMPT_TOKENS = 7  # <|user|> one two three four <|end|> <|assistant|>


@pytest.fixture(scope="module")
def client(sim):
    with openai.OpenAI(base_url=f"{sim.base_url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def metrics(sim) -> dict[str, float]:
    """Every sample of /metrics by name, for model_name="sim-model" (checked)."""
    text = httpx.get(f"{sim.base_url}/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels.get("model_name") == "sim-model", sample
            if "le" not in sample.labels:
                samples[sample.name] = sample.value
    return samples


def test_models_and_health(sim, client):
    assert [m.id for m in client.models.list()] == ["sim-model"]
    health = httpx.get(f"{sim.base_url}/health")
    assert health.status_code == 200


def test_chat_completion_has_max_tokens_tokens_and_usage(client):
    reply = client.chat.completions.create(model="sim-model", messages=MESSAGES, max_tokens=5)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == "sim-model"
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert len(choice.message.content.split()) == 5
    usage = reply.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (PROMPT_TOKENS, 5, PROMPT_TOKENS + 5)
    assert usage.prompt_tokens_details.cached_tokens == 0


def test_output_length_defaults_to_16_tokens(client):
    reply = client.completions.create(model="sim-model", prompt="hello there")
    assert reply.usage.completion_tokens == 16
    assert len(reply.choices[0].text.split()) == 16


def test_streamed_chat_sends_one_chunk_per_token_then_usage_and_the_same_text(client):
    stream = client.chat.completions.create(
        model="sim-model", messages=MESSAGES, max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    token_chunks = [c for c in chunks if c.choices]
    assert len(token_chunks) == 6
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert token_chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in token_chunks] == [None] * 5 + ["length"]
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-1].usage.prompt_tokens == PROMPT_TOKENS
    streamed = "".join(c.choices[0].delta.content for c in token_chunks)
    whole = client.chat.completions.create(model="sim-model", messages=MESSAGES, max_tokens=6)
    assert streamed == whole.choices[0].message.content  # seeded: same prompt, same text


def test_streamed_completion_without_include_usage_has_no_usage_chunk(client):
    chunks = list(client.completions.create(model="sim-model", prompt="a b c", max_tokens=4, stream=True))
    assert len(chunks) == 4
    assert all(c.object == "text_completion" and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_sse_wire_format_ends_with_done(sim):
    body = {"prompt": "x y", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{sim.base_url}/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert len(events) == 4 and all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_embeddings_are_deterministic_unit_vectors(client):
    first = client.embeddings.create(model="sim-model", input=["hello world", "other"])
    again = client.embeddings.create(model="sim-model", input="hello world")
    vector = first.data[0].embedding
    assert len(first.data) == 2 and len(vector) == 64
    assert sum(x * x for x in vector) == pytest.approx(1.0, abs=1e-4)
    assert again.data[0].embedding == pytest.approx(vector, abs=1e-6)
    assert first.usage.prompt_tokens == 3


def test_unknown_model_is_404_in_openai_format(sim, client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nope", messages=MESSAGES)
    assert info.value.body["code"] == "model_not_found"
    response = httpx.post(f"{sim.base_url}/v1/completions", json={"model": "gpt-nope", "prompt": "x"})
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("path", "content"),
    [("/v1/chat/completions", b'{"messages": ['), ("/v1/completions", b"not json"), ("/v1/embeddings", b"[]")],
)
def test_malformed_json_is_400_in_openai_format(sim, path, content):
    response = httpx.post(f"{sim.base_url}{path}", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_unknown_path_and_wrong_method_get_openai_errors(sim):
    assert httpx.get(f"{sim.base_url}/v2/nothing").json()["error"]["message"]
    wrong = httpx.get(f"{sim.base_url}/v1/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_repeated_long_prompt_is_cached_and_its_first_token_comes_sooner(client, sim):
    # 12,000 tokens: about 0.21 s of prefill uncached, one step (~6 ms) once cached.
    prompt = " ".join(f"w{i}" for i in range(12_000))
    hits_before = metrics(sim)["vllm:prefix_cache_hits_total"]

    def ttft_and_usage():
        start = time.perf_counter()
        stream = client.completions.create(
            model="sim-model", prompt=prompt, max_tokens=2, stream=True, stream_options={"include_usage": True}
        )
        ttft = None
        for chunk in stream:
            if ttft is None:
                ttft = time.perf_counter() - start
            usage = chunk.usage
        return ttft, usage

    first_ttft, first_usage = ttft_and_usage()
    second_ttft, second_usage = ttft_and_usage()
    assert first_usage.prompt_tokens == 12_000
    assert first_usage.prompt_tokens_details.cached_tokens == 0
    assert second_usage.prompt_tokens_details.cached_tokens == 11_984  # all full blocks but the last
    assert first_ttft > 0.2  # the model's lower bound, 5.75 ms + 12,000 x 17.25 us
    assert second_ttft < first_ttft - 0.1
    assert metrics(sim)["vllm:prefix_cache_hits_total"] - hits_before == 11_984


def test_metrics_use_vllm_names(sim, client):
    client.chat.completions.create(model="sim-model", messages=MESSAGES, max_tokens=2)
    samples = metrics(sim)
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
    ):
        assert name in samples
    assert samples["vllm:time_to_first_token_seconds_count"] >= 1
    assert samples["vllm:e2e_request_latency_seconds_count"] >= 1
    assert samples["vllm:prefix_cache_queries_total"] >= PROMPT_TOKENS
    assert samples["vllm:num_requests_running"] == 0 and samples["vllm:kv_cache_usage_perc"] == 0
