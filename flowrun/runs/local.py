"""Runs without a server: ``await flowrun.run_workflow(definition, inputs)`` and
``flowrun run``.

Nothing is stored. Workflows are found as files in the definition's folder; a
``workflow`` node's child runs in-process, to completion, inside the parent's
node (no store, no run record).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from flowrun.engine.executor import Executor, RunObserver, RunOutcome
from flowrun.engine.node_services import NodeServices
from flowrun.engine.nodes import Registry
from flowrun.engine.nodes import registry as default_registry
from flowrun.errors import DefinitionError, WorkflowNotFound
from flowrun.language.definitions import (
    WorkflowDefinition,
    check_inputs,
    load_file,
    parse_definition,
    workflow_files,
)


class FolderWorkflows:
    """Workflow definitions from the files of one folder, by name (version 1 each)."""

    def __init__(self, folder: Path, registry: Registry) -> None:
        self.folder = folder
        self.registry = registry
        self._found: dict[str, WorkflowDefinition] | None = None

    async def load(self, name: str, version: int | None, *,
                   run_id: str | None = None) -> tuple[int, WorkflowDefinition]:
        if self._found is None:
            self._found = await anyio.to_thread.run_sync(self._read_folder)
        if name not in self._found:
            raise WorkflowNotFound(f"workflow {name!r} is not a file in {self.folder}")
        return 1, self._found[name]

    def _read_folder(self) -> dict[str, WorkflowDefinition]:
        found = {}
        for path in workflow_files(self.folder):
            try:
                definition = load_file(path, registry=self.registry)
            except DefinitionError:
                continue  # a broken sibling file does not hide the good ones
            found[definition.name] = definition
        return found


class InlineChildRuns:
    """Runs a ``workflow`` node's child inside the parent's process and task."""

    def __init__(self, workflows: FolderWorkflows, services: NodeServices) -> None:
        self.workflows = workflows
        self.services = services
        self._outcomes: dict[str, tuple[str, dict[str, Any] | None, dict[str, Any] | None]] = {}

    async def start(self, parent_run_id: str, key: str, workflow: str, version: int | None,
                    inputs: dict[str, Any]) -> str:
        _, definition = await self.workflows.load(workflow, version)
        run_id = str(uuid.uuid4())
        outcome = await Executor(definition, run_id=run_id,
                                 inputs=check_inputs(definition, inputs),
                                 registry=self.services.registry,
                                 services=self.services, suspendable=False).execute()
        self._outcomes[run_id] = (outcome.status.value, outcome.outputs, outcome.error)
        return run_id

    async def wait(self, run_id: str) -> tuple[str, dict[str, Any] | None,
                                               dict[str, Any] | None]:
        return self._outcomes.pop(run_id)

    async def stop(self, run_id: str) -> None:
        return None  # the child ran inside the parent's node; cancelling that cancelled it


def folder_services(folder: Path, registry: Registry) -> NodeServices:
    """Services for a run whose sibling workflow files can be called by name."""
    services = NodeServices(registry=registry)
    services.workflows = FolderWorkflows(folder, registry)
    services.child_runs = InlineChildRuns(services.workflows, services)
    return services


async def run_workflow(definition: WorkflowDefinition | Mapping[str, Any] | str | Path,
                       inputs: Mapping[str, Any] | None = None, *,
                       observer: RunObserver | None = None,
                       registry: Registry = default_registry,
                       folder: Path | None = None, run_id: str | None = None) -> RunOutcome:
    """Validate inputs and run a workflow to completion in this process; nothing is stored.

    The workflows that ``workflow`` and ``map`` nodes call by name are the files of
    ``folder``: by default the definition's own folder when it is given as a file
    (as with ``flowrun run``, which runs through here too).
    """
    if isinstance(definition, str | Path):
        path = Path(definition)
        definition = load_file(path, registry=registry)
        folder = path.parent if folder is None else folder
    elif not isinstance(definition, WorkflowDefinition):
        definition = parse_definition(definition, registry=registry)
    checked = check_inputs(definition, inputs or {})
    services = folder_services(folder, registry) if folder is not None else None
    # Nothing is stored, so nothing could wake a parked run: a wait node fails here.
    executor = Executor(definition, run_id=run_id or str(uuid.uuid4()), inputs=checked,
                        observer=observer, registry=registry, services=services,
                        suspendable=False)
    return await executor.execute()
