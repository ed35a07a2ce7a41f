"""Executes one accepted run end to end: graph, progress records, terminal status.

The runner is where the engine meets durability. It loads the run's graph,
marks the run running, drives an ``Executor`` with an observer that persists
every node execution and event (numbered per run, continuing after a restart)
and publishes them live, then writes the terminal status shielded from
cancellation. If cancelled from outside (shutdown) it writes nothing final:
the run stays ``running`` and resumes on the next start.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio

from flowrun import ids
from flowrun.engine.executor import Executor, RunOutcome
from flowrun.engine.node_services import NodeServices
from flowrun.engine.nodes import Registry
from flowrun.engine.storage import RunStorage
from flowrun.errors import DefinitionError, FlowrunError, OutputTooLarge, Unavailable
from flowrun.jsontext import Encoded, encode_reusing
from flowrun.language.definitions import WorkflowDefinition, with_graph
from flowrun.metrics import Metrics
from flowrun.records import Event, NodeRecord, NodeStatus, RunRecord, RunStatus
from flowrun.runs.events import EventBus, node_finished_payload, node_payload
from flowrun.store import Store, WriteResult


def signal_token_hash(token: str) -> str:
    """How a signal URL's token is stored: hashed, as API keys are."""
    return hashlib.sha256(token.encode()).hexdigest()

logger = logging.getLogger(__name__)


class RunRecorder:
    """Persists one run's node executions and events, and publishes each event once committed.

    A ``RunObserver`` of the executor, and ``IterationEvents`` of the map node.
    """

    def __init__(self, store: Store, bus: EventBus, run: RunRecord, *, last_seq: int,
                 storage: RunStorage | None = None, text_wait_s: float = 10.0) -> None:
        self.dropped = False  # an event of this run was not stored (said once)
        self.store = store
        self.bus = bus
        self.run = run
        self.seq = last_seq
        # what the run stores so far, against its limits (the executor counts into it)
        self.storage = storage or RunStorage(run_id=run.id)
        self.text_wait_s = text_wait_s
        self._exec_ids: dict[str, str] = {}
        self._predecessors: dict[str, str | None] = {}

    def event(self, name: str, data: dict[str, Any]) -> Event:
        """The run's next event (numbered, not yet written)."""
        self.seq += 1
        return Event(self.run.id, self.seq, name, data, time.time())

    def publish_after(self, result: WriteResult[None], event: Event) -> WriteResult[None]:
        """Publish ``event`` live once ``result`` (the write holding it) has committed."""

        def publish(error: BaseException | None) -> None:
            if error is None:
                self.bus.publish(event)
            elif not self.dropped:  # once per run: the rest of its writes go the same way
                self.dropped = True
                logger.error("run %s: event %d (and any after it) not stored: %s",
                             event.run_id, event.seq, error)

        result.add_done_callback(publish)
        if self.bus.subscriber_count(event.run_id):
            self.store.commit_soon()  # someone follows this run live: no lingering
        return result

    def emit(self, name: str, data: dict[str, Any],
             node: NodeRecord | None = None) -> WriteResult[None]:
        """Persist an event (with the node it is about, in one write), then publish it."""
        event = self.event(name, data)
        return self.publish_after(self.store.record(node=node, event=event), event)

    def _exec_id(self, node: NodeRecord) -> str:
        exec_id = self._exec_ids.get(node.node_id)
        if exec_id is None:
            exec_id = self._exec_ids[node.node_id] = ids.new_id()
        return exec_id

    async def node_started(self, node: NodeRecord, predecessor: str | None) -> None:
        self._predecessors[node.node_id] = predecessor
        self.emit("node_started", node_payload(node, self._exec_id(node), predecessor), node)

    async def node_retry(self, node: NodeRecord, error: dict[str, Any]) -> None:
        data = node_finished_payload(node, self._exec_id(node),
                                     self._predecessors.get(node.node_id))
        data.update(status="retry", error=error.get("message"), retry_index=node.attempts)
        self.emit("node_retry", data, node)  # (with its row: large inputs are not repeated)

    async def node_finished(self, node: NodeRecord) -> None:
        self.emit("node_finished", node_finished_payload(
            node, self._exec_id(node), self._predecessors.get(node.node_id)), node)

    async def node_skipped(self, node: NodeRecord) -> None:
        self.store.record(node=node)

    async def node_waiting(self, node: NodeRecord) -> None:
        data = node_payload(node, self._exec_id(node), self._predecessors.get(node.node_id))
        data.update(status=node.status.value, signal=node.process_data.get("signal"),
                    expires_at=node.process_data.get("expires_at"),
                    signal_url=node.process_data.get("signal_url"))
        self.emit("node_waiting", data, node)

    async def text_chunk(self, node_id: str, text: str) -> None:
        """Stream a node's text: the one write a run can hold back, so it first waits
        while the store's writer is behind (the node waits too, and so does its upstream),
        instead of queuing rows without bound; still behind after ``text_wait_s``, the run
        streams no more text."""
        if not await self.store.room_for_writes(self.text_wait_s):
            self.storage.stop_streaming(f"a write queue still full after {self.text_wait_s:g}s "
                                        f"(FLOWRUN_WRITE_BACKLOG_WAIT_S)")
            return
        self.emit("text_chunk", {"text": text, "from_variable_selector": [node_id, "text"]})

    async def iteration_event(self, name: str, node: NodeRecord, predecessor: str | None,
                              iteration_id: str, index: int) -> None:
        """A node event from inside a map iteration (no node row of its own)."""
        key = f"{iteration_id}[{index}].{node.node_id}"
        exec_id = self._exec_ids.get(key) or self._exec_ids.setdefault(key, ids.new_id())
        data = (node_payload(node, exec_id, predecessor) if name == "node_started"
                else node_finished_payload(node, exec_id, predecessor))
        data.update(iteration_id=iteration_id, iteration_index=index)
        if name == "node_finished":
            self._exec_ids.pop(key, None)
        self.emit(name, data)


class Runner:
    """Runs accepted runs; one instance per app, called by the dispatcher."""

    def __init__(self, store: Store, bus: EventBus, registry: Registry,
                 metrics: Metrics | None = None, *, idempotency_ttl_s: float = 86_400.0,
                 final_write_timeout_s: float = 30.0,
                 services: NodeServices | None = None, text_wait_s: float = 10.0) -> None:
        self.store = store
        self.bus = bus
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.idempotency_ttl_s = idempotency_ttl_s
        self.final_write_timeout_s = final_write_timeout_s
        self.text_wait_s = text_wait_s  # how long streamed text waits for a busy writer
        self.services = services
        # Told of each run whose terminal write has committed (the callback loop's poke).
        self.on_finished: Callable[[RunRecord], None] | None = None
        # A stored version never changes: parse each one once.
        self._definitions: dict[tuple[str, int], WorkflowDefinition] = {}

    async def definition_for(self, run: RunRecord) -> WorkflowDefinition:
        """The graph this run executes: its own override, or the stored version.

        Both were checked when they were stored; they are not checked again, so a run
        made before a newer flowrun added a check still runs after an upgrade.
        """
        if run.graph is not None:
            definition = WorkflowDefinition.model_validate(run.graph)
        elif (run.workflow, run.version) in self._definitions:
            definition = self._definitions[(run.workflow, run.version)]
        else:
            found = await self.store.get_workflow(run.workflow, run.version, deleted=True)
            if found is None:
                raise DefinitionError(f"workflow {run.workflow!r} version {run.version} is gone")
            definition = WorkflowDefinition.model_validate(found[1])
            if len(self._definitions) > 1024:
                self._definitions.clear()
            self._definitions[(run.workflow, run.version)] = definition
        if run.overrides:
            definition = with_graph(definition, overrides=run.overrides, registry=self.registry)
        return definition

    async def execute(self, run: RunRecord,
                      executor_ready: Callable[[Executor], None] | None = None, *,
                      fresh: bool = False) -> RunOutcome | None:
        """Run to a terminal status and record it; None if cancelled from outside.

        ``fresh``: the run was just accepted, so it has no events or node rows to read.
        """
        resumed = run.status in {RunStatus.RUNNING, RunStatus.PAUSED}
        # A resumed or retried run goes on from its events and the nodes it keeps.
        last_seq, kept = (0, 0) if fresh else await self.store.run_progress(run.id)
        storage = RunStorage(self.services.storage if self.services else None, used=kept,
                             run_id=run.id)
        recorder = RunRecorder(self.store, self.bus, run, last_seq=last_seq, storage=storage,
                               text_wait_s=self.text_wait_s)
        try:
            definition = await self.definition_for(run)
        except FlowrunError as exc:
            outcome = RunOutcome(RunStatus.FAILED, None,
                                 {"code": exc.code, "message": exc.message, "node_id": None}, [])
            await self.finish(run, recorder, outcome)
            return outcome
        # Succeeded nodes keep their outputs: after a crash (resume) or a retry. Waiting
        # nodes keep when they began to wait (their timeout counts from then).
        stored = [] if fresh else await self.store.node_records(run.id)
        prior = {n.node_id: n for n in stored if n.status is NodeStatus.SUCCEEDED}
        waiting_since = {n.node_id: float(n.process_data["waiting_since"]) for n in stored
                         if n.status is NodeStatus.WAITING and
                         isinstance(n.process_data.get("waiting_since"), int | float)}
        signals = {} if fresh else await self.store.signals(run.id)
        resumed = resumed or run.started_at is not None  # woken from a wait
        started_at = run.started_at or time.time()
        run.started_at = started_at
        held = run.status is RunStatus.PAUSED
        run.status = RunStatus.PAUSED if held else RunStatus.RUNNING
        deadline = None
        if definition.timeout is not None:
            deadline = definition.timeout - (time.time() - started_at)
        logger.info("run %s: %s %s v%d", run.id, "resumed" if resumed else "started",
                    run.workflow, run.version)
        started_data = {"id": run.id, "workflow_id": run.workflow, "version": run.version,
                        "inputs": run.inputs, "created_at": int(run.created_at),
                        "reason": "resumption" if resumed else "retry" if prior else "initial"}
        first = recorder.event("workflow_resumed" if resumed else "workflow_started",
                               started_data)
        recorder.publish_after(self.store.mark_running(run.id, started_at, first,
                                                       status=run.status), first)
        executor = Executor(definition, run_id=run.id, inputs=run.inputs, version=run.version,
                            observer=recorder, registry=self.registry, prior_nodes=prior,
                            deadline_s=deadline, services=self.services, signals=signals,
                            waiting_since=waiting_since, storage=storage)
        if executor_ready is not None:
            executor_ready(executor)
        try:
            outcome = await executor.execute()
        except Exception as exc:
            if _holds(exc, Unavailable):
                raise  # a store fault: the run resumes once the store is back
            # A bug that escapes the executor must not leave the run "running" for good
            # (and crash again at every restart): it fails, and says so.
            logger.exception("run %s: failed inside flowrun", run.id)
            outcome = RunOutcome(RunStatus.FAILED, None, {
                "code": "internal_error", "node_id": None,
                "message": f"the run failed inside flowrun ({type(exc).__name__})"},
                list(executor.records.values()))
        if outcome.status is RunStatus.WAITING:
            with anyio.CancelScope(shield=True):
                await self.park(run, recorder, outcome, executor, definition.timeout)
        else:  # (its one await, the commit, is shielded)
            await self.finish(run, recorder, outcome, had_waits=bool(waiting_since))
        return outcome

    async def park(self, run: RunRecord, recorder: RunRecorder, outcome: RunOutcome,
                   executor: Executor, run_timeout: float | None) -> None:
        """Record a run as waiting for its wait nodes' signals, with when to wake it
        (the first wait timeout, or the run's deadline), and the one-time signal URLs.

        A signal (or a stop) that came while the run was still going is in the store
        by now, or comes after this commit: in the first case this wakes the run at
        once (``outcome.requeue``), in the second the signal (or the stop) does. The store's
        waiting -> queued switch lets only one of the two queue it.
        """
        waits = executor.waiting
        wake_at = min((w.expires_at for w in waits.values() if w.expires_at is not None),
                      default=None)
        if run_timeout is not None and run.started_at is not None:
            deadline = run.started_at + run_timeout
            wake_at = deadline if wake_at is None else min(wake_at, deadline)
        event = recorder.event("workflow_waiting", {
            "id": run.id, "workflow_id": run.workflow, "status": RunStatus.WAITING.value,
            "waiting": [{"node_id": node_id, "signal": w.signal, "expires_at": w.expires_at,
                         "signal_url": f"/signals/{w.token}"} for node_id, w in waits.items()],
            "wake_at": wake_at, "created_at": int(run.created_at)})
        tokens = [(signal_token_hash(w.token), node_id, w.signal)
                  for node_id, w in waits.items()]
        logger.info("run %s: parking", run.id)
        written = self.store.park_run(run.id, wake_at=wake_at, event=event, tokens=tokens)
        recorder.publish_after(written, event)
        with anyio.move_on_after(self.final_write_timeout_s, shield=True):
            await written.wait()
        logger.info("run %s: waiting for %s", run.id,
                    ", ".join(sorted({w.signal for w in waits.values()})))
        came = await self.store.signals(run.id)
        # (a stop asked for while it parked, here or in another process, is on its row)
        stop = await self.store.stop_reason(run.id)
        if (stop is not None or any(w.signal in came for w in waits.values())) and \
                await self.store.wake_run(run.id):
            outcome.requeue = True
            outcome.stop_reason = stop

    async def finish(self, run: RunRecord, recorder: RunRecorder, outcome: RunOutcome, *,
                     had_waits: bool = False) -> None:
        """Write the terminal event and status together, and wait for the commit
        (shielded: once the run has ended, a shutdown does not cut its record short).

        ``had_waits``: the run had waiting wait nodes; those still waiting end stopped.
        """
        finished_at = time.time()
        started_at = run.started_at or finished_at
        encoded = _bounded_outputs(outcome, recorder.storage)
        steps = outcome.steps
        event = recorder.event("workflow_finished", {
            "id": run.id, "workflow_id": run.workflow, "status": outcome.status.value,
            "outputs": outcome.outputs,
            "error": outcome.error.get("message") if outcome.error else None,
            "error_detail": outcome.error, "elapsed_time": round(finished_at - started_at, 6),
            "total_tokens": outcome.total_tokens, "total_steps": steps,
            "created_at": int(run.created_at),
            "finished_at": int(finished_at)})
        written = self.store.finish_run(run.id, outcome.status, outputs=outcome.outputs,
                                        error=outcome.error, steps=steps,
                                        finished_at=finished_at, event=event,
                                        key_ttl_s=self.idempotency_ttl_s,
                                        has_key=run.idempotency_key is not None,
                                        had_waits=had_waits, encoded_outputs=encoded)
        recorder.publish_after(written, event)
        if self.on_finished is not None:
            told = self.on_finished
            written.add_done_callback(lambda error: None if error else told(run))
        # Retried by the writer through database faults; bounded so shutdown never hangs.
        with anyio.move_on_after(self.final_write_timeout_s, shield=True) as waited:
            await written.wait()
        if waited.cancelled_caught:
            logger.warning("run %s: %s, but the store is failing: the writer keeps that "
                           "write and commits it once the store recovers", run.id,
                           outcome.status.value)
        self.metrics.runs_finished.labels(run.workflow, outcome.status.value).inc()
        self.metrics.run_seconds.labels(run.workflow).observe(finished_at - started_at)
        logger.info("run %s: %s in %.3fs", run.id, outcome.status.value,
                    finished_at - started_at)

    async def finish_unstarted(self, run: RunRecord, status: RunStatus,
                               reason: str | None = None, *, fresh: bool = False
                               ) -> RunOutcome:
        """Give a run that never started (stopped while queued) its terminal status."""
        last_seq = 0 if fresh else await self.store.last_event_seq(run.id)
        recorder = RunRecorder(self.store, self.bus, run, last_seq=last_seq)
        error = {"code": "stopped", "message": reason, "node_id": None} if reason else None
        outcome = RunOutcome(status, None, error, [])
        with anyio.CancelScope(shield=True):
            # (a run stopped while it waited for a signal: its wait nodes end stopped)
            await self.finish(run, recorder, outcome, had_waits=run.started_at is not None)
        return outcome


def _bounded_outputs(outcome: RunOutcome, storage: RunStorage) -> Encoded | None:
    """The run's outputs encoded once (the text of its nodes' outputs reused) and
    counted in what it stores; outputs past what is left fail the run instead
    (``outcome`` is changed in place, and stores none)."""
    if outcome.outputs is None:
        return None
    encoded = encode_reusing(outcome.outputs, (n.encoded_outputs for n in outcome.nodes
                                               if n.encoded_outputs is not None))
    try:
        storage.admit_run_outputs(encoded.size)
    except OutputTooLarge as exc:
        outcome.status, outcome.outputs = RunStatus.FAILED, None
        outcome.error = {"code": exc.code, "message": exc.message, "node_id": None}
        return None
    return encoded


def _holds(exc: BaseException, kind: type[BaseException]) -> bool:
    """True when ``exc`` is ``kind`` or an exception group holding one."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(kind) is not None
    return isinstance(exc, kind)
