"""Fixtures for the Helm chart's tests (the control plane and the test kubelet come from tests/cluster).

- ``helm`` (session): the real helm binary, installed by install-helm.sh if it is not cached yet (so these
  tests never skip for want of helm), with a private home; no cluster;
- ``cluster_helm``: the same, pointed at the test cluster;
- ``install_release(name, *set_args, chart=...)``: ``helm install`` into a fresh namespace of its own;
  every release is uninstalled afterwards, its namespace deleted, and the CRDs put back as crds/ has them.
"""

from __future__ import annotations

import re
import secrets

import pytest

from cluster.procs import tail
from helm_harness import CHART, Helm, adopt_crds, install_helm, restore_crds


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> Helm:
    return Helm(install_helm(), tmp_path_factory.mktemp("helm-home"))


@pytest.fixture
def cluster_helm(helm, kubeconfig) -> Helm:
    return helm.with_kubeconfig(kubeconfig)


@pytest.fixture
def install_release(request, cluster_helm, kubectl):
    """``install_release(release, *extra helm args, chart=CHART)`` -> the release's namespace."""
    installed: list[tuple[str, str]] = []
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:30].strip("-")

    def install(release: str, *args: str, chart=CHART) -> str:
        namespace = f"rel-{slug}-{secrets.token_hex(2)}"
        adopt_crds(kubectl, release, namespace)
        installed.append((release, namespace))
        cluster_helm.run("install", release, str(chart), "--namespace", namespace, "--create-namespace", *args)
        return namespace

    yield install
    for release, namespace in installed:
        cluster_helm.run("uninstall", release, "--namespace", namespace, check=False)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    if installed:
        restore_crds(kubectl)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """On failure, show the tails of the local operator's and router's logs."""
    report = yield
    if report.failed and "tmp_path" in getattr(item, "funcargs", {}):
        for log in sorted(item.funcargs["tmp_path"].glob("*.log")):
            report.sections.append((f"{log.name} (last 40 lines)", tail(log, 40)))
    return report
