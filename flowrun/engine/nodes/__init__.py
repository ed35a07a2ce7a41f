"""Built-in node types (one module each) and the registry custom types join."""

from flowrun.engine.nodes import (  # noqa: F401 - importing registers them
    code,
    http,
    if_else,
    llm,
    map,
    sleep,
    switch,
    template,
    wait,
    workflow,
)
from flowrun.engine.nodes.registry import NodeContext, NodeType, Registry, node, registry

__all__ = ("NodeContext", "NodeType", "Registry", "node", "registry")
