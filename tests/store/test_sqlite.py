"""Store: migrations, workflow versions, group commit, run and node round trips (the
interface tests on SQLite and on PostgreSQL: ``db_target``)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import psycopg
import pytest

from flowrun.records import RUN_TERMINAL, Event, NodeRecord, NodeStatus, RunRecord, RunStatus
from flowrun.store import Store
from flowrun.store.housekeeping import ENDED_BEFORE
from flowrun.store.schema import SCHEMA_VERSION
from flowrun.store.writer import Connection

# A constraint a write breaks, as each database's driver raises it.
INTEGRITY = (sqlite3.IntegrityError, psycopg.IntegrityError)


def make_run(run_id: str, **kw: Any) -> RunRecord:
    return RunRecord(id=run_id, workflow="wf", version=1, status=RunStatus.QUEUED,
                     inputs={"a": 1}, created_at=time.time(), **kw)


async def test_new_database_is_migrated_in_wal_mode(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "f.db"
    async with Store.open(db):
        pass
    async with Store.open(db):  # a second open migrates nothing and keeps working
        pass
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_workflow_versions(db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        assert await store.put_workflow("wf", {"v": 1}) == (1, True)
        assert await store.put_workflow("wf", {"v": 1}) == (1, False)
        assert await store.put_workflow("wf", {"v": 2}) == (2, True)
        assert await store.get_workflow("wf") == (2, {"v": 2})
        assert await store.get_workflow("wf", 1) == (1, {"v": 1})
        assert await store.get_workflow("wf", 9) is None
        assert [(n, v) for n, v, _ in await store.list_workflows()] == [("wf", 2)]


async def test_concurrent_writes_are_group_committed(db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        def insert(run_id: str) -> Coroutine[Any, Any, None]:
            return store.insert_run(make_run(run_id)).wait()  # submitted by start_soon

        before = store.round_trips()["write"]
        async with anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(insert, f"r{i}")
        batches = store.round_trips()["write"] - before
        rows = await store.list_runs("wf", api_key_id=None, limit=1000)
        # every write is stored, once...
        assert sorted(r.id for r in rows) == sorted(f"r{i}" for i in range(300))
        # ...and 300 writes queued together share a few commits, not one each (each
        # batch is one trip to the writer's thread and one commit)
        assert batches <= 3, f"300 concurrent writes took {batches} commits"


async def test_a_failing_write_does_not_undo_its_batch(db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        await store.insert_run(make_run("dup")).wait()
        ok = store.insert_run(make_run("fine"))
        bad = store.insert_run(make_run("dup"))
        await ok.wait()
        with pytest.raises(INTEGRITY):
            await bad.wait()
        assert await store.get_run("fine") is not None


async def test_run_and_nodes_round_trip(db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        await store.insert_run(make_run("r", priority=7, correlation_id="c")).wait()
        store.mark_running("r", 10.0, Event("r", 1, "workflow_started", {}, 10.0))
        node = NodeRecord("r", "n", "template", "N", 1, NodeStatus.SUCCEEDED, {"i": 1},
                          {"o": 2}, None, 1, None, 10.0, 10.5)
        store.record(node=node)
        await store.finish_run("r", RunStatus.SUCCEEDED, outputs={"x": 1}, error=None,
                               steps=1, finished_at=11.0, key_ttl_s=60,
                               event=Event("r", 2, "workflow_finished", {}, 11.0)).wait()
        run = await store.get_run("r")
        assert run is not None
        assert (run.status, run.outputs, run.priority, run.started_at, run.elapsed_s) == (
            RunStatus.SUCCEEDED, {"x": 1}, 7, 10.0, 1.0)
        assert run.nodes == [node]
        assert await store.unfinished_runs() == []


async def test_retention_deletes_ended_runs_in_batches(db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        for name, status, ended in (("old1", RunStatus.SUCCEEDED, 10.0),
                                    ("old2", RunStatus.FAILED, 11.0),
                                    ("old3", RunStatus.STOPPED, 12.0),
                                    ("new", RunStatus.SUCCEEDED, 1000.0),
                                    ("live", RunStatus.RUNNING, None)):
            await store.insert_run(make_run(name)).wait()
            store.record(event=Event(name, 1, "e", {}, 1.0))
            if ended is not None:
                await store.finish_run(name, status, outputs=None, error=None, steps=0,
                                       finished_at=ended, key_ttl_s=60, has_key=False,
                                       event=Event(name, 2, "workflow_finished", {},
                                                   ended)).wait()
        assert await store.delete_finished_runs(500.0, batch=2) == 2
        assert await store.delete_finished_runs(500.0, batch=2) == 1
        assert await store.delete_finished_runs(500.0, batch=2) == 0
        for name in ("old1", "old2", "old3"):
            assert await store.get_run(name) is None and await store.events(name) == []
        assert await store.get_run("new") is not None
        assert await store.get_run("live") is not None


async def test_the_retention_sweep_reads_an_index_not_every_run(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "f.db"):
        pass
    conn = sqlite3.connect(tmp_path / "f.db")
    plan = conn.execute(f"EXPLAIN QUERY PLAN {ENDED_BEFORE}",
                        (*sorted(s.value for s in RUN_TERMINAL), 1.0, 200)).fetchall()
    assert "USING INDEX runs_by_end (status=? AND finished_at<?)" in str(plan)


async def test_writes_after_reopen_survive(db_target: Path | str) -> None:
    db = db_target
    async with Store.open(db) as store:
        store.insert_run(make_run("queued-only"))  # not awaited: flushed on close
    async with Store.open(db) as store:
        assert [r.id for r in await store.unfinished_runs()] == ["queued-only"]


async def test_events_are_ordered_by_seq(db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        for seq in (1, 2, 3):
            store.record(event=Event("r", seq, "e", {"n": seq}, time.time()))
        await store.execute("SELECT 1")
        assert [e.seq for e in await store.events("r", after=1)] == [2, 3]
        assert await store.last_event_seq("r") == 3


async def test_a_locked_database_becomes_unavailable_then_recovers(tmp_path: Path) -> None:
    from flowrun.errors import Unavailable

    db = tmp_path / "f.db"
    async with Store.open(db) as store:
        blocker = await aiosqlite.connect(db, isolation_level=None)
        await blocker.execute("PRAGMA busy_timeout = 0")
        await blocker.execute("BEGIN EXCLUSIVE")
        with anyio.fail_after(20), pytest.raises(Unavailable):
            await store.insert_run(make_run("blocked")).wait()
        await blocker.execute("ROLLBACK")
        await blocker.close()
        await store.insert_run(make_run("after")).wait()
        assert await store.get_run("blocked") is None
        assert await store.get_run("after") is not None


async def test_a_lone_failing_write_is_rolled_back_and_the_next_one_works(
        db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        await store.insert_run(make_run("once")).wait()
        with pytest.raises(INTEGRITY):
            await store.insert_run(make_run("once")).wait()
        await store.insert_run(make_run("twice")).wait()
        assert [r.id for r in await store.unfinished_runs()] == ["once", "twice"]


async def test_a_broken_durable_op_fails_alone_and_leaves_nothing_half_written(
        db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        await store.insert_run(make_run("r")).wait()
        writer = store._writer

        def broken(conn: Connection) -> None:
            conn.execute("UPDATE runs SET status = 'failed' WHERE id = 'r'")
            raise ValueError("a bug, not a database fault")

        first = store.record(event=Event("r", 1, "workflow_started", {}, time.time()))
        bad = writer.submit(broken, durable=True)  # no savepoint: durable ops are plain
        last = store.record(event=Event("r", 2, "node_started", {}, time.time()))
        await first.wait()
        await last.wait()
        with pytest.raises(ValueError, match="a bug"):
            await bad.wait()
        assert [e.seq for e in await store.events("r")] == [1, 2]
        run = await store.get_run("r")
        assert run is not None and run.status is RunStatus.QUEUED  # its update was undone


async def test_a_row_a_merged_insert_refuses_fails_alone(db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        await store.record(event=Event("r", 1, "e", {}, time.time())).wait()
        # one batch: the merged INSERT of events breaks on the duplicate, so the batch
        # is applied write by write and only the duplicate fails
        before = store.record(event=Event("r", 2, "e", {}, time.time()))
        duplicate = store.record(event=Event("r", 1, "e", {"again": True}, time.time()))
        after = store.record(event=Event("r", 3, "e", {}, time.time()))
        await before.wait()
        with pytest.raises(INTEGRITY):
            await duplicate.wait()
        await after.wait()
        events = await store.events("r")
        assert [(e.seq, e.data) for e in events] == [(1, {}), (2, {}), (3, {})]


async def test_a_nodes_later_state_in_a_batch_is_the_one_stored(db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        await store.insert_run(make_run("r")).wait()
        node = NodeRecord("r", "a", "template", "a", 1, NodeStatus.RUNNING,
                          started_at=time.time())
        started = store.record(node=node, event=Event("r", 1, "node_started", {}, time.time()))
        node.status, node.outputs, node.finished_at = (NodeStatus.SUCCEEDED, {"text": "x"},
                                                       time.time())
        finished = store.record(node=node,
                                event=Event("r", 2, "node_finished", {}, time.time()))
        await started.wait()
        await finished.wait()
        [stored] = await store.node_records("r")
        assert stored.status is NodeStatus.SUCCEEDED and stored.outputs == {"text": "x"}
        assert [e.name for e in await store.events("r")] == ["node_started", "node_finished"]


async def test_a_batch_past_one_statements_variable_limit_is_stored_whole(
        db_target: Path | str) -> None:
    async with Store.open(db_target, max_batch=2000) as store:
        results = [store.record(event=Event("r", seq, "e", {"n": seq}, time.time()))
                   for seq in range(1, 1501)]  # 1,500 rows of 5 values: several INSERTs
        for result in results:
            await result.wait()
        assert [e.seq for e in await store.events("r", limit=2000)] == list(range(1, 1501))


async def test_a_retry_keeps_succeeded_nodes_unless_asked_to_rerun_them(
        db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        await store.insert_run(make_run("r")).wait()
        for node_id, status in (("a", NodeStatus.SUCCEEDED), ("b", NodeStatus.SUCCEEDED),
                                ("c", NodeStatus.FAILED)):
            store.record(node=NodeRecord("r", node_id, "template", node_id, 1, status))
        await store.finish_run("r", RunStatus.FAILED, outputs=None, error={"code": "x"},
                               steps=3, finished_at=time.time(), key_ttl_s=60,
                               event=Event("r", 1, "workflow_finished", {}, time.time())
                               ).wait()
        assert await store.reset_run("r", keep_succeeded=True)  # nothing named to rerun
        assert [n.node_id for n in await store.node_records("r")] == ["a", "b"]
        assert not await store.reset_run("r", keep_succeeded=True)  # queued already
        await store.set_status("r", RunStatus.FAILED, only_from=(RunStatus.QUEUED,))
        assert await store.reset_run("r", keep_succeeded=True, rerun=["b"])
        assert [n.node_id for n in await store.node_records("r")] == ["a"]


async def test_reads_run_on_one_reading_thread_that_cannot_write_and_ends_with_the_store(
        tmp_path: Path) -> None:
    from flowrun.errors import Unavailable
    from flowrun.store.sqlite import open_sqlite

    async with open_sqlite(tmp_path / "f.db") as backend:
        assert backend.read_many is not None
        rows = await backend.read("SELECT ?, ?", (1, "a"))
        assert [tuple(r) for r in rows] == [(1, "a")]
        # several reads are one call on the thread, in order, and one snapshot
        [one, two] = await backend.read_many([("SELECT 1", ()), ("SELECT 2", ())])
        assert (one[0][0], two[0][0]) == (1, 2)
        with pytest.raises(Unavailable, match="readonly"):  # reads only, whatever it is given
            await backend.read("INSERT INTO workflows (name, version, definition, "
                               "created_at) VALUES ('w', 1, '{}', 0)", ())
        [reader] = [t for t in threading.enumerate() if t.name == "flowrun-reader"]
        assert reader is not threading.current_thread()
    reader.join(timeout=5)  # closing the store ends the reading thread
    assert not reader.is_alive()
    conn = sqlite3.connect(tmp_path / "f.db")
    assert conn.execute("SELECT COUNT(*) FROM workflows").fetchone()[0] == 0


async def test_a_run_and_its_nodes_are_read_in_one_round_trip(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "f.db") as store:
        await store.insert_run(make_run("r")).wait()
        node = NodeRecord("r", "n", "template", "N", 1, NodeStatus.SUCCEEDED, {}, {"o": 2},
                          None, 1, None, 10.0, 10.5)
        await store.record(node=node).wait()
        before = store.round_trips()["read"]
        run = await store.get_run("r")
        assert run is not None and run.nodes == [node]
        assert store.round_trips()["read"] == before + 1
        assert await store.get_run("nope") is None
