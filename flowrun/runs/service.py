"""RunService: what API routers call to submit, read, wait for and stop runs.

Routers translate their dialect into these calls; every rule about runs lives
here or below: which workflow version, which inputs, who may see a run, when a
run counts as accepted (its row committed), what an idempotency key answers,
how long a caller may wait. Its neighbours own the rest: API keys
(``keys.KeyRing``), workflow definitions (``workflows.WorkflowCatalog``),
secrets (``vault.Vault``) and the drain (``lifecycle.Lifecycle``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from flowrun import ids
from flowrun.engine.executor import RunOutcome
from flowrun.errors import (
    BadRequest,
    Conflict,
    IdempotencyConflict,
    IdempotencyKeyReused,
    QueueFull,
    RunNotFound,
    TooManyRequests,
    Unavailable,
    WorkflowNotFound,
)
from flowrun.language import definitions
from flowrun.language.definitions import WorkflowDefinition
from flowrun.language.graph import (
    concurrency_of,
    downstream,
    merge_overrides,
    reads_inputs,
    split_dotted_inputs,
)
from flowrun.records import (
    RUN_TERMINAL,
    Event,
    IdempotencyClaim,
    KeyHolder,
    NodeStatus,
    OnConflict,
    RunRecord,
    RunStatus,
)
from flowrun.runs import access
from flowrun.runs.catalog import WorkflowCatalog
from flowrun.runs.dispatch import Dispatcher, RunHandle
from flowrun.runs.events import EventBus, follow
from flowrun.runs.lifecycle import Lifecycle
from flowrun.runs.ratelimit import RateLimiter
from flowrun.settings import Settings
from flowrun.store import Store

if TYPE_CHECKING:
    from flowrun.runs.cluster import Cluster

logger = logging.getLogger(__name__)


@dataclass
class RunRequest:
    """A request to start a run, whichever API it came through."""

    workflow: str
    inputs: dict[str, Any] = field(default_factory=dict)
    version: int | None = None
    priority: int = 0
    correlation_id: str | None = None
    user: str | None = None
    trace_id: str | None = None
    overrides: dict[str, dict[str, Any]] | None = None
    nodes: list[Any] | None = None
    edges: list[Any] | None = None
    idempotency_key: str | None = None
    on_conflict: OnConflict = OnConflict.RETURN_EXISTING
    parent_run_id: str | None = None
    depth: int = 0
    root_run_id: str | None = None
    schedule_id: str | None = None  # the schedule that asks, and for which slot
    schedule_slot: float | None = None
    callback_url: str | None = None  # checked by the router; else the workflow's default
    source: str | None = None  # "hook": a signed delivery to the workflow's hook
    # Inputs are inputs only: no key names a node to override its params (Langflow's
    # tweaks). For bodies written outside flowrun, e.g. a hook's delivery.
    inputs_only: bool = False

    def fingerprint(self) -> str:
        """Canonical JSON digest of what the run would do (not of how the answer is sent:
        a stream, a wait, a callback)."""
        material = {"workflow": self.workflow, "version": self.version, "inputs": self.inputs,
                    "priority": self.priority, "correlation_id": self.correlation_id,
                    "user": self.user, "overrides": self.overrides, "nodes": self.nodes,
                    "edges": self.edges}
        canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Submission:
    """The outcome of submit: the run, and whether this request created it."""

    run: RunRecord
    created: bool


@dataclass(frozen=True)
class SyncOutcome:
    """What a run-sync answers: the run as it ended, or as it was when the wait ran out."""

    submission: Submission
    run: RunRecord
    timeout_s: float  # the budget the wait was given
    elapsed_s: float  # from the request's arrival to now

    @property
    def finished(self) -> bool:
        return self.run.status in RUN_TERMINAL


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a run request asks for, checked: the definition it runs and with what."""

    version: int
    definition: WorkflowDefinition
    graph: dict[str, Any] | None  # the request's own graph, as stored with the run
    inputs: dict[str, Any]
    overrides: dict[str, dict[str, Any]]
    concurrency: tuple[str, int] | None  # (key, limit) of the workflow's concurrency


class RunService:
    """Submit, read, wait for, stop, pause, resume and re-run runs."""

    def __init__(self, settings: Settings, store: Store, dispatcher: Dispatcher, bus: EventBus,
                 workflows: WorkflowCatalog, lifecycle: Lifecycle) -> None:
        self.settings = settings
        self.store = store
        self.dispatcher = dispatcher
        self.bus = bus
        self.workflows = workflows
        self.lifecycle = lifecycle
        self.registry = workflows.registry
        self._streams: dict[str, int] = {}  # open event streams per API key id
        self.run_rate = RateLimiter(settings.run_rate_per_key, settings.run_burst_per_key)
        # Set when other processes share the database (PostgreSQL): see cluster.py.
        self.cluster: Cluster | None = None

    # --- runs -----------------------------------------------------------------------

    async def submit(self, principal: access.Principal, request: RunRequest) -> Submission:
        """Validate and durably accept a run; returns once its row is committed.

        With an idempotency key that already names a run, that run is returned
        (``created`` False) instead, or the key's strategy raises a conflict.
        """
        if request.parent_run_id is None:
            # (a child run is part of a run that is finishing: it may still start)
            self.lifecycle.refuse_new_work()
        access.require_workflow(principal, request.workflow)
        plan = await self._plan(request)
        self._check_priority(principal, request)
        claim = self._claim(principal, request, plan.definition)
        await self._admit(principal, request, claim)
        run = self._record(principal, request, plan)
        return await self._accept(run, claim, plan.concurrency)

    async def _plan(self, request: RunRequest) -> _Plan:
        """The definition step: the workflow's version with the request's graph and
        overrides, and the inputs checked against it (400 naming each problem)."""
        version, definition = await self.workflows.get(request.workflow, request.version)
        graph = None
        if request.nodes is not None or request.edges is not None:
            definition = definitions.with_graph(definition, nodes=request.nodes,
                                                edges=request.edges, registry=self.registry)
            graph = definition.to_json()
        inputs, dotted = (dict(request.inputs), {}) if request.inputs_only else \
            split_dotted_inputs(definition, request.inputs)
        overrides = merge_overrides(request.overrides, dotted)
        if overrides:
            definitions.with_graph(definition, overrides=overrides, registry=self.registry)
        inputs = definitions.check_inputs(definition, inputs)
        if not 0 <= request.priority <= 99:
            raise BadRequest("priority must be between 0 and 99",
                             errors=[{"field": "priority", "message": "must be 0-99"}])
        # a child run runs in its parent's slot, and was paid for by its root run
        concurrency = None if request.parent_run_id is not None else \
            concurrency_of(definition, inputs)
        return _Plan(version, definition, graph, inputs, overrides, concurrency)

    def _check_priority(self, principal: access.Principal, request: RunRequest) -> None:
        """A run-scoped key asks for at most the operator's ceiling (admins and child
        runs are not held to it)."""
        ceiling = self.settings.run_key_max_priority
        if request.priority > ceiling and not principal.is_admin and \
                request.parent_run_id is None:
            raise BadRequest(f"priority must be at most {ceiling} for a run-scoped key",
                             errors=[{"field": "priority", "message": f"must be 0-{ceiling}"}])

    def _claim(self, principal: access.Principal, request: RunRequest,
               definition: WorkflowDefinition) -> IdempotencyClaim | None:
        """The claim step: the idempotency key the run takes, if any; without one, a full
        queue refuses now (with one, the accept decides: a replay needs no room)."""
        if request.idempotency_key is not None:
            return IdempotencyClaim(principal.key_id or "", definition.name,
                                    request.idempotency_key, request.fingerprint(),
                                    request.on_conflict)
        if not self._has_room():
            raise QueueFull("the run queue is full; retry later", headers={"Retry-After": "1"})
        return None

    async def _admit(self, principal: access.Principal, request: RunRequest,
                     claim: IdempotencyClaim | None) -> None:
        """The key's run rate, taken last, after everything that could refuse the run."""
        if request.parent_run_id is not None:  # (a scheduled run has no key to count)
            return
        try:
            self.limit_rate(principal)
        except TooManyRequests:
            # A retry of a request already accepted (same key, same body) answers with
            # its run and starts nothing: it costs nothing, even past the limit.
            if claim is None or not await self._replays(claim):
                raise

    def _record(self, principal: access.Principal, request: RunRequest, plan: _Plan
                ) -> RunRecord:
        """The record step: the new run, queued, owned by this process or (in a cluster
        with no room here) by none."""
        definition = plan.definition
        run = RunRecord(
            id=ids.new_id(), workflow=definition.name, version=plan.version,
            status=RunStatus.QUEUED, inputs=plan.inputs, created_at=time.time(),
            priority=request.priority, correlation_id=request.correlation_id,
            idempotency_key=request.idempotency_key,
            user=request.user, trace_id=request.trace_id or ids.new_hex(),
            api_key_id=principal.key_id, overrides=plan.overrides, graph=plan.graph,
            parent_run_id=request.parent_run_id, depth=request.depth,
            root_run_id=request.root_run_id, schedule_id=request.schedule_id,
            schedule_slot=request.schedule_slot, source=request.source,
            callback_url=request.callback_url or definition.callback_url)
        if self.cluster is not None:
            run.owner = self.cluster.owner_for(run)
        return run

    async def _accept(self, run: RunRecord, claim: IdempotencyClaim | None,
                      concurrency: tuple[str, int] | None) -> Submission:
        """The accept step: commit the run with its key in one transaction, then queue it
        (here, or for any process of the cluster), or answer with the run the key names."""
        handle = self.dispatcher.prepare(run)
        handle.concurrency = concurrency
        counts_before = self.cluster.counts if self.cluster is not None else 0
        try:
            # Shielded: the write commits whether or not the caller is cancelled meanwhile
            # (a parent stopped while it starts a child), so the run must reach the queue.
            with anyio.CancelScope(shield=True):
                run_id, created = await self.store.accept_run(run, claim,
                                                              self._admission(claim))
        except BaseException:
            self.dispatcher.discard(handle)
            raise
        if not created:
            self.dispatcher.discard(handle)
            existing = await self.store.get_run(run_id)
            assert existing is not None  # committed before the key pointed to it
            return Submission(existing, created=False)
        self.dispatcher.runner.metrics.runs_accepted.labels(run.workflow).inc()
        if self.cluster is not None and run.owner is None:
            # Queued for the cluster: the first process with room claims it.
            self.dispatcher.discard(handle)
            await self.cluster.announce_queued(counts_before)
            logger.info("run %s: queued %s v%d for any process (priority %d)", run.id,
                        run.workflow, run.version, run.priority)
            return Submission(run, created=True)
        handle.fresh = True
        self.dispatcher.enqueue(handle)
        logger.info("run %s: queued %s v%d (priority %d)", run.id, run.workflow, run.version,
                    run.priority)
        return Submission(run, created=True)

    def _has_room(self) -> bool:
        """False when the queue (this process's, or the cluster's) is full."""
        if self.cluster is not None:
            return self.cluster.has_room()
        return self.dispatcher.has_room()

    async def _replays(self, claim: IdempotencyClaim) -> bool:
        """Whether ``claim`` would be answered with the run its key already names (the
        key's strategy may raise its conflict instead, as the accept would)."""
        holder = await self.store.key_holder(claim)
        return holder is not None and reuses(claim, holder)

    def limit_rate(self, principal: access.Principal) -> None:
        """Take one run start from the key's token bucket, or raise TooManyRequests
        (429, ``Retry-After`` in whole seconds) when it is empty. Without a key (auth
        off, the schedule loop) there is nothing to count."""
        if principal.key_id is None:
            return
        wait_s = self.run_rate.take(principal.key_id)
        if wait_s > 0:
            raise TooManyRequests(
                f"this key starts runs faster than {self.settings.run_rate_per_key:g}/s "
                f"(burst {self.settings.run_burst_per_key}); retry later",
                headers={"Retry-After": str(max(1, math.ceil(wait_s)))})

    def sync_timeout(self, requested_s: float | None) -> float:
        """How long a run-sync waits: what the caller asked (capped), else the default."""
        if requested_s is None:
            return self.settings.run_sync_default_timeout_s
        return min(requested_s, self.settings.run_sync_max_timeout_s)

    async def run_sync(self, principal: access.Principal, request: RunRequest,
                       timeout_s: float | None = None, *, started: float | None = None
                       ) -> SyncOutcome:
        """Submit a run and wait for its end, within ``timeout_s`` (see ``sync_timeout``)
        counted from ``started`` (``time.monotonic()`` when the request arrived)."""
        began = time.monotonic() if started is None else started
        budget = self.sync_timeout(timeout_s)
        submission = await self.submit(principal, request)
        remaining = budget - (time.monotonic() - began)
        run = await self.wait(principal, submission.run.id, max(remaining, 0.0))
        return SyncOutcome(submission, run, budget, time.monotonic() - began)

    def _admission(self, claim: IdempotencyClaim | None
                   ) -> Callable[[KeyHolder | None], str | None]:
        """The rule ``Store.accept_run`` applies in its transaction: answer with the run
        the idempotency key names (per the claim's strategy), or create one if the queue
        has room."""

        def admit(holder: KeyHolder | None) -> str | None:
            if claim is not None and holder is not None and reuses(claim, holder):
                return holder.run_id
            if not self._has_room():
                raise QueueFull("the run queue is full; retry later",
                                headers={"Retry-After": "1"})
            return None

        return admit

    async def get_run(self, principal: access.Principal, run_id: str) -> RunRecord:
        """A run with its nodes; RunNotFound for unknown ids and other keys' runs."""
        run = await self.store.get_run(run_id)
        if run is None or not principal.owns(run.api_key_id):
            raise RunNotFound(f"run {run_id!r} not found")
        return run

    async def get_run_by_number(self, principal: access.Principal, number: int) -> RunRecord:
        """A run by its number (the jobs API's job id); RunNotFound as ``get_run``."""
        run_id = await self.store.run_id_by_number(number)
        if run_id is None:
            raise RunNotFound(f"run number {number} not found")
        return await self.get_run(principal, run_id)

    async def list_runs(self, principal: access.Principal, workflow: str | None, *,
                        status: str | None = None, correlation_id: str | None = None,
                        limit: int = 20, cursor: str | None = None
                        ) -> tuple[list[RunRecord], str | None]:
        """Runs of a workflow (of every workflow, with None) made by this key (any key's
        for an admin), newest first, and the next page's cursor."""
        if workflow is not None:
            access.require_workflow(principal, workflow)
            if not await self.store.workflow_exists(workflow):
                raise WorkflowNotFound(f"workflow {workflow!r} is not registered")
        before = None
        if cursor:
            try:
                before = int(cursor) if len(cursor) < 19 else -1
                if before < 0:
                    raise ValueError(cursor)
            except ValueError:
                raise BadRequest("cursor is not valid",
                                 errors=[{"field": "cursor", "message": "invalid"}]) from None
        runs = await self.store.list_runs(workflow, api_key_id=principal.key_id,
                                          any_key=principal.is_admin, status=status,
                                          correlation_id=correlation_id, limit=limit,
                                          before_num=before)
        next_cursor = str(runs[-1].num) if len(runs) == limit else None
        return runs, next_cursor

    async def delete_run(self, principal: access.Principal, run_id: str) -> None:
        """Delete a finished run with its nodes and events (admin only); Conflict while it
        is live."""
        access.require_admin(principal, "deleting runs")
        status = await self.store.delete_run(run_id)
        if status is None:
            raise RunNotFound(f"run {run_id!r} not found")
        if status not in RUN_TERMINAL:
            raise Conflict(f"run {run_id} is {status.value}; stop it before deleting it")
        logger.info("run %s: deleted", run_id)

    async def wait(self, principal: access.Principal, run_id: str,
                   within_s: float) -> RunRecord:
        """The run once it is terminal, or as it is when ``within_s`` seconds pass.

        A run that parks on a wait node is waited for through the wait: its signal
        may come within the time (a waiting run is not finished).
        """
        with self.lifecycle.wait_scope(within_s):
            await self.settled(run_id)
        run = await self.get_run(principal, run_id)
        if run.status not in RUN_TERMINAL and self.lifecycle.shutting_down:
            raise Unavailable(f"flowrun is shutting down; run {run_id} resumes when it is back",
                              headers={"Retry-After": "5"})
        return run

    async def settled(self, run_id: str) -> RunOutcome | None:
        """Wait until the run is neither live in this process nor parked on a wait node
        (nor, in a cluster, live in another process); how it ended, as this process
        knows it (None: read the store)."""
        while True:
            handle = self.dispatcher.get(run_id)
            if handle is not None:
                await handle.done.wait()
                outcome = handle.outcome
                if handle.abandoned:
                    continue  # another process takes it over
                if outcome is None or outcome.status is not RunStatus.WAITING:
                    return outcome
                if outcome.requeue:
                    continue  # queued again at once (its signal came while it parked)
            if self.cluster is not None:
                if await self._settled_elsewhere(run_id):
                    return None
                continue
            unparked = self.dispatcher.unparked(run_id)  # before the read: no missed wake
            run = await self.store.get_run(run_id, with_nodes=False)
            if run is None or run.status is not RunStatus.WAITING:
                if self.dispatcher.get(run_id) is None:
                    return None
                continue  # queued again meanwhile
            await unparked.wait()

    async def _settled_elsewhere(self, run_id: str) -> bool:
        """In a cluster: True once the run is finished (or gone); False when it became
        live in this process. Meanwhile it runs, or waits, anywhere: each event written
        for it (a nudge from another process, or this one's own) is a cue to look."""
        assert self.cluster is not None
        while True:
            with self.bus.subscribe(run_id, 16) as cues:  # before the read: no missed cue
                run = await self.store.get_run(run_id, with_nodes=False)
                if run is None or run.status in RUN_TERMINAL:
                    return True
                if self.dispatcher.get(run_id) is not None:
                    return False
                with anyio.move_on_after(self.cluster.heartbeat_s):
                    try:
                        await cues.receive()
                    except anyio.EndOfStream:
                        pass

    async def stop(self, principal: access.Principal, run_id: str,
                   reason: str | None = None) -> RunRecord:
        """Stop a live run and return it once stopped; finished runs as they are.

        The stop is kept on the run's row first (every mode), so a run that cannot be
        stopped within ``stop_wait_s`` (no process has queued it yet, or it runs
        elsewhere) is answered as it is and still ends stopped: whatever queues, parks,
        wakes or claims it later finds the stop.
        """
        run = await self.get_run(principal, run_id)
        if run.status in RUN_TERMINAL:
            return run
        logger.info("run %s: stop asked (%s)", run_id, run.status.value)
        with self.dispatcher.stopping(run_id, reason):
            if await self.store.request_stop(run_id, reason or "") is not None:
                with anyio.move_on_after(self.settings.stop_wait_s):
                    await self._stopped(run, reason)
        return await self.get_run(principal, run_id)

    async def _stopped(self, run: RunRecord, reason: str | None) -> None:
        """Stop the run wherever it is and wait until it has ended (the caller bounds
        the wait)."""
        while True:
            unparked = self.dispatcher.unparked(run.id)  # before the look: no missed queueing
            handle = self.dispatcher.get(run.id)
            if handle is None:
                handle, ended = await self._handle_to_stop(run, reason)
                if ended:
                    return
                if handle is None:
                    await unparked.wait()  # queued, with no task here yet: its queueing stops it
                    continue
            self.dispatcher.stop(handle, reason)
            await handle.done.wait()
            outcome = handle.outcome
            if handle.abandoned or outcome is None or outcome.status is not RunStatus.WAITING:
                return
            # It parked as the stop came: it is woken and queued again, to stop.

    async def _handle_to_stop(self, run: RunRecord, reason: str | None
                              ) -> tuple[RunHandle | None, bool]:
        """(a handle in this process, ended) for a run that has no handle here: a parked
        run is woken and queued (to stop); a run nobody runs in a cluster is claimed.
        Ended: it has finished, or another process ran it to its end (told to stop).
        No handle and not ended: it is queued with no task yet (its re-run or its wake
        is about to queue it, and that queueing stops it)."""
        current = await self.store.get_run(run.id, with_nodes=False)
        if current is None or current.status in RUN_TERMINAL:
            return None, True
        if current.status is RunStatus.WAITING and await self.store.wake_run(run.id):
            current.status = RunStatus.QUEUED
            handle = self.dispatcher.prepare(current)
            self.dispatcher.enqueue(handle)  # (it takes the stop at once)
            return handle, False
        if self.cluster is not None:
            claimed = await self._claim_to_stop(run.id, reason)
            if claimed is None:  # another process runs it: it stops it
                await self.cluster.send_control("stop", run.id)
                await self._settled_elsewhere(run.id)
                return None, True
            return claimed, False
        return None, False

    async def _claim_to_stop(self, run_id: str, reason: str | None) -> RunHandle | None:
        """In a cluster: take a run nobody runs (queued for anyone, or left by a process
        that died) so as to stop it here; None when a live process runs it."""
        assert self.cluster is not None
        claimed = await self.store.claim_runs(self.cluster.worker_id, 1,
                                              self.cluster.lease_s, run_id=run_id)
        if not claimed:
            return None
        run, _ = claimed[0]
        handle = self.dispatcher.get(run_id)  # (taken up meanwhile as one of its own)
        if handle is None:
            handle = self.dispatcher.prepare(run)
            self.dispatcher.enqueue(handle)  # (the caller stops it at once)
        return handle

    async def pause(self, principal: access.Principal, run_id: str) -> RunRecord:
        """Hold a live run before its next node starts; ``Conflict`` for a finished run."""
        run = await self.get_run(principal, run_id)
        if run.status in RUN_TERMINAL:
            raise Conflict(f"run {run_id} is {run.status.value}; only a live run can pause")
        if run.status is RunStatus.WAITING:
            raise Conflict(f"run {run_id} is waiting for a signal: it holds nothing to pause")
        handle = self.dispatcher.get(run_id)
        if run.status is not RunStatus.PAUSED and handle is not None:
            self.dispatcher.pause(handle)
            handle.run.status = RunStatus.PAUSED
            await self.store.set_status(run_id, RunStatus.PAUSED,
                                        only_from=(RunStatus.QUEUED, RunStatus.RUNNING))
        elif run.status is not RunStatus.PAUSED and self.cluster is not None:
            # run (or queued) by another process, or by none yet: the status holds it for
            # a claim; the process that runs it is told
            if await self.store.set_status(run_id, RunStatus.PAUSED,
                                           only_from=(RunStatus.QUEUED, RunStatus.RUNNING)):
                await self.cluster.send_control("pause", run_id)
        return await self.get_run(principal, run_id)

    async def resume(self, principal: access.Principal, run_id: str) -> RunRecord:
        """Let a paused run go on; ``Conflict`` when it is not paused."""
        run = await self.get_run(principal, run_id)
        if run.status is not RunStatus.PAUSED:
            raise Conflict(f"run {run_id} is {run.status.value}, not paused")
        handle = self.dispatcher.get(run_id)
        status = RunStatus.RUNNING if run.started_at is not None else RunStatus.QUEUED
        await self.store.set_status(run_id, status, only_from=(RunStatus.PAUSED,))
        if handle is not None:
            handle.run.status = status
            self.dispatcher.resume(handle)
        elif self.cluster is not None:
            await self.cluster.send_control("resume", run_id)
        return await self.get_run(principal, run_id)

    async def rerun(self, principal: access.Principal, run_id: str, *, from_failure: bool,
                    from_node: str | None = None) -> RunRecord:
        """Run a finished run again under the same id: from scratch (restart), from its
        failed nodes keeping the succeeded ones' outputs (retry), or from ``from_node``
        keeping the outputs of every node that does not come after it.

        A child run re-run by itself is nobody's child any more for scheduling: it is
        refused while its parent is live (the parent owns it), and afterwards runs as
        its own root, under every cap (``RunRecord.awaited_by_parent``)."""
        run = await self.get_run(principal, run_id)
        access.require_workflow(principal, run.workflow)  # (its own child of another one)
        if run.status not in RUN_TERMINAL:
            raise Conflict(f"run {run_id} is still {run.status.value}")
        if run.parent_run_id is not None:
            parent = await self.store.get_run(run.parent_run_id, with_nodes=False)
            if parent is not None and parent.status not in RUN_TERMINAL:
                raise Conflict(f"run {run_id} is a child of run {run.parent_run_id}, which "
                               f"is still {parent.status.value}: re-run that one instead")
        rerun: set[str] = set()
        if from_node is not None:
            definition = await self.definition_of(run)
            if from_node not in {n.id for n in definition.nodes}:
                raise BadRequest(f"run {run_id} has no node {from_node!r}",
                                 errors=[{"field": "from_node", "message": "no such node"}])
            rerun = downstream(definition, from_node)
        elif from_failure and run.status is RunStatus.SUCCEEDED:
            raise Conflict(f"run {run_id} succeeded; there is nothing to retry")
        self.lifecycle.refuse_new_work()
        self.limit_rate(principal)
        if not await self.store.reset_run(run_id, keep_succeeded=from_failure or bool(rerun),
                                          rerun=rerun):
            raise Conflict(f"run {run_id} was queued again by another request")
        fresh = await self.store.get_run(run_id, with_nodes=False)
        assert fresh is not None
        if self.dispatcher.get(run_id) is None:  # (in a cluster, maybe taken up meanwhile)
            # a stop that came once it was queued (from another process) stops it
            await self._queue_taken(fresh, await self.store.stop_reason(run_id))
        logger.info("run %s: %s", run_id, "retried" if from_failure else "restarted")
        return await self.get_run(principal, run_id)

    async def rerun_from(self, principal: access.Principal, run_id: str, from_node: str, *,
                         inputs: dict[str, Any] | None = None) -> Submission:
        """A new run of a finished run's graph and version (``rerun_of`` names the
        original) that starts with the outputs of every node that does not come after
        ``from_node``, and runs ``from_node`` and all after it.

        New ``inputs`` are refused (400) when a reused node read the inputs: its stored
        outputs were made from the old ones.
        """
        self.lifecycle.refuse_new_work()
        original = await self.get_run(principal, run_id)
        access.require_workflow(principal, original.workflow)  # (its own child of another one)
        if original.status not in RUN_TERMINAL:
            raise Conflict(f"run {run_id} is still {original.status.value}")
        definition = await self.definition_of(original)
        specs = {n.id: n for n in definition.nodes}
        if from_node not in specs:
            raise BadRequest(f"run {run_id} has no node {from_node!r}",
                             errors=[{"field": "from_node", "message": "no such node"}])
        rerun = downstream(definition, from_node)
        kept = [n for n in original.nodes
                if n.status is NodeStatus.SUCCEEDED and n.node_id not in rerun]
        checked = original.inputs if inputs is None else \
            definitions.check_inputs(definition, inputs)
        if checked != original.inputs:
            stale = sorted(n.node_id for n in kept if n.node_id in specs and
                           reads_inputs(specs[n.node_id]))
            if stale:
                raise BadRequest(
                    f"nodes {', '.join(stale)} read the inputs: their stored outputs were "
                    f"made from the old ones; re-run from one of them (or earlier) instead",
                    errors=[{"field": "inputs", "message": f"read by reused node {node}"}
                            for node in stale])
        run = RunRecord(
            id=ids.new_id(), workflow=original.workflow, version=original.version,
            status=RunStatus.QUEUED, inputs=checked, created_at=time.time(),
            priority=original.priority, correlation_id=original.correlation_id,
            user=original.user, trace_id=ids.new_hex(), api_key_id=principal.key_id,
            overrides=original.overrides, graph=original.graph, rerun_of=original.id,
            owner=self.store.owner)
        self.limit_rate(principal)
        reused = [dataclasses.replace(n, run_id=run.id,
                                      process_data={**n.process_data, "reused_from": run_id})
                  for n in kept]
        handle = self.dispatcher.prepare(run)
        handle.concurrency = await self._concurrency(run)
        try:
            with anyio.CancelScope(shield=True):  # committed, so it must reach the queue
                await self.store.accept_run(run, None, self._admission(None), nodes=reused)
        except BaseException:
            self.dispatcher.discard(handle)
            raise
        self.dispatcher.enqueue(handle)  # not fresh: the runner reads the reused nodes
        logger.info("run %s: re-runs %s from node %s", run.id, run_id, from_node)
        return Submission(run, created=True)

    async def requeue(self, run: RunRecord) -> None:
        """Queue again a run the store has just switched from waiting to queued."""
        if self.dispatcher.get(run.id) is not None:
            return  # (in a cluster, taken up meanwhile as a run this process owns)
        # A stop kept on its row (it was woken to stop, or stopped in another process)
        # ends it instead. (A stop asked here meanwhile is ``Dispatcher.stopping``.)
        await self._queue_taken(run, await self.store.stop_reason(run.id))

    async def resume_unfinished(self) -> int:
        """Re-queue queued runs and resume running (and paused) ones after a restart."""
        runs = await self.store.unfinished_runs()
        unfinished = {run.id for run in runs}
        stops = await self.store.requested_stops()  # asked for before the restart
        for run in runs:
            stop_reason = stops.get(run.id)
            if stop_reason is None and run.awaited_by_parent and \
                    run.parent_run_id not in unfinished:
                stop_reason = f"its parent run {run.parent_run_id} has ended"
            await self._queue_taken(run, stop_reason)
        if runs:
            logger.info("resuming %d unfinished runs", len(runs))
        return len(runs)

    async def adopt(self, run: RunRecord, stop_reason: str | None) -> None:
        """Take in a run this process just claimed (cluster.py): queued ones queue,
        running ones resume from their last finished node; ``stop_reason``: a stop
        asked for while nobody ran it."""
        if self.dispatcher.get(run.id) is not None:
            return
        if stop_reason is None and run.parent_run_id is not None and run.awaited_by_parent:
            parent = await self.store.get_run(run.parent_run_id, with_nodes=False)
            if parent is None or parent.status in RUN_TERMINAL:
                stop_reason = f"its parent run {run.parent_run_id} has ended"
        await self._queue_taken(run, stop_reason)

    async def _queue_taken(self, run: RunRecord, stop_reason: str | None) -> None:
        handle = self.dispatcher.prepare(run)
        handle.paused = run.status is RunStatus.PAUSED
        if stop_reason is not None:
            # Nothing waits for a child whose parent ended (or a stop was asked): it
            # stops rather than runs on.
            handle.stop_requested = True
            handle.stop_reason = stop_reason or None
        handle.concurrency = await self._concurrency(run)
        self.dispatcher.enqueue(handle)

    async def _concurrency(self, run: RunRecord) -> tuple[str, int] | None:
        """The concurrency key and limit of a run its workflow's definition gives (none
        for a child its parent waits for: it runs in its parent's slot)."""
        if run.awaited_by_parent:
            return None
        try:
            return concurrency_of(await self.definition_of(run), run.inputs)
        except Exception:  # its workflow is gone, or its key no longer evaluates
            logger.warning("run %s: no concurrency key: its definition cannot give one",
                           run.id, exc_info=True)
            return None

    async def definition_of(self, run: RunRecord) -> WorkflowDefinition:
        """The graph a run executes (its override, or its stored version)."""
        return await self.dispatcher.runner.definition_for(run)

    def ensure_stream_room(self, principal: access.Principal) -> None:
        """TooManyRequests when the key holds its maximum of open event streams.

        Streaming starts call it before they submit, so a refused stream starts no run.
        """
        if self._streams.get(principal.key_id or "", 0) >= self.settings.max_streams_per_key:
            raise TooManyRequests(f"this API key already follows "
                                  f"{self.settings.max_streams_per_key} event streams; "
                                  f"close one first", headers={"Retry-After": "1"})

    def follow(self, principal: access.Principal, run_id: str,
               after: int = 0) -> AsyncGenerator[Event, None]:
        """The run's events after ``after``: replay, then live, ending at the terminal event.

        Check access with ``get_run`` first; this does not. Each key may hold
        ``max_streams_per_key`` streams at once (TooManyRequests past that), so one
        key cannot hold every connection and subscriber slot of the server.
        """
        self.ensure_stream_room(principal)
        holder = principal.key_id or ""
        self._streams[holder] = self._streams.get(holder, 0) + 1

        async def is_finished() -> bool:
            run = await self.store.get_run(run_id, with_nodes=False)
            return run is None or run.status in RUN_TERMINAL

        # The run's writes so far, and its next batch, commit (and publish) without
        # lingering: said now, before the stream starts, as the run may start first.
        self.store.commit_soon()

        async def counted() -> AsyncGenerator[Event, None]:
            try:
                async with aclosing(follow(self.bus, self.store.events, run_id, after,
                                           is_finished)) as events:
                    async for event in events:
                        yield event
            finally:
                self._streams[holder] -= 1
                if not self._streams[holder]:
                    del self._streams[holder]

        return counted()

    def health(self) -> dict[str, Any]:
        return {"status": "draining" if self.lifecycle.shutting_down else "ok",
                "queued": self.dispatcher.queued,
                "running": self.dispatcher.running,
                "subscribers": self.bus.subscriber_count(),
                "tasks": len(asyncio.all_tasks()),
                **({} if self.cluster is None else {"cluster": {
                    "worker": self.cluster.worker_id,
                    "queued": self.cluster.queued_estimate}})}






def reuses(claim: IdempotencyClaim, holder: KeyHolder) -> bool:
    """Whether a request with ``claim`` gets the run its key already names (True), or
    a new run that takes the key over (False); raises the strategy's conflict."""
    run_id, status = holder.run_id, holder.status
    if claim.on_conflict is OnConflict.FAIL:
        raise IdempotencyConflict(f"run {run_id} already has idempotency key {claim.key!r}",
                                  run_id=run_id, run_status=status.value)
    if claim.on_conflict is OnConflict.FAIL_ON_RUNNING:
        if status in RUN_TERMINAL:
            return False  # a finished run: start a new one and move the key to it
        raise IdempotencyConflict(f"run {run_id} with idempotency key {claim.key!r} is "
                                  f"still {status.value}", run_id=run_id,
                                  run_status=status.value)
    if holder.fingerprint != claim.fingerprint:
        raise IdempotencyKeyReused(f"idempotency key {claim.key!r} was used for a different "
                                   f"request (run {run_id})", run_id=run_id)
    return True
