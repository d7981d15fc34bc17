"""The operator's Events: posted about the pool, and dropped quietly where no one can read them (a namespace
being deleted), rather than retried with ERRORs as kopf's own poster does."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets

import pytest

from maitred.operator.kube import Kube

from operator_harness import wait_for

pytestmark = pytest.mark.cluster


def pool_body(namespace: str) -> dict:
    return {"apiVersion": "maitred.dev/v1alpha1", "kind": "AIServicePool",
            "metadata": {"name": "llama", "namespace": namespace, "uid": "u-1"}}


def post(kubeconfig: str, namespace: str, reason: str) -> None:
    async def go() -> None:
        kube = await Kube.connect(kubeconfig)
        try:
            await kube.post_event(pool_body(namespace), "Warning", reason, "x" * 5000)
        finally:
            await kube.close()

    asyncio.run(go())


def test_an_event_reaches_the_pool_and_a_terminating_namespace_is_no_error(kubeconfig, kubectl, pools, caplog):
    post(kubeconfig, pools.namespace, "Tested")
    (event,) = wait_for(lambda: pools.events("llama"), 10, "the event")
    assert event[:2] == ("Warning", "Tested") and len(event[2]) <= 1024

    # A namespace held in Terminating by a finalizer on one of its objects.
    doomed = f"t-doomed-{secrets.token_hex(2)}"
    kubectl("create", "namespace", doomed)
    held = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held", "finalizers": ["test/hold"]}}
    kubectl("-n", doomed, "apply", "-f", "-", input=json.dumps(held))
    kubectl("delete", "namespace", doomed, "--wait=false")
    wait_for(lambda: kubectl("get", "namespace", doomed, "-o", "jsonpath={.status.phase}").stdout == "Terminating",
             10, "the namespace Terminating")
    try:
        with caplog.at_level(logging.DEBUG, logger="maitred.operator"):
            post(kubeconfig, doomed, "TooLate")
            post(kubeconfig, f"t-never-{secrets.token_hex(2)}", "Nowhere")
        assert [r.levelname for r in caplog.records if "dropped" in r.getMessage()] == ["DEBUG", "DEBUG"]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        kubectl("-n", doomed, "patch", "configmap", "held", "--type=merge", "-p", '{"metadata": {"finalizers": null}}')
