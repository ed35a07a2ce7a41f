"""Dispatcher: dispatch order, the concurrency limit, stop, drain, queue room, idle.

The runner is a stand-in that records what the dispatcher asks of it and holds
each run until the test releases it, so every test decides exactly when a run
ends. "Nothing more happens" is checked after ``wait_all_tasks_blocked``: once
every task waits, the dispatcher has done all it was going to do.
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
from flowrun.runs.dispatch import Dispatcher, HandleState, RunHandle


class FakeExecutor:
    """What the dispatcher may do to a running run: pause, resume, stop."""

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


def make_dispatcher(*, max_concurrent: int = 8,
                   max_queued: int = 100) -> tuple[Dispatcher, FakeRunner]:
    runner = FakeRunner()
    dispatcher = Dispatcher(runner, max_concurrent=max_concurrent,  # type: ignore[arg-type]
                          max_queued=max_queued)
    return dispatcher, runner


def make_run(run_id: str, priority: int = 0, parent_run_id: str | None = None,
             root_run_id: str | None = None) -> RunRecord:
    return RunRecord(id=run_id, workflow="wf", version=1, status=RunStatus.QUEUED, inputs={},
                     created_at=time.time(), priority=priority, parent_run_id=parent_run_id,
                     root_run_id=root_run_id)


def enqueue(dispatcher: Dispatcher, run_id: str, **kw: Any) -> RunHandle:
    handle = dispatcher.prepare(make_run(run_id, **kw))
    dispatcher.enqueue(handle)
    return handle


@asynccontextmanager
async def dispatching(dispatcher: Dispatcher) -> AsyncIterator[anyio.abc.TaskGroup]:
    """The dispatcher dispatching into a task group for as long as the block lasts."""
    async with anyio.create_task_group() as tg:
        await tg.start(dispatcher.run, tg)
        try:
            yield tg
        finally:
            tg.cancel_scope.cancel()


async def test_higher_priority_first_then_first_in_first_out() -> None:
    dispatcher, runner = make_dispatcher(max_concurrent=1)
    runner.hold = False
    handles = [enqueue(dispatcher, run_id, priority=priority) for run_id, priority in
               [("p0a", 0), ("p5a", 5), ("p0b", 0), ("p9", 9), ("p5b", 5)]]
    async with dispatching(dispatcher):
        with anyio.fail_after(5):
            for handle in handles:
                await handle.done.wait()
    assert runner.started == ["p9", "p5a", "p5b", "p0a", "p0b"]
    assert all(h.outcome is not None and h.outcome.status is RunStatus.SUCCEEDED
               for h in handles)


async def test_at_most_max_concurrent_runs_at_once() -> None:
    dispatcher, runner = make_dispatcher(max_concurrent=2)
    handles = [enqueue(dispatcher, f"r{i}") for i in range(5)]
    async with dispatching(dispatcher):
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["r0", "r1"]
        assert (dispatcher.running, dispatcher.queued) == (2, 3)
        runner.release("r0")
        await handles[0].done.wait()
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["r0", "r1", "r2"]  # one ended, one more started
        assert (dispatcher.running, dispatcher.queued) == (2, 2)
        runner.release_all()
        with anyio.fail_after(5):
            for handle in handles:
                await handle.done.wait()
    assert runner.started == [f"r{i}" for i in range(5)]
    assert runner.peak == 2
    assert (dispatcher.running, dispatcher.queued) == (0, 0)


async def test_stopping_a_queued_run_records_it_and_never_runs_it() -> None:
    dispatcher, runner = make_dispatcher(max_concurrent=2)
    blockers = [enqueue(dispatcher, "b1"), enqueue(dispatcher, "b2")]
    queued = enqueue(dispatcher, "queued")
    async with dispatching(dispatcher):
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["b1", "b2"]
        runner.record_stop = anyio.Event()
        dispatcher.stop(queued, "not needed")
        assert dispatcher.queued == 0
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
    assert queued.state is HandleState.DONE and dispatcher.get("queued") is None
    assert runner.started == ["b1", "b2"]  # the stopped run left the queue for good
    assert dispatcher.running == 0


async def test_stopping_a_running_run_stops_its_executor() -> None:
    dispatcher, runner = make_dispatcher()
    handle = enqueue(dispatcher, "r")
    async with dispatching(dispatcher):
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["r"]
        dispatcher.stop(handle, "enough")
        with anyio.fail_after(5):
            await handle.done.wait()
        dispatcher.stop(handle, "again")  # a finished run: nothing to do
    assert runner.executors["r"].stop_reason == "enough"
    assert handle.outcome is not None and handle.outcome.status is RunStatus.STOPPED
    assert runner.unstarted == []


async def test_pause_dispatch_starts_no_queued_run_and_lets_running_ones_finish() -> None:
    dispatcher, runner = make_dispatcher(max_concurrent=4)
    async with dispatching(dispatcher):
        running = enqueue(dispatcher, "running")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["running"]
        dispatcher.pause_dispatch()
        waiting = enqueue(dispatcher, "waiting")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["running"]
        assert waiting.state is HandleState.QUEUED and dispatcher.queued == 1
        runner.release("running")
        with anyio.fail_after(5):
            await running.done.wait()
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["running"]  # a finished run frees a slot; still held
        assert waiting.state is HandleState.QUEUED


async def test_a_child_run_starts_at_once_beyond_the_limit_and_during_a_drain() -> None:
    dispatcher, runner = make_dispatcher(max_concurrent=1)
    async with dispatching(dispatcher):
        enqueue(dispatcher, "parent")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["parent"]
        dispatcher.pause_dispatch()
        enqueue(dispatcher, "child", parent_run_id="parent",  # its parent waits for it
                root_run_id="parent")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["parent", "child"]
        assert dispatcher.running == 2
        runner.release_all()


async def test_a_child_rerun_by_itself_queues_like_any_run() -> None:
    dispatcher, runner = make_dispatcher(max_concurrent=1)
    async with dispatching(dispatcher):
        enqueue(dispatcher, "other")
        await anyio.wait_all_tasks_blocked()
        # a restarted child is its own root: nobody waits for it
        enqueue(dispatcher, "child", parent_run_id="ended", root_run_id=None)
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["other"] and dispatcher.queued == 1
        runner.release("other")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["other", "child"]
        runner.release_all()


async def test_has_room_counts_queued_runs_not_running_ones() -> None:
    dispatcher, runner = make_dispatcher(max_concurrent=1, max_queued=2)
    assert dispatcher.has_room()
    async with dispatching(dispatcher):
        enqueue(dispatcher, "a")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["a"]
        assert dispatcher.has_room() and dispatcher.queued == 0
        enqueue(dispatcher, "b")
        assert dispatcher.has_room()
        enqueue(dispatcher, "c")
        assert not dispatcher.has_room() and dispatcher.queued == 2
        runner.release("a")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["a", "b"]
        assert dispatcher.has_room() and dispatcher.queued == 1
        runner.release_all()


async def test_idle_waits_for_every_running_run() -> None:
    dispatcher, runner = make_dispatcher()
    with anyio.fail_after(1):
        await dispatcher.idle()  # nothing runs: at once
    idle = anyio.Event()

    async def wait_idle() -> None:
        await dispatcher.idle()
        idle.set()

    async with dispatching(dispatcher) as tg:
        first = enqueue(dispatcher, "first")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["first"]
        tg.start_soon(wait_idle)
        await anyio.wait_all_tasks_blocked()
        enqueue(dispatcher, "second")  # starts while the waiter already waits
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
        assert dispatcher.running == 0


async def test_a_saturated_concurrency_key_is_skipped_and_its_runs_start_in_order() -> None:
    dispatcher, runner = make_dispatcher(max_concurrent=3)

    def keyed(run_id: str, key: str, priority: int = 0) -> RunHandle:
        handle = dispatcher.prepare(make_run(run_id, priority=priority))
        handle.concurrency = (key, 1)
        dispatcher.enqueue(handle)
        return handle

    a = [keyed("a0", "a"), keyed("a1", "a"), keyed("a2", "a")]
    others = [keyed("b0", "b"), enqueue(dispatcher, "free")]
    async with dispatching(dispatcher):
        await anyio.wait_all_tasks_blocked()
        a.append(keyed("a3", "a", priority=5))  # later, but ahead of a1 and a2 in the queue
        await anyio.wait_all_tasks_blocked()
        # a's queued runs do not hold up b0 or an unkeyed run, nor take global slots
        assert runner.started == ["a0", "b0", "free"]
        assert (dispatcher.running, dispatcher.queued) == (3, 3)
        runner.release("b0")
        runner.release("free")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["a0", "b0", "free"]  # slots are free; key a is not
        dispatcher.stop(a[1], "not needed")  # set aside, then stopped: never started
        for i, expected in ((0, "a3"), (3, "a2")):
            runner.release(f"a{i}")
            await anyio.wait_all_tasks_blocked()
            assert runner.started[-1] == expected
            assert dispatcher.running == 1
        runner.release_all()
        with anyio.fail_after(5):
            for handle in a + others:
                await handle.done.wait()
    assert runner.started == ["a0", "b0", "free", "a3", "a2"]
    assert [u[0] for u in runner.unstarted] == ["a1"]
    assert runner.peak == 3 and dispatcher._key_running == {}


def keyed(dispatcher: Dispatcher, run_id: str, key: str, priority: int = 0) -> RunHandle:
    run = make_run(run_id, priority=priority)
    run.api_key_id = key
    handle = dispatcher.prepare(run)
    dispatcher.enqueue(handle)
    return handle


async def test_a_key_at_its_cap_does_not_hold_back_another_keys_run() -> None:
    runner = FakeRunner()
    dispatcher = Dispatcher(runner, max_concurrent=4, max_queued=100,  # type: ignore[arg-type]
                            max_per_key=2)
    for i in range(6):
        keyed(dispatcher, f"a{i}", "A", priority=99)
    b = keyed(dispatcher, "b0", "B")
    async with dispatching(dispatcher):
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["a0", "a1", "b0"]  # A at its cap; B's run goes
        assert set(dispatcher.full_keys()) == {"A"}
        runner.release("a0")
        await anyio.wait_all_tasks_blocked()
        assert runner.started[-1] == "a2"  # A's next takes A's freed place
        runner.release_all()
        with anyio.fail_after(5):
            await b.done.wait()


async def test_a_paused_run_gives_its_slot_back_but_keeps_its_keys_place() -> None:
    runner = FakeRunner()
    dispatcher = Dispatcher(runner, max_concurrent=2, max_queued=100,  # type: ignore[arg-type]
                            max_per_key=2)
    a = [keyed(dispatcher, f"a{i}", "A") for i in range(3)]
    async with dispatching(dispatcher):
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["a0", "a1"]
        dispatcher.pause(a[0])
        dispatcher.pause(a[1])
        b = keyed(dispatcher, "b0", "B")
        await anyio.wait_all_tasks_blocked()
        assert runner.started == ["a0", "a1", "b0"]  # not a2: A holds its 2 places
        assert runner.executors["a0"].paused and dispatcher.taken == 1
        dispatcher.resume(a[0])
        assert dispatcher.taken == 2 and not runner.executors["a0"].paused
        runner.release_all()
        with anyio.fail_after(5):
            for handle in [*a, b]:
                await handle.done.wait()
        assert dispatcher.taken == 0 and dispatcher.running == 0
