"""Root conftest: only what is global to the whole test tree.

- ``--kubeconfig``: run the cluster tests against that cluster instead of
  starting a control plane.
- The cluster fixtures (``k8s_cluster``, ``kubectl``, ``k8s_api``,
  ``namespace``, ``kubelet``, ...; see tests/cluster/fixtures.py), so that any
  folder's tests can use them. They start nothing until a test asks.

Folder-specific fixtures belong in that folder's conftest.py.
"""

import sys
from pathlib import Path

# tests/ is the import root of the `cluster` package (tests/cluster/), whatever
# --import-mode pytest runs with.
sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["cluster.fixtures"]


def pytest_addoption(parser):
    parser.addoption(
        "--kubeconfig",
        default=None,
        help="run the cluster tests against this cluster (e.g. kind) instead of starting a control plane",
    )
