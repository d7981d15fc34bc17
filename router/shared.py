"""Per-endpoint state shared by the processes of one router (`maitred router --workers N`).

One block of shared memory (a file in the router's run folder, mapped by every process with
:mod:`mmap`) holds, for each endpoint slot,
the figures that a balancing method or the health verdict reads, so that every worker sees the
router as a whole: in-flight counts, health, the latency EWMA and the replica's reported load.

Who writes what, so that no cell needs a lock:

- per (slot, worker) counters (in flight, requests, failures): only that worker, and a reader sums
  the row of the slot (as Envoy's per-worker stats are summed by its main thread); so too the
  per-worker count of requests held for a cold start (:mod:`maitred.router.hold`);
- per-slot figures (health, consecutive failures, latency, reported load): any process, whole
  8-byte values, which x86-64 and arm64 write and read untorn. A race can lose one increment of
  the consecutive-failure count; ejection then waits for one more failure, as it would without
  the race a moment later;
- the header's table and health generations: bumped by whoever changed the table or a verdict,
  so that a worker notices with one read.

Slots are handed out by the supervisor (:class:`SlotAllocator`), kept by endpoint id while the id
stays in the table, and reused oldest-freed first, so that a request still in flight on a removed
endpoint (it keeps its slot until it ends) is very unlikely to meet the slot's next owner.
"""

from __future__ import annotations

import math
import mmap
import os
from collections import deque
from pathlib import Path

#: Endpoint slots in one router's block; a table with more endpoints is refused.
DEFAULT_SLOTS = 4096
#: Bytes kept of an endpoint's health reason (UTF-8, cut at a character boundary).
REASON_BYTES = 200
#: A float figure not recorded yet (no latency sample, no load report).
NO_SAMPLE = math.nan

_HEADER = ("table_generation", "health_generation", "published_at_ns")
_PER_WORKER = ("in_flight", "requests_total", "failures_total")
_PER_WORKER_STATUS = ("pid", "listening", "table_version", "applied_at_ns", "table_generation")
_PER_WORKER_COUNT = ("held",)
_PER_SLOT_INT = ("healthy", "consecutive_failures", "ejections_total", "in_flight_at_report")
_PER_SLOT_FLOAT = ("latency_ewma_ms", "latency_sampled_at", "reported_waiting", "reported_running",
                   "reported_kv_cache_usage", "reported_at")


class SharedState:
    """The shared block of one router: `workers` rows of counters for each of `slots` endpoint slots.

    Create it in the supervisor (`create=True`), attach to the same `path` in each worker. Raises
    OSError if the file cannot be created or mapped.
    """

    def __init__(self, path: Path, workers: int, slots: int = DEFAULT_SLOTS, create: bool = False) -> None:
        self.workers, self.slots = workers, slots
        ints = len(_HEADER) + workers * (len(_PER_WORKER_STATUS) + len(_PER_WORKER_COUNT)) + slots * (
            workers * len(_PER_WORKER) + len(_PER_SLOT_INT))
        floats = slots * len(_PER_SLOT_FLOAT)
        size = 8 * (ints + floats) + slots * REASON_BYTES
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        buf = self._buf = memoryview(self._map)
        int_view = buf[:8 * ints].cast("q")
        float_view = buf[8 * ints:8 * (ints + floats)].cast("d")
        self._reasons = buf[8 * (ints + floats):size]
        offset = 0

        def take(view, count):
            nonlocal offset
            part = view[offset:offset + count]
            offset += count
            return part

        self._header = take(int_view, len(_HEADER))
        self._worker_status = {f: take(int_view, workers) for f in _PER_WORKER_STATUS}
        #: Requests each worker holds for a cold start now (each writes its own cell; readers sum).
        self.held_cells = take(int_view, workers)
        # Rows laid out slot-major, so that one slot's cells across workers are contiguous.
        self._per_worker = {f: take(int_view, slots * workers) for f in _PER_WORKER}
        self._per_slot = {f: take(int_view, slots) for f in _PER_SLOT_INT}
        offset = 0
        self._per_slot.update({f: take(float_view, slots) for f in _PER_SLOT_FLOAT})
        self.in_flight_cells = self._per_worker["in_flight"]
        self.requests_cells = self._per_worker["requests_total"]
        self.failures_cells = self._per_worker["failures_total"]
        self.healthy_cells = self._per_slot["healthy"]
        if create:
            for slot in range(slots):
                self.reset_slot(slot)

    # -- header -------------------------------------------------------------------------------
    @property
    def table_generation(self) -> int:
        """Bumped by the supervisor each time it publishes a table (or a refusal)."""
        return self._header[0]

    def bump_table_generation(self, published_at_ns: int) -> int:
        """Mark a new table published at `published_at_ns` (CLOCK_MONOTONIC, ns); the new generation."""
        self._header[2] = published_at_ns
        self._header[0] += 1
        return self._header[0]

    @property
    def published_at_ns(self) -> int:
        """When the current table generation was published (CLOCK_MONOTONIC, ns)."""
        return self._header[2]

    @property
    def health_generation(self) -> int:
        """Bumped by any process that turns an endpoint healthy or unhealthy."""
        return self._header[1]

    def bump_health_generation(self) -> None:
        self._header[1] += 1

    # -- per-slot figures ---------------------------------------------------------------------
    def get(self, field: str, slot: int):
        """A per-slot figure (see `_PER_SLOT_INT` and `_PER_SLOT_FLOAT`)."""
        return self._per_slot[field][slot]

    def set(self, field: str, slot: int, value) -> None:
        self._per_slot[field][slot] = value

    def reason(self, slot: int) -> str:
        """The endpoint's last health reason."""
        raw = bytes(self._reasons[slot * REASON_BYTES:(slot + 1) * REASON_BYTES])
        return raw.split(b"\0", 1)[0].decode("utf-8", "ignore")

    def set_reason(self, slot: int, reason: str) -> None:
        raw = reason.encode("utf-8")[:REASON_BYTES - 1].ljust(REASON_BYTES, b"\0")
        self._reasons[slot * REASON_BYTES:(slot + 1) * REASON_BYTES] = raw

    def reset_slot(self, slot: int) -> None:
        """Make `slot` fresh for a new endpoint: healthy, not checked yet, no samples (supervisor only).

        The per-worker counters are left alone: a request still in flight on the slot's previous
        endpoint decrements what it incremented.
        """
        for field in _PER_SLOT_INT:
            self._per_slot[field][slot] = 0
        for field in _PER_SLOT_FLOAT:
            self._per_slot[field][slot] = NO_SAMPLE
        self._per_slot["healthy"][slot] = 1
        self.set_reason(slot, "not checked yet")

    # -- per-worker counters ------------------------------------------------------------------
    def total(self, cells, slot: int) -> int:
        """The sum over workers of a per-(slot, worker) counter."""
        start = slot * self.workers
        return sum(cells[start:start + self.workers])

    def by_worker(self, cells, slot: int) -> list[int]:
        start = slot * self.workers
        return list(cells[start:start + self.workers])

    def clear_worker(self, worker: int) -> None:
        """Zero a (re)started worker's in-flight and held cells: the requests they counted died with it."""
        cells = self.in_flight_cells
        for slot in range(self.slots):
            cells[slot * self.workers + worker] = 0
        self.held_cells[worker] = 0

    def set_worker_status(self, worker: int, **values: int) -> None:
        """Record a worker's pid, applied table version, generation and when (CLOCK_MONOTONIC ns)."""
        for key, value in values.items():
            self._worker_status[key][worker] = value

    def worker_status(self, worker: int) -> dict[str, int]:
        return {key: cells[worker] for key, cells in self._worker_status.items()}

    def close(self) -> None:
        """Unmap the block (the file stays until the run folder is removed)."""
        for view in (self.in_flight_cells, self.requests_cells, self.failures_cells, self.healthy_cells,
                     self.held_cells, self._header, self._reasons, *self._worker_status.values(), *self._per_worker.values(),
                     *self._per_slot.values(), self._buf):
            view.release()
        self._map.close()


class SlotAllocator:
    """Endpoint id -> slot, stable while the id stays; freed slots are reused oldest first."""

    def __init__(self, slots: int) -> None:
        self.by_id: dict[str, int] = {}
        self._free: deque[int] = deque(range(slots))

    def assign(self, ids: list[str]) -> tuple[dict[str, int], list[int]]:
        """Slots for `ids` (the new table's endpoints) and the slots newly handed out (to reset).

        Raises ValueError if there are more endpoints than slots.
        """
        keep = set(ids)
        for gone in [i for i in self.by_id if i not in keep]:
            self._free.append(self.by_id.pop(gone))
        fresh = []
        for endpoint_id in ids:
            if endpoint_id not in self.by_id:
                if not self._free:
                    raise ValueError(f"more than {len(self.by_id)} endpoints: the router has no slot left")
                slot = self._free.popleft()
                self.by_id[endpoint_id] = slot
                fresh.append(slot)
        return dict(self.by_id), fresh
