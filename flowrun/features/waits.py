"""Runs waiting on wait nodes: signals in, and the loop that wakes runs whose time is up.

A run whose every branch has either ended or reached a ``wait`` node with no signal
yet is *parked* by the runner: status ``waiting``, no task, no dispatcher slot, a
``wake_at`` (the first wait timeout or the run deadline) and one-time signal URL
tokens in the store. Nothing here holds it in memory, so a restart changes nothing.

``WaitBook.signal`` stores a signal (one per name per run; a signal may also come
before its wait node is reached, and is kept for it), then queues a parked run
again. The store's ``waiting -> queued`` switch is the one gate: a signal, the
wake loop, a stop and the runner's own post-park check may race for it; only one
queues the run. Queued again, the run resumes from its last finished nodes and the
wait node returns the signal's data (or, past its timeout, its default).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import anyio

from flowrun.errors import BadRequest, Conflict, FlowrunError, NotFound
from flowrun.language.definitions import SIGNAL_PATTERN
from flowrun.records import RUN_TERMINAL, NodeStatus, RunRecord
from flowrun.runs import access
from flowrun.runs.runner import signal_token_hash
from flowrun.runs.service import RunService
from flowrun.store import Store

logger = logging.getLogger(__name__)

TICK_S = 1.0  # the longest the wake loop sleeps: a new, earlier wake time waits at most this
TICK_TIMEOUT_S = 30.0


class WaitBook:
    """Deliver signals to runs, and wake waiting runs whose wait timed out."""

    def __init__(self, store: Store, service: RunService,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.service = service
        self.clock = clock

    async def signal(self, principal: access.Principal, run_id: str, name: Any,
                     data: Any) -> RunRecord:
        """Deliver signal ``name`` with ``data`` to a run (its owner's key, or an admin)."""
        run = await self.service.get_run(principal, run_id)
        return await self._deliver(run, _checked_name(name), _checked_data(data), via="api")

    async def signal_by_token(self, token: str, data: Any) -> RunRecord:
        """Deliver the signal a one-time signal URL stands for (no API key needed)."""
        found = await self.store.signal_token(signal_token_hash(token))
        if found is None:
            raise NotFound("no wait has this signal URL")
        run_id, _, name = found
        run = await self.store.get_run(run_id, with_nodes=False)
        if run is None:
            raise NotFound("no wait has this signal URL")
        return await self._deliver(run, name, _checked_data(data), via="url")

    async def describe_token(self, token: str) -> dict[str, Any]:
        """What a signal URL answers: the run, node and signal, and whether it still waits."""
        found = await self.store.signal_token(signal_token_hash(token))
        run = None if found is None else await self.store.get_run(found[0])
        if found is None or run is None:
            raise NotFound("no wait has this signal URL")
        run_id, node_id, name = found
        used = name in await self.store.signals(run_id)
        node = next((n for n in run.nodes if n.node_id == node_id), None)
        state = "used" if used else "ended" if run.status in RUN_TERMINAL else "waiting"
        return {"run_id": run_id, "workflow": run.workflow, "node_id": node_id,
                "title": node.title if node else node_id, "signal": name, "state": state,
                "expires_at": node.process_data.get("expires_at") if node else None}

    async def _deliver(self, run: RunRecord, name: str, data: dict[str, Any], *,
                       via: str) -> RunRecord:
        if run.status in RUN_TERMINAL:
            raise Conflict(f"run {run.id} is {run.status.value}; it takes no more signals")
        definition = await self.service.definition_of(run)
        names = {str(n.params.get("signal") or n.id) for n in definition.nodes
                 if n.type == "wait"}
        if name not in names:
            raise Conflict(f"run {run.id} has no wait node for signal {name!r}",
                           errors=[{"field": "name", "message": "no wait node waits for it"}])
        if not await self.store.add_signal(run.id, name, data, via=via):
            raise Conflict(f"run {run.id} has already received signal {name!r}",
                           errors=[{"field": "name", "message": "already signalled"}])
        logger.info("run %s: signal %s received (%s)", run.id, name, via)
        if await self.wake(run.id):
            logger.info("run %s: woken by signal %s", run.id, name)
        fresh = await self.store.get_run(run.id)
        assert fresh is not None
        return fresh

    async def wake(self, run_id: str) -> bool:
        """Queue a parked run again; False when it was not parked (someone else woke it,
        or it is still running and will find its signal itself)."""
        if not await self.store.wake_run(run_id):
            return False
        run = await self.store.get_run(run_id, with_nodes=False)
        if run is None:
            return False
        await self.service.requeue(run)
        return True

    # --- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Wake runs whose wait timed out, until cancelled (a task in the app's group).

        Also after a restart: a run whose timeout passed while the server was down is
        woken at the first tick, and its wait node takes its default (or fails).
        """
        with anyio.move_on_after(TICK_TIMEOUT_S):
            await self.recover()
        while True:
            wake = self.clock() + TICK_S
            if not self.service.lifecycle.shutting_down:
                with anyio.move_on_after(TICK_TIMEOUT_S) as scope:
                    wake = min(wake, await self.tick())
                if scope.cancelled_caught:
                    logger.warning("waits: a tick took over %gs; retrying", TICK_TIMEOUT_S)
            await anyio.sleep(max(0.0, min(wake - self.clock(), TICK_S)))

    async def recover(self) -> int:
        """Wake the parked runs whose signal is already stored: a crash between a run's
        park and its look for signals that came while it ran leaves them so."""
        woken = 0
        try:
            for run_id in await self.store.signalled_waiting_runs():
                came = await self.store.signals(run_id)
                waits = {n.process_data.get("signal") for n in
                         await self.store.node_records(run_id)
                         if n.status is NodeStatus.WAITING}
                if waits & set(came) and await self.wake(run_id):
                    logger.info("run %s: woken at start: its signal had come", run_id)
                    woken += 1
        except FlowrunError as exc:
            logger.warning("waits: could not check parked runs at start: %s", exc.message)
        return woken

    async def tick(self) -> float:
        """Wake every run due now; when the next one is due."""
        now = self.clock()
        try:
            for run_id in await self.store.due_waiting_runs(now):
                if await self.wake(run_id):
                    logger.info("run %s: woken: its wait timed out", run_id)
            upcoming = await self.store.next_wake_at()
        except FlowrunError as exc:  # the database refuses for now: the next tick retries
            logger.warning("waits: could not wake due runs: %s", exc.message)
            return now + TICK_S
        return now + TICK_S if upcoming is None else upcoming


def _checked_name(name: Any) -> str:
    if not isinstance(name, str) or not re.match(SIGNAL_PATTERN, name):
        raise BadRequest("name is the signal's name: 1-64 letters, digits and _.:-",
                         errors=[{"field": "name", "message": "a signal name is required"}])
    return name


def _checked_data(data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadRequest("data becomes the wait node's outputs: it must be a JSON object",
                         errors=[{"field": "data", "message": "must be an object"}])
    return data

