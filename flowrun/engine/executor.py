"""Runs one workflow graph: a ready-set of nodes, independent ones concurrently.

The executor owns a run's graph walk and nothing else: it tells an observer
what happens (node started, retried, finished, skipped, text) and returns the
outcome. Persisting, fan-out and scheduling belong to the caller.

Cancellation has two meanings, kept apart as arq does: ``stop()`` (or a failed
node, or the run deadline) ends the run with a terminal status and marks running
nodes ``stopped``; cancellation from outside (server shutdown) propagates and
records nothing, so the run resumes on the next start.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.lowlevel
import pydantic

from flowrun.engine.node_services import NodeServices
from flowrun.engine.nodes import NodeContext, Registry
from flowrun.engine.nodes import registry as default_registry
from flowrun.engine.secrets import SecretRefs
from flowrun.engine.storage import RunStorage
from flowrun.errors import ExpressionError, NodeFailure, OutputTooLarge, WaitForSignal
from flowrun.jsontext import Encoded, TooLarge, encode, encode_outputs, plain_json
from flowrun.language import expressions
from flowrun.language.definitions import EdgeSpec, NodeSpec, WorkflowDefinition
from flowrun.records import NodeRecord, NodeStatus, RunStatus

logger = logging.getLogger(__name__)


class RunObserver(Protocol):
    """Receives a run's progress; implementations persist and publish it."""

    async def node_started(self, node: NodeRecord, predecessor: str | None) -> None: ...
    async def node_retry(self, node: NodeRecord, error: dict[str, Any]) -> None: ...
    async def node_finished(self, node: NodeRecord) -> None: ...
    async def node_skipped(self, node: NodeRecord) -> None: ...
    async def node_waiting(self, node: NodeRecord) -> None: ...
    async def text_chunk(self, node_id: str, text: str) -> None: ...


class NullObserver:
    """An observer that ignores everything (in-process runs that only want the result)."""

    async def node_started(self, node: NodeRecord, predecessor: str | None) -> None:
        return None

    async def node_retry(self, node: NodeRecord, error: dict[str, Any]) -> None:
        return None

    async def node_finished(self, node: NodeRecord) -> None:
        return None

    async def node_skipped(self, node: NodeRecord) -> None:
        return None

    async def node_waiting(self, node: NodeRecord) -> None:
        return None

    async def text_chunk(self, node_id: str, text: str) -> None:
        return None


@dataclass
class RunOutcome:
    status: RunStatus
    outputs: dict[str, Any] | None
    error: dict[str, Any] | None
    nodes: list[NodeRecord]
    # A run that parked waiting and must be queued again at once (its signal came
    # while it was parking).
    requeue: bool = False
    # A stop kept on the run's row, found as it parked: queued again, it stops
    # ('' for a stop without a reason).
    stop_reason: str | None = None

    @property
    def steps(self) -> int:
        return sum(1 for n in self.nodes if n.status is not NodeStatus.SKIPPED)

    @property
    def total_tokens(self) -> int:
        """Tokens reported by nodes (an llm node's ``usage``), summed over the run."""
        return sum(n.tokens for n in self.nodes)


@dataclass(frozen=True)
class GraphRun:
    """A sub-graph run inside a node (``NodeContext.run_graph``): its outcome, and the
    expression context it ended with (inputs, its nodes' outputs, run, scope)."""

    outcome: RunOutcome
    context: Mapping[str, Any]


def storable(value: Any, what: str, max_bytes: float = math.inf) -> Any:
    """``value`` as JSON can hold it (tuples, sets and ranges become lists), or an
    ExpressionError naming what cannot be stored: every event and node row is written,
    none is skipped. TooLarge once its JSON would pass ``max_bytes`` (``plain_json``)."""
    try:
        return plain_json(value, max_bytes)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ExpressionError(f"{what} cannot be stored as JSON: {exc}") from None


def _informational(data: Mapping[str, Any]) -> dict[str, Any]:
    """A node's process data (what it logged about itself), stored as best JSON can."""
    if not data:
        return {}
    try:
        return dict(json.loads(json.dumps(dict(data), default=repr, allow_nan=False)))
    except (TypeError, ValueError, RecursionError):
        return {"unstorable": repr(dict(data))[:2000]}


def _error(code: str, message: str, node_id: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "node_id": node_id}


class Executor:
    """Executes one run of a definition; create one per run."""

    def __init__(self, definition: WorkflowDefinition, *, run_id: str,
                 inputs: Mapping[str, Any], version: int = 1,
                 observer: RunObserver | None = None,
                 registry: Registry = default_registry,
                 prior_nodes: Mapping[str, NodeRecord] | None = None,
                 deadline_s: float | None = None, services: NodeServices | None = None,
                 extra_context: Mapping[str, Any] | None = None,
                 signals: Mapping[str, Any] | None = None,
                 waiting_since: Mapping[str, float] | None = None,
                 suspendable: bool = True, storage: RunStorage | None = None) -> None:
        self.definition = definition
        self.run_id = run_id
        self.observer: RunObserver = observer or NullObserver()
        self.registry = registry
        self.deadline_s = definition.timeout if deadline_s is None else deadline_s
        self._nodes = {n.id: n for n in definition.nodes}
        self._incoming: dict[str, list[EdgeSpec]] = {n: [] for n in self._nodes}
        self._outgoing: dict[str, list[EdgeSpec]] = {n: [] for n in self._nodes}
        for e in definition.edges:
            self._incoming[e.target].append(e)
            self._outgoing[e.source].append(e)
        self._edge_state: dict[int, bool] = {}  # id(edge) -> taken?
        # Nodes already made ready (run, skipped, reused or about to be): a node runs at
        # most once however many of its incoming edges resolve it (two edges of one
        # branch node that lead to the same node, as Dify exports have).
        self._ready_nodes: set[str] = set()
        self._prior = {k: v for k, v in (prior_nodes or {}).items()
                       if v.status is NodeStatus.SUCCEEDED and k in self._nodes}
        self.records: dict[str, NodeRecord] = {}
        self._index = max((n.index for n in (prior_nodes or {}).values()), default=0)
        self.services = services
        # What the run stores, against its limits (the runner's, or one of its own).
        self.storage = storage or RunStorage(services.storage if services else None,
                                         run_id=run_id)
        # Wait nodes: signals received so far, when each waiting node began to wait, and
        # those waiting now. A sub-graph (``suspendable`` False) cannot park its run.
        self._signals = dict(signals or {})
        self._waiting_since = dict(waiting_since or {})
        self.suspendable = suspendable
        self.waiting: dict[str, WaitForSignal] = {}
        self._context: dict[str, Any] = {
            **(extra_context or {}),
            "inputs": dict(inputs),
            "nodes": {},
            "run": {"id": run_id, "workflow": definition.name, "version": version},
            "secrets": SecretRefs(),  # references only; see flowrun.engine.secrets
        }
        self._stop_reason: RunStatus | None = None
        self._failure: dict[str, Any] | None = None
        self._scope: anyio.CancelScope | None = None
        self._stop_requested = False
        self._stop_message: str | None = None
        # While the run is paused, an event nodes wait on before they start (made only
        # when paused: most runs never are)
        self._gate: anyio.Event | None = None

    def pause(self) -> None:
        """Hold the run before its next node starts (running nodes finish)."""
        if self._gate is None:
            self._gate = anyio.Event()

    def resume(self) -> None:
        """Let a paused run start nodes again."""
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    def stop(self, reason: str | None = None) -> None:
        """Ask the run to end as ``stopped``; running nodes are cancelled."""
        self._stop_requested = True
        self._stop_message = reason or self._stop_message
        if self._stop_reason is None:
            self._stop_reason = RunStatus.STOPPED
        if self._scope is not None:
            self._scope.cancel()

    async def execute(self) -> RunOutcome:
        """Walk the graph to the end and return the outcome."""
        if self._stop_requested:
            error = _error("stopped", self._stop_message) if self._stop_message else None
            return RunOutcome(RunStatus.STOPPED, None, error, list(self.records.values()))
        async with anyio.create_task_group() as tg:
            # One scope for every way the run ends early: a stop and a failed node
            # cancel it (having said why, in ``_stop_reason``); the deadline is its own.
            self._scope = tg.cancel_scope
            if self.deadline_s is not None:
                tg.cancel_scope.deadline = anyio.current_time() + max(self.deadline_s, 0)
            if self._stop_requested:
                tg.cancel_scope.cancel()
            follow: list[tuple[NodeSpec, str | None]] = []
            for node_id, incoming in self._incoming.items():
                if not incoming:
                    self._ready(tg, node_id, None, follow)
            if follow:
                await self._run_nodes(tg, *follow[0])
        return self._outcome(tg.cancel_scope.cancelled_caught)

    def _outcome(self, deadline_hit: bool) -> RunOutcome:
        nodes = sorted(self.records.values(), key=lambda n: (n.index == 0, n.index))
        if self._failure is not None:
            return RunOutcome(RunStatus.FAILED, None, self._failure, nodes)
        if self._stop_reason is RunStatus.STOPPED:
            error = _error("stopped", self._stop_message) if self._stop_message else None
            return RunOutcome(RunStatus.STOPPED, None, error, nodes)
        if deadline_hit:
            error = _error("run_timeout", f"run exceeded its deadline of {self.deadline_s:g}s")
            return RunOutcome(RunStatus.TIMED_OUT, None, error, nodes)
        if self.waiting:  # every other branch has gone as far as it can: park
            return RunOutcome(RunStatus.WAITING, None, None, nodes)
        try:
            outputs = self._final_outputs()
        except ExpressionError as exc:
            return RunOutcome(RunStatus.FAILED, None, _error("output_error", exc.message), nodes)
        except TooLarge as exc:  # (counted, with their size, by the runner)
            return RunOutcome(RunStatus.FAILED, None, _error(
                OutputTooLarge.code, f"the run's outputs would take more than {exc.size:,} "
                "bytes (as JSON), past what its run may store (FLOWRUN_MAX_RUN_OUTPUT_BYTES)"),
                nodes)
        return RunOutcome(RunStatus.SUCCEEDED, outputs, None, nodes)

    def _final_outputs(self) -> dict[str, Any]:
        if self.definition.outputs is not None:
            room = self.storage.limits.max_run_bytes - self.storage.used
            return dict(storable(expressions.evaluate(self.definition.outputs, self._context),
                                 "the run's outputs", room))
        sinks = [n for n, out in self._outgoing.items() if not out]
        return {n: self.records[n].outputs for n in sinks
                if n in self.records and self.records[n].status is not NodeStatus.SKIPPED}

    # --- graph walk -----------------------------------------------------------------

    def _ready(self, tg: anyio.abc.TaskGroup, node_id: str, predecessor: str | None,
               follow: list[tuple[NodeSpec, str | None]]) -> None:
        """Start a node whose incoming edges are all settled: skip it, reuse its prior
        result, or run it. The first node to run goes to ``follow`` (an empty list) for
        the calling task to run next; others get a task of their own. A chain of nodes
        thus runs in one task instead of one task per node."""
        self._ready_nodes.add(node_id)
        incoming = self._incoming[node_id]
        if incoming and not any(self._edge_state[id(e)] for e in incoming):
            spec = self._nodes[node_id]
            rec = NodeRecord(self.run_id, node_id, spec.type, spec.title or node_id, 0,
                             NodeStatus.SKIPPED)
            self.records[node_id] = rec
            tg.start_soon(self._report_skip, rec)
            self._resolve(tg, node_id, follow, taken_branch=None, skipped=True)
            return
        prior = self._prior.get(node_id)
        if prior is not None:
            self.records[node_id] = prior
            self._context["nodes"][node_id] = prior.outputs
            self._resolve(tg, node_id, follow, taken_branch=prior.branch)
            return
        if follow:
            tg.start_soon(self._run_nodes, tg, self._nodes[node_id], predecessor)
        else:
            follow.append((self._nodes[node_id], predecessor))

    def _resolve(self, tg: anyio.abc.TaskGroup, node_id: str,
                 follow: list[tuple[NodeSpec, str | None]], *, taken_branch: str | None,
                 skipped: bool = False) -> None:
        for e in self._outgoing[node_id]:
            self._edge_state[id(e)] = not skipped and (e.branch is None or
                                                       e.branch == taken_branch)
        for target in dict.fromkeys(e.target for e in self._outgoing[node_id]):
            if target in self._ready_nodes:
                continue
            if all(id(i) in self._edge_state for i in self._incoming[target]):
                self._ready(tg, target, node_id, follow)

    async def _report_skip(self, rec: NodeRecord) -> None:
        await self.observer.node_skipped(rec)

    # --- one node -------------------------------------------------------------------

    async def _run_nodes(self, tg: anyio.abc.TaskGroup, spec: NodeSpec,
                         predecessor: str | None) -> None:
        """Run a node, then each first successor it makes ready, in this task."""
        step = await self._run_node(tg, spec, predecessor)
        while step is not None:
            # Let the loop run between nodes: a chain of nodes that never await anything
            # would otherwise hold it (and a stop) until the chain ends.
            await anyio.lowlevel.checkpoint()
            step = await self._run_node(tg, *step)

    async def _run_node(self, tg: anyio.abc.TaskGroup, spec: NodeSpec,
                        predecessor: str | None) -> tuple[NodeSpec, str | None] | None:
        """Run one node; the successor this task should run next, if any."""
        while self._gate is not None:  # paused: hold here until resumed (or stopped)
            await self._gate.wait()
        self._index += 1
        rec = NodeRecord(self.run_id, spec.id, spec.type, spec.title or spec.id, self._index,
                         NodeStatus.RUNNING, started_at=time.time())
        self.records[spec.id] = rec
        try:
            # Inputs are evaluated before node_started so the event can show them.
            params: dict[str, Any] | NodeFailure
            try:
                params = rec.inputs = self._evaluate_params(spec, rec)
            except NodeFailure as exc:  # an expression failed, or made too much to store
                params = exc
            await self.observer.node_started(rec, predecessor)
            if isinstance(params, NodeFailure):
                raise params
            outputs, branch = await self._attempts(spec, rec, params)
        except WaitForSignal as wait:
            # Its successors stay unresolved; the run parks once nothing else can run.
            rec.status = NodeStatus.WAITING
            since = self._waiting_since.get(spec.id, rec.started_at or time.time())
            rec.process_data.update(signal=wait.signal, waiting_since=since,
                                    expires_at=wait.expires_at,
                                    signal_url=f"/signals/{wait.token}")
            self.waiting[spec.id] = wait
            await self.observer.node_waiting(rec)
            return None
        except anyio.get_cancelled_exc_class():
            if self._ending():
                rec.status = NodeStatus.STOPPED
                rec.finished_at = time.time()
                rec.error = _error("stopped", "node cancelled: the run ended", spec.id)
                with anyio.CancelScope(shield=True):
                    await self.observer.node_finished(rec)
            raise
        except NodeFailure as exc:
            error = _error(exc.code, exc.message, spec.id)
            rec.error = error
            rec.status = NodeStatus.FAILED
            rec.finished_at = time.time()
            if spec.on_error == "fail":
                with anyio.CancelScope(shield=True):
                    await self.observer.node_finished(rec)
                if self._failure is None:
                    self._failure = error
                    self._stop_reason = RunStatus.FAILED
                tg.cancel_scope.cancel()
                return None
            if spec.on_error == "default":
                try:
                    rec.outputs = self._default_outputs(spec, rec)
                except NodeFailure as exc:  # it does not evaluate, or is too large to store
                    rec.outputs = {"error": _error(exc.code, exc.message, spec.id)}
            else:
                rec.outputs = {"error": error}
            outputs, branch = rec.outputs, None
        else:
            rec.status = NodeStatus.SUCCEEDED
            rec.outputs = outputs
            rec.branch = branch
            rec.finished_at = time.time()
        self._context["nodes"][spec.id] = outputs
        await self.observer.node_finished(rec)
        follow: list[tuple[NodeSpec, str | None]] = []
        self._resolve(tg, spec.id, follow, taken_branch=branch)
        return follow[0] if follow else None

    def _evaluate_params(self, spec: NodeSpec, rec: NodeRecord) -> dict[str, Any]:
        node_type = self.registry.get(spec.type)
        raw = node_type.raw_params if node_type is not None else frozenset()
        params = {name: value if name in raw else expressions.evaluate(value, self._context)
                  for name, value in spec.params.items()}
        rec.encoded_inputs = self._stored(spec.id, "inputs", params,
                                          f"a param of node {spec.id!r}")
        stored: dict[str, Any] = rec.encoded_inputs.value  # (that object: its text is kept)
        return stored

    def _default_outputs(self, spec: NodeSpec, rec: NodeRecord) -> dict[str, Any]:
        """What ``on_error: default`` gives a failed node, held to the storage limits
        as the node's own outputs are."""
        if not spec.default:
            return {}
        rec.encoded_outputs = self._stored(
            spec.id, "outputs", expressions.evaluate(spec.default, self._context),
            f"the default of node {spec.id!r}")
        if not isinstance(rec.encoded_outputs.value, dict):
            raise ExpressionError(f"the default of node {spec.id!r} is not a mapping")
        return rec.encoded_outputs.value

    def _stored(self, node_id: str, what: str, value: Any, name: str) -> Encoded:
        """An expression's ``value`` as the node's row will hold it, encoded once and
        admitted to what the run stores (OutputTooLarge past a limit)."""
        try:
            plain = storable(value, name, self.storage.room())
        except TooLarge as exc:  # past the room left: admit says which limit, and raises
            self.storage.admit(node_id, what, exc.size, at_least=True)
            raise
        encoded = encode(plain)
        self.storage.admit(node_id, what, encoded.size)
        return encoded

    @property
    def context(self) -> Mapping[str, Any]:
        """The expression context so far (inputs, finished nodes' outputs, run)."""
        return self._context

    async def _run_graph(self, definition: WorkflowDefinition, *, inputs: Mapping[str, Any],
                         scope: Mapping[str, Any], observer: RunObserver,
                         services: NodeServices | None) -> GraphRun:
        """A sub-graph run inside one of this run's nodes (``NodeContext.run_graph``)."""
        registry = services.registry if services is not None else self.registry
        child = Executor(definition, run_id=self.run_id, inputs=inputs, observer=observer,
                         registry=registry, services=services, extra_context=scope,
                         deadline_s=None, suspendable=False, storage=self.storage)
        outcome = await child.execute()
        return GraphRun(outcome, child.context)

    def _ending(self) -> bool:
        """The run is ending early: stopped, failed, or past its deadline."""
        scope = self._scope
        return self._stop_reason is not None or (scope is not None and scope.cancel_called)

    async def _attempts(self, spec: NodeSpec, rec: NodeRecord,
                        params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        node_type = self.registry.get(spec.type)
        if node_type is None:
            raise NodeFailure(f"unknown node type {spec.type!r}", code="unknown_node_type")
        try:
            validated = node_type.params_model.model_validate(params)
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                 for e in exc.errors())
            raise NodeFailure(f"invalid params: {problems}", code="invalid_params") from None
        kwargs = node_type.call_kwargs(validated)
        retry = spec.retry
        max_attempts = retry.max_attempts if retry else 1
        for attempt in range(1, max_attempts + 1):
            rec.attempts = attempt
            ctx = NodeContext(self.run_id, spec.id, attempt,
                              emit_text_cb=self._text_sink(spec.id),
                              services=self.services, ending=self._ending,
                              on_error=spec.on_error, default=spec.default,
                              observer=self.observer, expression_context=self._context,
                              run_graph_cb=self._run_graph, signals=self._signals,
                              waiting_since=self._waiting_since.get(spec.id))
            try:
                encoded = await self._call(node_type.func, ctx, kwargs, spec)
            except WaitForSignal:
                if not self.suspendable:
                    raise NodeFailure("a wait node cannot park here: only a run on a server "
                                      "can wait (not a map's graph, nor a run in-process)",
                                      code="wait_unsupported") from None
                raise
            except NodeFailure as exc:
                rec.logs.extend(ctx.logs)
                rec.process_data.update(_informational(ctx.process_data))
                rec.process_data.update(_informational(exc.process_data))
                if attempt >= max_attempts or isinstance(exc, OutputTooLarge):
                    raise  # (a node makes as much again: no retry)
                error = _error(exc.code, exc.message, spec.id)
                await self.observer.node_retry(rec, error)
                backoff = retry.backoff_s * (2 ** (attempt - 1)) if retry else 0
                await anyio.sleep(backoff)
                continue
            rec.logs.extend(ctx.logs)
            rec.process_data.update(_informational(ctx.process_data))
            rec.encoded_outputs = encoded  # the store writes this text, not a new one
            outputs = encoded.value
            branch = node_type.select_branch(outputs) if node_type.select_branch else None
            return outputs, branch
        raise AssertionError("unreachable")

    def _text_sink(self, node_id: str) -> Callable[[str], Awaitable[None]]:
        """A node attempt's ``emit_text``: each chunk is stored (a ``text_chunk``
        event), so the attempt's text counts against the limits before it is sent; past
        the run's text_chunk limit it is not sent (nor counted)."""
        streamed = 0

        async def emit(text: str) -> None:
            nonlocal streamed
            size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
            if not self.storage.admit_chunk(node_id, size, streamed + size):
                return
            streamed += size
            await self.observer.text_chunk(node_id, text)

        return emit

    async def _call(self, func: Any, ctx: NodeContext, kwargs: dict[str, Any],
                    spec: NodeSpec) -> Encoded:
        """The node's outputs, checked as strict JSON and against the storage limits in
        one encoding by orjson (kept: the store writes that text)."""
        try:
            if spec.timeout is not None:
                with anyio.fail_after(spec.timeout):
                    result = await func(ctx, **kwargs)
            else:
                result = await func(ctx, **kwargs)
        except TimeoutError:
            raise NodeFailure(f"node timed out after {spec.timeout:g}s",
                              code="node_timeout") from None
        except (NodeFailure, WaitForSignal):
            raise
        except Exception as exc:  # a node's own bug fails only that node
            raise NodeFailure(f"{type(exc).__name__}: {exc}", code="node_error") from None
        try:
            if not isinstance(result, Mapping | None):
                raise TypeError(f"a node returns a dict, not {type(result).__name__}")
            # stored and served as strict JSON
            encoded = encode_outputs(dict(result or {}), self.storage.room())
        except (TypeError, ValueError, RecursionError) as exc:
            raise NodeFailure(f"outputs are not JSON: {exc}", code="invalid_outputs") from None
        # No await from here to the node's record: nothing else is admitted in between.
        self.storage.admit(spec.id, "outputs", encoded.size)
        return encoded
