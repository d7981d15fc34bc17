"""How a test talks to a cluster: its kubeconfig, kubectl, and an API client.

The same object serves the control plane the tests start and a cluster given
with ``--kubeconfig`` (kind, for instance), so the assertions do not care which.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client, config


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message holds its command line and stderr."""


@dataclass
class Cluster:
    """A reachable cluster.

    ``kubeconfig``: path to its kubeconfig; ``kubectl_bin``: the kubectl to run;
    ``logs``: control-plane log files by process name (empty for an external
    cluster); ``started_in_s``: control-plane start time, 0 for an external one;
    ``control_plane``: the ``controlplane.ControlPlane`` the tests started (None
    for an external cluster), for tests that take its API server away.
    """

    kubeconfig: Path
    kubectl_bin: str
    logs: dict[str, Path] = field(default_factory=dict)
    started_in_s: float = 0.0
    control_plane: object | None = None

    @property
    def external(self) -> bool:
        """True when the tests did not start this cluster (``--kubeconfig``)."""
        return not self.logs

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        """Run ``kubectl --kubeconfig <ours> *args`` and return it (text stdout/stderr).

        ``input`` is fed to stdin (``kubectl apply -f -``). Raises KubectlError
        when ``check`` and the exit code is not 0.
        """
        argv = [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args]
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout_s)
        if check and done.returncode != 0:
            raise KubectlError(f"{' '.join(argv[3:])} -> exit {done.returncode}: {done.stderr.strip()}")
        return done

    def api_client(self) -> client.ApiClient:
        """A new ``kubernetes`` API client for this cluster (close it, or use ``with``)."""
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        return client.ApiClient(configuration)


def find_kubectl(bin_dir: Path | None) -> str:
    """The kubectl built beside the control plane if there is one, else the one on PATH.

    Raises FileNotFoundError if there is none.
    """
    if bin_dir is not None and (bin_dir / "kubectl").exists():
        return str(bin_dir / "kubectl")
    found = shutil.which("kubectl")
    if found is None:
        raise FileNotFoundError("no kubectl: run `bash tests/cluster/build.sh` or install one")
    return found
