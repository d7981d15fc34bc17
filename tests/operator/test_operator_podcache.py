"""The pod cache's reflector (LIST, WATCH, LIST again), driven by a scripted API and against the real API
server (pod changes cost no pod LIST), and the routing table's checks at the scale of 1,000 endpoints
(the plain-URL check agrees with yarl's)."""

from __future__ import annotations

import asyncio

import pytest
from yarl import URL

from maitred.operator import podcache
from maitred.operator.podcache import PodCache, slim_pod
from maitred.router.table import Endpoint, RoutingTable

from operator_harness import serving, template
from operator_objects import pod


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


class ScriptedApi:
    """A stand-in for Kube: each LIST returns the next listing; each WATCH yields the next batch of events.

    A listing is (pods, resourceVersion); a batch is a list of (type, pod) or ("ERROR", status). Once the
    script is used up, LISTs repeat the last listing and watches wait, as a quiet API server's would.
    """

    def __init__(self, listings: list, batches: list) -> None:
        self.listings, self.batches = list(listings), list(batches)
        self.calls: list[tuple[str, str | None]] = []
        self._last = self.listings[0]

    async def list_all(self, path: str, query=None):
        self.calls.append(("LIST", None))
        self._last = self.listings.pop(0) if self.listings else self._last
        pods, version = self._last
        return [dict(p) for p in pods], version

    async def watch(self, path: str, resource_version: str, query=None):
        self.calls.append(("WATCH", resource_version))
        if not self.batches:
            await asyncio.sleep(0.05)
            return
        batch = self.batches.pop(0)
        if isinstance(batch, Exception):
            raise batch
        for kind, obj in batch:
            yield {"type": kind, "object": obj}


def versioned(p: dict, version: str) -> dict:
    return {**p, "metadata": {**p["metadata"], "resourceVersion": version}}


async def until(check, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_the_cache_follows_the_watch_after_one_list_and_reports_each_change_with_the_labels():
    a, b = pod("a", "10.0.0.1"), pod("b", "10.0.0.2")
    api = ScriptedApi([([a], "10")], [[("ADDED", versioned(b, "11")),
                                      ("MODIFIED", versioned(pod("a", "10.0.0.1", ready=False), "12")),
                                      ("MODIFIED", versioned(pod("a", "10.0.0.1", ready=False), "13")),  # no news
                                      ("DELETED", versioned(b, "14"))]])

    async def scenario():
        changes = []
        cache = PodCache(api, ["ml"], on_change=lambda ns, name, labels: changes.append((ns, name, labels["app"])))
        cache.start()
        await cache.wait_synced("ml")
        await until(lambda: len(api.calls) >= 3)
        await cache.stop()
        return cache.pods("ml"), changes

    pods, changes = run(scenario())
    assert [(p["metadata"]["name"], p["status"]["conditions"]) for p in pods] == [
        ("a", [{"type": "Ready", "status": "False"}])]
    assert changes == [("ml", "a", "llama"), ("ml", "b", "llama"), ("ml", "a", "llama"), ("ml", "b", "llama")]
    assert api.calls[:3] == [("LIST", None), ("WATCH", "10"), ("WATCH", "14")], "re-watch from the last version"


def test_a_410_lists_again_and_a_pod_the_watch_never_reported_gone_leaves_the_cache():
    a, b = pod("a", "10.0.0.1"), pod("b", "10.0.0.2")
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
    api = ScriptedApi([([a, b], "10"), ([a], "20")], [[("ERROR", gone)]])

    async def scenario():
        changes = []
        cache = PodCache(api, ["ml"], on_change=lambda ns, name, labels: changes.append(name))
        cache.start()
        await until(lambda: api.calls.count(("LIST", None)) == 2)
        await until(lambda: len(cache.pods("ml")) == 1)
        await cache.stop()
        return [p["metadata"]["name"] for p in cache.pods("ml")], changes

    names, changes = run(scenario())
    assert names == ["a"]
    assert changes == ["a", "b", "b"], "b's pools are kicked when it leaves"


def test_the_cache_is_listed_again_periodically_whatever_the_watch_says(monkeypatch):
    monkeypatch.setattr(podcache, "RELIST_S", 0.1)
    a, b = pod("a", "10.0.0.1"), pod("b", "10.0.0.2")
    api = ScriptedApi([([a, b], "10"), ([a], "20")], [])  # the watch never says b went away

    async def scenario():
        cache = PodCache(api, ["ml"])
        cache.start()
        await until(lambda: [p["metadata"]["name"] for p in cache.pods("ml")] == ["a"])
        await cache.stop()

    run(scenario())


def test_a_failing_api_is_tried_again_at_once_then_at_most_every_second():
    a = pod("a", "10.0.0.1")
    api = ScriptedApi([([a], "10")], [ConnectionResetError("reset"), OSError("refused"), OSError("refused")])

    async def scenario():
        cache = PodCache(api, ["ml"])
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        cache.start()
        await until(lambda: len(api.calls) >= 5)
        took = loop.time() - t0
        await cache.stop()
        return took

    assert run(scenario()) < 1.0, "0.1 + 0.2 + 0.4 s of backoff, not kopf's 1 + 1 + 2 s"


def test_the_cache_keeps_what_the_table_and_status_read_and_nothing_else():
    full = pod("a", "10.0.0.1", ports=[{"name": "http", "containerPort": 8000, "protocol": "TCP"}])
    full["metadata"]["managedFields"] = [{"manager": "kubelet"}] * 20
    full["status"]["containerStatuses"] = [{"name": "model", "ready": True}]
    slim = slim_pod(full)
    assert slim == {"metadata": {"name": "a", "namespace": "ml", "uid": "uid-a", "labels": {"app": "llama"}},
                    "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8000}]}]},
                    "status": {"conditions": [{"type": "Ready", "status": "True"}], "podIP": "10.0.0.1"}}


def _yarl_verdict(url: str) -> str | None:
    """What the URL check said before it had a fast path: the normalized URL, or None if refused."""
    try:
        port = URL(url).port
    except ValueError:
        return None
    return url.rstrip("/") if port is not None and 0 < port < 65536 else None


@pytest.mark.parametrize("url", [
    "http://10.1.2.3:8000", "https://10.1.2.3:443/", "http://llama-0.ml.svc:8000", "http://LLAMA:80",
    "http://a:0", "http://a:65535", "http://a:65536", "http://a:99999", "http://999.1.1.1:80", "http://1.2.3:8",
    "http://[::1]:8000", "http://[1.2]:8000", "http://host", "http://a_b:80", "http://a..b:80", "http://-:1",
    "http://10.0.0.1:08000", "http://a:8000/v1", "http://a:8000//",
])
def test_the_fast_url_check_says_what_yarl_says(url):
    try:
        verdict = Endpoint(id="x", url=url).url
    except ValueError:
        verdict = None
    assert verdict == _yarl_verdict(url)


def test_duplicate_endpoint_ids_are_still_named_in_a_table_of_thousands():
    endpoints = [Endpoint(id=f"p{i}", url=f"http://10.0.{i // 256}.{i % 256}:8000") for i in range(3000)]
    with pytest.raises(ValueError, match=r"repeated: p7, p9 \["):
        RoutingTable(endpoints=[*endpoints, endpoints[9], endpoints[7], endpoints[9]])


@pytest.mark.cluster
def test_pod_changes_are_served_from_the_operators_watch_not_a_list_each(pools, operator, replicas_kubelet):
    pools.apply("llama", {"replicas": 3, "template": template("llama")})
    pools.wait_endpoints("llama", 3)
    pod_name = sorted(replicas_kubelet.backends())[0]
    # LISTs of one namespace's pods (the controller manager's informers list all namespaces, now and then)
    lists_before = pools.apiserver_requests("LIST", "pods", scope="namespace")

    for ready in (False, True, False, True, False, True):
        replicas_kubelet.set_ready(pod_name, ready)
        serving(pools, "llama", pod_name, ready)

    lists = pools.apiserver_requests("LIST", "pods", scope="namespace") - lists_before
    assert lists <= 1, f"{lists} LISTs of pods for 6 pod changes"
