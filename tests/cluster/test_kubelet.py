"""The test kubelet's levers, seen as a user (or the operator) sees them:
pod status in the API, and HTTP on the pod's IP."""

from __future__ import annotations

import json
import sys
import time

import httpx
import pytest
import yaml

from .kubelet import SCHEDULER_NAME
from .procs import wait_until

pytestmark = pytest.mark.cluster


def pod_yaml(name: str, app: str = "kt", grace_s: int = 30, probe_path: str = "/health") -> str:
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "schedulerName": SCHEDULER_NAME,
            "terminationGracePeriodSeconds": grace_s,
            "containers": [{"name": "model", "image": "maitred/sim:test", "args": ["--model", "m"],
                            "ports": [{"containerPort": 8000}],
                            "readinessProbe": {"httpGet": {"path": probe_path, "port": 8000}}}],
        },
    })


def get_pod(kubectl, namespace: str, name: str) -> dict | None:
    done = kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def ready(pod: dict | None) -> bool:
    conditions = (pod or {}).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_pod(kubectl, namespace: str, name: str, **kwargs) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=pod_yaml(name, **kwargs))
    kubectl("wait", "-n", namespace, f"pod/{name}", "--for=condition=Ready", "--timeout=60s", timeout_s=70)


def test_set_ready_false_turns_the_pod_not_ready_while_it_keeps_serving(kubectl, namespace, kubelet):
    start_pod(kubectl, namespace, "p")

    kubelet.set_ready("p", False)
    wait_until(lambda: not ready(get_pod(kubectl, namespace, "p")), 10, "pod NotReady")
    assert answers(kubelet.backend("p").url)

    kubelet.set_ready("p", None)
    wait_until(lambda: ready(get_pod(kubectl, namespace, "p")), 10, "pod Ready again")


def test_a_crashed_pod_restarts_and_becomes_ready_again(kubectl, namespace, kubelet):
    start_pod(kubectl, namespace, "p")
    backend = kubelet.backend("p")
    first_pid = backend.pid

    kubelet.crash("p")
    wait_until(lambda: not ready(get_pod(kubectl, namespace, "p")), 10, "pod NotReady after the crash")
    wait_until(lambda: ready(get_pod(kubectl, namespace, "p")), 30, "pod Ready after the restart")

    status = get_pod(kubectl, namespace, "p")["status"]
    assert status["containerStatuses"][0]["restartCount"] == 1
    assert backend.pid != first_pid
    assert answers(backend.url)


def test_a_crash_without_restart_leaves_the_pod_down(kubectl, namespace, kubelet):
    start_pod(kubectl, namespace, "p")
    backend = kubelet.backend("p")

    kubelet.crash("p", restart=False)
    wait_until(lambda: not ready(get_pod(kubectl, namespace, "p")), 10, "pod NotReady after the crash")
    time.sleep(2 * kubelet.restart_delay_s + 0.5)  # past when a restart would have come
    assert not ready(get_pod(kubectl, namespace, "p"))
    assert not backend.running and not answers(backend.url)


def test_ready_delay_keeps_a_serving_pod_not_ready_for_a_while(kubectl, namespace, make_kubelet):
    kubelet = make_kubelet(ready_delay_s=5.0)
    kubectl("apply", "-n", namespace, "-f", "-", input=pod_yaml("slow"))
    wait_until(lambda: "slow" in kubelet.backends() and answers(kubelet.backend("slow").url), 30,
               "backend answers")

    assert not ready(get_pod(kubectl, namespace, "slow")), "serving, but not Ready yet"
    wait_until(lambda: ready(get_pod(kubectl, namespace, "slow")), 30, "pod Ready after the delay")


def test_a_terminating_pod_keeps_serving_until_its_grace_period_ends(kubectl, namespace, make_kubelet):
    kubelet = make_kubelet(stop_delay_s=float("inf"))
    start_pod(kubectl, namespace, "p", grace_s=4)
    backend = kubelet.backend("p")

    kubectl("delete", "pod", "p", "-n", namespace, "--wait=false")
    pod = get_pod(kubectl, namespace, "p")
    assert pod is not None and pod["metadata"].get("deletionTimestamp")
    assert answers(backend.url), "still serving while terminating"

    wait_until(lambda: get_pod(kubectl, namespace, "p") is None, 30, "pod removed after its grace period")
    assert not backend.running


def test_pods_outside_the_selector_are_left_alone(kubectl, namespace, make_kubelet):
    kubelet = make_kubelet(label_selector="app=mine")
    kubectl("apply", "-n", namespace, "-f", "-", input=pod_yaml("other", app="other"))
    start_pod(kubectl, namespace, "mine", app="mine")

    other = get_pod(kubectl, namespace, "other")
    assert not other["spec"].get("nodeName") and other["status"]["phase"] == "Pending"
    assert list(kubelet.backends()) == ["mine"]


def test_the_backend_command_is_a_parameter(kubectl, namespace, make_kubelet):
    # Any server will do: here Python's own, serving a folder listing on "/".
    make_kubelet(command=[sys.executable, "-m", "http.server", "--bind", "{ip}", "{port}"])
    kubectl("apply", "-n", namespace, "-f", "-", input=pod_yaml("plain", probe_path="/"))
    kubectl("wait", "-n", namespace, "pod/plain", "--for=condition=Ready", "--timeout=60s", timeout_s=70)

    ip = get_pod(kubectl, namespace, "plain")["status"]["podIP"]
    assert httpx.get(f"http://{ip}:8000/", timeout=5).status_code == 200


def test_a_backend_that_cannot_start_keeps_its_pod_not_ready(kubectl, namespace, make_kubelet):
    kubelet = make_kubelet(command=["/nonexistent/model-server", "--port", "{port}"])
    kubectl("apply", "-n", namespace, "-f", "-", input=pod_yaml("broken"))

    wait_until(lambda: (get_pod(kubectl, namespace, "broken") or {}).get("status", {}).get("phase") == "Running",
               30, "pod bound and reported")
    time.sleep(1.5)
    assert not ready(get_pod(kubectl, namespace, "broken"))
    assert "cannot start" in kubelet.log_path.read_text()
