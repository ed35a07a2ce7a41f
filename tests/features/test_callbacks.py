"""Completion callbacks without a server: URL rules, backoff arithmetic, the state after
each attempt, signatures, and the store's due list through ``CallbackBook.attempt`` with
a fixed clock."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Collection
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from flowrun.engine.node_services import HttpPolicy
from flowrun.errors import Forbidden
from flowrun.features.callbacks.book import CallbackBook
from flowrun.features.callbacks.rules import (
    RetryPolicy,
    after_attempt,
    backoff,
    delivered,
    fair_pick,
    request_headers,
)
from flowrun.features.webhooks import signing
from flowrun.language.urls import check_url
from flowrun.records import CallbackAttempt, CallbackState, DueCallback, Event, RunRecord, RunStatus
from flowrun.runs import access
from flowrun.runs.lifecycle import Lifecycle
from flowrun.runs.service import RunService
from flowrun.store import Store
from flowrun.store.schema import MIGRATIONS

POLICY = RetryPolicy(base_s=10, cap_s=3600, max_age_s=86_400)


@pytest.mark.parametrize("url", ["http://example.com", "https://example.com:8443/a/b?c=d",
                                 "http://127.0.0.1:9/hook", "https://[::1]/x"])
def test_urls_a_callback_may_use(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://example.com/", "http"), ("example.com", "http"), ("http:///x", "no host"),
    ("http://u:p@example.com/", "user info"), ("http://@example.com/", "user info"),
    ("http://example.com/a b", "spaces"), ("http://example.com/\x00", "spaces"),
    ("http://example.com:99999999/", "not a valid URL"),
    ("http://example.com/" + "a" * 2030, "longer than 2048"),
    # hosts urllib takes and httpx, its Host header or the connection refuse
    ("http://xn--/", "not a valid URL"), ("http://\u0660\u0661/", "not a valid URL"),
    ("http://xn--a/", "not a valid URL"), ("https://127.0.0.999/", "not a valid URL"),
    ("https://a..localhost/", "not a valid URL"),
    ("https://" + "a" * 64 + ".localhost/", "not a valid URL")])
def test_urls_a_callback_may_not_use(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_url(url)


ACCEPTED = ["http://localhost/hook", "https://localhost:8443/a/b?c=d#e", "http://127.0.0.1:9/",
            "https://[::1]/x", "http://b\u00fccher.localhost/", "http://127.0.0.3/",
            "http://localhost./x", "http://localhost/%zz", "http://[fe80::1%25lo]/"]


@pytest.mark.parametrize("url", ACCEPTED)
async def test_a_url_the_check_passes_is_one_a_delivery_can_send(url: str) -> None:
    """The rule holds for the request the loop sends: httpx (and httpcore behind it)
    builds the POST and hands it to a transport."""
    assert check_url(url) == url
    sent: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(receive)) as http:
        async with http.stream("POST", url, content=b"{}") as resp:
            assert resp.status_code == 204
    assert sent[0].url.host


def test_backoff_doubles_from_the_base_up_to_the_cap_within_its_jitter() -> None:
    assert [backoff(n, POLICY, 1.0) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert [backoff(n, POLICY, 0.0) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert backoff(3, POLICY, 0.5) == 30
    assert backoff(9, POLICY, 1.0) == 2560
    assert backoff(10, POLICY, 1.0) == 3600  # capped: 5120 is past an hour
    assert backoff(10_000, POLICY, 1.0) == 3600  # no overflow, however many attempts
    assert backoff(0, POLICY, 1.0) == 10  # (never asked, but not below the base)


def test_the_state_after_an_attempt() -> None:
    ended = 1_000.0
    ok = after_attempt(1, True, now=ended + 1, finished_at=ended, policy=POLICY, jitter=0.3)
    assert (ok.state, ok.next_attempt_at) == (CallbackState.DELIVERED, None)

    retry = after_attempt(2, False, now=ended + 50, finished_at=ended, policy=POLICY,
                          jitter=1.0)
    assert (retry.state, retry.next_attempt_at) == (CallbackState.PENDING, ended + 70)

    # the last retry falls at the deadline, 24 h after the run ended, not past it
    late = after_attempt(20, False, now=ended + 86_000, finished_at=ended, policy=POLICY,
                         jitter=1.0)
    assert (late.state, late.next_attempt_at) == (CallbackState.PENDING, ended + 86_400)
    # an attempt at (or past) the deadline that fails gives up
    for now in (ended + 86_400, ended + 200_000):
        gone = after_attempt(21, False, now=now, finished_at=ended, policy=POLICY,
                             jitter=0.0)
        assert (gone.state, gone.next_attempt_at) == (CallbackState.FAILED, None)
        # ...but one that succeeds there still delivers
        assert after_attempt(21, True, now=now, finished_at=ended, policy=POLICY,
                             jitter=0.0).state is CallbackState.DELIVERED


def test_only_a_2xx_delivers() -> None:
    assert [delivered(s) for s in (200, 204, 299)] == [True] * 3
    assert [delivered(s) for s in (None, 100, 301, 304, 400, 410, 500)] == [False] * 7


def test_headers_are_signed_with_every_secret_given_for_their_url() -> None:
    body = b'{"id":"r1"}'
    url = "https://127.0.0.1/hook?x=1"
    headers = request_headers(["whsec_new", "whsec_old"], body, url=url, delivery_id="dlv_1",
                              attempt=3, timestamp=1_700_000_000)
    assert headers["Content-Type"] == "application/json"
    assert headers["Flowrun-Delivery"] == "dlv_1" and headers["Flowrun-Attempt"] == "3"
    header = headers[signing.HEADER]
    assert header.startswith("t=1700000000,v2=") and header.count(",v2=") == 2
    assert "v1=" not in header  # nothing a receiver could check without its URL
    for secret in ("whsec_new", "whsec_old"):
        signing.verify(secret, header, body, url=url, now=1_700_000_010)
    for secret, to in (("whsec_other", url), ("whsec_new", "https://127.0.0.2/hook?x=1"),
                       ("whsec_new", "https://127.0.0.1/hook")):
        with pytest.raises(signing.SignatureError, match="no signature matches"):
            signing.verify(secret, header, body, url=to, now=1_700_000_010)
    with pytest.raises(signing.SignatureError, match="no v1= signature"):
        signing.verify("whsec_new", header, body, now=1_700_000_010)  # the old way


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def finished_run(store: Store, run_id: str, finished_at: float, *,
                       callback_url: str | None = "http://127.0.0.1:9/hook",
                       api_key_id: str | None = None) -> None:
    run = RunRecord(id=run_id, workflow="wf", version=1, status=RunStatus.QUEUED, inputs={},
                    created_at=finished_at - 1, callback_url=callback_url,
                    api_key_id=api_key_id)
    await store.insert_run(run).wait()
    await store.finish_run(run_id, RunStatus.SUCCEEDED, outputs={"x": 1}, error=None,
                           steps=1, finished_at=finished_at,
                           event=Event(run_id, 1, "workflow_finished", {}, finished_at),
                           key_ttl_s=60, has_key=False).wait()


async def all_due(store: Store, now: float, skip: Collection[str] = (),
              each: int = 10) -> list[DueCallback]:
    """Every key's due callbacks (up to ``each`` of each), soonest first within a key."""
    found = await store.due_callbacks(now, dict.fromkeys(await store.callback_keys(), each),
                                      skip)
    return [item for items in found.values() for item in items]


async def test_attempts_move_a_callback_from_pending_to_failed(tmp_path: Path) -> None:
    answers = [500, 200]
    seen: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(answers.pop(0))

    clock = Clock(10_000.0)
    policy = RetryPolicy(base_s=10, cap_s=3600, max_age_s=100)
    async with Store.open(tmp_path / "f.db") as store, \
            httpx.AsyncClient(transport=httpx.MockTransport(receive)) as http:
        book = CallbackBook(store, cast(RunService, None), cast(Lifecycle, None),
                            HttpPolicy(), policy, clock=clock, jitter=lambda: 1.0)
        book._http = http  # (run() opens the guarded client; here a mock receives)
        await finished_run(store, "r1", 10_000.0)
        await finished_run(store, "r2", 9_000.0)  # ended long ago: one try, then failed
        await finished_run(store, "r3", 10_000.0, callback_url=None)
        running = RunRecord(id="r4", workflow="wf", version=1, status=RunStatus.RUNNING,
                            inputs={}, created_at=1, callback_url="http://127.0.0.1:9/")
        await store.insert_run(running).wait()  # not ended: not due

        due = await all_due(store, clock())
        assert sorted(d.run_id for d in due) == ["r1", "r2"]
        assert [d.run_id for d in await all_due(store, clock(), skip={"r1"})] == \
            ["r2"]
        first = next(d for d in due if d.run_id == "r1")
        attempt = await book.attempt(first)
        assert attempt is not None and attempt.status_code == 500
        body = json.loads(seen[0].content)
        assert body["id"] == "r1" and body["outputs"] == {"x": 1}
        secret = (await store.server_secret("callback_signing", "unused"))[0]
        signing.verify(secret, seen[0].headers[signing.HEADER], seen[0].content,
                       url="http://127.0.0.1:9/hook", now=clock())
        shown = await store.get_callback("r1")
        assert shown is not None and shown.state is CallbackState.PENDING
        assert shown.next_attempt_at == 10_010.0  # base 10 s, full jitter
        assert [d.run_id for d in await all_due(store, clock())] == ["r2"]

        clock.now = 10_010.0
        [again] = [d for d in await all_due(store, clock()) if d.run_id == "r1"]
        assert again.attempts == 1 and again.delivery_id == shown.delivery_id
        await book.attempt(again)
        assert seen[1].headers["Flowrun-Attempt"] == "2"
        shown = await store.get_callback("r1")
        assert shown is not None and shown.state is CallbackState.DELIVERED
        assert [(a.attempt, a.status_code) for a in shown.attempts] == [(1, 500), (2, 200)]

        # r2 ended 1,010 s ago with a 100 s limit: its only attempt fails it for good
        answers.append(503)
        [old] = await all_due(store, clock())
        await book.attempt(old)
        gone = await store.get_callback("r2")
        assert gone is not None and gone.state is CallbackState.FAILED
        assert gone.next_attempt_at is None
        assert await all_due(store, clock() + 10**6) == []
        assert await store.get_callback("r3") is None

        # deleting a run deletes its callback
        await store.delete_run("r1")
        assert await store.get_callback("r1") is None


async def test_finding_due_callbacks_reads_pending_rows_only(tmp_path: Path) -> None:
    """The loop's look-ups walk the partial index of pending callbacks: from key to key
    (one step each), then each key's own rows and each run by id. Never every ended
    run, nor another key's callbacks, however many there are."""
    db = tmp_path / "f.db"
    async with Store.open(db):
        pass
    with sqlite3.connect(db) as conn:
        plans: list[list[str]] = []

        def explain(sql: str, params: Any) -> None:
            plans.append([row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}",
                                                         params)])

        async def fetchall(self: Store, sql: str, params: Any = ()) -> list[Any]:
            explain(sql, params)
            return []

        async def together(self: Store, queries: Any) -> list[list[Any]]:
            for sql, params in queries:
                explain(sql, params)
            return [[] for _ in queries]

        async with Store.open(db) as store:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(Store, "_fetchall", fetchall)
                patch.setattr(Store, "_fetch_together", together)
                await store.callback_keys()
                await store.due_callbacks(1.0, {"k1": 4, "k2": 4})
    keys, *each = plans
    assert [p for p in keys if "callbacks" in p or " c " in p] == [
        "SEARCH callbacks USING INDEX callbacks_pending_by_key",
        "SEARCH c USING INDEX callbacks_pending_by_key (api_key_id>?)"], keys
    assert len(each) == 2
    for plan in each:
        assert plan[0] == "SEARCH c USING INDEX callbacks_pending_by_key (api_key_id=?)", plan
        assert plan[1].startswith("SEARCH r USING INDEX sqlite_autoindex_runs_1"), plan
        assert len(plan) == 2, plan  # and no sort: the index gives the order


async def test_the_signing_secret_is_made_once_and_rotated(tmp_path: Path) -> None:
    clock = Clock(50_000.0)
    async with Store.open(tmp_path / "f.db") as store:
        book = CallbackBook(store, cast(RunService, None), cast(Lifecycle, None),
                            HttpPolicy(), POLICY, clock=clock)
        admin = access.Principal(key_id="k1", scope=access.Scope.ADMIN)
        first = await book.secret(admin)
        assert first["secret"].startswith("whsec_") and first["previous_valid_until"] is None
        assert await book.signing_secrets() == [first["secret"]]
        with pytest.raises(Forbidden):
            await book.rotate(access.Principal(key_id="k2", scope=access.Scope.RUN))
        rotated = await book.rotate(admin)
        assert rotated["secret"] != first["secret"]
        assert await book.signing_secrets() == [rotated["secret"], first["secret"]]
        clock.now += 86_401  # the old one stops signing after a day
        assert await book.signing_secrets() == [rotated["secret"]]


async def test_an_attempt_that_cannot_be_sent_is_recorded_and_backs_off(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A URL stored before it was refused fails at once; an error no attempt expects, in
    sending or before it, is a failed attempt that backs off like a refused connection.
    Each is one log line, not a traceback."""
    def explode(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug in a transport")

    caplog.set_level(logging.INFO, "flowrun.features.callbacks.book")
    clock = Clock(10_000.0)
    async with Store.open(tmp_path / "f.db") as store, \
            httpx.AsyncClient(transport=httpx.MockTransport(explode)) as http:
        book = CallbackBook(store, cast(RunService, None), cast(Lifecycle, None),
                            HttpPolicy(), POLICY, clock=clock, jitter=lambda: 1.0)
        book._http = http
        for run_id, url in (("bad", "http://xn--/"), ("odd", "https://127.0.0.1/"),
                            ("lost", "https://127.0.0.1/")):
            await finished_run(store, run_id, 10_000.0, callback_url=url)
        by_id = {d.run_id: d for d in await all_due(store, clock())}

        await book.attempt(by_id["bad"])
        bad = await store.get_callback("bad")
        assert bad is not None and bad.state is CallbackState.FAILED
        [attempt] = bad.attempts
        assert attempt.status_code is None and attempt.error is not None
        assert attempt.error.startswith("invalid callback_url: callback_url is not a valid URL")

        await book.attempt(by_id["odd"])
        odd = await store.get_callback("odd")
        assert odd is not None and odd.state is CallbackState.PENDING
        assert odd.next_attempt_at == 10_010.0
        assert odd.attempts[0].error == "cannot send: RuntimeError: a bug in a transport"

        async def broken(run_id: str, **_: Any) -> RunRecord | None:
            raise RuntimeError("a row this version cannot read")

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(store, "get_run", broken)
            await book._deliver(by_id["lost"])
        lost = await store.get_callback("lost")
        assert lost is not None and lost.state is CallbackState.PENDING
        assert lost.next_attempt_at == 10_010.0
        assert lost.attempts[0].error == "not sent: RuntimeError: a row this version cannot read"
        assert await all_due(store, clock()) == []
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [m.split(":")[1] for _, m in lines] == [" run bad", " run odd", " run lost"], lines
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO, logging.WARNING]
    assert not any(r.exc_info for r in caplog.records)


def due_item(run_id: str, key: str, due_at: float = 1.0) -> DueCallback:
    return DueCallback(run_id, "https://127.0.0.1/", "dlv", 1, 0.0, key, due_at)


def test_each_slot_goes_to_the_key_with_the_fewest_in_flight() -> None:
    many = [due_item(f"a{i}", "a", due_at=1.0 + i) for i in range(40)]
    due = {"a": many, "b": [due_item("b0", "b", due_at=50.0)], "c": []}

    def pick(busy: dict[str, int], room: int, per_key: int = 4) -> list[str]:
        return [d.run_id for d in fair_pick(due, busy, per_key=per_key, room=room)]

    # one each in turn, the one due longest first among keys with as many in flight
    assert pick({}, 3) == ["a0", "b0", "a1"]
    assert pick({}, 8) == ["a0", "b0", "a1", "a2", "a3"]  # a stops at its cap
    # a key with attempts in flight waits behind one without, however long it is due
    assert pick({"a": 3}, 1) == ["b0"]
    assert pick({"a": 4}, 8) == ["b0"]  # a at its cap: nothing of it
    assert pick({"b": 1}, 2) == ["a0", "a1"]
    assert pick({}, 0) == []
    assert len(pick({}, 100, per_key=100)) == 41


async def test_due_callbacks_are_found_key_by_key(db_target: Path | str) -> None:
    """Runs without a key make one group (''); each key's look-up gives its own due
    callbacks only, soonest first, however many another key has."""
    async with Store.open(db_target) as store:
        for i in range(30):
            await finished_run(store, f"a{i:02}", 1_000.0 + i, api_key_id="key_a")
        await finished_run(store, "b0", 2_000.0, api_key_id="key_b")
        await finished_run(store, "n0", 2_000.0)
        live = RunRecord(id="c0", workflow="wf", version=1, status=RunStatus.RUNNING,
                         inputs={}, created_at=1, callback_url="https://127.0.0.1/",
                         api_key_id="key_c")
        await store.insert_run(live).wait()  # pending, not due: its run goes on
        assert await store.callback_keys() == ["", "key_a", "key_b", "key_c"]

        found = await store.due_callbacks(3_000.0, {"key_a": 2, "key_b": 2, "key_c": 2,
                                                    "": 2, "key_x": 2, "key_z": 0},
                                          skip={"a00"})
        assert {k: [d.run_id for d in v] for k, v in found.items()} == {
            "key_a": ["a01", "a02"], "key_b": ["b0"], "key_c": [], "": ["n0"], "key_x": []}
        assert found["key_a"][0].api_key_id == "key_a" and found[""][0].api_key_id == ""

        # a delivered or failed callback is no longer pending: its key drops out
        item = found["key_b"][0]
        await store.record_callback_attempt(
            item.run_id, CallbackAttempt(1, 3_000.0, 200, None, 1.0),
            CallbackState.DELIVERED, None)
        assert await store.callback_keys() == ["", "key_a", "key_c"]


async def test_a_callback_stored_before_keys_counted_gets_its_runs_key(
        tmp_path: Path) -> None:
    """The migration gives callbacks stored by an older version their run's key."""
    db = tmp_path / "f.db"
    conn = sqlite3.connect(db)
    keyed = next(i for i, step in enumerate(MIGRATIONS)
                 if any("callbacks ADD COLUMN api_key_id" in s for s in step))
    for statement in (s for step in MIGRATIONS[:keyed] for s in step):
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {keyed}")
    for run_id, key in (("r1", "key_a"), ("r2", None)):
        conn.execute("INSERT INTO runs (id, workflow, version, status, inputs, created_at, "
                     "finished_at, api_key_id, callback_url) VALUES (?, 'wf', 1, "
                     "'succeeded', '{}', 1, 2, ?, 'https://127.0.0.1/')",
                     (run_id, key))
        conn.execute("INSERT INTO callbacks (run_id, delivery_id, state, updated_at) "
                     "VALUES (?, 'dlv', 'pending', 1)", (run_id,))
    conn.commit()
    conn.close()
    async with Store.open(db) as store:
        assert await store.callback_keys() == ["", "key_a"]
        found = await store.due_callbacks(10.0, {"": 5, "key_a": 5})
        assert [d.run_id for d in found["key_a"]] == ["r1"]
        assert [d.run_id for d in found[""]] == ["r2"]


async def test_the_loop_shares_its_slots_between_keys(tmp_path: Path) -> None:
    """Forty due callbacks of one key, one of another: the first pick takes the other
    key's too, and one key never holds more than its cap."""
    async with Store.open(tmp_path / "f.db") as store:
        for i in range(40):
            await finished_run(store, f"a{i:02}", 1_000.0, api_key_id="key_a")
        await finished_run(store, "b0", 1_001.0, api_key_id="key_b")
        book = CallbackBook(store, cast(RunService, None), cast(Lifecycle, None),
                            HttpPolicy(), POLICY, max_in_flight=8, max_in_flight_per_key=3,
                            clock=Clock(2_000.0))
        picked = await book._pick(2_000.0, 8)
        assert [d.api_key_id for d in picked] == ["key_a", "key_b", "key_a", "key_a"]
        book._in_flight = {d.run_id: d.api_key_id for d in picked}
        assert await book._pick(2_000.0, 4) == []  # key_a at its cap, key_b in flight
        # with one key allowed every slot, the slot key_a frees goes to key_b first
        book = CallbackBook(store, cast(RunService, None), cast(Lifecycle, None),
                            HttpPolicy(), POLICY, max_in_flight=8, max_in_flight_per_key=8)
        book._in_flight = {f"a{i:02}": "key_a" for i in range(7)}
        assert [d.run_id for d in await book._pick(2_000.0, 1)] == ["b0"]
