"""Affinity that agrees across router replicas: prefix-affinity and session-affinity.

First the keys (what in a request decides its endpoint) and the table's `affinity` block, as pure
functions; then real router processes in front of real backends: two routers given the same table send
each session and each long prompt to the same endpoint, and spill alike when one endpoint is over the
load bound; a system prompt the whole pool shares does not pile conversations onto one endpoint, and each
conversation keeps its endpoint across turns; the session header is the table's to name.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import orjson
import pytest
from router_harness import MODEL, ROUTER_WORKERS, chat_body, table, wait_for

from maitred.router.balancing import RequestView, make_balancer
from maitred.router.balancing.keys import KEY_CHARS, affinity_key, prefix_key, session_key
from maitred.router.endpoints import EndpointState
from maitred.router.table import Affinity, TableError, parse_table

SYSTEM_PROMPT = "You are the maitre d' of a busy restaurant; seat every guest where they are served soonest. " * 30
DOCUMENT = " ".join(f"Course {i}: a seasonal dish with herbs, butter and a glass of wine." for i in range(60))


def conversation(k: int, turns: int, system: str = SYSTEM_PROMPT) -> dict:
    """Chat body of conversation `k` at turn `turns` (1 = its first request), behind `system`."""
    messages = [{"role": "system", "content": system}]
    for t in range(turns - 1):
        messages += [{"role": "user", "content": f"Guest {k} asks question {t} about the menu."},
                     {"role": "assistant", "content": f"Answer {t} for guest {k}: the soup is excellent."}]
    messages.append({"role": "user", "content": f"Guest {k} asks question {turns - 1} about the menu."})
    return {"model": MODEL, "messages": messages, "max_tokens": 4}


# --- keys --------------------------------------------------------------------------------------------


def test_a_conversation_keeps_its_prefix_key_across_turns():
    keys = {prefix_key(conversation(3, turns)) for turns in (1, 2, 5)}
    later = conversation(3, 5)
    later["messages"].insert(4, {"role": "system", "content": "Reminder: be brief."})  # a framework's mid-chat note
    keys.add(prefix_key(later))
    assert len(keys) == 1


def test_conversations_behind_one_shared_system_prompt_have_distinct_keys():
    assert len({prefix_key(conversation(k, 1)) for k in range(64)}) == 64


def test_requests_opening_with_one_long_document_share_a_key_and_short_openings_do_not():
    def ask(opening: str, question: str) -> dict:
        return {"model": MODEL, "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                             {"role": "user", "content": f"{opening}\n\nQuestion: {question}"}]}

    assert len(DOCUMENT) > KEY_CHARS
    assert prefix_key(ask(DOCUMENT, "which wine?")) == prefix_key(ask(DOCUMENT, "any vegan dish?"))
    assert prefix_key(ask("Short menu.", "which wine?")) != prefix_key(ask("Short menu.", "any vegan dish?"))


def test_completions_are_keyed_by_the_start_of_the_prompt():
    def completion(prompt) -> dict:
        return {"model": MODEL, "prompt": prompt}

    assert prefix_key(completion(DOCUMENT + " Q1")) == prefix_key(completion(DOCUMENT + " Q2"))
    assert prefix_key(completion("a short prompt")) != prefix_key(completion("another short prompt"))
    assert prefix_key(completion([DOCUMENT, "x"])) == prefix_key(completion(DOCUMENT))  # a batch: its first prompt
    assert prefix_key(completion([1, 2, 3])) != prefix_key(completion([1, 2, 4]))  # token ids
    assert prefix_key({"model": MODEL, "input": "embed me"}) is not None


def test_text_parts_key_as_the_same_text_and_the_model_is_part_of_the_key():
    plain = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]}
    parts = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]}
    assert prefix_key(plain) == prefix_key(parts)
    assert prefix_key({**plain, "model": "another-adapter"}) != prefix_key(plain)


def test_a_request_without_a_prompt_has_no_key():
    assert prefix_key(None) is None
    assert prefix_key({"model": MODEL}) is None
    assert prefix_key({"model": MODEL, "messages": []}) is None


def test_prompt_cache_key_decides_for_prefix_affinity():
    a, b = conversation(1, 1), conversation(2, 1)
    assert affinity_key({**a, "prompt_cache_key": "team-7"}) == affinity_key({**b, "prompt_cache_key": "team-7"})
    assert affinity_key(a) == prefix_key(a)


def test_session_key_header_then_user_then_prompt_cache_key_then_prefix():
    body = {**conversation(1, 1), "user": "u-1", "prompt_cache_key": "c-1"}
    other = {**conversation(2, 3), "user": "u-1", "prompt_cache_key": "c-2"}
    with_header = RequestView(body, [(b"x-session-id", b"s-1")])
    assert session_key(with_header) == session_key(RequestView(other, [(b"x-session-id", b"s-1")]))
    assert session_key(RequestView(body)) == session_key(RequestView(other))  # same user
    assert session_key(RequestView({**body, "user": None})) != session_key(RequestView({**other, "user": None}))
    assert session_key(RequestView(conversation(1, 1))) == prefix_key(conversation(1, 1))
    assert session_key(RequestView(None, [(b"x-session-id", b"s-1")])) == session_key(with_header)  # no body needed


def test_the_session_header_is_the_tables_to_name_in_any_case():
    named = Affinity(session_header="X-Conversation-Id")
    assert named.session_header == "x-conversation-id"
    view = RequestView(None, [(b"x-conversation-id", b"abc")], named)
    assert session_key(view) == session_key(RequestView(None, [(b"x-session-id", b"abc")]))
    assert session_key(RequestView(None, [(b"x-session-id", b"abc")], named)) is None


@pytest.mark.parametrize(("affinity", "field", "says"), [
    ({"loadFactor": 0.5}, "affinity.loadFactor", "greater than or equal to 1"),
    ({"sessionHeader": "x session"}, "affinity.sessionHeader", "should match pattern"),
    ({"sessionHeaders": "x"}, "affinity.sessionHeaders", "Extra inputs are not permitted"),
])
def test_a_bad_affinity_block_is_refused_naming_the_field(affinity, field, says):
    with pytest.raises(TableError) as err:
        parse_table(orjson.dumps({"method": "session-affinity", "affinity": affinity}))
    assert f"{field}: " in str(err.value) and says in str(err.value)


def test_a_request_without_a_key_goes_to_the_least_loaded_endpoint():
    a, b = EndpointState(id="a", url="http://127.0.0.1:1"), EndpointState(id="b", url="http://127.0.0.1:2")
    a.in_flight = 3
    for method in ("prefix-affinity", "session-affinity"):
        assert make_balancer(method).pick([a, b], RequestView({"model": MODEL})).id == "b"
        assert make_balancer(method).pick([a, b], None).id == "b"


# --- real routers ------------------------------------------------------------------------------------

#: A busy replica's own report: requests running besides those in flight from the test. With 200 each,
#: the bound is at least 1.25 x (200 + 1) = 251 and the test's own requests (at most 2 routers x
#: CONCURRENCY in flight, plus CONCURRENCY counted twice in a stale report) stay under it, so the two
#: routers' different in-flight counts never decide anything: only the shared reports do.
BUSY_RUNNING = 200
CONCURRENCY = 16


async def _send(session: aiohttp.ClientSession, url: str, requests: list[tuple[dict, dict]],
                concurrency: int) -> list[str]:
    """POST each (headers, body) to `url`/v1/chat/completions; the endpoint that answered each, in order."""
    answered: list[str] = [""] * len(requests)
    todo = iter(range(len(requests)))

    async def worker() -> None:
        for i in todo:
            headers, body = requests[i]
            async with session.post(url + "/v1/chat/completions", data=orjson.dumps(body),
                                    headers={"content-type": "application/json", **headers}) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
                answered[i] = resp.headers["x-maitred-endpoint"]

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answered


def send_through(routers, requests: list[tuple[dict, dict]], concurrency: int = CONCURRENCY) -> list[list[str]]:
    """Send the same requests through each router at once; per router, the endpoint of each request.

    With aiohttp rather than httpx: twenty times the requests per second from one process (bench/upstream_clients.py).
    """
    async def run() -> list[list[str]]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
            return await asyncio.gather(*(_send(session, r.url, requests, concurrency) for r in routers))
    return asyncio.run(run())


def wait_for_reports(routers, check, what: str) -> None:
    """Block until every router's /debug/table shows load reports for which check(id, report) holds for all."""
    def seen() -> bool:
        return all(all(e["reportedLoad"] is not None and check(i, e["reportedLoad"]) for i, e in r.endpoints().items())
                   for r in routers)
    wait_for(seen, 10, what)


def session_requests(n: int = 1000) -> list[tuple[dict, dict]]:
    """Session k's request: its header, and a body that differs per request (so only the header can decide)."""
    return [({"x-session-id": f"session-{k}"}, chat_body(f"question {k}")) for k in range(n)]


def long_prompt_requests(n: int = 1000) -> list[tuple[dict, dict]]:
    """Prompt k: a long text of its own (no header, no user)."""
    return [({}, chat_body(f"Document {k}. " + DOCUMENT)) for k in range(n)]


@pytest.mark.parametrize(("method", "requests"), [("session-affinity", session_requests),
                                                   ("prefix-affinity", long_prompt_requests)],
                         ids=["session-header", "long-prompt"])
def test_two_routers_send_each_key_to_the_same_endpoint_and_spill_alike(backends, router, method, requests):
    replicas = backends(*((name, {"report_running": BUSY_RUNNING}) for name in "abcd"))
    routers = [router(table(replicas, method)) for _ in range(2)]
    wait_for_reports(routers, lambda i, load: load["running"] >= BUSY_RUNNING, "load reports in both routers")
    batch = requests()

    first, second = send_through(routers, batch)
    assert sum(x == y for x, y in zip(first, second)) == len(batch)  # 1,000 of 1,000
    assert set(first) == set("abcd"), Counter(first)

    replicas[1].control(report_waiting=5000)  # b: a queue far over the bound, 1.25 x (mean + 1)
    wait_for_reports(routers, lambda i, load: (load["waiting"] >= 5000) == (i == "b"), "b's queue in both routers")
    spilled_first, spilled_second = send_through(routers, batch)
    assert sum(x == y for x, y in zip(spilled_first, spilled_second)) == len(batch)
    assert "b" not in spilled_first
    moved = [(before, after) for before, after in zip(first, spilled_first) if before != after]
    assert {before for before, _ in moved} == {"b"}  # only b's keys moved...
    assert len(moved) == first.count("b")
    assert {after for _, after in moved} == set("acd")  # ...each to its own next choice, not all to one


def test_a_pool_wide_system_prompt_spreads_conversations_and_each_keeps_its_endpoint(backends, router):
    replicas = backends(*((name, {"delay_s": 0.5}) for name in "abcd"))
    r = router(table(replicas, "prefix-affinity"))

    # A burst: the first turn of all 64 conversations at once, each held 0.5 s by its replica. No
    # endpoint goes over the bound, 1.25 x (63 / 4 + 1) < 21 before the last pick; all take a share.
    # (Workers of one router pick in parallel: each may add one at the very same moment.)
    burst = send_through([r], [({}, conversation(k, 1)) for k in range(64)], concurrency=64)[0]
    assert set(burst) == set("abcd"), Counter(burst)
    most = [b.stats()["maxInFlight"] for b in replicas]
    assert max(most) <= 21 + ROUTER_WORKERS - 1, most

    # Then the conversations go on, 8 at a time, on a pool as busy as a real one (its replicas report
    # 200 running), three turns each: every conversation stays where it started.
    for b in replicas:
        b.control(delay_s=0.0, report_running=BUSY_RUNNING)
    wait_for_reports([r], lambda i, load: load["running"] >= BUSY_RUNNING, "the replicas' load reports")
    met: dict[int, set[str]] = {}
    for turn in (1, 2, 3):
        answered = send_through([r], [({}, conversation(k, turn)) for k in range(64)], concurrency=8)[0]
        for k, endpoint in enumerate(answered):
            met.setdefault(k, set()).add(endpoint)
    assert all(len(endpoints) == 1 for endpoints in met.values()), met
    assert set().union(*met.values()) == set("abcd")


def test_the_tables_session_header_keeps_sessions_on_every_path_and_a_new_name_applies_at_once(backends, router):
    replicas = backends(*((name, {}) for name in "abcd"))
    r = router(table(replicas, "session-affinity", affinity={"sessionHeader": "X-Conversation-Id"}))

    def endpoints_met(header: str, path: str = "/v1/chat/completions") -> dict[int, set[str]]:
        met: dict[int, set[str]] = {}
        for turn in range(3):
            for k in range(40):
                resp = r.client.post(path, json=chat_body(f"session {k}, turn {turn}"), headers={header: f"conv-{k}"})
                assert resp.status_code == 200, resp.text
                met.setdefault(k, set()).add(resp.headers["x-maitred-endpoint"])
        return met

    named = endpoints_met("x-conversation-id")
    assert all(len(e) == 1 for e in named.values()) and len(set().union(*named.values())) >= 3, named
    assert endpoints_met("x-conversation-id", "/v1/files") == named  # a path whose body is never read
    assert any(len(e) > 1 for e in endpoints_met("x-session-id").values())  # not the header named: by prompt
    r.update_table(affinity={"sessionHeader": "x-session-id"})
    assert endpoints_met("x-session-id") == named  # the same session ids, under the new name
