"""Where routing tables come from: a file, watched for changes (standalone mode), or a ConfigMap, watched
through the Kubernetes API (in cluster: the operator writes it).

A source calls `router.apply_table` with each valid version and `router.reject_table` with the
reason for each invalid one, so a bad write never takes down a working router.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import watchfiles

from maitred.router.table import TableError, load_table, parse_table

log = logging.getLogger("maitred.router.sources")


def load_file_once(path: Path, router) -> None:
    """Load the table at `path` into `router` (applied, or rejected with a reason)."""
    try:
        table = load_table(path)
    except FileNotFoundError:
        router.reject_table(f"routing table file {path} does not exist")
    except (OSError, TableError) as exc:
        router.reject_table(f"routing table file {path}: {exc}")
    else:
        current = router.endpoints.table
        if current is None or table != current:
            router.apply_table(table)


async def watch_file(path: Path, router) -> None:
    """Load `path` now and again whenever it changes, until cancelled.

    Watches the folder the user named, not the file, and reads the path as given, so that both ways
    of replacing a file are seen: an atomic rename over it (editors, `kubectl cp`), and a ConfigMap
    volume's update, where the kubelet writes a new hidden folder `..<timestamp>/` and swaps the
    `..data` symlink that `table.json -> ..data/table.json` goes through. (Resolving the symlinks
    once would watch the first hidden folder, which the kubelet deletes at the first update.)
    """
    path = Path(os.path.abspath(path))
    load_file_once(path, router)

    def is_table(change: watchfiles.Change, changed: str) -> bool:
        name = Path(changed).name
        return name == path.name or name.startswith("..")

    async for _ in watchfiles.awatch(path.parent, watch_filter=is_table, debounce=50, step=25, recursive=False):
        load_file_once(path, router)


#: The ConfigMap key that holds the table (the operator writes it there).
CONFIGMAP_KEY = "table.json"
#: A watch is ended by the API server after this long (s) and started again from a fresh list.
WATCH_TIMEOUT_S = 300
#: Backoff after a failed list or watch, in s: doubles from the first to the last.
RETRY_BACKOFF_S = (0.5, 10.0)


async def kube_api_client(kubeconfig: str | Path | None = None):
    """A `kubernetes_asyncio` ApiClient: from `kubeconfig`, else $KUBECONFIG, else the in-cluster service account.

    Raises `kubernetes_asyncio.config.ConfigException` when none of them is usable. Close it (``async with``).
    """
    # Imported here: the file mode should not pay for loading the Kubernetes client.
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        await config.load_kube_config(config_file=str(path) if path else None, client_configuration=configuration)
    return client.ApiClient(configuration)


def apply_configmap(data: dict | None, where: str, router) -> None:
    """Apply the table in a ConfigMap's `data` to `router` (if new), or reject it with the reason."""
    raw = (data or {}).get(CONFIGMAP_KEY)
    if raw is None:
        router.reject_table(f"ConfigMap {where} has no key {CONFIGMAP_KEY}")
        return
    try:
        table = parse_table(raw)
    except TableError as exc:
        router.reject_table(f"ConfigMap {where}: {exc}")
        return
    if table != router.endpoints.table:
        router.apply_table(table)


async def watch_configmap(namespace: str, name: str, router, kubeconfig: str | Path | None = None) -> None:
    """Apply the routing table in ConfigMap `namespace`/`name` now and at each change, until cancelled.

    List, then watch from the list's resourceVersion; after any error or the end of a watch, list again, so
    that a change made meanwhile is never missed. A deleted ConfigMap or a bad table is rejected and the last
    good table stays in force. Needs get/list/watch on that ConfigMap (the operator's Role grants exactly that).
    """
    from kubernetes_asyncio import client, watch

    where = f"{namespace}/{name}"
    async with await kube_api_client(kubeconfig) as api:
        core = client.CoreV1Api(api)
        backoff_s = RETRY_BACKOFF_S[0]
        while True:
            try:
                version = await _list_configmap(core, namespace, name, router)
                backoff_s = RETRY_BACKOFF_S[0]
                async with watch.Watch() as stream:
                    async for event in stream.stream(
                            core.list_namespaced_config_map, namespace, field_selector=f"metadata.name={name}",
                            resource_version=version, timeout_seconds=WATCH_TIMEOUT_S):
                        if event["type"] in ("ADDED", "MODIFIED"):
                            apply_configmap(event["object"].data, where, router)
                        elif event["type"] == "DELETED":
                            router.reject_table(f"ConfigMap {where} was deleted")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any API or network error: list again after a pause
                log.warning("watching ConfigMap %s failed (%s); listing again in %.1f s", where,
                            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, RETRY_BACKOFF_S[1])


async def _list_configmap(core, namespace: str, name: str, router) -> str:
    """Apply the ConfigMap as listed now (or reject its absence); return the list's resourceVersion."""
    found = await core.list_namespaced_config_map(namespace, field_selector=f"metadata.name={name}")
    if found.items:
        apply_configmap(found.items[0].data, f"{namespace}/{name}", router)
    else:
        router.reject_table(f"ConfigMap {namespace}/{name} does not exist")
    return found.metadata.resource_version
