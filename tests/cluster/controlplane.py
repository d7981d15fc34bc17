"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

The same binaries a cluster runs (built by ``tests/cluster/build.sh``), with
the flags of controller-runtime's envtest where they fit: token auth with an
admin in ``system:masters``, RBAC, service-account keys made at start, the
ServiceAccount admission plugin off (there is no token controller to feed it).
There is no scheduler and no kubelet: ``kubelet.Kubelet`` plays both for the
pods a test hands it.

Usage::

    plane = ControlPlane(bin_dir, workdir)
    plane.start()            # raises RuntimeError/TimeoutError with the log tail
    ... plane.kubeconfig ...
    plane.stop_apiserver()   # a fault: the API server goes away (etcd and its data stay)
    plane.start_apiserver()  # back on the same address, with the same flags; returns once /readyz passes
    plane.stop()             # idempotent; nothing is left running
"""

from __future__ import annotations

import base64
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from . import pki, procs

# The controllers the tests rely on. The node, volume, job, ... controllers
# stay off: they would act on the test kubelet's fake node and add noise.
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    "endpointslice-controller",
    "namespace-controller",  # so that deleting a test namespace finishes
    "serviceaccount-controller",  # a `default` ServiceAccount per namespace, as in any cluster
    "resourcequota-controller",  # quota admission enforces a ResourceQuota only once this controller took it up
)

START_TIMEOUT_S = 120.0


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager as local processes.

    ``bin_dir`` holds ``etcd``, ``kube-apiserver`` and ``kube-controller-manager``;
    ``workdir`` (created) receives the data dir, keys, kubeconfigs and one log
    file per process (``logs``: name -> path). ``started_in_s`` is the time
    from the first process start to a ready API server and controller manager.
    """

    def __init__(self, bin_dir: Path, workdir: Path) -> None:
        self.bin_dir = Path(bin_dir)
        self.workdir = Path(workdir)
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.logs = {name: self.workdir / f"{name}.log"
                     for name in ("etcd", "kube-apiserver", "kube-controller-manager")}
        self.server = ""
        self.started_in_s = 0.0
        self._procs: dict[str, subprocess.Popen] = {}
        self._apiserver_args: list[str] = []
        self._kcm_args: list[str] = []
        self._kcm_port = 0
        self._ca_ctx: ssl.SSLContext | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start all three and wait until the API server is ready.

        Raises RuntimeError (a process exited) or TimeoutError, with the
        process's log tail in the message; whatever started is stopped again.
        """
        t0 = time.monotonic()
        try:
            self._start_all()
        except Exception as exc:
            logs = "\n".join(f"--- {name} ({self.logs[name]}) ---\n{text}"
                             for name, text in self.log_tails().items())
            self.stop()
            raise RuntimeError(f"control plane did not start: {exc}\n{logs}") from exc
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - t0

    def stop(self) -> None:
        """Stop the controller manager, the API server, then etcd. Idempotent."""
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                procs.stop(proc, grace_s=10.0)

    def stop_apiserver(self, kill: bool = True) -> None:
        """Take the API server away: SIGKILL (`kill`, a crash: its connections are reset) or SIGTERM
        (a graceful exit, at most 10 s). etcd and the controller manager keep running."""
        proc = self._procs.pop("kube-apiserver")
        if kill:
            procs.kill(proc)
        else:
            procs.stop(proc, grace_s=10.0)

    def start_apiserver(self) -> float:
        """Start the API server again, on the same port with the same flags; return the seconds until its
        /readyz passed. Raises TimeoutError or RuntimeError (it exited) with its log tail.

        The controller manager is restarted too, once the API server is ready: its informers back off
        for up to 30 s after an outage, which would slow down the Deployments of the tests that follow.
        """
        t0 = time.monotonic()
        self._run("kube-apiserver", self._apiserver_args)
        # Not the controller manager: it may have exited during the outage (it does when the API server
        # goes away while it starts), and it is started afresh below either way.
        procs.wait_until(lambda: _http_ok(f"{self.server}/readyz", self._ca_ctx), START_TIMEOUT_S,
                         "kube-apiserver /readyz (restarted)",
                         alive=[self._procs["etcd"], self._procs["kube-apiserver"]])
        ready_s = time.monotonic() - t0
        procs.stop(self._procs.pop("kube-controller-manager"), grace_s=5.0)
        self._start_controller_manager()
        return ready_s

    def ensure_controller_manager(self) -> bool:
        """Start the controller manager again if it has exited (after a test's outage); True if it had.

        Without it no Deployment gets pods, and every later test would fail for a reason of its own.
        """
        proc = self._procs.get("kube-controller-manager")
        if proc is not None and proc.poll() is None:
            return False
        if proc is not None:
            self._procs.pop("kube-controller-manager")
        self._start_controller_manager()
        return True

    def __enter__(self) -> "ControlPlane":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the three processes ---------------------------------------------------

    def _start_all(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        keys = pki.write_pki(self.workdir / "pki")
        admin_token, kcm_token = secrets.token_hex(16), secrets.token_hex(16)
        tokens = self.workdir / "tokens.csv"
        # token,user,uid,"group1,group2"
        tokens.write_text(
            f'{admin_token},admin,admin,"system:masters"\n'
            f'{kcm_token},system:kube-controller-manager,kcm,"system:masters"\n'
        )
        tokens.chmod(0o600)

        etcd_port, peer_port, api_port, kcm_port = procs.free_ports(4)
        etcd_url = self._start_etcd(etcd_port, peer_port)
        self.server = f"https://127.0.0.1:{api_port}"
        self._apiserver_args = [
            "--etcd-servers", etcd_url,
            "--bind-address", "127.0.0.1",
            "--advertise-address", "127.0.0.1",
            "--secure-port", str(api_port),
            "--tls-cert-file", str(keys["serving_crt"]),
            "--tls-private-key-file", str(keys["serving_key"]),
            "--token-auth-file", str(tokens),
            "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(keys["sa_pub"]),
            "--service-account-signing-key-file", str(keys["sa_key"]),
            "--disable-admission-plugins", "ServiceAccount",
            # The `kubernetes` Service's Endpoints may not hold a loopback IP.
            "--endpoint-reconciler-type", "none",
            "--service-cluster-ip-range", "10.0.0.0/24",
            "--allow-privileged=true",
            "--profiling=false",
        ]
        self._run("kube-apiserver", self._apiserver_args)
        ca_ctx = self._ca_ctx = ssl.create_default_context(cafile=str(keys["ca_crt"]))
        procs.wait_until(lambda: _http_ok(f"{self.server}/readyz", ca_ctx), START_TIMEOUT_S,
                         "kube-apiserver /readyz", alive=self._alive())

        self._write_kubeconfig(self.kubeconfig, keys["ca_crt"], admin_token)
        kcm_kubeconfig = self.workdir / "kcm.kubeconfig"
        self._write_kubeconfig(kcm_kubeconfig, keys["ca_crt"], kcm_token)
        self._kcm_args = [
            "--kubeconfig", str(kcm_kubeconfig),
            "--controllers", ",".join(CONTROLLERS),
            "--leader-elect=false",
            "--bind-address", "127.0.0.1",
            "--secure-port", str(kcm_port),
            "--cert-dir", str(self.workdir / "kcm-certs"),
            "--profiling=false",
        ]
        self._kcm_port = kcm_port
        self._start_controller_manager()

    def _start_controller_manager(self) -> None:
        self._run("kube-controller-manager", self._kcm_args)
        # Its serving cert is self-signed and /healthz carries no secret.
        insecure = ssl._create_unverified_context()
        procs.wait_until(lambda: _http_ok(f"https://127.0.0.1:{self._kcm_port}/healthz", insecure),
                         START_TIMEOUT_S, "kube-controller-manager /healthz", alive=self._alive())

    def _start_etcd(self, client_port: int, peer_port: int) -> str:
        client = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        self._run("etcd", [
            "--name", "maitred-test",
            "--data-dir", str(self.workdir / "etcd-data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"maitred-test={peer}",
            "--unsafe-no-fsync",  # the data is thrown away; fsync only costs time
            "--log-level", "warn",
        ])
        return client

    def _run(self, name: str, args: list[str]) -> None:
        binary = self.bin_dir / name
        if not binary.exists():
            raise FileNotFoundError(f"{binary} is missing: run `bash tests/cluster/build.sh`")
        self._procs[name] = procs.spawn([str(binary), *args], self.logs[name])

    def _alive(self) -> list[subprocess.Popen]:
        return list(self._procs.values())

    def _write_kubeconfig(self, path: Path, ca_crt: Path, token: str) -> None:
        ca_data = base64.b64encode(ca_crt.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "maitred-test",
                          "cluster": {"server": self.server, "certificate-authority-data": ca_data}}],
            "users": [{"name": "admin", "user": {"token": token}}],
            "contexts": [{"name": "maitred-test",
                          "context": {"cluster": "maitred-test", "user": "admin"}}],
            "current-context": "maitred-test",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    def log_tails(self, lines: int = 40) -> dict[str, str]:
        """The last ``lines`` lines of each process's log, by process name."""
        return {name: procs.tail(path, lines) for name, path in self.logs.items()}


def _http_ok(url: str, ctx: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False
