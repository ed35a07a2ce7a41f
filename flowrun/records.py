"""Run and node status vocabularies and the run record shared by every layer."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from flowrun.jsontext import Encoded


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"  # held before its next node starts (Conductor's pause)
    WAITING = "waiting"  # parked on a wait node's signal: no task, no slot, until woken
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    TIMED_OUT = "timed_out"


RUN_TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.STOPPED,
                          RunStatus.TIMED_OUT})


class OnConflict(StrEnum):
    """What to do when an idempotency key already names a run."""

    RETURN_EXISTING = "RETURN_EXISTING"
    FAIL = "FAIL"
    FAIL_ON_RUNNING = "FAIL_ON_RUNNING"


@dataclass(frozen=True)
class IdempotencyClaim:
    """An idempotency key on a run request: scope, key, request fingerprint, strategy."""

    scope: str  # the API key id ("" without auth)
    workflow: str
    key: str
    fingerprint: str
    on_conflict: OnConflict = OnConflict.RETURN_EXISTING


@dataclass(frozen=True)
class KeyHolder:
    """The run an idempotency key names now (live, unexpired): the facts a conflict
    strategy decides from."""

    run_id: str
    status: RunStatus
    fingerprint: str


class NodeStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    STOPPED = "stopped"
    WAITING = "waiting"  # a wait node whose signal has not come yet


def rfc3339(ts: float | None) -> str | None:
    """Render a unix timestamp as RFC 3339 UTC with milliseconds."""
    if ts is None:
        return None
    stamp = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class NodeRecord:
    """One node execution of a run, as stored and as shown."""

    run_id: str
    node_id: str
    type: str
    title: str
    index: int
    status: NodeStatus = NodeStatus.PENDING
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    attempts: int = 0
    branch: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    logs: list[str] = field(default_factory=list)
    process_data: dict[str, Any] = field(default_factory=dict)
    # Inputs and outputs as the executor encoded (and measured) them, for the store to
    # write as they are (see flowrun.jsontext); None: the store encodes them itself.
    encoded_inputs: Encoded | None = field(default=None, repr=False, compare=False)
    encoded_outputs: Encoded | None = field(default=None, repr=False, compare=False)

    @property
    def process(self) -> dict[str, Any] | None:
        """What the node did besides its outputs: its log lines and type-specific data."""
        data = dict(self.process_data)
        if self.logs:
            data["logs"] = self.logs
        return data or None

    @property
    def tokens(self) -> int:
        """Tokens the node reported using (an llm node's ``usage.total_tokens``), else 0."""
        usage = self.outputs.get("usage") if isinstance(self.outputs, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
            return int(usage["total_tokens"])
        return 0

    @property
    def elapsed_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round(self.finished_at - self.started_at, 6)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.node_id, "type": self.type, "title": self.title, "index": self.index,
            "status": self.status.value, "inputs": self.inputs, "outputs": self.outputs,
            "error": self.error, "attempts": self.attempts,
            "process_data": self.process,
            "started_at": rfc3339(self.started_at), "finished_at": rfc3339(self.finished_at),
            "elapsed_s": self.elapsed_s,
        }


@dataclass
class RunRecord:
    """A run as stored: who asked, what to run, and where it got to."""

    id: str
    workflow: str
    version: int
    status: RunStatus
    inputs: dict[str, Any]
    created_at: float
    priority: int = 0
    correlation_id: str | None = None
    idempotency_key: str | None = None
    user: str | None = None
    trace_id: str | None = None
    api_key_id: str | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    graph: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    steps: int = 0
    num: int = 0  # the store's row number: newest-first order, page cursors, a jobs API job id
    parent_run_id: str | None = None
    depth: int = 0  # 0 for a run started through the API, parent's + 1 for a child
    root_run_id: str | None = None  # the depth-0 run of a child's tree
    rerun_of: str | None = None  # the run this one re-ran from a node
    schedule_id: str | None = None  # the schedule that started it, at schedule_slot
    schedule_slot: float | None = None
    callback_url: str | None = None  # where its end is POSTed (see callbacks.py)
    source: str | None = None  # "hook": started by a signed delivery to its workflow's hook
    # the process (cluster.py's worker id) that runs it; None: any process may claim it
    # (and always with SQLite, where one process runs every run)
    owner: str | None = None
    nodes: list[NodeRecord] = field(default_factory=list)

    @property
    def awaited_by_parent(self) -> bool:
        """A child run its parent started and waits for: it runs in its parent's slot,
        beyond the concurrency caps. A child re-run by itself (restart, retry) is its
        own root (``root_run_id`` cleared): nobody waits for it, and the caps hold."""
        return self.parent_run_id is not None and self.root_run_id is not None

    @property
    def elapsed_s(self) -> float | None:
        if self.started_at is None:
            return None
        if self.finished_at is None:
            return None
        return round(self.finished_at - self.started_at, 6)

    def to_json(self, *, with_nodes: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id, "workflow": self.workflow, "version": self.version,
            "status": self.status.value, "inputs": self.inputs, "outputs": self.outputs,
            "error": self.error, "priority": self.priority,
            "correlation_id": self.correlation_id, "idempotency_key": self.idempotency_key,
            "user": self.user, "trace_id": self.trace_id,
            "created_at": rfc3339(self.created_at), "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at), "elapsed_s": self.elapsed_s,
            "steps": self.steps, "parent_run_id": self.parent_run_id,
            "rerun_of": self.rerun_of,
        }
        if self.schedule_id is not None:
            body["schedule"] = {"id": self.schedule_id, "slot": rfc3339(self.schedule_slot)}
        if self.source is not None:
            body["source"] = self.source
        if with_nodes:
            body["nodes"] = [n.to_json() for n in self.nodes]
            if self.graph is not None:  # sent with the run's request, for this run only
                body["graph"] = {"nodes": self.graph.get("nodes", []),
                                 "edges": self.graph.get("edges", [])}
        return body


@dataclass(frozen=True)
class ScheduleRecord:
    """A schedule as stored: when a workflow runs by itself, and the last slot it fired."""

    workflow: str
    id: str
    cron: str
    timezone: str
    inputs: dict[str, Any]
    catch_up: str  # skip | latest | all
    paused: bool
    source: str  # definition | api
    created_at: float
    last_slot: float | None = None
    spec: dict[str, Any] | None = None  # the definition's entry, for source definition

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "workflow": self.workflow, "cron": self.cron,
                "timezone": self.timezone, "inputs": self.inputs, "catch_up": self.catch_up,
                "paused": self.paused, "source": self.source,
                "last_slot": rfc3339(self.last_slot), "created_at": rfc3339(self.created_at)}


class CallbackState(StrEnum):
    """Where a run's completion callback is: waiting (for the run's end or the next
    attempt), answered with a 2xx, or given up on."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class CallbackAttempt:
    """One POST of a run's callback: the receiver's status, or why there was none."""

    attempt: int  # 1-based, as sent in Flowrun-Attempt
    at: float
    status_code: int | None
    error: str | None
    duration_ms: float

    def to_json(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "at": rfc3339(self.at),
                "status_code": self.status_code, "error": self.error,
                "duration_ms": round(self.duration_ms, 3)}


@dataclass(frozen=True)
class CallbackRecord:
    """A run's callback as stored: its URL, delivery state and every attempt so far."""

    run_id: str
    url: str
    delivery_id: str  # sent as Flowrun-Delivery, the same on every attempt
    state: CallbackState
    next_attempt_at: float | None
    attempts: list[CallbackAttempt] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "delivery_id": self.delivery_id, "state": self.state.value,
                "next_attempt_at": rfc3339(self.next_attempt_at),
                "attempts": [a.to_json() for a in self.attempts]}


@dataclass(frozen=True)
class DueCallback:
    """A callback whose run has ended and whose next attempt is due."""

    run_id: str
    url: str
    delivery_id: str
    attempts: int  # made so far
    finished_at: float
    api_key_id: str = ""  # the run's key ('' without one): each key gets its share
    next_attempt_at: float | None = None  # None: the first, due since the run ended

    @property
    def due_at(self) -> float:
        """Since when it has been due (who waited longest goes first among equals)."""
        return self.finished_at if self.next_attempt_at is None else self.next_attempt_at


@dataclass(frozen=True)
class HookRecord:
    """A workflow's inbound webhook: its signing secret, the mapping of a delivery's body
    to inputs (None: the body is the inputs), and its last accepted delivery."""

    workflow: str
    secret: str
    inputs: Any
    created_at: float
    rotated_at: float | None = None
    last_delivery_at: float | None = None
    last_run_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """What the API shows: never the secret."""
        last = None if self.last_delivery_at is None else \
            {"at": rfc3339(self.last_delivery_at), "run_id": self.last_run_id}
        return {"workflow": self.workflow, "path": f"/hooks/{self.workflow}",
                "inputs": self.inputs, "created_at": rfc3339(self.created_at),
                "rotated_at": rfc3339(self.rotated_at), "last_delivery": last}


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key as stored (never its secret): scope and workflow binding."""

    id: str
    prefix: str
    name: str | None
    scope: str
    workflows: list[str] | None
    created_at: float
    revoked_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "prefix": self.prefix, "name": self.name, "scope": self.scope,
                "workflows": self.workflows, "created_at": rfc3339(self.created_at),
                "revoked_at": rfc3339(self.revoked_at)}


@dataclass(frozen=True)
class SecretRecord:
    """A named secret: its value and the URL prefixes it may be sent to."""

    name: str
    value: str
    allowed_urls: list[str]
    created_at: float
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        """What the API shows: never the value."""
        return {"name": self.name, "allowed_urls": self.allowed_urls,
                "created_at": rfc3339(self.created_at), "updated_at": rfc3339(self.updated_at)}


TERMINAL_EVENT = "workflow_finished"  # the last event of every run


@dataclass(frozen=True)
class Event:
    """One event of a run: its sequence number, Dify-style name and payload."""

    run_id: str
    seq: int
    name: str
    data: dict[str, Any]
    created_at: float

    @property
    def terminal(self) -> bool:
        return self.name == TERMINAL_EVENT

    def to_json(self) -> dict[str, Any]:
        """The native envelope: Dify's fields (event, task_id, workflow_run_id, data) + seq."""
        return {"event": self.name, "run_id": self.run_id, "seq": self.seq,
                "task_id": self.run_id, "workflow_run_id": self.run_id,
                "created_at": int(self.created_at), "data": self.data}
