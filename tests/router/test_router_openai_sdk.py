"""The official `openai` SDK works through the router as it does against a model server."""

from __future__ import annotations

import openai
import pytest
from router_harness import MODEL, SIM_MODEL, table


@pytest.fixture(scope="module")
def sdk(module_fleet):
    """An OpenAI client whose base URL is the router, over two replicas; and the router."""
    a, b = module_fleet.backends(("a", {"chunks": 5}), ("b", {"chunks": 5}))
    r = module_fleet.router(table([a, b], method="round-robin"))
    client = openai.OpenAI(base_url=r.url + "/v1", api_key="sk-test", max_retries=0, timeout=30)
    yield client, r
    client.close()


def test_chat_completion(sdk):
    client, _ = sdk
    for _ in range(2):  # both replicas
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert reply.object == "chat.completion"
        assert reply.model == MODEL
        assert reply.choices[0].message.content == f"hello from {reply.system_fingerprint}"
        assert reply.choices[0].finish_reason == "stop"
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + 3


def test_chat_completion_streamed(sdk):
    client, _ = sdk
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "t0 t1 t2 t3 t4 "
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completion(sdk):
    client, _ = sdk
    reply = client.completions.create(model=MODEL, prompt="Once upon a time")
    assert reply.object == "text_completion"
    assert reply.choices[0].text.startswith("hello from ")


def test_completion_streamed(sdk):
    client, _ = sdk
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "t0 t1 t2 t3 t4 "
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_raw_response_headers_name_the_replica(sdk):
    client, _ = sdk
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-maitred-endpoint"] == raw.headers["x-backend"] == raw.parse().system_fingerprint


def test_models_list(sdk):
    client, _ = sdk
    assert [m.id for m in client.models.list()] == [MODEL]


def test_router_errors_are_sdk_errors(sdk):
    client, _ = sdk
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "missing_model"


def test_a_stream_broken_mid_way_raises_in_the_sdk(module_fleet):
    (broken,) = module_fleet.backends(("broken", {"chunks": 10, "reset_after_chunks": 3}))
    r = module_fleet.router(table([broken], healthCheck={"periodSeconds": 5, "failureThreshold": 10}))
    client = openai.OpenAI(base_url=r.url + "/v1", api_key="sk-test", max_retries=0, timeout=30)
    got = []
    with pytest.raises(openai.APIError) as err:
        for chunk in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                     stream=True):
            got.append(chunk.choices[0].delta.content)
    assert got == ["t0 ", "t1 ", "t2 "]
    assert "broke after it had started" in err.value.message
    client.close()


# --- against the project's simulator, which speaks vLLM's dialect ----------------------------------

@pytest.fixture(scope="module")
def sdk_on_sims(module_fleet):
    sims = module_fleet.sims("sim-a", "sim-b")
    r = module_fleet.router({**table([], method="least-connections"), "models": [SIM_MODEL],
                             "endpoints": [s.endpoint() for s in sims]})
    client = openai.OpenAI(base_url=r.url + "/v1", api_key="sk-test", max_retries=0, timeout=30)
    yield client
    client.close()


def test_with_no_models_in_the_table_the_router_lists_and_serves_the_replicas_models(module_fleet):
    sims = module_fleet.sims("sim-c")
    r = module_fleet.router({**table([]), "models": [], "endpoints": [s.endpoint() for s in sims]})
    client = openai.OpenAI(base_url=r.url + "/v1", api_key="sk-test", max_retries=0, timeout=30)
    assert [m.id for m in client.models.list()] == [SIM_MODEL]
    assert client.completions.create(model=SIM_MODEL, prompt="hi", max_tokens=2).usage.completion_tokens == 2
    # No list to check against: the replica's own 404 comes back, not the router's.
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-9", prompt="hi", max_tokens=2)
    assert "x-maitred-error" not in err.value.response.headers
    client.close()


def test_simulator_chat_through_the_router(sdk_on_sims):
    reply = sdk_on_sims.chat.completions.create(model=SIM_MODEL, max_tokens=8,
                                                messages=[{"role": "user", "content": "Tell me a story"}])
    assert reply.model == SIM_MODEL
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 8 and reply.choices[0].finish_reason == "length"


def test_simulator_chat_streamed_through_the_router(sdk_on_sims):
    chunks = list(sdk_on_sims.chat.completions.create(
        model=SIM_MODEL, max_tokens=6, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Tell me a story"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage.completion_tokens == 6


def test_simulator_completions_through_the_router(sdk_on_sims):
    reply = sdk_on_sims.completions.create(model=SIM_MODEL, prompt="Once upon a time", max_tokens=4)
    assert reply.choices[0].text and reply.usage.completion_tokens == 4
    chunks = list(sdk_on_sims.completions.create(model=SIM_MODEL, prompt="Once upon a time", max_tokens=4,
                                                 stream=True))
    assert len([c for c in chunks if c.choices and c.choices[0].text]) == 4
    assert chunks[-1].choices[0].finish_reason == "length"
