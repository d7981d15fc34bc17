"""The chart's tests' tools: the real helm binary, rendered manifests, a ServiceAccount's kubeconfig, and
the operator run with the exact command line of the chart's Deployment.

``Helm`` runs the binary that ``install-helm.sh`` installs, with its config, cache and data in a folder
of the test session (never the user's ``~/.config/helm``). ``OperatorFromChart`` starts ``maitred
operator`` with the args of a rendered Deployment, as the pod would, but as a local process that logs in
with a token of the chart's ServiceAccount.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from cluster import procs

REPO = Path(__file__).parents[2]
CHART = REPO / "helm" / "maitred"
CRDS = REPO / "crds"
INSTALL_SH = Path(__file__).with_name("install-helm.sh")
MAITRED = [sys.executable, "-m", "maitred.cli.main"]
#: The CRDs the chart templates; they are cluster-wide, so the tests share them (see adopt_crds).
CRD_NAMES = ("aiservicepools.maitred.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")


class HelmError(RuntimeError):
    """helm exited non-zero: the message has its command line, stdout and stderr."""

    def __init__(self, argv: list[str], done: subprocess.CompletedProcess) -> None:
        super().__init__(f"helm {' '.join(argv)} -> exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        self.stderr = done.stderr


def install_helm() -> Path:
    """Run install-helm.sh (a no-op once cached) and return the path of the helm binary."""
    done = subprocess.run(["bash", str(INSTALL_SH)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"install-helm.sh failed ({done.returncode}):\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1]) / "helm"


class Helm:
    """The helm binary with a private home; ``kubeconfig`` for the commands that reach a cluster."""

    def __init__(self, binary: Path, home: Path, kubeconfig: str | None = None) -> None:
        self.binary, self.home, self.kubeconfig = binary, home, kubeconfig
        self.env = {**os.environ,
                    "HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
                    "HELM_DATA_HOME": str(home / "data")}
        if kubeconfig:
            self.env["KUBECONFIG"] = kubeconfig

    def with_kubeconfig(self, kubeconfig: str) -> "Helm":
        return Helm(self.binary, self.home, kubeconfig)

    def run(self, *args: str, check: bool = True, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
        """``helm *args``; raises :class:`HelmError` when it fails and `check`."""
        done = subprocess.run([str(self.binary), *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout_s)
        if check and done.returncode != 0:
            raise HelmError(list(args), done)
        return done

    def template(self, *args: str, chart: Path = CHART, release: str = "maitred",
                 namespace: str = "maitred-system") -> list[dict]:
        """The documents ``helm template`` renders (``args``: --set and the like)."""
        out = self.run("template", release, str(chart), "--namespace", namespace, *args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
    """The documents of `kind` (and `name`, `namespace` if given)."""
    return [d for d in docs if d["kind"] == kind
            and (name is None or d["metadata"]["name"] == name)
            and (namespace is None or d["metadata"].get("namespace") == namespace)]


def one(docs: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> dict:
    found = find(docs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {name or ''}, rendered {len(found)}"
    return found[0]


def operator_container(docs: list[dict]) -> dict:
    """The operator container of the rendered Deployment."""
    deployment = one(docs, "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]


def adopt_crds(kubectl, release: str, namespace: str) -> None:
    """Mark the CRDs that exist already as the release's, as Helm wants before it takes them over.

    The CRDs are cluster-wide and outlive a release (resource-policy keep), and other tests apply them
    with kubectl; this is the same adoption a user does after `kubectl apply -f crds/` (chart README).
    """
    for name in CRD_NAMES:
        if kubectl("get", "crd", name, check=False).returncode != 0:
            continue
        kubectl("label", "crd", name, "app.kubernetes.io/managed-by=Helm", "--overwrite")
        kubectl("annotate", "crd", name, f"meta.helm.sh/release-name={release}",
                f"meta.helm.sh/release-namespace={namespace}", "--overwrite")


def restore_crds(kubectl) -> None:
    """Put the CRDs back exactly as crds/ has them (schema, and no Helm labels), for the tests after us."""
    for path in sorted(CRDS.glob("*.yaml")):
        kubectl("replace", "-f", str(path), check=False)


def service_account_kubeconfig(kubectl, admin_kubeconfig: str, namespace: str, service_account: str,
                               path: Path) -> Path:
    """Write a kubeconfig at `path` that logs in as `service_account` (a TokenRequest token, 1 h)."""
    token = kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    config = yaml.safe_load(Path(admin_kubeconfig).read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def can_i(kubectl, service_account: str, verb: str, resource: str, namespace: str | None = None) -> bool:
    """``kubectl auth can-i`` as the ServiceAccount ``ns:name``; ``namespace`` None means all namespaces."""
    where = ["-n", namespace] if namespace else ["--all-namespaces"]
    resource, _, subresource = resource.partition("/")  # "aiservicepools.maitred.dev/status"
    if subresource:
        where.append(f"--subresource={subresource}")
    done = kubectl("auth", "can-i", verb, resource, *where, f"--as=system:serviceaccount:{service_account}",
                   check=False)
    return done.stdout.strip() == "yes"


class LocalProcess:
    """A maitred command run as a local process in its own group, its output in `log_path`."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv, self.log_path = argv, log_path
        self.proc: subprocess.Popen | None = None

    def start(self, ready, timeout_s: float, what: str) -> "LocalProcess":
        """Start and wait until ``ready()`` is true."""
        self.proc = procs.spawn(self.argv, self.log_path)
        procs.wait_until(ready, timeout_s, what, alive=[self.proc])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, grace_s=10.0)
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def operator_from_chart(container: dict, kubeconfig: Path, log_path: Path) -> LocalProcess:
    """``maitred`` + the chart's operator args, with the liveness probe on a free loopback port."""
    port = procs.free_port()
    args = [f"--liveness=http://127.0.0.1:{port}/healthz" if a.startswith("--liveness=") else a
            for a in container["args"]]
    proc = LocalProcess([*MAITRED, *args, "--kubeconfig", str(kubeconfig)], log_path)
    proc.health_url = f"http://127.0.0.1:{port}/healthz"
    return proc


def rbac_denials(log: str) -> list[str]:
    """Log lines where the API server refused the operator for lack of permission (or kopf said so)."""
    return [line for line in log.splitlines()
            if ("cannot" in line and "system:serviceaccount:" in line) or "Not enough permissions" in line]
