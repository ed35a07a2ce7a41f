"""The PostgreSQL backend: migrations, SQL translation, the serving lock, reconnects."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import psycopg
import pytest

from flowrun.errors import BadRequest, Unavailable
from flowrun.records import Event, NodeRecord, NodeStatus
from flowrun.store import Store
from flowrun.store.postgres import translate
from flowrun.store.schema_pg import PG_SCHEMA_VERSION
from tests.eventually import eventually_async
from tests.store.test_sqlite import make_run


def test_translate_rewrites_only_what_postgres_spells_differently() -> None:
    assert translate("SELECT a FROM t WHERE b = ? AND c IS ? LIMIT ?") == \
        "SELECT a FROM t WHERE b = %s AND c IS NOT DISTINCT FROM %s LIMIT %s"
    assert translate("FROM c CROSS JOIN r ON r.id = c.id WHERE x LIKE 'a%'") == \
        "FROM c JOIN r ON r.id = c.id WHERE x LIKE 'a%%'"


async def test_migrates_once_and_reopens(postgres_url: str) -> None:
    async with Store.open(postgres_url) as store:
        assert await store.count_api_keys() == 0
    async with Store.open(postgres_url) as store:  # a second open migrates nothing
        assert await store.list_workflows() == []
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT MAX(version), COUNT(*) FROM schema_version").fetchone()
    assert row == (PG_SCHEMA_VERSION, PG_SCHEMA_VERSION)


def drop_connections(url: str) -> int:
    """End every other session on the database (as a restart or a failover would)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                            ).fetchall()
    return len(rows)


async def test_reads_and_writes_go_on_after_the_server_drops_the_connections(
        postgres_url: str) -> None:
    async with Store.open(postgres_url) as store:
        await store.insert_run(make_run("before")).wait()
        assert await store.get_run("before") is not None
        assert drop_connections(postgres_url) >= 2  # the writer's and a reader's
        # an accept after the drop is not refused: the writer connects again at BEGIN
        await store.insert_run(make_run("after")).wait()
        assert [r.id for r in await store.unfinished_runs()] == ["before", "after"]


async def test_durable_writes_survive_dropped_connections_in_order(postgres_url: str) -> None:
    async with Store.open(postgres_url) as store:
        results = []
        for seq in range(1, 201):
            results.append(store.record(event=Event("r", seq, "e", {"n": seq}, time.time())))
            if seq % 50 == 0:
                drop_connections(postgres_url)
                await anyio.sleep(0.01)  # the writer meets the dropped connections mid-stream
        with anyio.fail_after(20):
            for result in results:
                await result.wait()
        assert [e.seq for e in await store.events("r", limit=500)] == list(range(1, 201))


async def test_a_read_only_database_refuses_accepts_and_holds_progress_until_it_recovers(
        postgres_url: str) -> None:
    name = postgres_url.rsplit("/", 1)[1]

    def read_only(on: bool) -> None:
        # (from another database: this one's new sessions may only read)
        with psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres",
                             autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on"
                          if on else f"ALTER DATABASE {name} RESET default_transaction_read_only")
        drop_connections(postgres_url)

    async with Store.open(postgres_url) as store:
        await store.insert_run(make_run("r")).wait()
        read_only(True)  # a standby after a failover: every new session only reads
        with anyio.fail_after(10), pytest.raises(Unavailable):
            await store.insert_run(make_run("refused")).wait()
        progress = [store.record(event=Event("r", seq, "e", {}, time.time()))
                    for seq in (1, 2, 3)]
        # a few failed attempts (the refused accept's, then the held progress's)
        await eventually_async(lambda: store._writer._failing_since >= 3,
                               what="the writer's third failed attempt")
        assert not store.writable
        read_only(False)
        with anyio.fail_after(10):
            for result in progress:
                await result.wait()
        assert [e.seq for e in await store.events("r")] == [1, 2, 3]
        assert store.writable and await store.get_run("refused") is None


async def test_text_with_nul_is_refused_as_a_bad_request_and_found_nowhere(
        postgres_url: str) -> None:
    async with Store.open(postgres_url) as store:
        with pytest.raises(BadRequest, match="NUL"):  # PostgreSQL's text cannot hold it
            await store.insert_run(make_run("r", correlation_id="a\x00b")).wait()
        assert await store.get_run("r\x00") is None  # a look-up finds nothing (SQLite too)
        # a run's progress with such a value fails alone; the rest of its batch is kept
        good = store.record(event=Event("r", 1, "e", {}, time.time()))
        bad = store.record(node=NodeRecord("r", "n", "t", "ti\x00tle", 1, NodeStatus.RUNNING))
        last = store.record(event=Event("r", 2, "e", {"text": "a\x00b"}, time.time()))
        await good.wait()
        with pytest.raises(BadRequest):
            await bad.wait()
        await last.wait()  # (JSON escapes NUL: event data is fine)
        assert [e.data for e in await store.events("r")] == [{}, {"text": "a\x00b"}]




async def test_a_read_cancelled_mid_query_finishes_quietly_and_keeps_its_connection(
        postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async with Store.open(postgres_url) as store:
        await store._fetchall("SELECT 1")  # the pool's connection, open
        began = time.monotonic()
        with anyio.move_on_after(0.1) as scope:  # as a shutdown cancels reads in flight
            await store._fetchall("SELECT pg_sleep(0.5)")
            await anyio.lowlevel.checkpoint()
        assert scope.cancelled_caught
        assert time.monotonic() - began >= 0.5  # the read was let finish...
        # ...so psycopg did not cancel it half-way (and warn, and drop the connection)
        assert not [r for r in caplog.records if r.name.startswith("psycopg")], caplog.text
        assert [tuple(r) for r in await store._fetchall("SELECT 2")] == [(2,)]


async def test_a_read_the_database_does_not_answer_in_time_is_unavailable(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from flowrun.store import postgres

    monkeypatch.setattr(postgres, "_READ_TIMEOUT_S", 0.2)
    async with Store.open(postgres_url) as store:
        began = time.monotonic()
        with pytest.raises(Unavailable, match="did not answer a read within 0.2s"):
            await store._fetchall("SELECT pg_sleep(5)")
        assert time.monotonic() - began < 4
        assert [tuple(r) for r in await store._fetchall("SELECT 3")] == [(3,)]
