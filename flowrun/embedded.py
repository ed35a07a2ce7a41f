"""In-process runs without a server: ``await flowrun.run_workflow(definition, inputs)``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowrun.definitions import WorkflowDefinition, check_inputs, load_file, parse_definition
from flowrun.engine.executor import Executor, RunObserver, RunOutcome
from flowrun.engine.nodes import Registry
from flowrun.engine.nodes import registry as default_registry


async def run_workflow(definition: WorkflowDefinition | Mapping[str, Any] | str | Path,
                       inputs: Mapping[str, Any] | None = None, *,
                       observer: RunObserver | None = None,
                       registry: Registry = default_registry) -> RunOutcome:
    """Validate inputs and run a workflow to completion in this process; nothing is stored."""
    if isinstance(definition, str | Path):
        definition = load_file(Path(definition), registry=registry)
    elif not isinstance(definition, WorkflowDefinition):
        definition = parse_definition(definition, registry=registry)
    checked = check_inputs(definition, inputs or {})
    executor = Executor(definition, run_id=str(uuid.uuid4()), inputs=checked,
                        observer=observer, registry=registry)
    return await executor.execute()
