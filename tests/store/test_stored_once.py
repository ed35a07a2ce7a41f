"""Store: a node's large inputs and outputs (and a run's outputs) are stored once, in
their row; the events written with that row refer to it, and a replay joins them in
(on SQLite and on PostgreSQL: ``db_target``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flowrun.jsontext import encode
from flowrun.records import Event, NodeRecord, NodeStatus, RunRecord, RunStatus
from flowrun.runs.events import node_finished_payload, node_payload
from flowrun.store import Store
from flowrun.store.base import INLINE_BYTES

BIG = "z" * (INLINE_BYTES * 4)


def make_run(run_id: str) -> RunRecord:
    return RunRecord(id=run_id, workflow="wf", version=1, status=RunStatus.QUEUED,
                     inputs={}, created_at=time.time())


def finished_node(text: str, *, started_at: float) -> NodeRecord:
    node = NodeRecord("r", "a", "template", "a", 1, NodeStatus.SUCCEEDED,
                      inputs={"template": text}, started_at=started_at,
                      finished_at=started_at + 0.5)
    node.encoded_outputs = encode({"text": text})
    node.outputs = node.encoded_outputs.value
    return node


async def stored_data(store: Store) -> list[str]:
    """The events' data column as it is in the database."""
    rows = await store._fetchall("SELECT data FROM events WHERE run_id = ? ORDER BY seq",
                                 ("r",))
    return [str(r["data"]) for r in rows]


async def record(store: Store, seq: int, name: str, node: NodeRecord) -> Event:
    payload = node_payload(node, "x1", None) if name == "node_started" else \
        node_finished_payload(node, "x1", None)
    event = Event("r", seq, name, payload, time.time())
    await store.record(node=node, event=event).wait()
    return event


async def test_large_outputs_are_stored_once_and_replayed_whole(
        db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        await store.insert_run(make_run("r")).wait()
        node = finished_node(BIG, started_at=time.time())
        started = await record(store, 1, "node_started", node)
        finished = await record(store, 2, "node_finished", node)
        assert all(len(data) < INLINE_BYTES for data in await stored_data(store))
        [(inputs, outputs)] = await store._fetchall(
            "SELECT inputs, outputs FROM node_executions WHERE run_id = ?", ("r",))
        assert BIG in inputs and BIG in outputs  # the row holds each, once
        replayed = await store.events("r")
        assert [e.data for e in replayed] == [started.data, finished.data]
        assert replayed[1].data["outputs"] == {"text": BIG}
        assert "stored_with" not in replayed[1].data


async def test_small_values_stay_in_the_event(db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        await store.insert_run(make_run("r")).wait()
        node = finished_node("small", started_at=time.time())
        await record(store, 1, "node_finished", node)
        [data] = await stored_data(store)
        assert '"outputs":{"text":"small"}' in data
        reads = store.round_trips()["read"]
        [event] = await store.events("r")
        assert event.data["outputs"] == {"text": "small"}
        assert store.round_trips()["read"] == reads + 1  # no second read to join


async def test_an_execution_the_row_no_longer_holds_is_replayed_truncated(
        db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        await store.insert_run(make_run("r")).wait()
        first = time.time()
        await record(store, 1, "node_finished", finished_node(BIG, started_at=first))
        # the node ran again (a retry re-ran it): its row holds the new execution
        await record(store, 2, "node_finished", finished_node(BIG + "2",
                                                              started_at=first + 10))
        old, new = await store.events("r")
        assert old.data["outputs"] is None and old.data["outputs_truncated"] is True
        assert old.data["inputs"] is None and old.data["inputs_truncated"] is True
        assert new.data["outputs"] == {"text": BIG + "2"}
        assert "outputs_truncated" not in new.data


async def test_a_runs_large_outputs_are_stored_once(db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        await store.insert_run(make_run("r")).wait()
        outputs: dict[str, Any] = {"a": {"text": BIG}}
        finished_at = time.time()
        event = Event("r", 1, "workflow_finished", {"status": "succeeded",
                                                    "outputs": outputs}, finished_at)
        await store.finish_run("r", RunStatus.SUCCEEDED, outputs=outputs, error=None,
                               steps=1, finished_at=finished_at, event=event,
                               key_ttl_s=60, has_key=False).wait()
        assert all(BIG not in data for data in await stored_data(store))
        [replayed] = await store.events("r")
        assert replayed.data == {"status": "succeeded", "outputs": outputs}
        run = await store.get_run("r", with_nodes=False)
        assert run is not None and run.outputs == outputs


async def test_a_page_joins_every_large_value_in_one_more_read(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "f.db") as store:
        await store.insert_run(make_run("r")).wait()
        live: list[Event] = []
        for seq, node_id in enumerate(("a", "b", "c"), start=1):
            node = finished_node(BIG + node_id, started_at=time.time())
            node.node_id = node_id
            live.append(await record(store, seq, "node_finished", node))
        outputs = {"c": {"text": BIG + "c"}}
        end = Event("r", 4, "workflow_finished", {"status": "succeeded", "outputs": outputs,
                                                  "total_steps": 3}, time.time())
        await store.finish_run("r", RunStatus.SUCCEEDED, outputs=outputs, error=None,
                               steps=3, finished_at=end.created_at, event=end, key_ttl_s=60,
                               has_key=False).wait()
        reads = store.round_trips()["read"]
        replayed = await store.events("r")
        assert store.round_trips()["read"] == reads + 2  # the page, then its rows
        assert [e.data for e in replayed] == [e.data for e in [*live, end]]
        # each field where the live event had it (clients see the same JSON text)
        assert [list(e.data) for e in replayed] == [list(e.data) for e in [*live, end]]


async def test_run_progress_is_the_last_seq_and_the_bytes_kept_nodes_hold(
        db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        await store.insert_run(make_run("r")).wait()
        assert await store.run_progress("r") == (0, 0)
        kept = finished_node("é" * 100, started_at=time.time())  # 2 bytes a character
        await record(store, 1, "node_finished", kept)
        failed = finished_node("not kept", started_at=time.time())
        failed.node_id, failed.status = "b", NodeStatus.FAILED
        await record(store, 2, "node_finished", failed)
        held = len(encode(kept.inputs).text.encode()) + len(encode(kept.outputs).text.encode())
        assert await store.run_progress("r") == (2, held)
