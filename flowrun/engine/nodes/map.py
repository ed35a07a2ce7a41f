"""``map``: run a sub-graph (inline ``nodes``/``edges``, or a registered ``workflow``) per item.

Items run at most ``concurrency`` at a time, inside this node (no separate run
records); ``results`` keeps input order. Expressions in the sub-graph see
``item``, ``index``, the parent's ``inputs`` and ``parent.nodes``. Child node
events are reported with ``iteration_id`` (this node) and ``iteration_index``.
A failing item follows this node's ``on_error``: fail stops the map, continue
puts ``{"error": ...}`` in its place, default puts the node's ``default``.
Each item's result is measured as it comes (orjson, in C): results past what one
node may store stop the map, before its items' values, which may share one big
string many times, are ever encoded together.
Each item's graph runs through ``NodeContext.run_graph``, which the executor
provides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio
import pydantic

from flowrun.engine.node_services import NodeServices
from flowrun.engine.nodes.registry import NodeContext, registry
from flowrun.errors import DefinitionError, FlowrunError, NodeFailure, OutputTooLarge
from flowrun.jsontext import encode
from flowrun.language import expressions
from flowrun.language.checks import output_problems
from flowrun.language.definitions import (
    NodeTypes,
    WorkflowDefinition,
    check_inputs,
    parse_definition,
)
from flowrun.records import NodeRecord, RunStatus

if TYPE_CHECKING:
    from flowrun.engine.executor import RunObserver


@runtime_checkable
class IterationEvents(Protocol):
    """A run observer that also takes the node events inside map iterations (the
    runner's recorder does); other observers get only the map node's own events."""

    async def iteration_event(self, name: str, node: NodeRecord, predecessor: str | None,
                              iteration_id: str, index: int) -> None: ...


class IterationObserver:
    """Reports a child graph's node events to the parent run, tagged with the item index."""

    def __init__(self, parent: RunObserver | None, iteration_id: str, index: int) -> None:
        self.parent = parent
        self.iteration_id = iteration_id
        self.index = index

    async def _report(self, name: str, node: NodeRecord, predecessor: str | None) -> None:
        if isinstance(self.parent, IterationEvents):
            await self.parent.iteration_event(name, node, predecessor, self.iteration_id,
                                              self.index)

    async def node_started(self, node: NodeRecord, predecessor: str | None) -> None:
        await self._report("node_started", node, predecessor)

    async def node_retry(self, node: NodeRecord, error: dict[str, Any]) -> None:
        return None

    async def node_finished(self, node: NodeRecord) -> None:
        await self._report("node_finished", node, None)

    async def node_skipped(self, node: NodeRecord) -> None:
        return None

    async def node_waiting(self, node: NodeRecord) -> None:
        return None  # a sub-graph never parks: its executor refuses wait nodes

    async def text_chunk(self, node_id: str, text: str) -> None:
        if self.parent is not None:
            await self.parent.text_chunk(node_id, text)


async def map_items(ctx: NodeContext, *, items: list[Any],
                    concurrency: pydantic.PositiveInt = 1, workflow: str | None = None,
                    version: int | None = None, inputs: dict[str, Any] | None = None,
                    nodes: list[Any] | None = None, edges: list[Any] | None = None,
                    output: Any = None) -> dict[str, Any]:
    services = ctx.services if ctx.services is not None else NodeServices()
    parent = ctx.expression_context
    base = {"parent": {"inputs": parent.get("inputs", {}), "nodes": parent.get("nodes", {})}}
    definition = await _item_graph(ctx, services, workflow, version, nodes, edges)
    results: list[Any] = [None] * len(items)
    if concurrency > services.max_map_concurrency:
        ctx.log(f"concurrency {concurrency} is capped at the server's maximum of "
                f"{services.max_map_concurrency}")
        concurrency = services.max_map_concurrency
    limiter = anyio.CapacityLimiter(concurrency)
    failures: list[NodeFailure] = []
    made = 2  # bytes of the results as JSON: [] and an item and its comma at a time

    def keep(index: int, result: Any) -> None:
        nonlocal made
        results[index] = result
        try:
            made += encode(result).size + 1
        except (TypeError, ValueError, RecursionError) as exc:
            failures.append(NodeFailure(f"item {index}: outputs are not JSON: {exc}",
                                        code="invalid_outputs"))
            tg.cancel_scope.cancel()
            return
        limit = services.storage.max_node_bytes
        if made > limit:
            failures.append(OutputTooLarge(
                f"node {ctx.node_id!r} made more than {made:,} bytes of outputs (as JSON) "
                f"by item {index}; a node may store at most {limit:,} bytes "
                "(FLOWRUN_MAX_NODE_OUTPUT_BYTES)"))
            tg.cancel_scope.cancel()

    async def one(index: int, item: Any) -> None:
        async with limiter:
            scope = {**base, "item": item, "index": index}
            if workflow is not None:
                raw = inputs if inputs is not None else {"item": "{{ item }}"}
                try:
                    child_inputs = check_inputs(definition, expressions.evaluate(
                        raw, {**scope, "inputs": parent.get("inputs", {})}))
                except FlowrunError as exc:
                    await fail(index, {"code": exc.code, "message": exc.message})
                    return
            else:
                child_inputs = dict(parent.get("inputs", {}))
            run = await ctx.run_graph(
                definition, inputs=child_inputs, scope=scope, services=services,
                observer=IterationObserver(ctx.observer, ctx.node_id, index))
            outcome = run.outcome
            if outcome.status is not RunStatus.SUCCEEDED:
                await fail(index, outcome.error or {"message": outcome.status.value})
                return
            keep(index, expressions.evaluate(output, run.context)
                 if output is not None else outcome.outputs)

    async def fail(index: int, error: Mapping[str, Any]) -> None:
        message = f"item {index} failed: {error.get('message')}"
        if ctx.on_error == "fail":
            # Raised after the task group, not inside it (where it would be grouped).
            # (past a storage limit, the map is too: a retry would make as much again)
            failures.append(OutputTooLarge(message) if error.get("code") == OutputTooLarge.code
                            else NodeFailure(message, code="map_item_failed"))
            tg.cancel_scope.cancel()
            return
        ctx.log(message)
        keep(index, {"error": dict(error)} if ctx.on_error == "continue"
             else dict(ctx.default or {}))

    async with anyio.create_task_group() as tg:
        for index, item in enumerate(items):
            tg.start_soon(one, index, item)
    if failures:
        raise failures[0]
    return {"results": results}


async def _item_graph(ctx: NodeContext, services: NodeServices, workflow: str | None,
                      version: int | None, nodes: list[Any] | None,
                      edges: list[Any] | None) -> WorkflowDefinition:
    """The graph each item runs: a registered workflow's, or the node's inline one."""
    if workflow is None:
        return parse_definition({"name": "map", "nodes": nodes or [], "edges": edges or []},
                                source=f"map {ctx.node_id}", registry=services.registry)
    if services.workflows is None:
        raise NodeFailure("map over a workflow needs registered workflows (a server)",
                          code="map_error")
    try:
        _, definition = await services.workflows.load(workflow, version, run_id=ctx.run_id)
    except FlowrunError as exc:
        raise NodeFailure(f"map workflow {workflow!r}: {exc.message}",
                          code="map_error") from None
    return definition


def _check(params: Mapping[str, Any], node_types: NodeTypes) -> list[tuple[str | None, str]]:
    has_graph = params.get("nodes") is not None
    if has_graph == (params.get("workflow") is not None):
        return [(None, "map needs either workflow or nodes (not both)")]
    if not has_graph:
        return []
    try:
        graph = parse_definition({"name": "map", "nodes": params["nodes"],
                                  "edges": params.get("edges") or []}, source="map",
                                 registry=node_types)
    except DefinitionError as exc:
        return [("nodes", f"inline graph: {e['message']}") for e in exc.errors]
    waits = [n.id for n in graph.nodes if n.type == "wait"]
    if waits:  # an item's run is part of this node: nothing could wake it once parked
        return [("nodes", f"inline graph: node {node!r}: a wait node cannot run inside a "
                          "map (only a whole run can wait)") for node in waits]
    if params.get("output") is None:
        return []
    return [("output", problem) for problem in output_problems(params["output"], graph,
                                                                node_types)]


registry.register("map", map_items, raw_params=frozenset({"nodes", "edges", "inputs", "output"}),
                  check=_check, outputs={"results"})
