"""Fixtures for the operator's cluster tests (the control plane and the test kubelet come from tests/cluster).

- ``crds`` (session): the AIServicePool and kopf peering CRDs, applied with kubectl;
- ``pools``: reads and writes of the test namespace's pools (``operator_harness.Pools``);
- ``operator``: a running ``maitred operator --namespace <test namespace>`` with peering;
  ``start_operator(via=None, **kwargs)`` starts more (all stopped after the test; `via`: another
  kubeconfig, e.g. one through a proxy);
- ``replicas_kubelet``: the test kubelet for every pod of the namespace but the routers' (which
  the tests run locally instead, as ``start_router``);
- ``start_router(pool)``: ``maitred router --configmap <ns>/<pool>-routing`` on a loopback address;
- ``routers_kubelet``: the test kubelet for the routers' pods, which it runs as real routers.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cluster.procs import tail
from operator_harness import OperatorProcess, Pools, RouterProcess

CRDS = Path(__file__).parents[2] / "crds"


@pytest.fixture(scope="session")
def crds(kubectl) -> None:
    kubectl("apply", "-f", str(CRDS))
    names = ("crd/aiservicepools.maitred.dev", "crd/kopfpeerings.kopf.dev", "crd/clusterkopfpeerings.kopf.dev")
    for attempt in range(10):  # a CRD created a moment ago may have no status.conditions yet: kubectl wait fails
        done = kubectl("wait", "--for=condition=Established", "--timeout=60s", *names, check=attempt == 9)
        if done.returncode == 0:
            break
        time.sleep(0.5)


@pytest.fixture
def pools(crds, k8s_api, kubectl, namespace) -> Pools:
    def in_namespace(*args, **kwargs):
        return kubectl("-n", namespace, *args, **kwargs)

    return Pools(k8s_api, in_namespace, namespace)


@pytest.fixture
def start_operator(crds, kubeconfig, namespace, tmp_path):
    started: list[OperatorProcess] = []

    def start(via: str | None = None, **kwargs) -> OperatorProcess:
        """Start an operator (`via`: another kubeconfig to reach the API server with, e.g. through a proxy)."""
        proc = OperatorProcess(via or kubeconfig, namespace, tmp_path / f"operator-{len(started)}.log", **kwargs)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def operator(start_operator) -> OperatorProcess:
    return start_operator()


@pytest.fixture
def replicas_kubelet(make_kubelet):
    return make_kubelet(label_selector="!maitred.dev/router-of")


#: An image the routers' kubelet cannot pull (any other runs as `maitred router`).
MISSING_IMAGE = "registry.invalid/maitred/does-not-exist:0"


@pytest.fixture
def routers_kubelet(make_kubelet, kubeconfig):
    """The test kubelet for the routers' pods: each runs as a real ``maitred router`` with the args the operator
    gave the pod, on the pod's own address, reading its ConfigMap through the test kubeconfig (one worker, to
    spare the cores). `MISSING_IMAGE` cannot be pulled: its pods stay in ImagePullBackOff."""

    def argv(backend) -> list[str]:
        args = list(backend.args)
        for option, value in (("--host", backend.ip), ("--workers", "1")):
            if option in args:
                args[args.index(option) + 1] = value
            else:
                args += [option, value]
        return ["maitred", *args, "--kubeconfig", kubeconfig, "--log-level", "warning", "--no-access-log"]

    return make_kubelet(label_selector="maitred.dev/router-of", command=argv,
                        can_pull=lambda image: image != MISSING_IMAGE)


@pytest.fixture
def start_router(kubeconfig, namespace, tmp_path):
    started: list[RouterProcess] = []

    def start(pool: str) -> RouterProcess:
        proc = RouterProcess(kubeconfig, f"{namespace}/{pool}-routing", tmp_path / f"router-{len(started)}.log")
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """On failure, show the tails of the operator's and routers' logs."""
    report = yield
    if report.failed and "tmp_path" in getattr(item, "funcargs", {}):
        for log in sorted(Path(item.funcargs["tmp_path"]).glob("*.log")):
            report.sections.append((f"{log.name} (last 40 lines)", tail(log, 40)))
    return report
