"""flowrun: a self-hosted workflow run server in one Python process.

Importing ``flowrun`` (or any of its modules) loads no more than it needs: each
public name below is imported from its module on first use, so that, say,
``flowrun.language.definitions`` or the code worker never loads the server stack.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowrun.app import create_app, flowrun_lifespan
    from flowrun.engine.executor import RunOutcome
    from flowrun.engine.nodes import NodeContext, node
    from flowrun.errors import FlowrunError, NodeFailure
    from flowrun.language.definitions import NodeTypes, WorkflowDefinition
    from flowrun.records import NodeStatus, RunStatus
    from flowrun.runs.local import run_workflow
    from flowrun.settings import Settings

    __version__: str

__all__ = (
    "FlowrunError",
    "NodeContext",
    "NodeFailure",
    "NodeStatus",
    "RunOutcome",
    "RunStatus",
    "Settings",
    "WorkflowDefinition",
    "create_app",
    "flowrun_lifespan",
    "load_file",
    "node",
    "parse_definition",
    "run_workflow",
)

# Where each lazily imported public name lives.
_EXPORTS = {
    "FlowrunError": "flowrun.errors",
    "NodeContext": "flowrun.engine.nodes",
    "NodeFailure": "flowrun.errors",
    "NodeStatus": "flowrun.records",
    "RunOutcome": "flowrun.engine.executor",
    "RunStatus": "flowrun.records",
    "Settings": "flowrun.settings",
    "WorkflowDefinition": "flowrun.language.definitions",
    "create_app": "flowrun.app",
    "flowrun_lifespan": "flowrun.app",
    "node": "flowrun.engine.nodes",
    "run_workflow": "flowrun.runs.local",
}


def parse_definition(data: Mapping[str, Any], *, source: str = "definition",
                     registry: NodeTypes | None = None) -> WorkflowDefinition:
    """Validate a mapping as a workflow definition, against ``registry`` or else every
    registered node type (built-in, ``@flowrun.node``); DefinitionError names each fault."""
    from flowrun.language import definitions

    return definitions.parse_definition(data, source=source, registry=_node_types(registry))


def load_file(path: str | Path, *, registry: NodeTypes | None = None) -> WorkflowDefinition:
    """Load one .yaml/.yml/.json workflow file, checked like ``parse_definition``."""
    from flowrun.language import definitions

    return definitions.load_file(Path(path), registry=_node_types(registry))


def _node_types(registry: NodeTypes | None) -> NodeTypes:
    if registry is not None:
        return registry
    from flowrun.engine.nodes import registry as registered

    return registered


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flowrun")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'flowrun' has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "__version__"})
