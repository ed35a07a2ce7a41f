"""Scheduler: dispatch order, the concurrency limit, stop, drain, queue room, idle.

The runner is a stand-in that records what the scheduler asks of it and holds
each run until the test releases it, so every test decides exactly when a run
ends. "Nothing more happens" is checked after ``wait_all_tasks_blocked``: once
every task waits, the scheduler has done all it was going to do.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

from flowrun.engine.executor import RunOutcome
from flowrun.records import RunRecord, RunStatus
from flowrun.scheduler import HandleState, RunHandle, Scheduler


class FakeExecutor:
    """What the scheduler may do to a running run: pause, resume, stop."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.stop_reason: str | None = None
        self.stopped = False
        self.paused = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def stop(self, reason: str | None = None) -> None:
        self.stopped, self.stop_reason = True, reason
        self.release.set()


class FakeRunner:
    """Records the runs it is given; each runs until released (or stopped)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.unstarted: list[tuple[str, RunStatus, str | None]] = []
        self.executors: dict[str, FakeExecutor] = {}
        self.hold = True  # False: runs started from now on end at once
        self.record_stop = anyio.Event()  # held: recording a stop waits for it
        self.record_stop.set()
        self.active = 0
        self.peak = 0

    async def execute(self, run: RunRecord,
                      executor_ready: Callable[[Any], None] | None = None, *,
                      fresh: bool = False) -> RunOutcome:
        executor = self.executors[run.id] = FakeExecutor()
        self.started.append(run.id)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if executor_ready is not None:
                executor_ready(executor)
            if self.hold:
                await executor.release.wait()
        finally:
            self.active -= 1
        status = RunStatus.STOPPED if executor.stopped else RunStatus.SUCCEEDED
        return RunOutcome(status, {}, None, [])

    async def finish_unstarted(self, run: RunRecord, status: RunStatus,
                               reason: str | None = None, *, fresh: bool = False
                               ) -> RunOutcome:
        await self.record_stop.wait()  # (a store write, which takes a while)
        self.unstarted.append((run.id, status, reason))
        return RunOutcome(status, None, None, [])

    def release(self, run_id: str) -> None:
        self.executors[run_id].release.set()

    def release_all(self) -> None:
        self.hold = False
        for executor in self.executors.values():
            executor.release.set()


def make_scheduler(*, max_concurrent: int = 8,
                   max_queued: int = 100) -> tuple[Scheduler, FakeRunner]:
    runner = FakeRunner()
    scheduler = Scheduler(runner, max_concurrent=max_concurrent,  # type: ignore[arg-type]
                          max_queued=max_queued)
    return scheduler, runner


def make_run(run_id: str, priority: int = 0, parent_run_id: str | None = None,
             root_run_id: str | None = None) -> RunRecord:
    return RunRecord(id=run_id, workflow="wf", version=1, status=RunStatus.QUEUED, inputs={},
                     created_at=time.time(), priority=priority, parent_run_id=parent_run_id,
                     root_run_id=root_run_id)


def enqueue(scheduler: Scheduler, run_id: str, **kw: Any) -> RunHandle:
    handle = scheduler.prepare(make_run(run_id, **kw))
    scheduler.enqueue(handle)
    return handle


@asynccontextmanager
async def dispatching(scheduler: Scheduler) -> AsyncIterator[anyio.abc.TaskGroup]:
    """The scheduler dispatching into a task group for as long as the block lasts."""
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run, tg)
        try:
            yield tg
        finally:
            tg.cancel_scope.cancel()


async def test_higher_priority_first_then_first_in_first_out() -> None:
    scheduler, runner = make_scheduler(max_concurrent=1)
    runner.hold = False
    handles = [enqueue(scheduler, run_id, priority=priority) for run_id, priority in
               [("p0a", 0), ("p5a", 5), ("p0b", 0), ("p9", 9), ("p5b", 5)]]
    async with dispatching(scheduler):
        with anyio.fail_after(5):
            for handle in handles:
                await handle.done.wait()
    assert runner.started == ["p9", "p5a", "p5b", "p0a", "p0b"]
    assert all(h.outcome is not None and h.outcome.status is RunStatus.SUCCEEDED
               for h in handles)


async def test_at_most_max_concurrent_runs_at_once() -> None:
    scheduler, runner = make_scheduler(max_concurrent=2)
    handles = [enqueue(scheduler, f"r{i}") for i in range(5)]
    async with dispatching(scheduler):
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["r0", "r1"]
        assert (scheduler.running, scheduler.queued) == (2, 3)
        runner.release("r0")
        await handles[0].done.wait()
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["r0", "r1", "r2"]  # one ended, one more started
        assert (scheduler.running, scheduler.queued) == (2, 2)
        runner.release_all()
        with anyio.fail_after(5):
            for handle in handles:
                await handle.done.wait()
    assert runner.started == [f"r{i}" for i in range(5)]
    assert runner.peak == 2
    assert (scheduler.running, scheduler.queued) == (0, 0)


async def test_stopping_a_queued_run_records_it_and_never_runs_it() -> None:
    scheduler, runner = make_scheduler(max_concurrent=2)
    blockers = [enqueue(scheduler, "b1"), enqueue(scheduler, "b2")]
    queued = enqueue(scheduler, "queued")
    async with dispatching(scheduler):
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["b1", "b2"]
        runner.record_stop = anyio.Event()
        scheduler.stop(queued, "not needed")
        assert scheduler.queued == 0
        # slots free up while the stop is still being recorded: the run must not start
        runner.release_all()
        with anyio.fail_after(5):
            for blocker in blockers:
                await blocker.done.wait()
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["b1", "b2"]
        runner.record_stop.set()
        with anyio.fail_after(5):
            await queued.done.wait()
        await anyio.wait_all_tasks_blocked()
    assert runner.unstarted == [("queued", RunStatus.STOPPED, "not needed")]
    assert queued.outcome is not None and queued.outcome.status is RunStatus.STOPPED
    assert queued.state is HandleState.DONE and scheduler.get("queued") is None
    assert runner.started == ["b1", "b2"]  # the stopped run left the queue for good
    assert scheduler.running == 0


async def test_stopping_a_running_run_stops_its_executor() -> None:
    scheduler, runner = make_scheduler()
    handle = enqueue(scheduler, "r")
    async with dispatching(scheduler):
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["r"]
        scheduler.stop(handle, "enough")
        with anyio.fail_after(5):
            await handle.done.wait()
        scheduler.stop(handle, "again")  # a finished run: nothing to do
    assert runner.executors["r"].stop_reason == "enough"
    assert handle.outcome is not None and handle.outcome.status is RunStatus.STOPPED
    assert runner.unstarted == []


async def test_pause_dispatch_starts_no_queued_run_and_lets_running_ones_finish() -> None:
    scheduler, runner = make_scheduler(max_concurrent=4)
    async with dispatching(scheduler):
        running = enqueue(scheduler, "running")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["running"]
        scheduler.pause_dispatch()
        waiting = enqueue(scheduler, "waiting")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["running"]
        assert waiting.state is HandleState.QUEUED and scheduler.queued == 1
        runner.release("running")
        with anyio.fail_after(5):
            await running.done.wait()
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["running"]  # a finished run frees a slot; still held
        assert waiting.state is HandleState.QUEUED


async def test_a_child_run_starts_at_once_beyond_the_limit_and_during_a_drain() -> None:
    scheduler, runner = make_scheduler(max_concurrent=1)
    async with dispatching(scheduler):
        enqueue(scheduler, "parent")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["parent"]
        scheduler.pause_dispatch()
        enqueue(scheduler, "child", parent_run_id="parent",  # its parent waits for it
                root_run_id="parent")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["parent", "child"]
        assert scheduler.running == 2
        runner.release_all()


async def test_a_child_rerun_by_itself_queues_like_any_run() -> None:
    scheduler, runner = make_scheduler(max_concurrent=1)
    async with dispatching(scheduler):
        enqueue(scheduler, "other")
        await anyio.wait_all_tasks_blocked()
        # a restarted child is its own root: nobody waits for it
        enqueue(scheduler, "child", parent_run_id="ended", root_run_id=None)
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["other"] and scheduler.queued == 1
        runner.release("other")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["other", "child"]
        runner.release_all()


async def test_has_room_counts_queued_runs_not_running_ones() -> None:
    scheduler, runner = make_scheduler(max_concurrent=1, max_queued=2)
    assert scheduler.has_room()
    async with dispatching(scheduler):
        enqueue(scheduler, "a")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["a"]
        assert scheduler.has_room() and scheduler.queued == 0
        enqueue(scheduler, "b")
        assert scheduler.has_room()
        enqueue(scheduler, "c")
        assert not scheduler.has_room() and scheduler.queued == 2
        runner.release("a")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["a", "b"]
        assert scheduler.has_room() and scheduler.queued == 1
        runner.release_all()


async def test_idle_waits_for_every_running_run() -> None:
    scheduler, runner = make_scheduler()
    with anyio.fail_after(1):
        await scheduler.idle()  # nothing runs: at once
    idle = anyio.Event()

    async def wait_idle() -> None:
        await scheduler.idle()
        idle.set()

    async with dispatching(scheduler) as tg:
        first = enqueue(scheduler, "first")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["first"]
        tg.start_soon(wait_idle)
        await anyio.wait_all_tasks_blocked()
        enqueue(scheduler, "second")  # starts while the waiter already waits
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["first", "second"]
        runner.release("first")
        with anyio.fail_after(5):
            await first.done.wait()
        await anyio.wait_all_tasks_blocked()
        assert not idle.is_set()  # "second" still runs
        runner.release("second")
        with anyio.fail_after(5):
            await idle.wait()
        assert scheduler.running == 0


async def test_a_saturated_concurrency_key_is_skipped_and_its_runs_start_in_order() -> None:
    scheduler, runner = make_scheduler(max_concurrent=3)

    def keyed(run_id: str, key: str, priority: int = 0) -> RunHandle:
        handle = scheduler.prepare(make_run(run_id, priority=priority))
        handle.concurrency = (key, 1)
        scheduler.enqueue(handle)
        return handle

    a = [keyed("a0", "a"), keyed("a1", "a"), keyed("a2", "a")]
    others = [keyed("b0", "b"), enqueue(scheduler, "free")]
    async with dispatching(scheduler):
        await anyio.wait_all_tasks_blocked()
        a.append(keyed("a3", "a", priority=5))  # later, but ahead of a1 and a2 in the queue
        await anyio.wait_all_tasks_blocked()
        # a's queued runs do not hold up b0 or an unkeyed run, nor take global slots
        assert runner.started == ["a0", "b0", "free"]
        assert (scheduler.running, scheduler.queued) == (3, 3)
        runner.release("b0")
        runner.release("free")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["a0", "b0", "free"]  # slots are free; key a is not
        scheduler.stop(a[1], "not needed")  # set aside, then stopped: never started
        for i, expected in ((0, "a3"), (3, "a2")):
            runner.release(f"a{i}")
            await anyio.wait_all_tasks_blocked()
            assert runner.started[-1] == expected
            assert scheduler.running == 1
        runner.release_all()
        with anyio.fail_after(5):
            for handle in a + others:
                await handle.done.wait()
    assert runner.started == ["a0", "b0", "free", "a3", "a2"]
    assert [u[0] for u in runner.unstarted] == ["a1"]
    assert runner.peak == 3 and scheduler._key_running == {}
