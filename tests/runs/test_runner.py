"""Runner: resuming keeps succeeded nodes, the terminal write, bugs that escape the engine.

Each test runs one run through a real ``Runner`` on a SQLite file, and reads back
what it stored; the node type ``mark`` records every real execution.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowrun.engine.executor import Executor, RunOutcome
from flowrun.engine.nodes import NodeContext, Registry
from flowrun.engine.nodes import registry as default_registry
from flowrun.errors import NodeFailure, Unavailable
from flowrun.records import Event, NodeRecord, NodeStatus, RunRecord, RunStatus
from flowrun.runs.events import EventBus
from flowrun.runs.runner import Runner
from flowrun.store import Store

TWO_STEPS = {"name": "wf", "nodes": [
    {"id": "a", "type": "mark", "label": "a"},
    {"id": "b", "type": "mark", "label": "{{ nodes.a.label }}-b"}],
    "edges": [{"source": "a", "target": "b"}]}
FAILING = {"name": "bad", "nodes": [
    {"id": "a", "type": "mark", "label": "a"},
    {"id": "x", "type": "refuse"}], "edges": [{"source": "a", "target": "x"}]}


@dataclass
class Stack:
    store: Store
    bus: EventBus
    runner: Runner
    executed: list[str]  # labels of the mark nodes that really ran


@asynccontextmanager
async def runner_stack(db_target: Path | str) -> AsyncIterator[Stack]:
    """A Runner as app.py builds it, on a new database holding TWO_STEPS and FAILING."""
    executed: list[str] = []

    async def mark(ctx: NodeContext, *, label: str) -> dict[str, Any]:
        executed.append(label)
        return {"label": label}

    async def refuse(ctx: NodeContext) -> dict[str, Any]:
        raise NodeFailure("refused")

    registry: Registry = default_registry.copy()
    registry.register("mark", mark)
    registry.register("refuse", refuse)
    async with Store.open(db_target) as store:
        for definition in (TWO_STEPS, FAILING):
            await store.put_workflow(str(definition["name"]), definition)
        bus = EventBus()
        yield Stack(store, bus, Runner(store, bus, registry), executed)


def make_run(workflow: str = "wf", status: RunStatus = RunStatus.QUEUED) -> RunRecord:
    return RunRecord(id=f"run-{workflow}", workflow=workflow, version=1, status=status,
                     inputs={}, created_at=time.time())


async def accept(store: Store, run: RunRecord) -> RunRecord:
    await store.insert_run(run).wait()
    return run


async def test_a_resumed_run_keeps_its_succeeded_nodes(db_target: Path | str) -> None:
    async with runner_stack(db_target) as s:
        # left by a crash: "a" succeeded, "b" was running (its row says failed here)
        run = await accept(s.store, make_run(status=RunStatus.RUNNING))
        now = time.time()
        s.store.record(node=NodeRecord(run.id, "a", "mark", "a", 1, NodeStatus.SUCCEEDED,
                                       outputs={"label": "stored-a"}, attempts=1,
                                       started_at=now, finished_at=now),
                       event=Event(run.id, 1, "workflow_started", {}, now))
        await s.store.record(node=NodeRecord(run.id, "b", "mark", "b", 2, NodeStatus.FAILED,
                                             attempts=1, started_at=now, finished_at=now),
                             event=Event(run.id, 2, "node_started", {}, now)).wait()
        outcome = await s.runner.execute(run)
        assert outcome is not None and outcome.status is RunStatus.SUCCEEDED
        assert s.executed == ["stored-a-b"]  # "a" did not run again; "b" used its output
        assert outcome.outputs == {"b": {"label": "stored-a-b"}}
        stored = await s.store.get_run(run.id)
        assert stored is not None and stored.status is RunStatus.SUCCEEDED
        assert [(n.node_id, n.status, n.outputs) for n in stored.nodes] == [
            ("a", NodeStatus.SUCCEEDED, {"label": "stored-a"}),
            ("b", NodeStatus.SUCCEEDED, {"label": "stored-a-b"})]
        events = await s.store.events(run.id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert (events[2].name, events[2].data["reason"]) == ("workflow_resumed", "resumption")
        assert [e.name for e in events].count("workflow_finished") == 1


async def test_finish_writes_the_final_status_with_the_terminal_event(
        db_target: Path | str) -> None:
    published: list[tuple[int, str, bool]] = []  # seq, name, committed when published
    async with runner_stack(db_target) as s:
        run = await accept(s.store, make_run("bad"))

        async def follow(live: Any) -> None:
            async for event in live:
                committed = await s.store.last_event_seq(event.run_id) >= event.seq
                published.append((event.seq, event.name, committed))
                if event.terminal:
                    return

        with s.bus.subscribe(run.id) as live, anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow, live)
                outcome = await s.runner.execute(run, fresh=True)
        assert outcome is not None and outcome.status is RunStatus.FAILED
        stored = await s.store.get_run(run.id)
        assert stored is not None and stored.status is RunStatus.FAILED
        assert stored.error is not None and stored.error["node_id"] == "x"
        assert stored.finished_at is not None
        events = await s.store.events(run.id)
        last = events[-1]
        assert last.name == "workflow_finished" and last.seq == len(events)
        assert last.data["status"] == "failed" and last.data["error"] == "refused"
        assert last.data["total_steps"] == 2
    assert [(seq, name) for seq, name, _ in published] == [(e.seq, e.name) for e in events]
    assert all(committed for _, _, committed in published)  # never ahead of the store


async def test_a_run_stopped_in_the_queue_is_finished_as_stopped(db_target: Path | str) -> None:
    async with runner_stack(db_target) as s:
        run = await accept(s.store, make_run())
        outcome = await s.runner.finish_unstarted(run, RunStatus.STOPPED, "not needed",
                                                  fresh=True)
        assert outcome.status is RunStatus.STOPPED and s.executed == []
        stored = await s.store.get_run(run.id)
        assert stored is not None and stored.status is RunStatus.STOPPED
        assert stored.error == {"code": "stopped", "message": "not needed", "node_id": None}
        [event] = await s.store.events(run.id)
        assert (event.seq, event.name, event.data["status"]) == (1, "workflow_finished",
                                                                 "stopped")


async def test_a_bug_escaping_the_executor_fails_the_run_as_internal_error(
        db_target: Path | str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: Executor) -> RunOutcome:
        raise RuntimeError("a bug in the engine")

    monkeypatch.setattr(Executor, "execute", broken)
    async with runner_stack(db_target) as s:
        run = await accept(s.store, make_run())
        outcome = await s.runner.execute(run, fresh=True)  # does not raise
        assert outcome is not None and outcome.status is RunStatus.FAILED
        assert outcome.error is not None and outcome.error["code"] == "internal_error"
        assert "RuntimeError" in outcome.error["message"]
        stored = await s.store.get_run(run.id)
        assert stored is not None and stored.status is RunStatus.FAILED
        assert stored.error == outcome.error
        events = await s.store.events(run.id)
        assert events[-1].name == "workflow_finished"
        assert events[-1].data["status"] == "failed"


async def test_a_store_fault_escaping_the_executor_leaves_the_run_to_resume(
        db_target: Path | str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def unavailable(self: Executor) -> RunOutcome:
        raise Unavailable("the database cannot accept writes")

    monkeypatch.setattr(Executor, "execute", unavailable)
    async with runner_stack(db_target) as s:
        run = await accept(s.store, make_run())
        with pytest.raises(Unavailable):
            await s.runner.execute(run, fresh=True)
        await s.store.execute("SELECT 1")  # commits what the runner queued before it
        stored = await s.store.get_run(run.id)
        assert stored is not None and stored.status is RunStatus.RUNNING
        assert "workflow_finished" not in [e.name for e in await s.store.events(run.id)]
