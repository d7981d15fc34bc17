"""The operator's few Kubernetes API calls, as plain JSON in and out (a thin shell around `kubernetes_asyncio`).

Plain dicts rather than the client's models, so that the pure functions get exactly what the API sends,
fields the client does not know included. Children are written with server-side apply (field manager
``maitred-operator``), which creates what is missing and changes only what differs: idempotent, so a
reconcile may run any number of times, after a restart too, and never duplicates a child.

Connections carry TCP keep-alive, and every request has a connect, read and total timeout
(:mod:`maitred.operator.timing`). A request that times out drops every pooled connection (one frozen
connection means the path to the API server broke, and the others went the same way) and, if it is
idempotent, is tried once more on a new connection.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from maitred.operator import models, timing
from maitred.router.sources import kube_api_client

log = logging.getLogger("maitred.operator")

FIELD_MANAGER = "maitred-operator"
#: Event messages are cut to this many characters (the API server refuses those over 1 KiB).
EVENT_MESSAGE_MAX = 1000
#: Methods tried once more on a new connection after a timeout: reads, and writes that are idempotent here
#: (server-side apply; merge patches onto a resourceVersion; deletes with a uid precondition).
RETRIED_METHODS = frozenset({"GET", "PATCH", "DELETE"})

_PLURALS = {"ConfigMap": "configmaps", "Service": "services", "ServiceAccount": "serviceaccounts",
            "Pod": "pods", "Event": "events", "Deployment": "deployments", "Role": "roles",
            "RoleBinding": "rolebindings", "PodDisruptionBudget": "poddisruptionbudgets", models.KIND: models.PLURAL}


class ApiError(Exception):
    """The API server refused a request: `status` (HTTP), `reason` (e.g. NotFound, Invalid) and its message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message

    @property
    def transient(self) -> bool:
        """True for an answer that the same request may not get again soon: 409 Conflict, 429, 5xx."""
        return self.status in (409, 429) or self.status >= 500


def _api_error(status: int, raw: bytes) -> ApiError:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = {"message": raw.decode(errors="replace")[:500]}
    if not isinstance(body, dict):
        body = {"message": str(body)[:500]}
    return ApiError(status, body.get("reason", ""), body.get("message", ""))


def object_path(api_version: str, kind: str, namespace: str, name: str = "") -> str:
    """The REST path of a namespaced object (or of its collection when `name` is empty)."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{_PLURALS[kind]}"
    return f"{path}/{name}" if name else path


def _pool(configuration) -> aiohttp.ClientSession:
    """The HTTP session kubernetes_asyncio's RESTClientObject makes (same TLS settings), with TCP keep-alive."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, keyfile=configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if getattr(configuration, "disable_strict_ssl_verification", False):
        context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    options: dict[str, Any] = {"limit": configuration.connection_pool_maxsize, "ssl": context}
    if "socket_factory" in inspect.signature(aiohttp.TCPConnector).parameters:  # aiohttp >= 3.12
        options["socket_factory"] = timing.keepalive_socket
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(**options), trust_env=True, read_bufsize=2**21)


REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=timing.REQUEST_TIMEOUT_S, sock_connect=timing.CONNECT_TIMEOUT_S,
                                        sock_read=timing.READ_TIMEOUT_S)
WATCH_TIMEOUT = aiohttp.ClientTimeout(total=timing.WATCH_CLIENT_TIMEOUT_S, sock_connect=timing.CONNECT_TIMEOUT_S)


class Kube:
    """An API connection. Build it with :meth:`connect`; :meth:`close` it."""

    def __init__(self, api_client) -> None:
        self.api = api_client
        self._closing: set[asyncio.Task] = set()

    @classmethod
    async def connect(cls, kubeconfig: str | Path | None = None) -> "Kube":
        """Connect with `kubeconfig`, else $KUBECONFIG, else the in-cluster service account."""
        kube = cls(await kube_api_client(kubeconfig))
        await kube._swap_pool()
        return kube

    async def close(self) -> None:
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self.api.close()

    async def _swap_pool(self) -> None:
        rest = self.api.rest_client
        old, rest.pool_manager = rest.pool_manager, _pool(self.api.configuration)
        await old.close()

    def drop_connections(self) -> None:
        """Close every pooled connection (in the background); the next requests open new ones.

        Requests in flight on the old connections fail and are retried by their callers.
        """
        rest = self.api.rest_client
        old, rest.pool_manager = rest.pool_manager, _pool(self.api.configuration)
        task = asyncio.get_running_loop().create_task(old.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _call(self, method: str, path: str, query: list[tuple[str, str]], body: Any, content_type: str,
                    timeout: aiohttp.ClientTimeout):
        return await self.api.call_api(
            path, method, query_params=query, header_params={"Content-Type": content_type,
                                                             "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"], _preload_content=False, _request_timeout=timeout)

    async def request(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                      body: Any = None, content_type: str = "application/json") -> dict:
        """One API call; returns the JSON answer. Raises :class:`ApiError` for any non-2xx status.

        Network errors and timeouts raise as they are (aiohttp.ClientError, TimeoutError), after one more
        try on a new connection for the methods in :data:`RETRIED_METHODS`.
        """
        for attempt in (1, 2):
            try:
                resp = await self._call(method, path, query or [], body, content_type, REQUEST_TIMEOUT)
                async with resp:
                    raw = await resp.read()
                break
            except (TimeoutError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if isinstance(exc, TimeoutError):
                    self.drop_connections()
                if attempt == 2 or method not in RETRIED_METHODS:
                    raise
                log.info("%s %s: %s; trying again on a new connection", method, path, type(exc).__name__)
        if 200 <= resp.status < 300:
            return orjson.loads(raw) if raw else {}
        raise _api_error(resp.status, raw)

    async def list_all(self, path: str, query: list[tuple[str, str]] | None = None) -> tuple[list[dict], str]:
        """Every item of the collection at `path`, in pages of :data:`timing.LIST_CHUNK`, and the list's
        resourceVersion (of the first page: the pages are one snapshot)."""
        items: list[dict] = []
        token, version = "", ""
        while True:
            page_query = [*(query or []), ("limit", str(timing.LIST_CHUNK))] + ([("continue", token)] if token else [])
            page = await self.request("GET", path, query=page_query)
            items.extend(page.get("items") or ())
            meta = page.get("metadata") or {}
            version = version or meta.get("resourceVersion", "")
            token = meta.get("continue") or ""
            if not token:
                return items, version

    async def watch(self, path: str, resource_version: str,
                    query: list[tuple[str, str]] | None = None) -> AsyncIterator[dict]:
        """The events ({"type", "object"}) of a watch of `path` from `resource_version`, BOOKMARKs included.

        The API server ends it after :data:`timing.WATCH_SERVER_TIMEOUT_S`; one still open after
        :data:`timing.WATCH_CLIENT_TIMEOUT_S` raises TimeoutError, having dropped every pooled connection.
        An ERROR event is yielded as it comes (410 Gone: list again). Raises :class:`ApiError` if refused.
        """
        watch_query = [*(query or []), ("watch", "true"), ("allowWatchBookmarks", "true"),
                       ("resourceVersion", resource_version),
                       ("timeoutSeconds", str(timing.WATCH_SERVER_TIMEOUT_S))]
        try:
            resp = await self._call("GET", path, watch_query, None, "application/json", WATCH_TIMEOUT)
            async with resp:
                if not 200 <= resp.status < 300:
                    raise _api_error(resp.status, await resp.read())
                buffer = b""
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield orjson.loads(line)
        except TimeoutError:
            self.drop_connections()
            raise

    async def get(self, path: str) -> dict | None:
        """The object at `path`, or None if there is none."""
        try:
            return await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def apply(self, manifest: dict) -> dict:
        """Server-side apply `manifest` (create or update; fields it sets become ours). Returns the object."""
        meta = manifest["metadata"]
        path = object_path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        return await self.request("PATCH", path, query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                                  body=manifest, content_type="application/apply-patch+yaml")

    async def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str) -> None:
        """Delete that object, only if it still has `uid`; a missing object is fine."""
        path = object_path(api_version, kind, namespace, name)
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid},
                "propagationPolicy": "Background"}
        try:
            await self.request("DELETE", path, body=body)
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise

    async def patch_pool_status(self, namespace: str, name: str, status: dict,
                                resource_version: str | None = None) -> dict:
        """Merge-patch the pool's status subresource (lists in it are replaced whole).

        With `resource_version`, only if the pool still has it (else :class:`ApiError` 409 Conflict).
        """
        path = object_path(models.API_VERSION, models.KIND, namespace, name) + "/status"
        body: dict = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    async def post_event(self, body: dict, type_: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about object `body` (as the API returns it); best effort, never raises ApiError.

        A namespace that is terminating (403) or gone (404), or a conflict (409), means no one will read the
        Event: it is dropped quietly (kopf's own poster logs an ERROR and retries then). Other refusals
        are logged once, not retried: an Event is a note, not state.
        """
        meta = body["metadata"]
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": body.get("apiVersion", ""), "kind": body.get("kind", ""),
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid", "")},
            "type": type_, "reason": reason, "message": message[:EVENT_MESSAGE_MAX],
            "source": {"component": FIELD_MANAGER}, "reportingComponent": FIELD_MANAGER,
            "reportingInstance": socket.gethostname()[:128], "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            await self.request("POST", object_path("v1", "Event", meta["namespace"]), body=event)
        except ApiError as exc:
            if exc.status in (403, 404, 409):
                log.debug("event %s on %s/%s dropped: %s", reason, meta["namespace"], meta["name"], exc)
            else:
                log.warning("event %s on %s/%s not posted: %s", reason, meta["namespace"], meta["name"], exc)
