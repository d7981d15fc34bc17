"""The two pure parts of the router's request accounting: reading `usage` from a body's tail, and the
metrics gathered in plain numbers and handed to prometheus-client by a flush."""

from __future__ import annotations

import orjson
from prometheus_client import generate_latest
from router_harness import metric, parse_metrics

from maitred.router.endpoints import EndpointRegistry
from maitred.router.metrics import MAX_UNLISTED_MODELS, OTHER_MODEL, TTFT_BUCKETS_S, RouterMetrics
from maitred.router.table import RoutingTable
from maitred.router.usage import TAIL_BYTES, Usage, usage_of_body, usage_of_tail

USAGE = {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52,
         "prompt_tokens_details": {"cached_tokens": 8}, "completion_tokens_details": {"reasoning_tokens": 3}}


def test_usage_is_read_from_a_whole_body_past_strings_that_say_usage():
    body = orjson.dumps({"id": "x", "choices": [{"message": {"content": '"usage": {"prompt_tokens": 999}'}}],
                         "usage": USAGE, "note": "usage"})
    assert usage_of_body(body) == Usage(12, 40, 8)
    assert usage_of_body(orjson.dumps({"choices": [], "usage": "usage"})) is None
    assert usage_of_body(orjson.dumps({"choices": [{"text": "no usage here"}]})) is None
    # Embeddings: prompt tokens only.
    assert usage_of_body(orjson.dumps({"data": [], "usage": {"prompt_tokens": 7, "total_tokens": 7}})) == Usage(7, 0, 0)


def test_usage_is_looked_for_in_the_tail_of_a_large_body_only():
    big = orjson.dumps({"data": [{"embedding": [0.5] * 50_000}], "usage": {"prompt_tokens": 3}})
    assert len(big) > 10 * TAIL_BYTES
    assert usage_of_body(big) == Usage(3, 0, 0)
    buried = orjson.dumps({"usage": {"prompt_tokens": 3}, "data": [{"embedding": [0.5] * 50_000}]})
    assert usage_of_body(buried) is None  # not worth reading a whole body for


def test_usage_of_a_stream_comes_from_its_last_chunks_even_when_cut_between_them():
    event = b"data: " + orjson.dumps({"choices": [], "usage": USAGE}) + b"\n\n"
    done = b"data: [DONE]\n\n"
    assert usage_of_tail(b"data: {}\n\n", event + done) == Usage(12, 40, 8)
    assert usage_of_tail(event, done) == Usage(12, 40, 8)
    for cut in (10, len(event) // 2, len(event) - 3):
        assert usage_of_tail(event[:cut], event[cut:] + done) == Usage(12, 40, 8), cut
    # vLLM's continuous_usage_stats: usage in every chunk; the last one is the total.
    first = b"data: " + orjson.dumps({"choices": [], "usage": {**USAGE, "completion_tokens": 1}}) + b"\n\n"
    assert usage_of_tail(first, event + done) == Usage(12, 40, 8)
    assert usage_of_tail(b"", done) is None


def registry_with(models: list[str]) -> EndpointRegistry:
    endpoints = EndpointRegistry()
    endpoints.apply(RoutingTable.model_validate({"pool": "t/p", "models": models,
                                                 "endpoints": [{"id": "a", "url": "http://127.0.0.1:1"}]}))
    return endpoints


def scrape(metrics: RouterMetrics) -> dict:
    metrics.before_scrape()
    return parse_metrics(generate_latest(metrics.registry).decode())


def test_recorded_requests_reach_the_registry_at_the_flush_in_the_right_buckets():
    metrics = RouterMetrics(registry_with(["m"]))
    label = metrics.model_label("m")
    for ttft in (TTFT_BUCKETS_S[0], TTFT_BUCKETS_S[3], 1e6):  # on a bound: in that bucket (le); past all: +Inf
        metrics.record_request("a", label, 200, 0.2, ttft_s=ttft, itl_s=0.02, usage=Usage(10, 5, 2))
    metrics.record_request("a", label, 503, 0.1)
    metrics.record_upstream("a", 0.15)
    before = parse_metrics(generate_latest(metrics.registry).decode())
    assert metric(before, "maitred_requests_total") == 0  # gathered, not yet flushed
    m = scrape(metrics)
    assert metric(m, "maitred_requests_total", endpoint="a", model="m", status="200") == 3
    assert metric(m, "maitred_requests_total", status="503") == 1
    assert metric(m, "maitred_request_duration_seconds_count", model="m") == 4
    assert metric(m, "maitred_ttft_seconds_bucket", le=str(TTFT_BUCKETS_S[0])) == 1
    assert metric(m, "maitred_ttft_seconds_bucket", le=str(TTFT_BUCKETS_S[3])) == 2
    assert metric(m, "maitred_ttft_seconds_bucket", le="+Inf") == 3
    assert metric(m, "maitred_ttft_seconds_sum") == TTFT_BUCKETS_S[0] + TTFT_BUCKETS_S[3] + 1e6
    assert metric(m, "maitred_inter_token_latency_seconds_count") == 3
    assert (metric(m, "maitred_prompt_tokens_total"), metric(m, "maitred_completion_tokens_total"),
            metric(m, "maitred_cached_prompt_tokens_total")) == (30, 15, 6)
    assert metric(m, "maitred_upstream_latency_seconds_count", endpoint="a") == 1
    # The rare counters exist at 0 before anything happened, so that rate() sees their first increase.
    assert ("maitred_ejections_total", (("endpoint", "a"),)) in m
    assert metric(m, "maitred_streams_broken_total", endpoint="a", reason="reset") == 0
    # A second flush adds only what came since.
    metrics.record_request("a", label, 200, 0.2)
    assert metric(scrape(metrics), "maitred_requests_total", status="200") == 4


def test_a_flush_waits_while_requests_are_in_flight_but_not_longer_than_its_period():
    metrics = RouterMetrics(registry_with(["m"]))
    metrics.record_request("a", "m", 200, 0.2)
    metrics.maybe_flush(in_flight=3)
    assert metric(parse_metrics(generate_latest(metrics.registry).decode()), "maitred_requests_total") == 0
    metrics._flushed_at -= 1.0  # as if the last flush were a second old
    metrics.maybe_flush(in_flight=3)
    assert metric(parse_metrics(generate_latest(metrics.registry).decode()), "maitred_requests_total") == 1
    metrics.record_request("a", "m", 200, 0.2)
    metrics.maybe_flush(in_flight=0)
    assert metric(parse_metrics(generate_latest(metrics.registry).decode()), "maitred_requests_total") == 2


def test_model_labels_are_the_tables_models_or_a_bounded_set():
    listed = RouterMetrics(registry_with(["a", "b"]))
    assert [listed.model_label(m) for m in ("a", "b", "c", None)] == ["a", "b", OTHER_MODEL, OTHER_MODEL]
    unlisted = RouterMetrics(registry_with([]))
    labels = [unlisted.model_label(f"m{i}") for i in range(MAX_UNLISTED_MODELS + 5)]
    assert labels[:MAX_UNLISTED_MODELS] == [f"m{i}" for i in range(MAX_UNLISTED_MODELS)]
    assert set(labels[MAX_UNLISTED_MODELS:]) == {OTHER_MODEL}
    assert unlisted.model_label("m0") == "m0" and unlisted.model_label("x" * 500) == OTHER_MODEL
