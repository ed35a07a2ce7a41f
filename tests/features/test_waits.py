"""WaitBook over a real store: who may wake a parked run, once, and the start-up check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

from flowrun.features.waits import WaitBook
from flowrun.records import Event, NodeRecord, NodeStatus, RunRecord, RunStatus
from flowrun.runs.runner import signal_token_hash
from flowrun.runs.service import RunService
from flowrun.store import Store


class QueueingService:
    """The part of RunService the book calls: queue a woken run again."""

    def __init__(self) -> None:
        self.queued: list[str] = []

    async def requeue(self, run: RunRecord) -> None:
        self.queued.append(run.id)


async def parked(store: Store, run_id: str, *, signal: str = "go",
                 wake_at: float | None = None) -> None:
    run = RunRecord(id=run_id, workflow="wf", version=1, status=RunStatus.RUNNING,
                    inputs={}, created_at=time.time(), started_at=time.time())
    await store.insert_run(run).wait()
    node = NodeRecord(run_id, "w", "wait", "w", 1, NodeStatus.WAITING,
                      process_data={"signal": signal, "waiting_since": time.time()})
    await store.record(node=node).wait()
    event = Event(run_id, 1, "workflow_waiting", {}, time.time())
    await store.park_run(run_id, wake_at=wake_at, event=event,
                         tokens=[(signal_token_hash("t-" + run_id), "w", signal)]).wait()


def book(store: Store, service: QueueingService, now: float | None = None) -> WaitBook:
    return WaitBook(store, cast(RunService, service),
                    clock=(lambda: now) if now else time.time)


async def test_a_parked_run_is_woken_once(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "f.db") as store:
        service = QueueingService()
        await parked(store, "r1")
        waits = book(store, service)
        assert await waits.wake("r1") is True
        assert await waits.wake("r1") is False  # queued already: the second waker loses
        assert service.queued == ["r1"]
        found = await store.get_run("r1")
        assert found is not None and found.status is RunStatus.QUEUED


async def test_the_tick_wakes_only_runs_whose_time_has_come(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "f.db") as store:
        service = QueueingService()
        await parked(store, "due", wake_at=100.0)
        await parked(store, "later", wake_at=200.0)
        await parked(store, "never")  # no timeout: only a signal wakes it
        assert await book(store, service, now=150.0).tick() == 200.0  # the next wake time
        assert service.queued == ["due"]


async def test_at_start_a_run_whose_signal_came_before_it_parked_is_woken(
        tmp_path: Path) -> None:
    async with Store.open(tmp_path / "f.db") as store:
        service = QueueingService()
        await parked(store, "signalled")
        await parked(store, "other", signal="approve")
        await parked(store, "bare")
        # stored while each was still running: nothing woke them (a crash came between)
        assert await store.add_signal("signalled", "go", {"ok": True}, via="api")
        assert await store.add_signal("other", "go", {}, via="api")  # not what it waits for
        assert await book(store, service).recover() == 1
        assert service.queued == ["signalled"]


async def test_a_signal_url_names_its_run_node_and_signal(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "f.db") as store:
        service = QueueingService()
        await parked(store, "r2")
        shown = await book(store, service).describe_token("t-r2")
        assert (shown["run_id"], shown["node_id"], shown["signal"], shown["state"]) == \
            ("r2", "w", "go", "waiting")
        assert await store.signal_token(signal_token_hash("nope")) is None
