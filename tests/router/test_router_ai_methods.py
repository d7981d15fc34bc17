"""The AI-aware methods: least-load (the replicas' own queue reports) and prefix-affinity (KV-cache reuse).

Unit tests of the choices with plain endpoint states, then real `maitred sim` replicas behind the real
router: a replica kept busy by traffic that bypasses the router gets nothing new under least-load, and
prefix-affinity keeps each conversation on one replica, so that far more prompt tokens come from cache
than with round-robin. (Affinity across router replicas: test_router_affinity.py.)
"""

from __future__ import annotations

import random
import threading

import httpx
import pytest
from router_harness import SIM_MODEL, SimProcess, wait_for

from maitred.router.balancing import RequestView, make_balancer
from maitred.router.balancing.keys import prefix_key
from maitred.router.balancing.least_load import load
from maitred.router.endpoints import EndpointState
from maitred.router.load import parse_load

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 7.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.25
"""
SGLANG_METRICS = """\
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m"} 4.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 1.0
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m"} 0.5
"""


def endpoints(*ids: str) -> list[EndpointState]:
    return [EndpointState(id=i, url=f"http://127.0.0.1:{8000 + n}") for n, i in enumerate(ids)]


def conversation(k: int, turns: int, system_repeats: int = 30, turn_repeats: int = 12) -> dict:
    """Chat body of conversation `k` after `turns` turns, behind a system prompt every conversation shares."""
    messages = [{"role": "system", "content": "You are the maitre d' of a busy restaurant. " * system_repeats}]
    for t in range(turns):
        messages.append({"role": "user", "content": f"Guest {k} asks question {t} about the menu. " * turn_repeats})
        messages.append({"role": "assistant", "content": f"Answer {t} for guest {k}. " * turn_repeats})
    messages.append({"role": "user", "content": f"Guest {k} asks one more thing."})
    return {"model": SIM_MODEL, "messages": messages, "max_tokens": 4}


def test_load_reports_are_read_from_vllm_and_sglang_metric_names():
    assert parse_load(VLLM_METRICS) == {"waiting": 3.0, "running": 7.0, "kv_cache_usage": 0.25}
    assert parse_load(SGLANG_METRICS) == {"waiting": 1.0, "running": 4.0, "kv_cache_usage": 0.5}
    assert parse_load("# nothing of ours\nother_metric 1\n") == {}


def test_least_load_counts_the_requests_sent_since_the_last_report():
    a, b = endpoints("a", "b")
    a.reported_waiting, a.reported_running, a.in_flight_at_report = 0.0, 2.0, 0
    b.reported_waiting, b.reported_running, b.in_flight_at_report = 0.0, 1.0, 0
    assert load(a) == 2.0 and load(b) == 1.0
    b.in_flight = 2  # two sent to b since its report
    assert load(b) == 3.0
    balancer = make_balancer("least-load", rng=random.Random(0))
    assert balancer.pick([a, b]).id == "a"


def test_least_load_without_reports_falls_back_to_in_flight():
    a, b = endpoints("a", "b")
    a.in_flight = 3
    assert make_balancer("least-load", rng=random.Random(0)).pick([a, b]).id == "b"


def pick_and_hold(balancer, eps, body) -> str:
    """Pick for `body` and keep the request in flight, as concurrent conversations do."""
    chosen = balancer.pick(eps, RequestView(body))
    chosen.acquire()
    return chosen.id


def test_prefix_affinity_keeps_each_conversation_on_one_replica():
    eps = endpoints("a", "b", "c")
    balancer = make_balancer("prefix-affinity", rng=random.Random(0))
    first = {k: pick_and_hold(balancer, eps, conversation(k, 1)) for k in range(9)}
    # The system prompt they all share must not pin them to one replica (it is not their key alone), and
    # the load bound, 1.25 x (mean + 1) < 5 requests in flight before the last pick, caps any replica at 5.
    assert max(list(first.values()).count(e.id) for e in eps) <= 5, first
    for turns in (2, 3):
        for e in eps:
            e.in_flight = 0
        assert {k: pick_and_hold(balancer, eps, conversation(k, turns)) for k in range(9)} == first


def test_prefix_affinity_passes_over_a_replica_above_the_load_bound():
    a, b = endpoints("a", "b")
    balancer = make_balancer("prefix-affinity", rng=random.Random(0))
    home = balancer.pick([a, b], RequestView(conversation(1, 2)))
    assert balancer.pick([a, b], RequestView(conversation(1, 3))) is home
    home.in_flight = 10
    assert balancer.pick([a, b], RequestView(conversation(1, 3))) is not home


def test_prefix_keys_of_prompts_and_content_parts():
    assert prefix_key({"prompt": "x" * 10}) == prefix_key({"prompt": ["x" * 10]})
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert prefix_key(parts) == prefix_key({"messages": [{"role": "user", "content": "hi"}]})
    assert prefix_key(None) is None
    # A shared long prefix gives one key; prompts that differ early do not.
    assert prefix_key({"prompt": "y" * 1100 + "a"}) == prefix_key({"prompt": "y" * 1100 + "b"})
    assert prefix_key({"prompt": "y" * 600 + "a"}) != prefix_key({"prompt": "y" * 600 + "b"})


@pytest.fixture
def sims(fleet):
    def start(*names: str, flags: tuple[str, ...] = ()) -> list[SimProcess]:
        new = [SimProcess(name, fleet.work_dir, *flags) for name in names]
        fleet.processes.extend(new)
        for sim in new:
            sim.wait_ready()
        return new
    return start


def sim_table(replicas, method: str) -> dict:
    return {"pool": "test/sims", "version": 1, "method": method, "models": [SIM_MODEL],
            "endpoints": [s.endpoint() for s in replicas],
            "healthCheck": {"path": "/health", "periodSeconds": 1}}


def test_least_load_avoids_a_replica_kept_busy_by_traffic_that_bypasses_the_router(fleet, sims):
    idle, busy = sims("idle", "busy", flags=("--max-num-seqs", "2"))
    router = fleet.router(sim_table([idle, busy], "least-load"))
    stop = threading.Event()

    def keep_busy() -> None:  # long generations straight to `busy`: its queue fills, the router sees none of it
        with httpx.Client(timeout=60, trust_env=False) as client:
            while not stop.is_set():
                client.post(busy.url + "/v1/completions",
                            json={"model": SIM_MODEL, "prompt": "long story", "max_tokens": 200})

    workers = [threading.Thread(target=keep_busy) for _ in range(5)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: (router.endpoints()["busy"].get("reportedLoad") or {}).get("waiting", 0) >= 2, 10,
                 "the router to see busy's queue in its load report")
        served = []
        with httpx.Client(timeout=60, trust_env=False) as client:
            for _ in range(10):
                resp = client.post(router.url + "/v1/completions",
                                   json={"model": SIM_MODEL, "prompt": "hi", "max_tokens": 2})
                assert resp.status_code == 200
                served.append(resp.headers["x-maitred-endpoint"])
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert served.count("idle") >= 9, served


def cached_share(router_url: str, conversations: int, turns: int) -> tuple[float, dict[int, set[str]]]:
    """Share of prompt tokens served from cache over all turns, and the replicas each conversation met."""
    cached = prompt = 0
    replicas: dict[int, set[str]] = {}
    with httpx.Client(timeout=60, trust_env=False) as client:
        for turn in range(1, turns + 1):
            for k in range(conversations):
                body = conversation(k, turn, system_repeats=5, turn_repeats=60)  # mostly the conversation's own
                resp = client.post(router_url + "/v1/chat/completions", json=body)
                assert resp.status_code == 200, resp.text
                usage = resp.json()["usage"]
                cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                prompt += usage["prompt_tokens"]
                replicas.setdefault(k, set()).add(resp.headers["x-maitred-endpoint"])
    return cached / prompt, replicas


def test_prefix_affinity_serves_more_prompt_tokens_from_cache_than_round_robin(fleet, sims):
    replicas = sims("a", "b", "c")  # 7 conversations: round-robin does not land each on one replica by chance
    router = fleet.router(sim_table(replicas, "round-robin"))
    round_robin_share, _ = cached_share(router.url, conversations=7, turns=3)
    for sim in replicas:  # start again from cold caches
        assert httpx.post(sim.url + "/reset_prefix_cache", trust_env=False).status_code == 200
    router.update_table(method="prefix-affinity")
    affinity_share, met = cached_share(router.url, conversations=7, turns=3)
    assert all(len(names) == 1 for names in met.values()), met  # every conversation stayed on its replica
    assert affinity_share > round_robin_share + 0.2, (affinity_share, round_robin_share)
