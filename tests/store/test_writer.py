"""The group-commit writer on its own: batching, failures inside a batch, retries through
a database fault, callbacks only after the commit, order.

What is committed is read back through a second connection, as another process
would see it. ``Writer.round_trips`` counts batches (one thread call, one commit each).
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from flowrun.errors import Unavailable
from flowrun.store.writer import Writer


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "w.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT UNIQUE)")
    return path


@pytest.fixture
def conn(db: Path) -> Iterator[sqlite3.Connection]:
    """The writer's connection, set up as the store sets up its own (autocommit: the
    writer opens its transactions); no busy wait, so a lock is a fault at once."""
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False, timeout=0)
    yield conn
    conn.close()


def stored(db: Path) -> list[str]:
    """The committed rows, in the order they were inserted."""
    with sqlite3.connect(db) as reader:
        return [row[0] for row in reader.execute("SELECT v FROM t ORDER BY n")]


def insert(value: str) -> Callable[[sqlite3.Connection], int]:
    def op(conn: sqlite3.Connection) -> int:
        return int(conn.execute("INSERT INTO t (v) VALUES (?)", (value,)).lastrowid or 0)

    return op


@asynccontextmanager
async def running(writer: Writer[sqlite3.Connection]
                  ) -> AsyncIterator[Writer[sqlite3.Connection]]:
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        try:
            yield writer
        finally:
            tg.cancel_scope.cancel()


async def test_concurrent_writes_share_one_commit(conn: sqlite3.Connection, db: Path) -> None:
    writer = Writer(conn)
    async with running(writer), anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(writer.write, insert(f"v{i}"))
    assert sorted(stored(db)) == sorted(f"v{i}" for i in range(100))
    assert writer.round_trips == 1


async def test_a_batch_holds_at_most_max_batch_writes(conn: sqlite3.Connection,
                                                      db: Path) -> None:
    writer = Writer(conn, max_batch=16)
    async with running(writer):
        results = [writer.submit(insert(f"v{i}")) for i in range(100)]
        for result in results:
            await result.wait()
    assert stored(db) == [f"v{i}" for i in range(100)]
    assert writer.round_trips == math.ceil(100 / 16)


async def test_a_failing_write_does_not_undo_the_others_in_its_batch(
        conn: sqlite3.Connection, db: Path) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (v) VALUES ('partial')")
        raise ValueError("a bug in this write")

    writer = Writer(conn)
    async with running(writer):
        first = writer.submit(insert("first"))
        broken = writer.submit(half_then_fail)
        duplicate = writer.submit(insert("first"))  # refused by the UNIQUE constraint
        last = writer.submit(insert("last"))
        assert await first.wait() == 1
        with pytest.raises(ValueError, match="a bug"):
            await broken.wait()
        with pytest.raises(sqlite3.IntegrityError):
            await duplicate.wait()
        await last.wait()
    assert writer.round_trips == 1  # one batch...
    assert stored(db) == ["first", "last"]  # ...and only the failing writes undone


async def test_durable_writes_are_retried_through_a_database_fault(
        conn: sqlite3.Connection, db: Path) -> None:
    writer = Writer(conn)
    landed: list[BaseException | None] = []
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the database
        async with running(writer):
            durable = [writer.submit(insert(v), durable=True) for v in ("d1", "d2")]
            durable[-1].add_done_callback(landed.append)
            awaited = writer.submit(insert("client"))  # a client waits on this one
            with anyio.fail_after(5), pytest.raises(Unavailable):
                await awaited.wait()
            assert not writer.healthy
            assert landed == []  # kept for a retry, not failed
            blocker.execute("ROLLBACK")  # the fault clears
            with anyio.fail_after(5):
                for result in durable:
                    await result.wait()
        assert writer.healthy
    finally:
        blocker.close()
    assert landed == [None]
    assert stored(db) == ["d1", "d2"]  # in the order they were submitted; "client" refused


async def test_a_write_is_reported_done_only_once_committed(conn: sqlite3.Connection,
                                                            db: Path) -> None:
    seen: list[tuple[BaseException | None, list[str]]] = []

    def done(error: BaseException | None) -> None:
        seen.append((error, stored(db)))  # what another connection sees at that moment

    writer = Writer(conn, linger_s=30)  # progress nobody awaits waits for company
    async with running(writer):
        result = writer.submit(insert("progress"), durable=True)
        result.add_done_callback(done)
        await anyio.wait_all_tasks_blocked()
        assert seen == [] and stored(db) == []  # lingering: neither committed nor reported
        with anyio.fail_after(5):
            await result.wait()  # someone waits now: the writer commits at once
    assert seen == [(None, ["progress"])]


async def test_writes_commit_and_report_in_the_order_they_were_submitted(
        conn: sqlite3.Connection, db: Path) -> None:
    writer = Writer(conn, max_batch=4)
    reported: list[int] = []

    def report(i: int) -> Callable[[BaseException | None], None]:
        return lambda error: reported.append(i)

    async with running(writer):
        results = [writer.submit(insert(f"v{i}")) for i in range(10)]
        for i, result in enumerate(results):
            result.add_done_callback(report(i))
        for result in results:
            await result.wait()
    assert writer.round_trips == 3  # across several batches...
    assert stored(db) == [f"v{i}" for i in range(10)]  # ...rows in submit order
    assert reported == list(range(10))


async def test_every_batch_commits_on_the_writer_s_one_thread_which_ends_with_it(
        conn: sqlite3.Connection, db: Path) -> None:
    threads: set[threading.Thread] = set()

    def where(conn: sqlite3.Connection) -> None:
        threads.add(threading.current_thread())

    async with running(Writer(conn, linger_s=0)) as writer:
        for n in range(5):
            await writer.write(where)
            await writer.write(insert(f"v{n}"))
    assert stored(db) == [f"v{n}" for n in range(5)]
    [thread] = threads  # one thread for every batch, and not the event loop's
    assert thread is not threading.current_thread()
    thread.join(timeout=5)  # the writer's end ends its thread: none is left behind
    assert not thread.is_alive()


async def test_room_waits_while_the_backlog_is_full_and_gives_up_after_its_timeout(
        conn: sqlite3.Connection, db: Path) -> None:
    writer = Writer(conn, max_backlog=3)
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # the writer falls behind: its writes queue
        async with running(writer):
            assert await writer.room(0)  # nothing queued: room at once
            queued = [writer.submit(insert(f"d{i}"), durable=True) for i in range(3)]
            assert not await writer.room(0.2)  # still full when the wait ends
            waiting = anyio.Event()
            got: list[bool] = []

            async def wait_for_room() -> None:
                waiting.set()
                got.append(await writer.room(10))

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_room)
                await waiting.wait()
                assert got == []
                blocker.execute("ROLLBACK")  # the fault clears: the backlog commits
            assert got == [True]
            with anyio.fail_after(5):
                for result in queued:
                    await result.wait()
    finally:
        blocker.close()
    assert stored(db) == ["d0", "d1", "d2"]
