"""A kubelet for tests: real local processes for the pods it is told to manage.

With no container runtime, pods never run. ``Kubelet`` plays the scheduler
and the kubelet for the pods of one namespace (and optionally a label
selector): it registers a fake Node, binds pending pods to it, starts one
local backend process per pod (``maitred sim`` by default) on the pod's own
127.x address, and writes pod status as a kubelet would (phase Running,
``podIP``/``podIPs``, the Ready condition once the readiness probe passes).
When a pod is deleted it keeps the process for ``stop_delay_s`` (capped by
the grace period), stops it, and removes the pod.

Tests steer it: ``set_ready(pod, False)`` fails the readiness probe,
``crash(pod)`` kills the process (restarted after ``restart_delay_s`` unless
told not to), ``ready_delay_s`` makes new pods slow to become Ready and
``stop_delay_s`` keeps a terminating pod serving.

    with Kubelet(api_client, namespace="t1") as kubelet:
        ...  # create a Deployment; its pods become Ready and answer HTTP
        kubelet.backend("web-7d9f-abcde").url   # "http://127.0.1.3:8000"

Its pods should set ``spec.schedulerName: maitred-test`` (``SCHEDULER_NAME``)
when the same test must also run on a real cluster: a real scheduler then
leaves them to this kubelet. Readiness is probed until it first passes (and
after each restart), not periodically; use ``set_ready`` to flip it later.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

from kubernetes import client, watch

from . import procs
from .addresses import POOL, AddressPool

SCHEDULER_NAME = "maitred-test"
DEFAULT_PORT = 8000
DEFAULT_MODEL = "test-model"
# Fields: ip, port, model, name (pod), namespace.
DEFAULT_COMMAND = ("maitred", "sim", "--host", "{ip}", "--port", "{port}", "--model", "{model}")
TAINT_KEY = "maitred.dev/test-kubelet"
HEARTBEAT_S = 10.0
SYNC_PERIOD_S = 0.2

_MERGE_PATCH = "application/merge-patch+json"
# Strategic merge for pod status: conditions merge by type, so a condition
# that someone else owns (a readiness gate, DisruptionTarget) survives.
_STRATEGIC_PATCH = "application/strategic-merge-patch+json"

Command = Union[Sequence[str], Callable[["Backend"], Sequence[str]]]


class KubeError(RuntimeError):
    """An API call answered with an error status (``status``: the HTTP code)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


@dataclass
class Backend:
    """One pod's local process, as a container runtime would run it.

    Read-only for tests: ``ip``, ``port``, ``url``, ``pid``, ``running``,
    ``ready`` (as last written to the pod's status) and ``restarts``.
    """

    namespace: str
    name: str
    uid: str
    ip: str
    port: int
    model: str
    log_path: Path
    ready_delay_s: float
    proc: subprocess.Popen | None = None
    restarts: int = 0
    ready: bool = False
    started_at: str = ""  # pod status startTime, RFC 3339
    container_started_at: str = ""
    ready_changed_at: str = ""
    probe_passed_at: float | None = None  # time.monotonic()
    forced_ready: bool | None = None
    restart_at: float | None = None  # time.monotonic(); None: no restart planned
    hold_crashed: bool = False
    stop_at: float | None = None  # time.time(); set once the pod is terminating
    written_status: dict | None = field(default=None, repr=False)
    args: tuple[str, ...] = ()  # the first container's args, for a command that runs what the pod asks
    pull_error: str | None = None  # the image cannot be pulled: no process, ImagePullBackOff

    @property
    def url(self) -> str:
        """Base URL of the backend, e.g. ``http://127.0.1.3:8000``."""
        return f"http://{self.ip}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Kubelet:
    """Plays scheduler + kubelet for the pods of ``namespace`` matching ``label_selector``.

    ``api``: a ``kubernetes.client.ApiClient``. ``namespace=None`` manages
    pods of all namespaces. ``command``: argv template (fields ``{ip}``,
    ``{port}``, ``{model}``, ``{name}``, ``{namespace}``) or a callable taking
    the ``Backend`` (with the container's ``args``) and returning argv. ``can_pull(image)``: False
    leaves the pod's container waiting in ImagePullBackOff, as for an image no registry has. Port: the first container's first
    ``containerPort`` (else 8000); model: its ``--model`` argument or ``MODEL``
    env (else ``test-model``). Times in seconds. Logs (its own and one per
    backend) go to ``log_dir``.
    """

    def __init__(self, api: client.ApiClient, namespace: str | None = None, *,
                 label_selector: str | None = None, command: Command = DEFAULT_COMMAND,
                 node_name: str | None = None, log_dir: Path | None = None,
                 ready_delay_s: float = 0.0, stop_delay_s: float = 0.0,
                 restart_delay_s: float = 1.0, probe_timeout_s: float = 1.0,
                 addresses: AddressPool = POOL, can_pull: Callable[[str], bool] | None = None) -> None:
        self.namespace = namespace
        self.label_selector = label_selector
        self.command = command
        self.node_name = node_name or f"maitred-test-node-{secrets.token_hex(3)}"
        self.log_dir = Path(log_dir or Path(tempfile.gettempdir()) / "maitred-kubelet") / self.node_name
        self.log_path = self.log_dir / "kubelet.log"
        self.ready_delay_s = ready_delay_s
        self.stop_delay_s = stop_delay_s
        self.restart_delay_s = restart_delay_s
        self.probe_timeout_s = probe_timeout_s
        self.can_pull = can_pull
        self._addresses = addresses
        self._core = client.CoreV1Api(api)
        self._coordination = client.CoordinationV1Api(api)
        self._pods: dict[str, dict] = {}  # uid -> pod as last seen
        self._backends: dict[str, Backend] = {}  # uid -> backend
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._watch = watch.Watch()
        self._threads: list[threading.Thread] = []
        self._last_heartbeat = 0.0
        self.log = logging.getLogger(f"tests.kubelet.{self.node_name}")

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> "Kubelet":
        """Register the node and start watching and syncing pods. Returns self."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(handler)
        self.log.setLevel(logging.INFO)
        self._register_node()
        self._relist()  # before the threads start, so start() returns with the pods known
        for target in (self._watch_loop, self._sync_loop):
            thread = threading.Thread(target=target, name=f"{self.node_name}-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.log.info("started: namespace=%s selector=%s", self.namespace, self.label_selector)
        return self

    def stop(self) -> None:
        """Stop all backends, remove their pods at once (as when a node goes away) and the node.

        Idempotent; never raises for API errors (the API server may be gone already).
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + 10
        for thread in self._threads:
            while thread.is_alive() and time.monotonic() < deadline:
                self._watch.stop()  # again: a stream opened meanwhile resets the flag
                thread.join(timeout=0.2)
        with self._lock:
            backends = list(self._backends.values())
            self._backends.clear()
            started = {b.uid for b in backends}
            # Bound here but never started: they would hang in Terminating too.
            backends += [_placeholder(p) for p in self._pods.values()
                         if p["spec"].get("nodeName") == self.node_name and p["metadata"]["uid"] not in started]
        for backend in backends:
            if backend.proc is not None:
                procs.stop(backend.proc, grace_s=2.0)
            self._try(self._delete_pod, backend)
        self._try(self._raw, self._coordination.delete_namespaced_lease,
                  self.node_name, "kube-node-lease")
        self._try(self._raw, self._core.delete_node, self.node_name)
        self.log.info("stopped")
        for handler in list(self.log.handlers):
            self.log.removeHandler(handler)
            handler.close()

    def __enter__(self) -> "Kubelet":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what tests steer and read ---------------------------------------------

    def backend(self, pod: str) -> Backend:
        """The backend of pod ``pod`` ("name" or "namespace/name"); KeyError if none runs."""
        with self._lock:
            for backend in self._backends.values():
                if pod in (backend.name, f"{backend.namespace}/{backend.name}"):
                    return backend
        raise KeyError(f"the test kubelet runs no pod {pod!r}")

    def backends(self) -> dict[str, Backend]:
        """The pods it runs now, by name ("namespace/name" when watching all namespaces)."""
        with self._lock:
            return {self._key(b): b for b in self._backends.values()}

    def set_ready(self, pod: str, ready: bool | None) -> None:
        """Force the Ready condition: False fails the readiness probe, True passes it,
        None goes back to probing. Takes effect within a sync period (0.2 s)."""
        self.backend(pod).forced_ready = ready
        self.log.info("set_ready %s -> %s", pod, ready)
        self._wake.set()

    def crash(self, pod: str, restart: bool = True) -> None:
        """SIGKILL the pod's process. The pod turns NotReady; with ``restart`` the
        process starts again after ``restart_delay_s`` (restartCount + 1) and the
        pod becomes Ready when its probe passes, else it stays down."""
        backend = self.backend(pod)
        backend.hold_crashed = not restart
        self.log.info("crash %s (restart=%s)", pod, restart)
        if backend.proc is not None:
            procs.kill(backend.proc)
        self._wake.set()

    def _key(self, backend: Backend) -> str:
        return backend.name if self.namespace else f"{backend.namespace}/{backend.name}"

    # -- API plumbing ----------------------------------------------------------

    @staticmethod
    def _raw(call: Callable, *args, **kwargs) -> dict:
        """Call an API method without the client's models; return the JSON body.

        Raw JSON because the kubelet reads and writes status fields that a
        client's models may not know, and must never fail on them.
        Raises KubeError for a non-2xx answer.
        """
        kwargs.setdefault("_request_timeout", 30)
        try:
            resp = call(*args, _preload_content=False, **kwargs)
        except client.ApiException as exc:
            raise KubeError(exc.status or 0, str(exc.body)) from exc
        data = resp.data
        if not 200 <= resp.status < 300:
            raise KubeError(resp.status, data.decode(errors="replace"))
        return json.loads(data) if data else {}

    def _try(self, fn: Callable, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # best effort at shutdown
            self.log.info("ignored at stop: %s", exc)

    # -- node --------------------------------------------------------------------

    def _register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": {
                "kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux", TAINT_KEY: "true"}},
            # Keep real schedulers from placing other pods here: no one would run them.
            "spec": {"taints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}]},
        }
        try:
            self._raw(self._core.create_node, node)
        except KubeError as exc:
            if exc.status != 409:
                raise
        self._heartbeat()

    def _heartbeat(self) -> None:
        """Node Ready + a fresh Lease: what keeps a real node lifecycle controller
        (kind's) from marking the node unreachable and evicting its pods."""
        now = _rfc3339()
        status = {"status": {
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.node_name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "maitred test kubelet", "lastHeartbeatTime": now,
                            "lastTransitionTime": now}],
        }}
        self._raw(self._core.patch_node_status, self.node_name, status,
                  _content_type=_MERGE_PATCH)
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": 40,
                          "renewTime": _rfc3339(micro=True)}}
        try:
            self._raw(self._coordination.create_namespaced_lease,
                      "kube-node-lease", lease)
        except KubeError as exc:
            if exc.status != 409:
                raise
            self._raw(self._coordination.patch_namespaced_lease,
                      self.node_name, "kube-node-lease", {"spec": lease["spec"]},
                      _content_type=_MERGE_PATCH)
        self._last_heartbeat = time.monotonic()

    # -- watch ---------------------------------------------------------------------

    def _list_call(self):
        if self.namespace:
            return self._core.list_namespaced_pod, (self.namespace,)
        return self._core.list_pod_for_all_namespaces, ()

    def _relist(self) -> str:
        fn, args = self._list_call()
        kwargs = {"label_selector": self.label_selector} if self.label_selector else {}
        listing = self._raw(fn, *args, **kwargs)
        with self._lock:
            self._pods = {p["metadata"]["uid"]: p for p in listing["items"]}
        self._wake.set()
        return listing["metadata"]["resourceVersion"]

    def _watch_loop(self) -> None:
        resource_version = None
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                resource_version = self._watch_once(resource_version)
            except Exception as exc:
                if self._stopping.is_set():
                    return
                self.log.warning("watch failed, listing again: %s", exc)
                resource_version = None
                time.sleep(0.5)

    def _watch_once(self, resource_version: str) -> str | None:
        """Follow pod events from ``resource_version``; return where to go on
        (None: history expired, list again)."""
        fn, args = self._list_call()
        kwargs = {"label_selector": self.label_selector} if self.label_selector else {}
        for event in self._watch.stream(fn, *args, resource_version=resource_version,
                                        allow_watch_bookmarks=True, timeout_seconds=300,
                                        deserialize=False, **kwargs):
            kind, obj = event["type"], event["object"]
            if kind == "ERROR":
                return None
            resource_version = obj["metadata"]["resourceVersion"]
            if kind == "BOOKMARK":
                continue
            with self._lock:
                if kind == "DELETED":
                    self._pods.pop(obj["metadata"]["uid"], None)
                else:
                    self._pods[obj["metadata"]["uid"]] = obj
            self._wake.set()
        return resource_version

    # -- sync --------------------------------------------------------------------

    def _sync_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(SYNC_PERIOD_S)
            self._wake.clear()
            if self._stopping.is_set():
                return
            with self._lock:
                pods = list(self._pods.values())
            for pod in pods:
                try:
                    self._sync_pod(pod)
                except Exception as exc:  # a conflict or a pod gone meanwhile: retry next round
                    self.log.warning("sync %s/%s: %s", pod["metadata"].get("namespace"),
                                     pod["metadata"]["name"], exc)
            self._reap_vanished({p["metadata"]["uid"] for p in pods})
            if time.monotonic() - self._last_heartbeat > HEARTBEAT_S:
                try:
                    self._heartbeat()
                except Exception as exc:
                    self.log.warning("heartbeat: %s", exc)

    def _sync_pod(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        if spec.get("nodeName") is None:
            if meta.get("deletionTimestamp") is None:
                self._bind(pod)
            return
        if spec["nodeName"] != self.node_name or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        backend = self._backends.get(meta["uid"])
        if meta.get("deletionTimestamp") is not None:
            self._sync_terminating(pod, backend)
            return
        if backend is None:
            backend = self._start_backend(pod)
        self._sync_running(pod, backend)
        self._write_status(pod, backend)

    def _bind(self, pod: dict) -> None:
        meta = pod["metadata"]
        binding = {"apiVersion": "v1", "kind": "Binding",
                   "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        try:
            self._raw(self._core.create_namespaced_pod_binding,
                      meta["name"], meta["namespace"], binding)
        except KubeError as exc:
            if exc.status != 409:  # 409: bound already, by us or a real scheduler
                raise
            return
        self.log.info("bound %s/%s", meta["namespace"], meta["name"])

    def _start_backend(self, pod: dict) -> Backend:
        meta = pod["metadata"]
        port, model = container_port(pod), model_name(pod)
        backend = Backend(
            namespace=meta["namespace"], name=meta["name"], uid=meta["uid"],
            ip=self._addresses.take(port), port=port, model=model,
            log_path=self.log_dir / f"{meta['namespace']}.{meta['name']}.log",
            ready_delay_s=self.ready_delay_s, started_at=_rfc3339(),
            args=tuple(pod["spec"]["containers"][0].get("args") or ()),
        )
        with self._lock:
            self._backends[backend.uid] = backend
        image = pod["spec"]["containers"][0].get("image", "")
        if self.can_pull is not None and not self.can_pull(image):
            # As a registry that has no such image: the container never starts.
            backend.pull_error = f'Back-off pulling image "{image}": not found'
            self.log.info("%s/%s cannot pull %s", backend.namespace, backend.name, image)
            return backend
        self._spawn(pod, backend)
        return backend

    def _spawn(self, pod: dict, backend: Backend) -> None:
        if callable(self.command):
            argv = list(self.command(backend))
        else:
            fields = {"ip": backend.ip, "port": backend.port, "model": backend.model,
                      "name": backend.name, "namespace": backend.namespace}
            argv = [part.format(**fields) for part in self.command]
        backend.probe_passed_at = None
        try:
            backend.proc = procs.spawn(argv, backend.log_path, env=container_env(pod, backend))
        except OSError as exc:  # e.g. no such program: retry like a crashed container
            self.log.error("%s/%s cannot start %s: %s", backend.namespace, backend.name, argv, exc)
            backend.proc = None
            backend.restart_at = time.monotonic() + self.restart_delay_s
            return
        backend.container_started_at = _rfc3339()
        self.log.info("started %s/%s on %s (pid %d): %s", backend.namespace, backend.name,
                      backend.url, backend.proc.pid, " ".join(argv))

    def _sync_running(self, pod: dict, backend: Backend) -> None:
        now = time.monotonic()
        if backend.pull_error is not None:
            backend.ready_changed_at = backend.ready_changed_at or _rfc3339()
            return
        if backend.proc is not None and backend.proc.poll() is not None and backend.restart_at is None:
            self.log.info("%s/%s exited with code %s", backend.namespace, backend.name, backend.proc.returncode)
            backend.probe_passed_at = None
            backend.restart_at = float("inf") if backend.hold_crashed else now + self.restart_delay_s
        if backend.restart_at is not None and now >= backend.restart_at:
            backend.restart_at = None
            backend.restarts += 1
            self._spawn(pod, backend)
        if backend.running and backend.probe_passed_at is None and self._probe(pod, backend):
            backend.probe_passed_at = now
            self.log.info("%s/%s passed its readiness probe", backend.namespace, backend.name)
        probed_ready = (backend.running and backend.probe_passed_at is not None
                        and now >= backend.probe_passed_at + backend.ready_delay_s)
        ready = probed_ready if backend.forced_ready is None else (backend.forced_ready and backend.running)
        if ready != backend.ready or not backend.ready_changed_at:
            backend.ready = ready
            backend.ready_changed_at = _rfc3339()

    def _probe(self, pod: dict, backend: Backend) -> bool:
        """The first container's readinessProbe (httpGet or tcpSocket) against the
        backend; with no probe, the port accepting connections."""
        probe = (pod["spec"]["containers"][0].get("readinessProbe") or {})
        http_get = probe.get("httpGet")
        if http_get is not None:
            url = f"http://{backend.ip}:{backend.port}{http_get.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=self.probe_timeout_s) as resp:
                    return 200 <= resp.status < 400
            except (urllib.error.URLError, OSError, ValueError):
                return False
        try:
            with socket.create_connection((backend.ip, backend.port), timeout=self.probe_timeout_s):
                return True
        except OSError:
            return False

    def _write_status(self, pod: dict, backend: Backend) -> None:
        status = pod_status(pod, backend)
        if status == backend.written_status:
            return
        meta = pod["metadata"]
        self._raw(self._core.patch_namespaced_pod_status,
                  meta["name"], meta["namespace"], {"status": status}, _content_type=_STRATEGIC_PATCH)
        if backend.written_status is None or backend.written_status["conditions"] != status["conditions"]:
            self.log.info("%s/%s status: ready=%s running=%s restarts=%d", meta["namespace"], meta["name"],
                          backend.ready, backend.running, backend.restarts)
        backend.written_status = status

    def _sync_terminating(self, pod: dict, backend: Backend | None) -> None:
        """Keep the backend serving for ``stop_delay_s`` (at most until the end of
        the grace period), then stop it and remove the pod."""
        if backend is not None:
            if backend.stop_at is None:
                grace_end = _parse_rfc3339(pod["metadata"]["deletionTimestamp"])
                backend.stop_at = min(grace_end, time.time() + self.stop_delay_s)
                self.log.info("%s/%s terminating; stops in %.1f s", backend.namespace, backend.name,
                              max(0.0, backend.stop_at - time.time()))
            if time.time() < backend.stop_at:
                return
            if backend.proc is not None:
                code = procs.stop(backend.proc, grace_s=2.0)
                self.log.info("%s/%s stopped (exit code %s)", backend.namespace, backend.name, code)
        else:
            backend = _placeholder(pod)
        try:
            self._delete_pod(backend)
        except KubeError as exc:
            if exc.status not in (404, 409):  # gone already, or a new pod with this name
                raise
        with self._lock:
            self._backends.pop(backend.uid, None)

    def _delete_pod(self, backend: Backend) -> None:
        """Delete at once, and only this incarnation of the pod (uid precondition)."""
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": backend.uid}}
        self._raw(self._core.delete_namespaced_pod,
                  backend.name, backend.namespace, body=body)
        self.log.info("removed %s/%s", backend.namespace, backend.name)

    def _reap_vanished(self, live_uids: set[str]) -> None:
        """Pods deleted behind the kubelet's back (force delete): stop their process."""
        with self._lock:
            gone = [b for uid, b in self._backends.items() if uid not in live_uids]
            for backend in gone:
                del self._backends[backend.uid]
        for backend in gone:
            if backend.proc is not None:
                procs.stop(backend.proc, grace_s=2.0)
            self.log.info("%s/%s vanished; process stopped", backend.namespace, backend.name)


# -- pure helpers: pod spec in, status and process settings out -----------------

def container_port(pod: dict) -> int:
    """The first container's first containerPort, else 8000."""
    ports = pod["spec"]["containers"][0].get("ports") or []
    return int(ports[0]["containerPort"]) if ports else DEFAULT_PORT


def model_name(pod: dict) -> str:
    """The model the first container serves: its ``--model X``/``--model=X``
    argument (vLLM's and the simulator's flag), else its MODEL env, else "test-model"."""
    container = pod["spec"]["containers"][0]
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    for i, arg in enumerate(argv):
        if arg == "--model" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
    for env in container.get("env") or []:
        if env.get("name") == "MODEL" and env.get("value"):
            return env["value"]
    return DEFAULT_MODEL


def container_env(pod: dict, backend: Backend) -> dict[str, str]:
    """This process's environment plus the container's literal env and the pod's identity."""
    env = dict(os.environ)
    for item in pod["spec"]["containers"][0].get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
    env.update(POD_NAME=backend.name, POD_NAMESPACE=backend.namespace, POD_IP=backend.ip)
    return env


def pod_status(pod: dict, backend: Backend) -> dict:
    """The status a kubelet reports for ``pod`` run by ``backend`` (camelCase dict).

    Phase Running once started; Ready and ContainersReady follow
    ``backend.ready``; every container shares the backend's state.
    """
    running, ready = backend.running, backend.ready

    def condition(kind: str, ok: bool, since: str) -> dict:
        return {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": since}

    if backend.pull_error is not None:
        state = {"waiting": {"reason": "ImagePullBackOff", "message": backend.pull_error}}
    elif running:
        state = {"running": {"startedAt": backend.container_started_at}}
    else:
        state = {"waiting": {"reason": "CrashLoopBackOff", "message": "the backend process exited"}}
    containers = [{
        "name": c["name"], "image": c.get("image", ""), "imageID": "",
        "containerID": f"maitred://{backend.uid}-{i}", "ready": ready, "started": running,
        "restartCount": backend.restarts, "state": state,
    } for i, c in enumerate(pod["spec"]["containers"])]
    return {
        "phase": "Pending" if backend.pull_error is not None else "Running",
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": backend.ip,
        "podIPs": [{"ip": backend.ip}],
        "startTime": backend.started_at,
        "conditions": [
            condition("PodReadyToStartContainers", True, backend.started_at),
            condition("Initialized", True, backend.started_at),
            condition("ContainersReady", ready, backend.ready_changed_at),
            condition("Ready", ready, backend.ready_changed_at),
            condition("PodScheduled", True, backend.started_at),
        ],
        "containerStatuses": containers,
    }


def _placeholder(pod: dict) -> Backend:
    """A Backend with no process, for a pod that never started one."""
    meta = pod["metadata"]
    return Backend(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"],
                   ip="", port=0, model="", log_path=Path(), ready_delay_s=0)


def _rfc3339(micro: bool = False) -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _parse_rfc3339(text: str) -> float:
    """Seconds since the epoch of an API timestamp like 2026-01-02T03:04:05Z."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
