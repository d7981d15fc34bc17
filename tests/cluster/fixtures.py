"""Pytest fixtures for tests against a real Kubernetes API server.

Registered for the whole test tree by ``tests/conftest.py``; nothing starts
until a test asks for one of these fixtures.

Session scope:
  ``k8s_cluster``  a ``kube.Cluster``: the control plane started here
                   (etcd + kube-apiserver + kube-controller-manager from the
                   binaries of ``tests/cluster/build.sh``), or the cluster of
                   ``--kubeconfig``
  ``kubeconfig``   path (str) of its kubeconfig
  ``kubectl``      ``kubectl(*args, input=None, check=True)`` -> CompletedProcess
  ``k8s_api``      a ``kubernetes.client.ApiClient``
  ``control_plane`` the ``ControlPlane`` started here (skips the test with
                   ``--kubeconfig``): ``stop_apiserver()``, ``start_apiserver()``
Function scope:
  ``namespace``    a fresh namespace, deleted afterwards
  ``make_kubelet`` ``make_kubelet(**kwargs)`` -> a started ``kubelet.Kubelet``
                   (default: the test's namespace), stopped afterwards
  ``kubelet``      ``make_kubelet()`` with the defaults (runs ``maitred sim``)

A failing test that used them shows the tails of the control-plane logs and of
its kubelets' logs.
"""

from __future__ import annotations

import logging
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from . import procs
from .controlplane import ControlPlane
from .kube import Cluster, find_kubectl
from .kubelet import Kubelet

BUILD_SH = Path(__file__).with_name("build.sh")
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")

_CLUSTER = pytest.StashKey[Cluster]()
_KUBELETS = pytest.StashKey[list]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs a Kubernetes API server (started, or --kubeconfig)")


def bin_dir() -> Path:
    """Where build.sh puts the binaries (its cache folder for the pinned version)."""
    out = subprocess.run(["bash", str(BUILD_SH), "--print-bin-dir"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def k8s_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The cluster under test; see the module docstring."""
    given = request.config.getoption("--kubeconfig")
    binaries = bin_dir()
    if given:
        cluster = Cluster(kubeconfig=Path(given).expanduser().resolve(), kubectl_bin=find_kubectl(binaries))
        request.config.stash[_CLUSTER] = cluster
        yield cluster
        return
    missing = [name for name in BINARIES if not (binaries / name).exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not built in {binaries}: run `bash tests/cluster/build.sh` "
                    "first (about 15-25 minutes the first time, then cached)", pytrace=False)
    plane = ControlPlane(binaries, tmp_path_factory.mktemp("k8s"))
    plane.start()
    cluster = Cluster(kubeconfig=plane.kubeconfig, kubectl_bin=str(binaries / "kubectl"),
                      logs=plane.logs, started_in_s=plane.started_in_s, control_plane=plane)
    request.config.stash[_CLUSTER] = cluster
    try:
        yield cluster
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubeconfig(k8s_cluster: Cluster) -> str:
    return str(k8s_cluster.kubeconfig)


@pytest.fixture(scope="session")
def control_plane(k8s_cluster: Cluster) -> ControlPlane:
    """The control plane started here, for tests that stop and start its API server."""
    if k8s_cluster.control_plane is None:
        pytest.skip("takes the API server away: only with the control plane the tests start (no --kubeconfig)")
    return k8s_cluster.control_plane


@pytest.fixture(scope="session")
def kubectl(k8s_cluster: Cluster):
    return k8s_cluster.kubectl


@pytest.fixture(scope="session")
def k8s_api(k8s_cluster: Cluster):
    with k8s_cluster.api_client() as api:
        yield api


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kubectl, k8s_cluster) -> str:
    """A fresh namespace named after the test; deleted (not awaited) afterwards.

    The controller manager of the control plane started here is started again first if an earlier
    test's API server outage took it down.
    """
    plane = k8s_cluster.control_plane
    if plane is not None and plane.ensure_controller_manager():
        logging.getLogger("tests.cluster").warning("kube-controller-manager had exited; started it again")
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{secrets.token_hex(2)}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def make_kubelet(request: pytest.FixtureRequest, k8s_api, namespace: str, tmp_path_factory):
    """Factory of started test kubelets: ``make_kubelet(**Kubelet kwargs)``."""
    started: list[Kubelet] = []
    request.node.stash[_KUBELETS] = started
    log_dir = tmp_path_factory.getbasetemp() / "kubelet-logs"

    def make(**kwargs) -> Kubelet:
        kwargs.setdefault("namespace", namespace)
        kwargs.setdefault("log_dir", log_dir)
        kubelet = Kubelet(k8s_api, **kwargs)
        started.append(kubelet)
        return kubelet.start()

    yield make
    for kubelet in started:
        kubelet.stop()


@pytest.fixture
def kubelet(make_kubelet) -> Kubelet:
    return make_kubelet()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed:
        for title, path, lines in _logs_of(item):
            text = procs.tail(path, lines)
            if text:
                report.sections.append((f"{title} (last {lines} lines of {path})", text))
    return report


def _logs_of(item: pytest.Item):
    cluster = item.config.stash.get(_CLUSTER, None)
    if cluster is not None and "k8s_cluster" in getattr(item, "fixturenames", ()):
        for name, path in cluster.logs.items():
            yield name, path, 40
    for kubelet in item.stash.get(_KUBELETS, []):
        yield "test kubelet", kubelet.log_path, 60
        for backend_log in sorted(kubelet.log_dir.glob("*.log"))[:6]:
            if backend_log != kubelet.log_path:
                yield f"backend {backend_log.stem}", backend_log, 15


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    cluster = config.stash.get(_CLUSTER, None)
    if cluster is None:
        return
    if cluster.external:
        terminalreporter.write_line(f"cluster tests ran against {cluster.kubeconfig}")
    else:
        logs = Path(next(iter(cluster.logs.values()))).parent
        terminalreporter.write_line(
            f"control plane (etcd, kube-apiserver, kube-controller-manager) started in "
            f"{cluster.started_in_s:.1f} s; logs in {logs}")
