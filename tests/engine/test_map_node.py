"""The map node: order, bounded concurrency, iteration events, item failures, workflows."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from flowrun.engine.executor import Executor, RunOutcome
from flowrun.engine.node_services import NodeServices
from flowrun.engine.nodes import NodeContext, registry
from flowrun.errors import DefinitionError, NodeFailure, WorkflowNotFound
from flowrun.language.definitions import WorkflowDefinition, parse_definition
from flowrun.records import NodeRecord, RunStatus
from tests.imports import modules_after

REG = registry.copy()
ACTIVE = {"now": 0, "max": 0}


async def track(ctx: NodeContext, *, value: Any) -> dict[str, Any]:
    ACTIVE["now"] += 1
    ACTIVE["max"] = max(ACTIVE["max"], ACTIVE["now"])
    try:
        await anyio.sleep(0.002)
        if value == "bad":
            raise NodeFailure("bad item")
        return {"doubled": value * 2}
    finally:
        ACTIVE["now"] -= 1


REG.register("track", track)


class Events:
    def __init__(self) -> None:
        self.iterations: list[tuple[str, str, int]] = []

    async def node_started(self, node: NodeRecord, predecessor: str | None) -> None: ...
    async def node_retry(self, node: NodeRecord, error: dict[str, Any]) -> None: ...
    async def node_finished(self, node: NodeRecord) -> None: ...
    async def node_skipped(self, node: NodeRecord) -> None: ...
    async def node_waiting(self, node: NodeRecord) -> None: ...
    async def text_chunk(self, node_id: str, text: str) -> None: ...

    async def iteration_event(self, name: str, node: NodeRecord, predecessor: str | None,
                              iteration_id: str, index: int) -> None:
        self.iterations.append((name, iteration_id, index))


def mapping(items: Any, **extra: Any) -> WorkflowDefinition:
    node = {"id": "each", "type": "map", "items": items, "concurrency": 8,
            "nodes": [{"id": "t", "type": "track", "value": "{{ item }}"}],
            "output": "{{ nodes.t.doubled }}", **extra}
    return parse_definition({"name": "m", "inputs": {"xs": {"type": "array"}},
                             "nodes": [node]}, registry=REG)


async def run(definition: WorkflowDefinition, inputs: dict[str, Any], observer: Any = None,
              services: NodeServices | None = None) -> RunOutcome:
    services = services or NodeServices(registry=REG)
    return await Executor(definition, run_id="r", inputs=inputs, registry=REG,
                          services=services, observer=observer).execute()


async def test_thousand_items_keep_order_and_never_exceed_concurrency() -> None:
    ACTIVE.update(now=0, max=0)
    events = Events()
    out = await run(mapping("{{ inputs.xs }}"), {"xs": list(range(1000))}, events)
    assert out.status is RunStatus.SUCCEEDED
    assert out.outputs == {"each": {"results": [i * 2 for i in range(1000)]}}
    assert ACTIVE["max"] == 8
    started = sorted(i for name, _, i in events.iterations if name == "node_started")
    assert started == list(range(1000))
    assert {it for _, it, _ in events.iterations} == {"each"}


@pytest.mark.parametrize(("on_error", "expected"), [
    ("continue", {"error": {"code": "node_failed", "message": "bad item", "node_id": "t"}}),
    ("default", {"doubled": 0}),
])
async def test_a_failing_item_follows_on_error(on_error: str, expected: Any) -> None:
    definition = mapping([1, "bad", 3], on_error=on_error, default={"doubled": 0})
    out = await run(definition, {})
    assert out.status is RunStatus.SUCCEEDED and out.outputs is not None
    assert out.outputs["each"]["results"] == [2, expected, 6]


async def test_a_failing_item_fails_the_map_by_default() -> None:
    out = await run(mapping([1, "bad", 3]), {})
    assert out.status is RunStatus.FAILED and out.error is not None
    assert out.error["code"] == "map_item_failed" and "item 1 failed" in out.error["message"]


class Loader:
    def __init__(self, definition: WorkflowDefinition) -> None:
        self.definition = definition

    async def load(self, name: str, version: int | None, *,
                   run_id: str | None = None) -> tuple[int, WorkflowDefinition]:
        if name != self.definition.name:
            raise WorkflowNotFound(f"workflow {name!r} is not registered")
        return 1, self.definition


async def test_map_over_a_registered_workflow() -> None:
    child = parse_definition({"name": "greet", "inputs": {"who": {"type": "string",
                                                                  "required": True}},
                              "nodes": [{"id": "t", "type": "template",
                                         "template": "hi {{ inputs.who }}"}]}, registry=REG)
    services = NodeServices(registry=REG, workflows=Loader(child))
    parent = parse_definition({"name": "p", "nodes": [
        {"id": "each", "type": "map", "items": ["a", "b"], "workflow": "greet",
         "inputs": {"who": "{{ item }}{{ index }}"}}]}, registry=REG)
    out = await run(parent, {}, services=services)
    assert out.outputs == {"each": {"results": [{"t": {"text": "hi a0"}},
                                                {"t": {"text": "hi b1"}}]}}
    missing = parse_definition({"name": "p", "nodes": [
        {"id": "each", "type": "map", "items": [1], "workflow": "nope"}]}, registry=REG)
    failed = await run(missing, {}, services=services)
    assert failed.error is not None
    assert failed.error["code"] == "map_error" and "nope" in failed.error["message"]


def test_definition_checks_of_a_map() -> None:
    with pytest.raises(DefinitionError, match="map needs either workflow or nodes"):
        parse_definition({"name": "p", "nodes": [{"id": "m", "type": "map", "items": []}]},
                         registry=registry)
    with pytest.raises(DefinitionError,
                       match="node 'm': param 'nodes': inline graph: node 'x': unknown"):
        parse_definition({"name": "p", "nodes": [{"id": "m", "type": "map", "items": [],
                                                  "nodes": [{"id": "x", "type": "nope"}]}]},
                         registry=registry)
    with pytest.raises(DefinitionError, match="node 'w': a wait node cannot run inside a map"):
        parse_definition({"name": "p", "nodes": [{"id": "m", "type": "map", "items": [],
                                                  "nodes": [{"id": "w", "type": "wait"}]}]},
                         registry=registry)


def test_node_types_load_without_the_executor() -> None:
    # map runs each item through NodeContext.run_graph, which the running executor provides.
    assert "flowrun.engine.executor" not in modules_after("import flowrun.engine.nodes")


async def test_a_sub_graph_needs_a_running_executor() -> None:
    ctx = NodeContext("r", "each", 1)
    with pytest.raises(NodeFailure) as info:
        await ctx.run_graph(mapping([1]), inputs={}, scope={}, observer=Events())
    assert info.value.code == "subgraph_unavailable"
