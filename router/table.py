"""The routing table: the contract between the operator (which writes it) and the router (which reads it).

A routing table is one JSON document, for example::

    {"pool": "ml/llama-8b", "version": 17, "method": "least-connections",
     "models": ["meta-llama/Llama-3.1-8B-Instruct"],
     "endpoints": [{"id": "llama-8b-7d9f-abcde", "url": "http://10.1.2.3:8000", "weight": 1}],
     "healthCheck": {"path": "/health", "periodSeconds": 5},
     "retries": {"attempts": 2}, "timeouts": {"connectSeconds": 3},
     "affinity": {"sessionHeader": "x-session-id", "loadFactor": 1.25},
     "coldStart": {"holdSeconds": 120, "maxRequests": 1000}, "scrapeLoad": true}

Both sides validate it with :class:`RoutingTable`, so a table the operator can write is one the
router can read. Field names are camelCase on the wire, as in Kubernetes.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel
from yarl import URL

#: The balancing methods a table may name; each is one module in :mod:`maitred.router.balancing`.
Method = Literal["round-robin", "least-connections", "weighted", "least-response-time", "least-load",
                 "prefix-affinity", "session-affinity"]
METHODS: tuple[str, ...] = Method.__args__  # type: ignore[attr-defined]

#: ``scheme://host:port``, the host a plain name or IPv4 address, as the operator writes pod endpoints: a URL
#: yarl accepts as it is, checked without building a URL object (a table of 1,000 endpoints is checked in
#: about 1 ms instead of 60). Any other URL goes through yarl.
_PLAIN_URL = re.compile(r"^https?://[A-Za-z0-9.-]+:([0-9]{1,5})/?$")


class _Model(BaseModel):
    # allow_inf_nan: pydantic would read "inf" or "nan" (as strings) as a duration, which no timer takes
    # (an infinite request timeout failed every request) and which the table cannot write back (null).
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True,
                              allow_inf_nan=False)


class Endpoint(_Model):
    """One upstream replica. `id` keys the router's per-endpoint state across table versions."""

    id: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://[^/\s]+(/.*)?$", description="base URL, e.g. http://10.1.2.3:8000")
    weight: int = Field(default=1, ge=0, strict=True, description="relative share for `weighted`; 0 takes no traffic")
    zone: str | None = None

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        plain = _PLAIN_URL.match(url)
        if plain is not None and 0 < int(plain.group(1)) < 65536:
            return url.rstrip("/")
        try:
            port = URL(url).port
        except ValueError as exc:
            raise ValueError(f"not a valid URL: {exc}") from None
        if port is None or not 0 < port < 65536:
            raise ValueError(f"port must be 1-65535 in {url}")
        return url.rstrip("/")


class HealthCheck(_Model):
    """Active health checks: GET `path` every `period_seconds`; eject after `failure_threshold` failures."""

    path: str = Field(default="/health", pattern=r"^/\S*$", description="absolute path, e.g. /health")
    period_seconds: float = Field(default=5.0, gt=0)
    timeout_seconds: float = Field(default=2.0, gt=0)
    failure_threshold: int = Field(default=3, ge=1)
    success_threshold: int = Field(default=1, ge=1)


class Retries(_Model):
    """Retries on another endpoint, only while nothing has reached the client.

    `attempts` counts retries after the first try (as Istio's `attempts`); 0 turns retries off.
    Connection failures are always retriable; `on_status` lists the backend statuses that are too.
    """

    attempts: int = Field(default=2, ge=0)
    per_try_timeout_seconds: float | None = Field(default=None, gt=0, description="time to response headers")
    on_status: tuple[Annotated[int, Field(ge=400, le=599)], ...] = (502, 503)  # backend errors: 4xx or 5xx


class Timeouts(_Model):
    """Upstream timeouts in seconds. `idle_seconds` is reset by every chunk, so streams are never cut while alive."""

    connect_seconds: float = Field(default=3.0, gt=0)
    idle_seconds: float = Field(default=120.0, gt=0)
    request_seconds: float = Field(default=1800.0, gt=0)


#: An HTTP field name (RFC 9110 §5.1: a token).
HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"


class Affinity(_Model):
    """Settings of the affinity methods, `prefix-affinity` and `session-affinity`.

    `session_header` names the request header that carries a session id for `session-affinity`
    (matched case-insensitively; kept lower-case). `load_factor` is the load bound: an endpoint with more
    than `load_factor` x (its share of the pool's load + 1) requests queued and running is passed over
    (see :mod:`maitred.router.balancing.rendezvous`); 1 is the tightest, larger lets keys stay home longer.
    """

    session_header: str = Field(default="x-session-id", max_length=256, pattern=HEADER_NAME,
                                description="request header carrying a session id, e.g. x-session-id")
    load_factor: float = Field(
        default=1.25, ge=1.0, allow_inf_nan=False,
        description="pass over an endpoint above loadFactor x (its share of the load + 1) requests")

    @field_validator("session_header")
    @classmethod
    def _lower_case(cls, name: str) -> str:
        return name.lower()


class ColdStart(_Model):
    """Holding requests while the pool scales up from zero replicas (the operator writes it when the pool's
    `spec.autoscaling.minReplicas` is 0).

    A request that finds no live endpoint waits up to `hold_seconds` (s) for one, instead of a 503 at once;
    at most `max_requests` wait at once in one router (all its worker processes), and the next gets 503.
    """

    hold_seconds: float = Field(default=120.0, gt=0, description="longest wait for a live endpoint, in s")
    max_requests: int = Field(default=1000, ge=0, description="requests held at once per router; 0 holds none")


class RoutingTable(_Model):
    """A pool's routing table. Raises :class:`pydantic.ValidationError` on a bad document.

    `cold_start`: None answers a request with no live endpoint 503 at once; set, it is held (see
    :class:`ColdStart`). `scrape_load`: scrape the replicas' load reports (:mod:`maitred.router.load`) even
    if the method reads none, for `/debug/load` and the pool-load metrics an autoscaler reads.
    """

    pool: str = "default"
    version: int = Field(default=0, ge=0)
    method: Method = "least-connections"
    models: tuple[str, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    health_check: HealthCheck = HealthCheck()
    retries: Retries = Retries()
    timeouts: Timeouts = Timeouts()
    affinity: Affinity = Affinity()
    cold_start: ColdStart | None = None
    scrape_load: bool = Field(default=False, strict=True)

    @field_validator("endpoints")
    @classmethod
    def _unique_ids(cls, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        ids = [e.id for e in endpoints]
        if len(set(ids)) != len(ids):  # linear in the endpoints; the names are only gathered for a bad table
            dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
            raise ValueError(f"endpoint ids must be unique; repeated: {', '.join(dupes)}")
        return endpoints

    def to_json(self) -> bytes:
        """The table as camelCase JSON bytes, as the router reads it."""
        return orjson.dumps(self.model_dump(mode="json", by_alias=True), option=orjson.OPT_INDENT_2)


class TableError(ValueError):
    """A routing table that cannot be used; the message names the field at fault."""


def parse_table(raw: bytes | str) -> RoutingTable:
    """Parse and validate a routing table from JSON. Raises :class:`TableError` naming the bad field."""
    try:
        return RoutingTable.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise TableError(f"routing table is not valid JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise TableError(f"invalid routing table: {problems}") from None


def load_table(path: Path) -> RoutingTable:
    """Read and validate the routing table at `path`. Raises :class:`TableError` or :class:`OSError`."""
    return parse_table(path.read_bytes())
