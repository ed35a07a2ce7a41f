"""Pure questions about a run of a definition's graph: which run inputs are node
overrides (Langflow's tweaks sent as inputs), the overrides merged, a run's concurrency
key, what comes after a node (a re-run from it), and which nodes read the inputs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flowrun.errors import BadRequest
from flowrun.language import expressions
from flowrun.language.definitions import NodeSpec, WorkflowDefinition


def concurrency_of(definition: WorkflowDefinition, inputs: Mapping[str, Any]
                   ) -> tuple[str, int] | None:
    """(key, limit) for a run of ``definition`` with ``inputs``, scoped to the workflow;
    None when the workflow sets no limit. BadRequest when the key does not evaluate."""
    if definition.concurrency_key is None and definition.concurrency_limit is None:
        return None
    value: Any = ""
    if definition.concurrency_key is not None:
        try:
            value = expressions.evaluate(definition.concurrency_key, {"inputs": dict(inputs)})
        except Exception as exc:
            raise BadRequest(f"concurrency_key does not evaluate for these inputs: {exc}",
                             errors=[{"field": "concurrency_key", "message": str(exc)}]
                             ) from None
    key = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return f"{definition.name}\x00{key}", definition.concurrency_limit or 1


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


def reads_inputs(spec: NodeSpec) -> bool:
    """Whether a node's params or default may read the run's inputs (an expression
    naming ``inputs``; erring on the side of yes)."""
    text = json.dumps([spec.params, spec.default], default=str)
    return "inputs" in text and "{{" in text


def downstream(definition: WorkflowDefinition, node_id: str) -> set[str]:
    """``node_id`` and every node that comes after it along the edges."""
    after: dict[str, list[str]] = {}
    for edge in definition.edges:
        after.setdefault(edge.source, []).append(edge.target)
    found, pending = {node_id}, [node_id]
    while pending:
        for target in after.get(pending.pop(), ()):
            if target not in found:
                found.add(target)
                pending.append(target)
    return found


def merge_overrides(*layers: Mapping[str, Mapping[str, Any]] | None
                    ) -> dict[str, dict[str, Any]]:
    """Per-node param overrides, later layers winning param by param."""
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for node_id, params in (layer or {}).items():
            merged.setdefault(node_id, {}).update(params)
    return merged
