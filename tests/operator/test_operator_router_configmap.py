"""`maitred router --configmap NS/NAME` against the real API server, with no operator: the ConfigMap is written by hand."""

from __future__ import annotations

import json

import pytest
import yaml

from cluster import procs
from cluster.addresses import POOL as ADDRESSES

from operator_harness import MAITRED, chat, wait_for

pytestmark = pytest.mark.cluster


def configmap(version: int, endpoints: dict[str, str], raw: str | None = None) -> str:
    """ConfigMap manual-routing with a table of `endpoints` (id -> url), or with `raw` text."""
    table = {"pool": "t/manual", "version": version, "method": "round-robin", "models": ["m1"],
             "endpoints": [{"id": id_, "url": url} for id_, url in endpoints.items()]}
    return yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "manual-routing"},
                           "data": {"table.json": raw if raw is not None else json.dumps(table)}})


@pytest.fixture
def sims(tmp_path):
    started = []
    for i in range(2):
        host = ADDRESSES.take(8000)
        started.append((f"http://{host}:8000", procs.spawn(
            [*MAITRED, "sim", "--host", host, "--port", "8000", "--model", "m1"], tmp_path / f"sim-{i}.log")))
    yield [url for url, _ in started]
    for _, proc in started:
        procs.stop(proc)


def test_the_router_follows_its_configmap_and_keeps_the_last_good_table(pools, start_router, sims):
    a, b = sims
    pools.kubectl("apply", "-f", "-", input=configmap(1, {"a": a}))
    router = start_router("manual")
    assert {chat(router.url).headers["x-maitred-endpoint"] for _ in range(4)} == {"a"}

    pools.kubectl("apply", "-f", "-", input=configmap(2, {"a": a, "b": b}))
    wait_for(lambda: router.table_version() == 2, 10, "version 2 applied")
    assert {chat(router.url).headers["x-maitred-endpoint"] for _ in range(4)} == {"a", "b"}

    pools.kubectl("apply", "-f", "-", input=configmap(3, {}, raw='{"version": -1}'))
    wait_for(lambda: "version" in (router.debug().get("tableError") or ""), 10, "the bad table rejected")
    assert router.table_version() == 2 and chat(router.url).status_code == 200

    pools.kubectl("delete", "configmap", "manual-routing")
    wait_for(lambda: "deleted" in (router.debug().get("tableError") or ""), 10, "the deletion noticed")
    assert router.table_version() == 2 and chat(router.url).status_code == 200

    pools.kubectl("apply", "-f", "-", input=configmap(4, {"b": b}))
    wait_for(lambda: router.table_version() == 4, 10, "version 4 applied after the ConfigMap came back")
    assert {chat(router.url).headers["x-maitred-endpoint"] for _ in range(4)} == {"b"}
