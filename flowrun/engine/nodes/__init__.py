"""Built-in node types (one module each) and the registry custom types join."""

from flowrun.engine.nodes import if_else, sleep, switch, template  # noqa: F401 - register
from flowrun.engine.nodes.registry import NodeContext, NodeType, Registry, node, registry

__all__ = ("NodeContext", "NodeType", "Registry", "node", "registry")
