"""The dispatcher: a priority queue of accepted runs and the tasks that run them.

Higher priority first (0-99), then fair between API keys (queue.py), at most
``max_concurrent_runs`` at once, at most ``max_running_per_key`` of one key's runs
at once (running or paused), at most ``max_queued`` waiting. A paused run gives its
slot back while paused (it still counts for its key): see ``Dispatcher.pause``. A run with a
concurrency key (``RunHandle.concurrency``) also waits while its key's limit of
runs is running: dispatch sets it aside, in order, and starts the others; when
a run of that key ends, the first one set aside goes back into the queue. Every run task
is a child of the task group passed to ``run`` (the app's), so shutdown
cancels them all; a run's own failure never escapes its task.

A stop asked for a run this process has no task for yet (its re-run, or its wake
from a wait, has committed but not queued it) is held in ``stopping`` while the
stop waits: whatever queues the run takes it, in the same step, so no queueing can
slip between the stop's look and its record. (The record on the run's row is what
other processes and a restart go by.)
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum

import anyio
import anyio.abc

from flowrun.engine.executor import Executor, RunOutcome
from flowrun.errors import Unavailable
from flowrun.records import RunRecord, RunStatus
from flowrun.runs.queue import RunQueue
from flowrun.runs.runner import Runner

logger = logging.getLogger(__name__)


class HandleState(Enum):
    PREPARED = "prepared"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False)
class RunHandle:
    """A live run in this process: its queue state, executor and completion signal."""

    run: RunRecord
    state: HandleState = HandleState.PREPARED
    # Accepted by this process just now: it has no events and no node rows yet, so the
    # runner need not read them back before it starts.
    fresh: bool = False
    stop_requested: bool = False
    stop_reason: str | None = None
    paused: bool = False
    executor: Executor | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    # How the run ended, as this process knows it: the truth even while the store is
    # failing and the final write has not committed yet (a waiting parent reads it).
    outcome: RunOutcome | None = None
    # (key, limit): at most ``limit`` runs with this key run at once; None: no such limit
    concurrency: tuple[str, int] | None = None
    holds_key: bool = False  # started, and counted in its key's running runs
    order: int = 0  # when it was queued (first-in first-out within a priority and key)
    holds_place: bool = False  # started, and counted in its API key's runs
    released: bool = False  # paused while running: its slot is given back meanwhile
    # Its task's scope: cancelled when this process gives the run up (cluster.py's fence)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    abandoned: bool = False

    def attach(self, executor: Executor) -> None:
        self.executor = executor
        if self.paused:
            executor.pause()
        if self.stop_requested:
            executor.stop(self.stop_reason)

    def pause(self) -> None:
        self.paused = True
        if self.executor is not None:
            self.executor.pause()

    def resume(self) -> None:
        self.paused = False
        if self.executor is not None:
            self.executor.resume()


_Entry = tuple[int, int, "RunHandle"]  # (-priority, arrival order, handle): a heap entry


def api_key_of(handle: RunHandle) -> str | None:
    """Whose share of the slots a run takes: its API key's; None (no key, no cap) for a
    child its parent waits for (it runs in its parent's place), or a run without a key."""
    return None if handle.run.awaited_by_parent else handle.run.api_key_id


def _is_queued(handle: RunHandle) -> bool:
    return handle.state is HandleState.QUEUED


class Dispatcher:
    """Owns the run queue and every run task."""

    def __init__(self, runner: Runner, *, max_concurrent: int, max_queued: int,
                 max_per_key: int | None = None) -> None:
        self.runner = runner
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.max_per_key = max_per_key or max_concurrent
        self._queue: RunQueue[RunHandle] = RunQueue()
        # per API key: its runs started and not ended (running or paused), and queued
        self._held: dict[str | None, int] = {}
        self._key_queued: dict[str | None, int] = {}
        self._released = 0  # running runs paused, whose slots are given back meanwhile
        # per concurrency key: how many of its runs are running, and those set aside
        # (in queue order) because that many are at its limit
        self._key_running: dict[str, int] = {}
        self._key_waiting: dict[str, list[_Entry]] = {}  # each a heap
        self._order = itertools.count()
        self._handles: dict[str, RunHandle] = {}
        self._queued = 0
        self._running = 0
        self._wakeup = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._paused = False
        self._tg: anyio.abc.TaskGroup | None = None
        # Run ids someone waits on while the run is parked (waiting for a signal): set
        # when the run is queued again.
        self._unparked: dict[str, anyio.Event] = {}
        # Run id -> reason of a stop waiting for the run to be queued here (see above)
        self._stopping: dict[str, str | None] = {}
        # Called when a run ends and frees a slot (cluster.py claims more then), and when
        # a run's task ends without its end stored (cluster.py hands it back).
        self.on_slot_free: Callable[[], None] | None = None
        self.on_left: Callable[[RunRecord], None] | None = None

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        return self._running

    @property
    def taken(self) -> int:
        """Slots taken: running runs less those paused (see ``pause``)."""
        return self._running - self._released

    def has_place(self, api_key_id: str | None) -> bool:
        """True when a run of this key accepted now could start here soon: a slot is
        free, and the key is under its cap (counting its runs queued here)."""
        if self.taken + self._queued >= self.max_concurrent:
            return False
        return api_key_id is None or self._committed(api_key_id) < self.max_per_key

    def full_keys(self) -> list[str]:
        """The API keys whose runs here (started, or queued) reach their cap."""
        keys = set(self._held) | set(self._key_queued)
        return sorted(k for k in keys if k is not None and
                      self._committed(k) >= self.max_per_key)

    def _committed(self, key: str | None) -> int:
        return self._held.get(key, 0) + self._key_queued.get(key, 0)

    @property
    def dispatching(self) -> bool:
        """False during a drain: queued runs are not started."""
        return not self._paused

    def abandon_all(self) -> int:
        """Give up every run of this process without recording anything (another
        process resumes them from the store): queued ones leave the queue, running
        ones are cancelled. How many were given up."""
        count = 0
        for handle in list(self._handles.values()):
            if handle.state is HandleState.QUEUED:
                handle.abandoned = True
                self._leave_queue(handle)
                handle.state = HandleState.DONE
                del self._handles[handle.run.id]
                handle.done.set()
                count += 1
            elif handle.state is HandleState.RUNNING:
                handle.abandoned = True
                handle.scope.cancel()
                count += 1
        self._wakeup.set()
        return count

    def pause_dispatch(self) -> None:
        """Start no more queued runs (a drain); they stay queued in the store."""
        self._paused = True

    async def idle(self) -> None:
        """Wait until no run is executing."""
        await self._idle.wait()

    def has_room(self) -> bool:
        """False when ``max_queued`` runs are already waiting."""
        return self._queued < self.max_queued

    def get(self, run_id: str) -> RunHandle | None:
        return self._handles.get(run_id)

    def unparked(self, run_id: str) -> anyio.Event:
        """An event set when the run (parked, waiting for a signal) is queued again.
        Take it before reading the run's status, so a wake in between is not missed."""
        event = self._unparked.get(run_id)
        if event is None:
            event = self._unparked[run_id] = anyio.Event()
        return event

    @contextmanager
    def stopping(self, run_id: str, reason: str | None) -> Iterator[None]:
        """While this is entered, a queueing of ``run_id`` stops it instead."""
        self._stopping[run_id] = reason
        try:
            yield
        finally:
            self._stopping.pop(run_id, None)

    def prepare(self, run: RunRecord) -> RunHandle:
        """Register a run before its insert commits, so waiters can find it at once."""
        handle = RunHandle(run)
        self._handles[run.id] = handle
        return handle

    def discard(self, handle: RunHandle) -> None:
        """Forget a prepared run whose insert failed."""
        if self._handles.get(handle.run.id) is handle:
            del self._handles[handle.run.id]
        handle.state = HandleState.DONE
        handle.done.set()

    def enqueue(self, handle: RunHandle) -> None:
        """Queue a committed run for execution.

        A child run its parent waits for (``RunRecord.awaited_by_parent``) starts at
        once, beyond the concurrency limit and during a drain: its parent holds a slot
        while it waits, so queueing it could deadlock, and holding it would keep the
        parent for the whole grace. Any other run, a re-run child included, queues.
        """
        self._handles[handle.run.id] = handle
        handle.state = HandleState.QUEUED
        self._queued += 1
        key = api_key_of(handle)
        self._key_queued[key] = self._key_queued.get(key, 0) + 1
        unparked = self._unparked.pop(handle.run.id, None)
        if unparked is not None:
            unparked.set()
        if handle.run.id in self._stopping and not handle.stop_requested:
            handle.stop_requested = True
            handle.stop_reason = self._stopping[handle.run.id]
        if handle.stop_requested and handle.run.status is RunStatus.QUEUED and \
                self._tg is not None:
            # Stopped before it (re)started: its stop is recorded at once, not after a
            # wait for a slot. (A running or paused one resumes, and stops in its executor.)
            self._finish_queued(handle, self._tg)
            return
        if handle.run.awaited_by_parent and self._tg is not None:
            self._start(handle, self._tg)  # during a drain too: its parent waits for it
            return
        handle.order = next(self._order)
        self._queue.push(handle.run.priority, key, handle.order, handle)
        self._wakeup.set()

    def _leave_queue(self, handle: RunHandle) -> None:
        self._queued -= 1
        key = api_key_of(handle)
        left = self._key_queued[key] - 1
        if left:
            self._key_queued[key] = left
        else:
            del self._key_queued[key]

    def _start(self, handle: RunHandle, tg: anyio.abc.TaskGroup) -> None:
        self._leave_queue(handle)
        self._busy()
        handle.state = HandleState.RUNNING
        if handle.paused:  # (taken in paused: it holds no slot until resumed)
            self._give_slot_back(handle)
        tg.start_soon(self._run_one, handle)

    def pause(self, handle: RunHandle) -> None:
        """Hold a run before its next node starts.

        A running run gives its slot back while paused, so paused runs never keep
        other keys' runs waiting; it still counts for its key's cap, so pausing never
        gives a key more than its share (nodes already running go on while paused).
        That is simpler than queueing it again on resume, which would have to cancel
        and re-run what it was doing: a resumed run takes its slot back at once, even
        past ``max_concurrent`` for a while, and how far is bounded by its key's cap.
        """
        handle.pause()
        self._give_slot_back(handle)

    def resume(self, handle: RunHandle) -> None:
        """Let a paused run go on (see ``pause``)."""
        handle.resume()
        if handle.released:
            handle.released = False
            self._released -= 1

    def _give_slot_back(self, handle: RunHandle) -> None:
        if handle.state is HandleState.RUNNING and not handle.released:
            handle.released = True
            self._released += 1
            self._wakeup.set()
            if self.on_slot_free is not None:
                self.on_slot_free()

    def _busy(self) -> None:
        """One more task runs. Only the first replaces the set idle event: replacing one
        that is still waited on would strand its waiters (a drain would wait out its
        whole grace)."""
        self._running += 1
        if self._idle.is_set():
            self._idle = anyio.Event()

    def stop(self, handle: RunHandle, reason: str | None = None) -> None:
        """Stop a queued or running run; ``handle.done`` is set once it is recorded."""
        if handle.stop_requested or handle.state is HandleState.DONE:
            return
        handle.stop_requested = True
        handle.stop_reason = reason
        if handle.state is HandleState.QUEUED:
            assert self._tg is not None
            self._finish_queued(handle, self._tg)
        elif handle.executor is not None:
            handle.executor.stop(reason)

    def _finish_queued(self, handle: RunHandle, tg: anyio.abc.TaskGroup) -> None:
        self._leave_queue(handle)
        self._busy()  # its stop is recorded by a task, like a run
        handle.state = HandleState.RUNNING  # leaves the heap lazily
        tg.start_soon(self._finish_unstarted, handle)

    async def run(self, tg: anyio.abc.TaskGroup, *,
                  task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Dispatch queued runs into ``tg`` until cancelled."""
        self._tg = tg
        task_status.started()
        while True:
            while self.taken < self.max_concurrent and not self._paused:
                popped = self._queue.pop(self._held, self.max_per_key, _is_queued)
                if popped is None:
                    break  # nothing queued, or every key with queued runs is at its cap
                order, handle = popped
                if not self._admitted(handle, order):
                    continue
                key = api_key_of(handle)
                self._held[key] = self._held.get(key, 0) + 1
                handle.holds_place = True
                self._start(handle, tg)
            self._wakeup = anyio.Event()
            await self._wakeup.wait()

    def _admitted(self, handle: RunHandle, order: int) -> bool:
        """False (and set aside, in order) when its concurrency key is at its limit:
        skipped, not waited for, so runs of other keys go on."""
        if handle.concurrency is None:
            return True
        key, limit = handle.concurrency
        if self._key_running.get(key, 0) >= limit:
            heapq.heappush(self._key_waiting.setdefault(key, []),
                           (-handle.run.priority, order, handle))
            return False
        self._key_running[key] = self._key_running.get(key, 0) + 1
        handle.holds_key = True
        return True

    async def _run_one(self, handle: RunHandle) -> None:
        try:
            with handle.scope:
                handle.outcome = await self.runner.execute(handle.run, fresh=handle.fresh,
                                                           executor_ready=handle.attach)
                await self._wake_if_stopped(handle)
        except anyio.get_cancelled_exc_class():
            raise
        except Unavailable as exc:  # the store refused its writes
            logger.warning("run %s: stopped here (%s); it resumes from the store at the "
                           "next start (in a cluster, wherever it is claimed)",
                           handle.run.id, exc.message)
            self._left(handle)
        except Exception:  # (not handed back: elsewhere it would crash again, in a loop)
            logger.exception("run %s: crashed in the runner; it will resume on next start",
                             handle.run.id)
        finally:
            self._running -= 1
            self._release(handle)
        if handle.outcome is not None and handle.outcome.requeue and not handle.abandoned:
            # It parked, but its signal (or a stop) had come meanwhile: queue it again
            # at once; a stop goes with it.
            handle.run.status = RunStatus.QUEUED
            again = self.prepare(handle.run)
            again.concurrency = handle.concurrency
            if handle.stop_requested or handle.outcome.stop_reason is not None:
                again.stop_requested = True
                again.stop_reason = handle.stop_reason if handle.stop_requested else \
                    handle.outcome.stop_reason or None
            self.enqueue(again)

    async def _wake_if_stopped(self, handle: RunHandle) -> None:
        """A run stopped here while it parked (its executor had already returned
        "waiting") is woken, to be queued again and stopped; if someone else woke it
        first, their queueing finds the stop (``stopping``, or the run's row)."""
        outcome = handle.outcome
        if outcome is not None and outcome.status is RunStatus.WAITING and \
                handle.stop_requested and not outcome.requeue:
            with anyio.CancelScope(shield=True):
                outcome.requeue = await self.runner.store.wake_run(handle.run.id)

    def _left(self, handle: RunHandle) -> None:
        if self.on_left is not None and not handle.abandoned:
            self.on_left(handle.run)

    async def _finish_unstarted(self, handle: RunHandle) -> None:
        try:
            with handle.scope:
                handle.outcome = await self.runner.finish_unstarted(
                    handle.run, RunStatus.STOPPED, handle.stop_reason, fresh=handle.fresh)
        except Exception:
            logger.exception("run %s: could not record its stop", handle.run.id)
        finally:
            self._running -= 1
            self._release(handle)

    def _release(self, handle: RunHandle) -> None:
        if handle.released:
            handle.released = False
            self._released -= 1
        if handle.holds_place:
            handle.holds_place = False
            key = api_key_of(handle)
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]
        if handle.holds_key and handle.concurrency is not None:
            handle.holds_key = False
            self._free_key(handle.concurrency[0])
        if self._running == 0:
            self._idle.set()
        handle.state = HandleState.DONE
        if self._handles.get(handle.run.id) is handle:
            del self._handles[handle.run.id]
        handle.done.set()
        self._wakeup.set()
        if self.on_slot_free is not None:
            self.on_slot_free()

    def _free_key(self, key: str) -> None:
        """One run of ``key`` ended: its first run set aside goes back into the queue
        (with its place in the order), skipping those stopped meanwhile."""
        left = self._key_running[key] - 1
        if left:
            self._key_running[key] = left
        else:
            del self._key_running[key]
        waiting = self._key_waiting.get(key)
        while waiting:
            priority, order, handle = heapq.heappop(waiting)
            if handle.state is HandleState.QUEUED:
                self._queue.push(-priority, api_key_of(handle), order, handle)
                break
        if waiting is not None and not waiting:
            del self._key_waiting[key]
