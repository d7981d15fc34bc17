"""Where routing tables come from: a file, watched for changes (standalone mode).

A source calls `router.apply_table` with each valid version and `router.reject_table` with the
reason for each invalid one, so a bad write never takes down a working router.
"""

from __future__ import annotations

import logging
from pathlib import Path

import watchfiles

from maitred.router.table import TableError, load_table

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

    Watches the folder rather than the file, so that an atomic replace (write a temporary file,
    rename it over the table, as editors and ConfigMap volumes do) is seen.
    """
    path = path.resolve()
    load_file_once(path, router)

    def is_table(change: watchfiles.Change, changed: str) -> bool:
        return Path(changed).name == path.name

    async for _ in watchfiles.awatch(path.parent, watch_filter=is_table, debounce=50, step=25):
        load_file_once(path, router)
