"""flowrun: a self-hosted workflow run server in one Python process."""

from __future__ import annotations

from flowrun.app import create_app, flowrun_lifespan
from flowrun.definitions import WorkflowDefinition, load_file, parse_definition
from flowrun.embedded import run_workflow
from flowrun.engine.executor import RunOutcome
from flowrun.engine.nodes import NodeContext, node
from flowrun.errors import FlowrunError, NodeFailure
from flowrun.models import NodeStatus, RunStatus
from flowrun.settings import Settings

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
