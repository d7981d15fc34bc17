"""Autoscaling on the real control plane: replicas are `maitred sim` processes (one request running at a
time each, so that the rest wait in their queue, as on a busy vLLM), routers are real `maitred router`
processes, and the operator scales the pool through its scale subresource on what the routers report.

The operator evaluates every second here (`--autoscale-period 1`); the windows are short to fit a test.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from operator_harness import template, wait_for

pytestmark = pytest.mark.cluster

#: One request takes about 2 s (400 engine steps of ~5.75 ms); each replica runs one at a time unless told.
MAX_TOKENS = 400


def sim_template(app: str, readiness_path: str = "/health", max_num_seqs: int = 1) -> dict:
    pod = template(app)
    container = pod["spec"]["containers"][0]
    container["args"] = [*container["args"], "--max-num-seqs", str(max_num_seqs)]
    container["readinessProbe"]["httpGet"]["path"] = readiness_path
    return pod


@pytest.fixture
def autoscaling_operator(start_operator):
    return start_operator(extra_args=("--autoscale-period", "1"))


@pytest.fixture
def sims(make_kubelet):
    """The replicas' kubelet: `maitred sim` with the template's args (--max-num-seqs)."""
    return make_kubelet(label_selector="!maitred.dev/router-of", command=lambda b: [
        "maitred", "sim", "--host", b.ip, "--port", str(b.port), *b.args, "--log-level", "warning"])


class Load:
    """`clients` threads, each sending chat completions through `url` one after another until stopped."""

    def __init__(self, url: str, clients: int, max_tokens: int = MAX_TOKENS) -> None:
        self.url, self.max_tokens = url, max_tokens
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _loop(self) -> None:
        with httpx.Client(timeout=120, trust_env=False) as client:
            while not self._stop.is_set():
                resp = client.post(f"{self.url}/v1/chat/completions", json={
                    "model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": self.max_tokens})
                self.statuses.append(resp.status_code)

    def stop(self) -> list[int]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=150)
        return self.statuses


def router_url(pools, routers_kubelet, name: str) -> str:
    """The traffic URL of the pool's (one) router pod, once it serves."""
    pod = wait_for(lambda: (p := pools.pods(f"maitred.dev/router-of={name}")) and p[0], 60, "a router pod")
    backend = wait_for(lambda: routers_kubelet.backends().get(pod.metadata.name), 60, "the router process")
    wait_for(lambda: _answers(backend.url), 60, "the router to answer")
    return backend.url


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def replicas(pools, name: str) -> int:
    return pools.get(name)["spec"]["replicas"]


def scale_events(pools, name: str) -> list[tuple[str, str]]:
    return [(reason, message) for _, reason, message in pools.events(name)
            if reason in ("ScaledUp", "ScaledDown", "ReplicasOverruled")]


def test_a_queue_brings_the_pool_to_max_and_idleness_back_to_min(pools, autoscaling_operator, sims, routers_kubelet):
    pools.apply("llama", {"replicas": 1, "template": sim_template("llama"), "router": {"replicas": 1},
                          "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "metric": "queue", "target": 2,
                                          "scaleUp": {"stabilizationWindowSeconds": 3},
                                          "scaleDown": {"stabilizationWindowSeconds": 15}}})
    pools.wait_endpoints("llama", 1)
    url = router_url(pools, routers_kubelet, "llama")

    load = Load(url, clients=9)  # one running, 8 waiting at the one replica
    try:
        started = time.monotonic()
        wait_for(lambda: replicas(pools, "llama") == 4, 30, "spec.replicas 4")
        scaled_in_s = time.monotonic() - started
        pools.wait_endpoints("llama", 4)
        # From here on, 4 ready replicas keep the queue short: no later recommendation asks for 4.
        four_ready_at = time.monotonic()
    finally:
        statuses = load.stop()
    assert set(statuses) == {200}, statuses

    (event,) = [e for e in scale_events(pools, "llama") if e[0] == "ScaledUp"]
    assert event[1].startswith("from 1 to 4: queue ") and event[1].endswith("per replica, target 2"), event
    status = pools.get("llama")["status"]
    assert status["autoscaling"]["metric"] == "queue" and status["autoscaling"]["target"] == 2
    assert status["load"].endswith("/2")
    print(f"1 -> 4 replicas {scaled_in_s:.1f} s after the queue built up")

    wait_for(lambda: replicas(pools, "llama") < 4, 60, "a scale-down")
    held_s = time.monotonic() - four_ready_at
    assert held_s >= 14, f"scaled down {held_s:.1f} s after the last recommendation of 4, within the 15 s window"
    wait_for(lambda: replicas(pools, "llama") == 1, 60, "spec.replicas back to 1")
    pools.wait_endpoints("llama", 1)
    assert [reason for reason, _ in scale_events(pools, "llama")].count("ScaledDown") >= 1


def test_a_pool_at_zero_serves_its_first_requests_once_a_replica_is_ready(pools, autoscaling_operator, sims,
                                                                          routers_kubelet):
    pools.apply("llama", {"replicas": 0, "template": sim_template("llama"), "router": {"replicas": 1},
                          "autoscaling": {"minReplicas": 0, "maxReplicas": 2, "metric": "in-flight", "target": 20,
                                          "holdSeconds": 60, "scaleDown": {"stabilizationWindowSeconds": 10}}})
    url = router_url(pools, routers_kubelet, "llama")
    assert pools.table("llama").endpoints == ()

    first_token: dict = {}

    def stream() -> None:
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=90, trust_env=False, json={
                "model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                "stream": True}) as resp:
            first_token["status"] = resp.status_code
            lines = resp.iter_lines()
            first_token["line"] = next(line for line in lines if line.startswith("data:"))
            first_token["at"] = time.monotonic()
            first_token["rest"] = [line for line in lines if line]

    def one(results: list) -> None:
        resp = httpx.post(f"{url}/v1/chat/completions", timeout=90, trust_env=False, json={
            "model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
        results.append(resp.status_code)

    sent_at = time.monotonic()
    results: list[int] = []
    threads = [threading.Thread(target=stream)] + [threading.Thread(target=one, args=(results,)) for _ in range(20)]
    for thread in threads:
        thread.start()
    table = wait_for(lambda: (t := pools.table("llama")) is not None and t.endpoints and t, 60, "a first endpoint")
    in_table_at = time.monotonic()
    for thread in threads:
        thread.join(timeout=90)

    assert first_token["status"] == 200 and '"content"' in first_token["line"]
    assert first_token["rest"][-1] == "data: [DONE]"
    assert first_token["at"] >= in_table_at - 1.0, "a first token before any replica was in the table"
    assert results == [200] * 20
    event = next(e for e in scale_events(pools, "llama") if e[0] == "ScaledUp")
    # 21 held, at most 20 per replica: 2 (or 1 first, if it looked before all of them came).
    assert event[1].startswith(("from 0 to 1: ", "from 0 to 2: ")) and "waiting and no replica ready" in event[1], event
    print(f"cold start: first token {first_token['at'] - sent_at:.1f} s after the request ({table.endpoints[0].id})")

    # Idle: back to zero after the scale-down window.
    wait_for(lambda: replicas(pools, "llama") == 0, 60, "spec.replicas back to 0")
    pools.wait_endpoints("llama", 0)


def test_a_request_held_past_hold_seconds_gets_a_503_with_retry_after(pools, autoscaling_operator, sims,
                                                                      routers_kubelet):
    # Its replicas never pass their readiness probe: no endpoint ever comes.
    pools.apply("slow", {"replicas": 0, "template": sim_template("slow", readiness_path="/never-ready"),
                         "router": {"replicas": 1},
                         "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "metric": "in-flight", "target": 4,
                                         "holdSeconds": 3}})
    url = router_url(pools, routers_kubelet, "slow")

    started = time.monotonic()
    resp = httpx.post(f"{url}/v1/chat/completions", timeout=30, trust_env=False,
                      json={"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    waited_s = time.monotonic() - started
    assert resp.status_code == 503 and int(resp.headers["retry-after"]) > 0
    assert resp.json()["error"]["message"]
    assert 3.0 <= waited_s < 8.0, f"answered after {waited_s:.1f} s"
    wait_for(lambda: replicas(pools, "slow") == 1, 10, "the demand to scale the pool up")


def test_a_load_that_flaps_within_the_tolerance_changes_nothing(pools, autoscaling_operator, sims, routers_kubelet):
    # Replicas that run every request at once: the requests in flight are the clients, nothing waits long.
    pools.apply("llama", {"replicas": 2, "template": sim_template("llama", max_num_seqs=32), "router": {"replicas": 1},
                          "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "metric": "in-flight", "target": 5,
                                          "tolerance": 0.1,
                                          # Not before the load starts: the replicas are idle until then.
                                          "scaleDown": {"stabilizationWindowSeconds": 120}}})
    pools.wait_endpoints("llama", 2)
    url = router_url(pools, routers_kubelet, "llama")

    steady = Load(url, clients=9)  # 4.5 per replica: 0.9 of the target
    try:
        for _ in range(4):  # 11 in flight (1.1 of the target) for 4 s, then 9 again for 4 s
            extra = Load(url, clients=2)
            time.sleep(4)
            extra.stop()
            time.sleep(4)
        value = pools.get("llama")["status"]["autoscaling"]["value"]
    finally:
        steady.stop()
    assert replicas(pools, "llama") == 2
    assert scale_events(pools, "llama") == []
    assert 3.5 <= value <= 5.5, f"the last value seen was {value}, not the load asked for"


def test_kubectl_scale_is_overruled_at_the_next_evaluation(pools, autoscaling_operator, sims, routers_kubelet):
    pools.apply("llama", {"replicas": 1, "template": sim_template("llama"), "router": {"replicas": 1},
                          "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "metric": "in-flight", "target": 5}})
    pools.wait_endpoints("llama", 1)
    router_url(pools, routers_kubelet, "llama")
    wait_for(lambda: (pools.get("llama").get("status") or {}).get("autoscaling"), 30, "a first evaluation")

    pools.kubectl("scale", "aisp/llama", "--replicas", "3")
    wait_for(lambda: replicas(pools, "llama") == 1, 15, "spec.replicas set back to 1")
    (event,) = wait_for(lambda: scale_events(pools, "llama"), 10, "the Event")  # posted just after the write
    assert event[0] == "ReplicasOverruled" and "spec.replicas was set to 3" in event[1], event


def test_an_operator_restarted_mid_scale_takes_no_second_step(pools, start_operator, make_kubelet, routers_kubelet):
    # New replicas take 8 s to become ready: the operator is killed while they start.
    make_kubelet(label_selector="!maitred.dev/router-of", ready_delay_s=8.0, command=lambda b: [
        "maitred", "sim", "--host", b.ip, "--port", str(b.port), *b.args, "--log-level", "warning"])
    operator = start_operator(extra_args=("--autoscale-period", "1"))
    pools.apply("llama", {"replicas": 1, "template": sim_template("llama"), "router": {"replicas": 1},
                          "autoscaling": {"minReplicas": 1, "maxReplicas": 8, "metric": "queue", "target": 2,
                                          "scaleDown": {"stabilizationWindowSeconds": 60}}})
    pools.wait_endpoints("llama", 1)
    url = router_url(pools, routers_kubelet, "llama")

    load = Load(url, clients=9)
    try:
        wait_for(lambda: replicas(pools, "llama") == 4, 30, "the first step to 4")
        wait_for(lambda: scale_events(pools, "llama"), 10, "the ScaledUp Event")
        operator.kill()
        operator.restart()
        pools.wait_endpoints("llama", 4)
        time.sleep(5)  # five more evaluations under the same load
        after = replicas(pools, "llama")
    finally:
        load.stop()
    assert after == 4
    assert [reason for reason, _ in scale_events(pools, "llama")] == ["ScaledUp"]


@pytest.mark.parametrize("autoscaling, template_too, message", [
    ({"minReplicas": 5, "maxReplicas": 2, "target": 1}, True, "spec.autoscaling.minReplicas: Invalid value: \"object\": minReplicas must not exceed maxReplicas"),
    ({"maxReplicas": 2, "target": 0}, True, "spec.autoscaling.target"),
    ({"maxReplicas": 2, "metric": "kv-cache", "target": 1.5}, True, "the target of kv-cache is a share"),
    ({"maxReplicas": 2, "target": 1}, False, "autoscaling needs a template"),
    ({"maxReplicas": 2, "target": 1}, "static", "a pool with static endpoints cannot be autoscaled"),
])
def test_the_crd_refuses_a_bad_autoscaling_block_naming_the_field(pools, autoscaling, template_too, message):
    spec = {"autoscaling": autoscaling, **({"template": template("x")} if template_too else
                                           {"selector": {"matchLabels": {"app": "x"}}})}
    if template_too == "static":
        spec["endpoints"] = [{"url": "http://10.0.0.9:8000"}]
    result = pools.apply("bad", spec, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_an_idle_pool_is_not_rewritten_each_period_and_its_autoscaling_status_goes_with_autoscaling(
        pools, autoscaling_operator, sims, routers_kubelet):
    spec = {"replicas": 1, "template": sim_template("llama"), "router": {"replicas": 1}}
    pools.apply("llama", {**spec, "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "metric": "queue", "target": 2}})
    pools.wait_endpoints("llama", 1)
    router_url(pools, routers_kubelet, "llama")
    wait_for(lambda: (pools.get("llama").get("status") or {}).get("load") == "0/2", 30, "the load reported")
    time.sleep(2)  # the Ready condition and the router's status settle
    version = pools.get("llama")["metadata"]["resourceVersion"]
    time.sleep(4)  # four evaluations, nothing new to say
    assert pools.get("llama")["metadata"]["resourceVersion"] == version

    pools.apply("llama", spec)  # autoscaling off
    wait_for(lambda: "autoscaling" not in pools.get("llama")["status"], 30, "status.autoscaling removed")
    assert "load" not in pools.get("llama")["status"]
