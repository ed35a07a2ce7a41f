"""Several flowrun processes on one PostgreSQL database: who runs which run.

Each process is a *worker* with a row in ``workers`` that it renews every
``heartbeat_s`` (the database's clock, so hosts need not agree on time). A run's
``owner`` is the worker that runs it. A process takes a run it accepts while it has
a free slot; the rest are claimed, by whichever process has room, with ``FOR
UPDATE SKIP LOCKED`` in priority-then-age order. A run whose owner's heartbeat is
older than ``lease_s`` (the process died, or lost the database) is claimed the same
way and resumed from its last finished node, as after a restart.

A process that cannot renew its lease in time *fences* itself: it abandons its runs
(their tasks are cancelled, nothing is recorded) before any other process may claim
them, drops the writes it had queued for them, and comes back as a new worker. Every
write transaction of a process also checks, first, that its lease has not lapsed
(``Store.guard_lease``): a process that stalled past its lease cannot land a late
write on a run another process took over. So a run has one live owner at a time,
and its event log one writer.

The processes tell each other through LISTEN/NOTIFY: a batch that wrote events
names its runs (``flowrun_events``: a follower on another process replays them from
the events table, which stays the truth), a run queued without an owner wakes the
others' claims (``flowrun_queue``), and a stop, pause or resume of a run another
process runs is sent to it (``flowrun_control``). A lost notification costs time,
not correctness: every loop here also polls each ``heartbeat_s``.

Limits: ``max_concurrent_runs`` is per process (a box's budget; the cluster runs up
to processes × limit), and so is ``max_running_per_key`` (a claim skips the keys at
their cap here, and may take up to one claim's batch more of a key just under it);
``max_queued`` is for the cluster's one queue, counted from the database each
heartbeat (so it may overshoot by one heartbeat's accepts).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import psycopg

from flowrun import ids
from flowrun.errors import FlowrunError
from flowrun.records import RunRecord, RunStatus
from flowrun.runs.dispatch import Dispatcher
from flowrun.runs.events import EventBus
from flowrun.store import Store
from flowrun.store.backend import CONTROL_CHANNEL, EVENTS_CHANNEL, QUEUE_CHANNEL

logger = logging.getLogger(__name__)

CLAIM_BATCH = 64  # runs one claim takes at most (then it claims again at once)
CONTROL_VERBS = ("stop", "pause", "resume")


def new_worker_id() -> str:
    return "wkr_" + ids.new_hex()[:20]


class Cluster:
    """This process's membership of a cluster: its lease, its claims, its ears."""

    def __init__(self, store: Store, dispatcher: Dispatcher, bus: EventBus, *,
                 lease_s: float, heartbeat_s: float, max_queued: int) -> None:
        if heartbeat_s * 2 > lease_s:
            raise ValueError("lease_s must be at least twice heartbeat_s")
        self.store = store
        self.dispatcher = dispatcher
        self.bus = bus
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.max_queued = max_queued
        self.worker_id = new_worker_id()
        store.owner = self.worker_id
        self.queued_estimate = 0  # the cluster's queued runs at the last count, + since
        self.counts = 0  # how many counts have set queued_estimate
        self._counted_at = -math.inf  # (monotonic) when the last count was taken
        # Runs here whose handle disagreed with the store on "paused" at the last look:
        # run id -> paused as the store said (see ``sync_pauses``)
        self._pause_mismatches: dict[str, bool] = {}
        self.fenced = 0  # times this process lost its lease and abandoned its runs
        self._claim_wakeup = anyio.Event()
        self._lease_lost = anyio.Event()  # a write found the lease lapsed: fence now
        store.guard_lease(lease_s, self._lease_lost.set)
        self._renewed = time.monotonic()  # when the last successful renewal was sent
        # How a claimed run joins this process (RunService.adopt), set by the app.
        self.adopt: Callable[[RunRecord, str | None], Awaitable[None]] | None = None
        # Called when a workflow changed elsewhere (None: any may have), and when an API
        # key was revoked (by any process, or ``flowrun keys``); set by the app.
        self.workflow_changed: Callable[[str | None], None] | None = None
        self.keys_changed: Callable[[], None] | None = None

    # --- what the service asks -------------------------------------------------------

    def has_room(self) -> bool:
        """False when the cluster's queue holds ``max_queued`` runs."""
        return self.queued_estimate < self.max_queued

    def owner_for(self, run: RunRecord) -> str | None:
        """Who runs a run this process accepts: itself when it has a free slot and its
        API key is under its cap here (or the run is a child: its parent waits here),
        else whoever claims it first."""
        if run.awaited_by_parent or self.dispatcher.has_place(run.api_key_id):
            return self.worker_id
        return None

    def wake_claims(self) -> None:
        self._claim_wakeup.set()

    def release(self, run: RunRecord) -> None:
        """A run's task here ended without its end stored (the store refused a write):
        hand it back, so any process may claim it and resume it. Queued behind the run's
        own pending writes: if its end does land, this changes nothing."""
        self.store.release_run(run.id, self.worker_id)

    async def announce_queued(self, counts_before: int) -> None:
        """Tell the others a run nobody owns is queued (after its commit).

        ``counts_before`` is ``counts`` from before the run's accept began. The run is
        added to the estimate only if no count was taken since: one taken meanwhile may
        have seen it already, and counting it twice would refuse a run the queue has
        room for. (At worst it is missed until the next count.)
        """
        if self.counts == counts_before:
            self.queued_estimate += 1
        await self.store.notify(QUEUE_CHANNEL, "")

    async def recount(self) -> None:
        """Set the estimate of the cluster's queue from the store (each heartbeat)."""
        self.queued_estimate = await self.store.count_queued()
        self.counts += 1
        self._counted_at = time.monotonic()

    async def send_control(self, verb: str, run_id: str) -> None:
        """Ask the process that runs ``run_id`` to stop, pause or resume it. (A stop is
        kept on the run's row first, ``Store.request_stop``: the process reads its
        reason there, and one that claims the run later stops it too.)"""
        await self.store.notify(CONTROL_CHANNEL, f"{verb} {run_id}")

    # --- the loops -------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Join, then renew the lease, claim runs and listen until cancelled."""
        await self._join()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeats)
            tg.start_soon(self._listen)
            tg.start_soon(self._claims)
            task_status.started()

    async def leave(self) -> None:
        """A clean exit: hand this process's unfinished runs back (others claim them at
        once instead of after the lease) and drop its worker row."""
        with anyio.move_on_after(5, shield=True):
            try:
                released = await self.store.release_runs(self.worker_id)
                await self.store.notify(QUEUE_CHANNEL, "")
                if released:
                    logger.info("cluster: %d unfinished runs handed back", released)
            except FlowrunError as exc:
                logger.warning("cluster: could not hand runs back (they are claimed after "
                               "the lease, %gs): %s", self.lease_s, exc.message)

    async def _join(self) -> None:
        await self.store.register_worker(self.worker_id, socket.gethostname(), os.getpid())
        self._renewed = time.monotonic()
        logger.info("cluster: joined as %s (lease %gs, heartbeat %gs)", self.worker_id,
                    self.lease_s, self.heartbeat_s)

    async def _heartbeats(self) -> None:
        while True:
            with anyio.move_on_after(self.heartbeat_s):
                await self._lease_lost.wait()
            if self._lease_lost.is_set():
                await self._fence()
                continue
            sent = time.monotonic()
            renewed: bool | None = None
            with anyio.move_on_after(self.lease_s / 2):
                try:
                    renewed = await self.store.heartbeat(self.worker_id, self.lease_s)
                except FlowrunError as exc:
                    logger.warning("cluster: lease not renewed: %s", exc.message)
            if renewed:
                self._renewed = sent
            elif renewed is False or \
                    time.monotonic() - self._renewed > self.lease_s - self.heartbeat_s:
                # Before anyone else may claim them (lease_s after the last renewal),
                # give the runs up: a run must not run in two processes.
                await self._fence()

    async def _fence(self) -> None:
        abandoned = self.dispatcher.abandon_all()
        self.store.drop_queued_writes()  # what it was writing for them must not land later
        self._lease_lost = anyio.Event()
        self.store.guard_lease(self.lease_s, self._lease_lost.set)
        self.fenced += 1
        logger.critical("cluster: lease lost (worker %s): %d runs abandoned to the other "
                        "processes; rejoining", self.worker_id, abandoned)
        self.worker_id = new_worker_id()
        self.store.owner = self.worker_id
        while True:
            try:
                await self._join()
                return
            except FlowrunError as exc:
                logger.warning("cluster: cannot rejoin yet: %s", exc.message)
                await anyio.sleep(self.heartbeat_s)

    async def _claims(self) -> None:
        while True:
            with anyio.move_on_after(self.heartbeat_s):
                await self._claim_wakeup.wait()
            self._claim_wakeup = anyio.Event()
            try:
                await self.tick()
            except FlowrunError as exc:
                logger.warning("cluster: claim skipped: %s", exc.message)
            except Exception:
                logger.exception("cluster: claim failed")

    async def tick(self) -> int:
        """Claim what this process has room for; apply stops missed by notification;
        count the cluster's queue (once a heartbeat). How many runs were claimed."""
        claimed = 0
        free = self.dispatcher.max_concurrent - self.dispatcher.taken - self.dispatcher.queued
        if free > 0 and self.dispatcher.dispatching and self.adopt is not None:
            # (not the runs of keys at their cap here: they would wait here while others'
            # runs wait in the cluster's queue)
            runs = await self.store.claim_runs(self.worker_id, min(free, CLAIM_BATCH),
                                               self.lease_s,
                                               skip_keys=self.dispatcher.full_keys())
            for run, stop_reason in runs:
                await self.adopt(run, stop_reason)
            claimed = len(runs)
            if claimed:
                logger.info("cluster: claimed %d runs", claimed)
            if claimed == CLAIM_BATCH:
                self.wake_claims()
        for run_id, reason in await self.store.stop_requests(self.worker_id):
            self._apply("stop", run_id, reason)
        # Once a heartbeat, not at every wake-up: a busy cluster wakes each process at
        # every run queued, and the count walks the whole queue.
        if time.monotonic() - self._counted_at >= self.heartbeat_s:
            await self.recount()
            await self.sync_pauses()
        return claimed

    async def sync_pauses(self) -> None:
        """Pause or resume the runs here whose stored status says otherwise: a pause or
        resume whose notification was lost (the listening connection was down).

        A pause or resume changes the handle and the row one after the other, so a
        look can fall between the two: a disagreement is acted on only when the next
        look (a heartbeat later) sees the same one.
        """
        paused_in_store = await self.store.paused_flags(self.worker_id)
        seen: dict[str, bool] = {}
        for run_id, paused in paused_in_store.items():
            handle = self.dispatcher.get(run_id)
            if handle is None or handle.paused == paused:
                continue
            if self._pause_mismatches.get(run_id) == paused:
                logger.info("cluster: run %s %s (its notification was missed)", run_id,
                            "paused" if paused else "resumed")
                self._apply("pause" if paused else "resume", run_id, None)
            else:
                seen[run_id] = paused
        self._pause_mismatches = seen

    async def _listen(self) -> None:
        assert self.store.url is not None
        backoff = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.store.url, autocommit=True) as conn:
                    for channel in (EVENTS_CHANNEL, QUEUE_CHANNEL, CONTROL_CHANNEL):
                        await conn.execute(f"LISTEN {channel}")
                    backoff = 0.1
                    self._caught_up()
                    while True:
                        async for note in conn.notifies(timeout=self.heartbeat_s):
                            try:
                                await self._heard(note.channel, note.payload)
                            except FlowrunError as exc:  # (the poll catches up)
                                logger.warning("cluster: %s %r not acted on: %s",
                                               note.channel, note.payload, exc.message)
                        await conn.execute("SELECT 1")  # quiet: is the line still up?
            except psycopg.Error as exc:
                logger.warning("cluster: listening connection lost (%s); reconnecting", exc)
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, self.heartbeat_s)

    def _caught_up(self) -> None:
        """After (re)connecting: what was said meanwhile is lost, so look again."""
        for run_id in self.bus.subscribed_runs():
            self.bus.nudge(run_id)
        if self.workflow_changed is not None:
            self.workflow_changed(None)
        if self.keys_changed is not None:
            self.keys_changed()
        self.wake_claims()

    async def _heard(self, channel: str, payload: str) -> None:
        if channel == EVENTS_CHANNEL:
            for run_id in payload.split(","):
                # runs executing here publish their own events
                if self.bus.subscriber_count(run_id) and self.dispatcher.get(run_id) is None:
                    self.bus.nudge(run_id)
        elif channel == QUEUE_CHANNEL:
            self.wake_claims()
        elif channel == CONTROL_CHANNEL:
            verb, _, run_id = payload.partition(" ")
            if verb == "workflow" and self.workflow_changed is not None:
                self.workflow_changed(run_id)  # (a workflow's name)
            elif verb == "keys" and self.keys_changed is not None:
                self.keys_changed()
            elif verb in CONTROL_VERBS and self.dispatcher.get(run_id) is not None:
                reason = None
                if verb == "stop":
                    reason = await self.store.stop_reason(run_id) or None
                self._apply(verb, run_id, reason)

    def _apply(self, verb: str, run_id: str, reason: str | None) -> None:
        handle = self.dispatcher.get(run_id)
        if handle is None:
            return
        if verb == "stop":
            self.dispatcher.stop(handle, reason or None)
        elif verb == "pause":
            self.dispatcher.pause(handle)
            handle.run.status = RunStatus.PAUSED
        elif verb == "resume":
            self.dispatcher.resume(handle)
            started = handle.run.started_at is not None
            handle.run.status = RunStatus.RUNNING if started else RunStatus.QUEUED
