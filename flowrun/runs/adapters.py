"""The engine's view of a served instance: the ``workflow`` node's child runs and the
``map`` node's workflows go through the RunService, with the run owner's rights.

``flowrun/app.py`` wires these into the NodeServices of the runs it serves
(``flowrun/runs/local.py`` has the serverless counterparts).
"""

from __future__ import annotations

from typing import Any

from flowrun.errors import BadRequest, RunNotFound, TooManyRequests
from flowrun.language.definitions import WorkflowDefinition
from flowrun.records import RunRecord
from flowrun.runs import access
from flowrun.runs.catalog import WorkflowCatalog
from flowrun.runs.service import RunRequest, RunService


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
            # through the child's waits for signals, if it has wait nodes
            outcome = await self.service.settled(run_id)
            if outcome is not None:  # not the store: its write may be pending
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
            await self.service.stop(access.Principal(run.api_key_id), run_id)


class ServiceWorkflows:
    """Registered workflow definitions for the ``map`` node."""

    def __init__(self, service: RunService, catalog: WorkflowCatalog) -> None:
        self.service = service
        self.catalog = catalog

    async def load(self, name: str, version: int | None, *,
                   run_id: str | None = None) -> tuple[int, WorkflowDefinition]:
        if run_id is not None:
            principal, _ = await owner_of(self.service, run_id)
            access.require_workflow(principal, name)
        return await self.catalog.get(name, version)


async def owner_of(service: RunService, run_id: str) -> tuple[access.Principal, RunRecord]:
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
    return access.Principal(run.api_key_id, access.Scope.RUN, workflows), run
