"""RunService: the one thing API routers call to register, submit, read, wait and stop.

Routers translate their dialect into these calls; every rule about runs lives
here or below: which workflow version, which inputs, who may see a run, when a
run counts as accepted (its row committed), how long a caller may wait.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from flowrun import auth, definitions, ids
from flowrun.definitions import WorkflowDefinition
from flowrun.engine import secrets
from flowrun.engine.nodes import Registry
from flowrun.errors import (
    BadRequest,
    Conflict,
    DefinitionError,
    Forbidden,
    NotFound,
    QueueFull,
    RunNotFound,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    VersionNotFound,
    WorkflowNotFound,
)
from flowrun.events import Event, EventBus, follow
from flowrun.models import (
    RUN_TERMINAL,
    ApiKeyRecord,
    IdempotencyClaim,
    OnConflict,
    RunRecord,
    RunStatus,
    SecretRecord,
)
from flowrun.scheduler import Scheduler
from flowrun.settings import Settings
from flowrun.store import Store

logger = logging.getLogger(__name__)

_KEY_CACHE_S = 5.0


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

    def fingerprint(self) -> str:
        """Canonical JSON digest of what the run would do (not of how the answer is sent)."""
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


class RunService:
    """Submit / get / list / wait / stop runs, and manage workflows and keys."""

    def __init__(self, settings: Settings, store: Store, scheduler: Scheduler, bus: EventBus,
                 registry: Registry) -> None:
        self.settings = settings
        self.store = store
        self.scheduler = scheduler
        self.bus = bus
        self.registry = registry
        self._key_cache: dict[str, tuple[auth.Principal, float]] = {}
        self._streams: dict[str, int] = {}  # open event streams per API key id
        self.draining = anyio.Event()
        self.grace_over = anyio.Event()
        self.drain_started: float | None = None
        # Parsed definitions: a stored version never changes, and this process is the
        # only one registering workflows in its database, so the latest version of each
        # is known here without a read (updated by every register below).
        self._versions: dict[tuple[str, int], WorkflowDefinition] = {}
        self._latest: dict[str, int] = {}
        self._waits: set[anyio.CancelScope] = set()  # run-sync waits, ended by end_waits

    def end_waits(self) -> None:
        """The drain's grace is over: every run-sync wait answers now."""
        self.grace_over.set()
        for scope in self._waits:
            scope.cancel()

    def begin_drain(self) -> None:
        """Stop accepting runs (503) and starting queued ones; running runs go on."""
        if self.drain_started is None:
            self.drain_started = time.monotonic()
            self.scheduler.pause_dispatch()
            self.draining.set()
            logger.info("draining: no new runs are accepted")

    # --- auth -----------------------------------------------------------------------

    async def authenticate(self, secret: str | None) -> auth.Principal:
        """The principal for an API key; Unauthorized when it is missing or unknown."""
        if not self.settings.auth_enabled:
            return auth.ANONYMOUS
        if not secret:
            raise Unauthorized("missing API key (Authorization: Bearer <key>)")
        digest = auth.hash_key(secret)
        cached = self._key_cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        record = await self.store.find_api_key(digest)
        if record is None:
            raise Unauthorized("invalid API key")
        principal = auth.principal_for(record.id, record.scope, record.workflows)
        self._key_cache[digest] = (principal, now + _KEY_CACHE_S)
        return principal

    @staticmethod
    def require_admin(principal: auth.Principal, action: str) -> None:
        """Forbidden unless the key has the admin scope."""
        if not principal.is_admin:
            raise Forbidden(f"{action} needs an admin API key; this key's scope is "
                            f"{principal.scope.value!r}")

    @staticmethod
    def require_workflow(principal: auth.Principal, workflow: str) -> None:
        """Forbidden when the key is bound to workflows that do not include ``workflow``.

        Checked before the workflow is looked up, so a bound key cannot learn which
        other workflows exist.
        """
        if not principal.may_use(workflow):
            bound = ", ".join(sorted(principal.workflows or ()))
            raise Forbidden(f"this API key is bound to {bound}; it may not use {workflow!r}")

    async def create_key(self, principal: auth.Principal, *, name: str | None = None,
                         scope: auth.Scope = auth.Scope.RUN,
                         workflows: list[str] | None = None) -> tuple[ApiKeyRecord, str]:
        """A new API key (admin only): its record and its secret, shown once."""
        self.require_admin(principal, "creating API keys")
        return await create_api_key(self.store, name=name, scope=scope, workflows=workflows)

    async def list_keys(self, principal: auth.Principal) -> list[ApiKeyRecord]:
        self.require_admin(principal, "listing API keys")
        return await self.store.list_api_keys()

    async def put_secret(self, principal: auth.Principal, name: str, value: str,
                         allowed_urls: list[str]) -> bool:
        """Store a secret and the URL prefixes it may go to (admin only); True if new."""
        self.require_admin(principal, "managing secrets")
        check_secret(name, value, allowed_urls)
        created = await self.store.put_secret(name, value, allowed_urls)
        logger.info("secret %s: %s", name, "created" if created else "replaced")
        return created

    async def list_secrets(self, principal: auth.Principal) -> list[SecretRecord]:
        """Secrets by name (admin only); callers show them without their values."""
        self.require_admin(principal, "listing secrets")
        return await self.store.list_secrets()

    async def delete_secret(self, principal: auth.Principal, name: str) -> None:
        self.require_admin(principal, "deleting secrets")
        if not await self.store.delete_secret(name):
            raise NotFound(f"no secret {name!r}")

    async def revoke_key(self, principal: auth.Principal, key_id: str) -> None:
        """Revoke a key by id (admin only); it stops working at once."""
        self.require_admin(principal, "revoking API keys")
        if not await self.store.revoke_api_key(key_id):
            raise NotFound(f"no live API key {key_id!r}")
        self._key_cache.clear()

    # --- workflows ------------------------------------------------------------------

    async def register_workflow(self, principal: auth.Principal, data: Mapping[str, Any],
                                name: str | None = None) -> tuple[int, bool]:
        """Validate and store a definition (admin only); (version, whether it is new)."""
        self.require_admin(principal, "registering workflows")
        if name is not None:
            if not isinstance(data, Mapping):
                raise DefinitionError("a workflow definition must be a JSON object")
            data = {**data}
            data.setdefault("name", name)
            if data["name"] != name:
                raise DefinitionError(f"name {data['name']!r} does not match the URL ({name!r})",
                                      errors=[{"field": "name", "message": "does not match"}])
        definition = definitions.parse_definition(data, source=name or "definition",
                                                  registry=self.registry)
        version, created = await self.store.put_workflow(definition.name, definition.to_json())
        self._remember(definition.name, version, None)
        if created:
            logger.info("workflow %s: registered version %d", definition.name, version)
        return version, created

    async def load_workflows(self, path: Path) -> list[tuple[str, int]]:
        """Register every workflow file under ``path`` (a new version only when changed)."""
        loaded = []
        found = await anyio.to_thread.run_sync(
            functools.partial(definitions.load_path, path, registry=self.registry))
        for definition in found:
            version, _ = await self.store.put_workflow(definition.name, definition.to_json())
            self._remember(definition.name, version, None)
            loaded.append((definition.name, version))
        return loaded

    async def get_workflow(self, name: str,
                           version: int | None = None) -> tuple[int, WorkflowDefinition]:
        if version is not None and not 1 <= version <= 2**31:
            raise VersionNotFound(f"workflow {name!r} has no version {version}",
                                  errors=[{"field": "version", "message": "unknown version"}])
        wanted = self._latest.get(name) if version is None else version
        if wanted is not None and (name, wanted) in self._versions:
            return wanted, self._versions[(name, wanted)]
        found = await self.store.get_workflow(name, version)
        if found is None:
            if version is not None and await self.store.workflow_exists(name):
                raise VersionNotFound(f"workflow {name!r} has no version {version}",
                                      errors=[{"field": "version", "message": "unknown version"}])
            raise WorkflowNotFound(f"workflow {name!r} is not registered")
        definition = WorkflowDefinition.model_validate(found[1])
        self._remember(name, found[0], definition, latest=version is None)
        return found[0], definition

    def _remember(self, name: str, version: int, definition: WorkflowDefinition | None, *,
                  latest: bool = True) -> None:
        """Note a stored version (and its parsed definition, when known)."""
        if latest and version > self._latest.get(name, 0):
            self._latest[name] = version
        if definition is not None:
            if len(self._versions) >= 4096:
                self._versions.clear()
            self._versions[(name, version)] = definition

    async def resolve_workflow(self, principal: auth.Principal, ref: str) -> str:
        """A registered workflow's name, from its name or its number (the id the jobs and
        Langflow APIs show); WorkflowNotFound when neither names one."""
        number = ids.number_of(ref)
        name = await self.store.workflow_by_number(number) if number is not None else None
        name = name or ref
        self.require_workflow(principal, name)
        await self.get_workflow(name)
        return name

    async def workflow_number(self, name: str) -> int | None:
        """A workflow's number (its id in the jobs API), None when it is not registered."""
        return await self.store.workflow_number(name)

    async def read_workflow(self, principal: auth.Principal, name: str,
                            version: int | None = None) -> tuple[int, WorkflowDefinition]:
        """A definition as a caller may see it (bound keys: their workflows only)."""
        self.require_workflow(principal, name)
        return await self.get_workflow(name, version)

    async def list_workflows(self, principal: auth.Principal
                             ) -> list[tuple[str, int, WorkflowDefinition]]:
        """The workflows a caller may use, each at its latest version."""
        return [(name, version, WorkflowDefinition.model_validate(data))
                for name, version, data in await self.store.list_workflows()
                if principal.may_use(name)]

    # --- runs -----------------------------------------------------------------------

    async def submit(self, principal: auth.Principal, request: RunRequest) -> Submission:
        """Validate and durably accept a run; returns once its row is committed.

        With an idempotency key that already names a run, that run is returned
        (``created`` False) instead, or the key's strategy raises a conflict.
        """
        if self.drain_started is not None and request.parent_run_id is None:
            # (a child run is part of a run that is finishing: it may still start)
            raise Unavailable("flowrun is shutting down; retry shortly",
                              headers={"Retry-After": "5"})
        self.require_workflow(principal, request.workflow)
        version, definition = await self.get_workflow(request.workflow, request.version)
        graph = None
        if request.nodes is not None or request.edges is not None:
            definition = definitions.with_graph(definition, nodes=request.nodes,
                                                edges=request.edges, registry=self.registry)
            graph = definition.to_json()
        inputs, dotted = split_dotted_inputs(definition, request.inputs)
        overrides = merge_overrides(request.overrides, dotted)
        if overrides:
            definitions.with_graph(definition, overrides=overrides, registry=self.registry)
        inputs = definitions.check_inputs(definition, inputs)
        if not 0 <= request.priority <= 99:
            raise BadRequest("priority must be between 0 and 99",
                             errors=[{"field": "priority", "message": "must be 0-99"}])
        claim = None
        if request.idempotency_key is not None:
            claim = IdempotencyClaim(principal.key_id or "", definition.name,
                                     request.idempotency_key, request.fingerprint(),
                                     request.on_conflict)
        elif not self.scheduler.has_room():
            raise QueueFull(f"{self.scheduler.queued} runs are queued; retry later",
                            headers={"Retry-After": "1"})
        run = RunRecord(
            id=ids.new_id(), workflow=definition.name, version=version,
            status=RunStatus.QUEUED, inputs=inputs, created_at=time.time(),
            priority=request.priority, correlation_id=request.correlation_id,
            idempotency_key=request.idempotency_key,
            user=request.user, trace_id=request.trace_id or ids.new_hex(),
            api_key_id=principal.key_id, overrides=overrides, graph=graph,
            parent_run_id=request.parent_run_id, depth=request.depth,
            root_run_id=request.root_run_id)
        handle = self.scheduler.prepare(run)
        try:
            # Shielded: the write commits whether or not the caller is cancelled meanwhile
            # (a parent stopped while it starts a child), so the run must reach the queue.
            with anyio.CancelScope(shield=True):
                run_id, created = await self.store.accept_run(run, claim,
                                                              self.scheduler.has_room)
        except BaseException:
            self.scheduler.discard(handle)
            raise
        if not created:
            self.scheduler.discard(handle)
            existing = await self.store.get_run(run_id)
            assert existing is not None  # committed before the key pointed to it
            return Submission(existing, created=False)
        handle.fresh = True
        self.scheduler.enqueue(handle)
        self.scheduler.runner.metrics.runs_accepted.labels(run.workflow).inc()
        logger.info("run %s: queued %s v%d (priority %d)", run.id, run.workflow, version,
                    run.priority)
        return Submission(run, created=True)

    def sync_timeout(self, requested_s: float | None) -> float:
        """How long a run-sync waits: what the caller asked (capped), else the default."""
        if requested_s is None:
            return self.settings.run_sync_default_timeout_s
        return min(requested_s, self.settings.run_sync_max_timeout_s)

    async def run_sync(self, principal: auth.Principal, request: RunRequest,
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

    async def get_run(self, principal: auth.Principal, run_id: str) -> RunRecord:
        """A run with its nodes; RunNotFound for unknown ids and other keys' runs."""
        run = await self.store.get_run(run_id)
        if run is None or not principal.owns(run.api_key_id):
            raise RunNotFound(f"run {run_id!r} not found")
        return run

    async def get_run_by_number(self, principal: auth.Principal, number: int) -> RunRecord:
        """A run by its number (the jobs API's job id); RunNotFound as ``get_run``."""
        run_id = await self.store.run_id_by_number(number)
        if run_id is None:
            raise RunNotFound(f"run number {number} not found")
        return await self.get_run(principal, run_id)

    async def list_runs(self, principal: auth.Principal, workflow: str, *,
                        status: str | None = None, correlation_id: str | None = None,
                        limit: int = 20, cursor: str | None = None
                        ) -> tuple[list[RunRecord], str | None]:
        """Runs of a workflow made by this key (any key's for an admin), newest first, and
        the next page's cursor."""
        self.require_workflow(principal, workflow)
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

    async def wait(self, principal: auth.Principal, run_id: str,
                   within_s: float) -> RunRecord:
        """The run once it is terminal, or as it is when ``within_s`` seconds pass."""
        handle = self.scheduler.get(run_id)
        if handle is not None and not self.grace_over.is_set():
            with anyio.move_on_after(within_s) as scope:
                self._waits.add(scope)  # cancelled by end_waits when the grace is over
                try:
                    await handle.done.wait()
                finally:
                    self._waits.discard(scope)
        run = await self.get_run(principal, run_id)
        if run.status not in RUN_TERMINAL and self.shutting_down:
            raise Unavailable(f"flowrun is shutting down; run {run_id} resumes when it is back",
                              headers={"Retry-After": "5"})
        return run

    async def stop(self, principal: auth.Principal, run_id: str,
                   reason: str | None = None) -> RunRecord:
        """Stop a queued or running run and return it once stopped; finished runs as they are."""
        run = await self.get_run(principal, run_id)
        if run.status in RUN_TERMINAL:
            return run
        handle = self.scheduler.get(run_id)
        if handle is None:
            return run
        self.scheduler.stop(handle, reason)
        with anyio.move_on_after(self.settings.stop_wait_s):
            await handle.done.wait()
        return await self.get_run(principal, run_id)

    @property
    def shutting_down(self) -> bool:
        return self.drain_started is not None

    async def wait_for_runs(self, grace_s: float) -> bool:
        """During a drain, wait up to ``grace_s`` (from the drain's start) for running runs."""
        started = self.drain_started or time.monotonic()
        with anyio.move_on_after(max(0.0, started + grace_s - time.monotonic())):
            await self.scheduler.idle()
            return True
        return False

    async def pause(self, principal: auth.Principal, run_id: str) -> RunRecord:
        """Hold a live run before its next node starts; ``Conflict`` for a finished run."""
        run = await self.get_run(principal, run_id)
        if run.status in RUN_TERMINAL:
            raise Conflict(f"run {run_id} is {run.status.value}; only a live run can pause")
        handle = self.scheduler.get(run_id)
        if run.status is not RunStatus.PAUSED and handle is not None:
            handle.pause()
            handle.run.status = RunStatus.PAUSED
            await self.store.set_status(run_id, RunStatus.PAUSED,
                                        only_from=(RunStatus.QUEUED, RunStatus.RUNNING))
        return await self.get_run(principal, run_id)

    async def resume(self, principal: auth.Principal, run_id: str) -> RunRecord:
        """Let a paused run go on; ``Conflict`` when it is not paused."""
        run = await self.get_run(principal, run_id)
        if run.status is not RunStatus.PAUSED:
            raise Conflict(f"run {run_id} is {run.status.value}, not paused")
        handle = self.scheduler.get(run_id)
        status = RunStatus.RUNNING if run.started_at is not None else RunStatus.QUEUED
        await self.store.set_status(run_id, status, only_from=(RunStatus.PAUSED,))
        if handle is not None:
            handle.run.status = status
            handle.resume()
        return await self.get_run(principal, run_id)

    async def rerun(self, principal: auth.Principal, run_id: str, *, from_failure: bool
                    ) -> RunRecord:
        """Run a finished run again under the same id: from scratch (restart), or from
        its failed nodes keeping the succeeded ones' outputs (retry)."""
        run = await self.get_run(principal, run_id)
        if run.status not in RUN_TERMINAL:
            raise Conflict(f"run {run_id} is still {run.status.value}")
        if from_failure and run.status is RunStatus.SUCCEEDED:
            raise Conflict(f"run {run_id} succeeded; there is nothing to retry")
        if self.drain_started is not None:
            raise Unavailable("flowrun is shutting down; retry shortly",
                              headers={"Retry-After": "5"})
        await self.store.reset_run(run_id, keep_succeeded=from_failure)
        fresh = await self.store.get_run(run_id, with_nodes=False)
        assert fresh is not None
        self.scheduler.enqueue(self.scheduler.prepare(fresh))
        logger.info("run %s: %s", run_id, "retried" if from_failure else "restarted")
        return await self.get_run(principal, run_id)

    async def resume_unfinished(self) -> int:
        """Re-queue queued runs and resume running (and paused) ones after a restart."""
        runs = await self.store.unfinished_runs()
        unfinished = {run.id for run in runs}
        for run in runs:
            handle = self.scheduler.prepare(run)
            handle.paused = run.status is RunStatus.PAUSED
            if run.parent_run_id is not None and run.parent_run_id not in unfinished:
                # Its parent ended (or is gone) while this child was left unfinished:
                # nothing waits for it, so it stops rather than runs on under a
                # finished parent.
                handle.stop_requested = True
                handle.stop_reason = f"its parent run {run.parent_run_id} has ended"
            self.scheduler.enqueue(handle)
        if runs:
            logger.info("resuming %d unfinished runs", len(runs))
        return len(runs)

    async def definition_of(self, run: RunRecord) -> WorkflowDefinition:
        """The graph a run executes (its override, or its stored version)."""
        return await self.scheduler.runner.definition_for(run)

    def ensure_stream_room(self, principal: auth.Principal) -> None:
        """TooManyRequests when the key holds its maximum of open event streams.

        Streaming starts call it before they submit, so a refused stream starts no run.
        """
        if self._streams.get(principal.key_id or "", 0) >= self.settings.max_streams_per_key:
            raise TooManyRequests(f"this API key already follows "
                                  f"{self.settings.max_streams_per_key} event streams; "
                                  f"close one first", headers={"Retry-After": "1"})

    def follow(self, principal: auth.Principal, run_id: str,
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

        async def counted() -> AsyncGenerator[Event, None]:
            self.store.hurry()  # the run's lingering writes: commit (and publish) them now
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
        return {"status": "draining" if self.shutting_down else "ok",
                "queued": self.scheduler.queued,
                "running": self.scheduler.running,
                "subscribers": self.bus.subscriber_count(),
                "tasks": len(asyncio.all_tasks())}


def split_dotted_inputs(definition: WorkflowDefinition, inputs: Mapping[str, Any]
                        ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Input keys that name a node become per-node param overrides (Langflow's tweaks
    sent as inputs): ``"node_id.param": value`` sets one param, ``"node_id": {...}``
    several.

    A key counts as one only when it is not a declared input and names a node of
    the graph; anything else stays an input (and is checked as one).
    """
    node_ids = {n.id for n in definition.nodes}
    plain: dict[str, Any] = {}
    dotted: dict[str, dict[str, Any]] = {}
    for key, value in inputs.items():
        node_id, dot, param = key.partition(".")
        if key in definition.inputs or node_id not in node_ids:
            plain[key] = value
        elif dot and param:
            dotted.setdefault(node_id, {})[param] = value
        elif not dot and isinstance(value, Mapping):
            dotted.setdefault(node_id, {}).update(value)
        else:
            plain[key] = value
    return plain, dotted


def merge_overrides(*layers: Mapping[str, Mapping[str, Any]] | None
                    ) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for node_id, params in (layer or {}).items():
            merged.setdefault(node_id, {}).update(params)
    return merged


class ServiceChildRuns:
    """The ``workflow`` node's child runs, made through the RunService.

    Child runs start beyond ``max_concurrent_runs`` (their parent holds a slot
    while it waits), so they are bounded here instead: at most
    ``max_child_depth`` levels below a root run, and at most
    ``max_child_runs_per_root`` being waited on at once in one root's tree.
    """

    def __init__(self, service: RunService) -> None:
        self.service = service
        self._live: dict[str, set[object]] = {}  # root run id -> live children (or slots)
        self._root_of: dict[str, str] = {}

    async def start(self, parent_run_id: str, key: str, workflow: str, version: int | None,
                    inputs: dict[str, Any]) -> str:
        settings = self.service.settings
        principal, parent = await owner_of(self.service, parent_run_id)
        depth = parent.depth + 1
        if depth > settings.max_child_depth:
            raise BadRequest(f"child runs nest at most {settings.max_child_depth} levels "
                             f"deep; this one would be level {depth}")
        root = parent.root_run_id or parent.id
        live = self._live.setdefault(root, set())
        if len(live) >= settings.max_child_runs_per_root:
            raise TooManyRequests(f"root run {root} already has "
                                  f"{settings.max_child_runs_per_root} child runs going")
        slot = object()
        live.add(slot)  # held across the submit, so concurrent starts count too
        try:
            submission = await self.service.submit(principal, RunRequest(
                workflow=workflow, inputs=inputs, version=version, priority=parent.priority,
                correlation_id=parent.correlation_id, user=parent.user,
                trace_id=parent.trace_id, idempotency_key=f"child:{parent_run_id}:{key}",
                parent_run_id=parent_run_id, depth=depth, root_run_id=root))
        finally:
            self._release(root, slot)
        child = submission.run.id
        self._live.setdefault(root, set()).add(child)
        self._root_of[child] = root
        return child

    def _release(self, root: str, member: object) -> None:
        live = self._live.get(root)
        if live is not None:
            live.discard(member)
            if not live:
                del self._live[root]

    async def wait(self, run_id: str) -> tuple[str, dict[str, Any] | None,
                                               dict[str, Any] | None]:
        try:
            handle = self.service.scheduler.get(run_id)
            if handle is not None:
                await handle.done.wait()
                if handle.outcome is not None:  # not the store: its write may be pending
                    outcome = handle.outcome
                    return outcome.status.value, outcome.outputs, outcome.error
            run = await self.service.store.get_run(run_id, with_nodes=False)
        finally:
            root = self._root_of.pop(run_id, None)
            if root is not None:
                self._release(root, run_id)
        if run is None:
            raise RunNotFound(f"child run {run_id!r} vanished")
        return run.status.value, run.outputs, run.error

    async def stop(self, run_id: str) -> None:
        run = await self.service.store.get_run(run_id, with_nodes=False)
        if run is not None:
            await self.service.stop(auth.Principal(run.api_key_id), run_id)


class ServiceWorkflows:
    """Registered workflow definitions for the ``map`` node."""

    def __init__(self, service: RunService) -> None:
        self.service = service

    async def load(self, name: str, version: int | None, *,
                   run_id: str | None = None) -> tuple[int, WorkflowDefinition]:
        if run_id is not None:
            principal, _ = await owner_of(self.service, run_id)
            self.service.require_workflow(principal, name)
        return await self.service.get_workflow(name, version)


async def owner_of(service: RunService, run_id: str) -> tuple[auth.Principal, RunRecord]:
    """The principal a run's nested work (child runs, map workflows) acts as.

    It is the run's key with its binding. A run of a stored definition (no graph
    or param overrides) may call any workflow that definition names: an admin wrote
    it. A run whose graph or params the caller changed is held to the key's binding.
    """
    run = await service.store.get_run(run_id, with_nodes=False)
    if run is None:
        raise RunNotFound(f"run {run_id!r} not found")
    workflows = None
    if run.graph is not None or run.overrides:
        if run.api_key_id is not None:
            key = await service.store.get_api_key(run.api_key_id)
            workflows = frozenset(key.workflows) if key is not None and key.workflows \
                else None
    return auth.Principal(run.api_key_id, auth.Scope.RUN, workflows), run


def check_secret(name: str, value: str, allowed_urls: list[str]) -> None:
    """BadRequest naming what is wrong with a secret before it is stored."""
    errors = []
    if not re.match(secrets.NAME_PATTERN, name):
        errors.append({"field": "name", "message": "a secret name is letters, digits and _ "
                                                   "(not first), at most 64"})
    if not value or len(value) > 65536:
        errors.append({"field": "value", "message": "must be 1-65536 characters"})
    if not allowed_urls or len(allowed_urls) > 32:
        errors.append({"field": "allowed_urls",
                       "message": "name 1-32 URL prefixes the secret may be sent to"})
    for raw in allowed_urls:
        problem = secrets.check_prefix(raw)
        if problem:
            errors.append({"field": "allowed_urls", "message": problem})
    if errors:
        raise BadRequest("; ".join(e["message"] for e in errors), errors=errors)


class StoreSecrets:
    """Secret values for nodes, read from the store when a request needs them."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, name: str) -> SecretRecord | None:
        return await self.store.get_secret(name)


async def create_api_key(store: Store, *, name: str | None, scope: auth.Scope,
                         workflows: list[str] | None) -> tuple[ApiKeyRecord, str]:
    """Store a new key; (its record, its secret). Admin keys are never bound."""
    if scope is auth.Scope.ADMIN and workflows:
        raise BadRequest("an admin key cannot be bound to workflows; use --scope run",
                         errors=[{"field": "workflows", "message": "admin keys are unbound"}])
    key_id, secret, prefix, digest = auth.new_key()
    record = await store.add_api_key(key_id, prefix, digest, name=name, scope=scope.value,
                                     workflows=workflows)
    return record, secret


def require_available(service: RunService | None) -> RunService:
    if service is None:
        raise Unavailable("flowrun is not started", headers={"Retry-After": "1"})
    return service
