"""Storage limits: what one node and one run may store, and the node that crosses them."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from flowrun.engine.executor import Executor, RunOutcome
from flowrun.engine.node_services import NodeServices
from flowrun.engine.nodes import NodeContext, registry
from flowrun.engine.storage import RunStorage, StorageLimits
from flowrun.errors import OutputTooLarge
from flowrun.language.definitions import parse_definition
from flowrun.records import NodeRecord, NodeStatus, RunStatus

REG = registry.copy()
KIB = 1024
CALLS: list[str] = []


async def blob(ctx: NodeContext, *, size: int) -> dict[str, Any]:
    CALLS.append(ctx.node_id)
    return {"data": "x" * size}


async def talk(ctx: NodeContext, *, parts: int, size: int) -> dict[str, Any]:
    for _ in range(parts):
        await ctx.emit_text("y" * size)
    return {}


async def shared(ctx: NodeContext, *, size: int, times: int) -> dict[str, Any]:
    """One string, many references: cheap to hold, ``size * times`` bytes to write."""
    text = "z" * size
    return {"many": [text] * times}


async def not_finite(ctx: NodeContext) -> dict[str, Any]:
    return {"x": [1.0, math.nan]}


REG.register("blob", blob)
REG.register("talk", talk)
REG.register("shared", shared)
REG.register("not_finite", not_finite)


class Finished:
    """An observer that keeps the nodes as they finished."""

    def __init__(self) -> None:
        self.nodes: list[NodeRecord] = []

    async def node_started(self, node: NodeRecord, predecessor: str | None) -> None: ...
    async def node_retry(self, node: NodeRecord, error: dict[str, Any]) -> None: ...

    async def node_finished(self, node: NodeRecord) -> None:
        self.nodes.append(node)

    async def node_skipped(self, node: NodeRecord) -> None: ...
    async def node_waiting(self, node: NodeRecord) -> None: ...
    async def text_chunk(self, node_id: str, text: str) -> None: ...


async def run(nodes: list[dict[str, Any]], *, node_kib: int = 64, run_kib: int = 256,
              edges: list[dict[str, Any]] | None = None, used: int = 0,
              ) -> tuple[RunOutcome, Finished, RunStorage]:
    definition = parse_definition({"name": "s", "nodes": nodes, "edges": edges or []},
                                  registry=REG)
    limits = StorageLimits(node_kib * KIB, run_kib * KIB)
    storage = RunStorage(limits, used=used)
    observer = Finished()
    outcome = await Executor(definition, run_id="r", inputs={}, registry=REG,
                             observer=observer, storage=storage,
                             services=NodeServices(registry=REG, storage=limits)).execute()
    return outcome, observer, storage


def chain(count: int, size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    nodes = [{"id": f"n{i}", "type": "blob", "size": size} for i in range(count)]
    edges = [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(count - 1)]
    return nodes, edges


def test_a_node_past_its_limit_fails_naming_itself_the_size_and_the_limit() -> None:
    storage = RunStorage(StorageLimits(max_node_bytes=100, max_run_bytes=1000))
    storage.admit("a", "outputs", 100)
    with pytest.raises(OutputTooLarge) as caught:
        storage.admit("big", "outputs", 101)
    assert caught.value.code == "output_too_large"
    message = caught.value.message
    assert "'big'" in message and "101 bytes of outputs" in message
    assert "at most 100 bytes (FLOWRUN_MAX_NODE_OUTPUT_BYTES)" in message
    assert storage.used == 100  # what was refused is not counted


def test_the_run_total_counts_every_value_and_names_the_node_that_crosses_it() -> None:
    storage = RunStorage(StorageLimits(max_node_bytes=100, max_run_bytes=300))
    for node_id in ("a", "b", "c"):
        storage.admit(node_id, "outputs", 90)
    assert storage.used == 270 and storage.room() == 30
    with pytest.raises(OutputTooLarge, match="node 'd' made 31 bytes") as caught:
        storage.admit("d", "outputs", 31)
    assert "past the 300 bytes a run may store (FLOWRUN_MAX_RUN_OUTPUT_BYTES)" in \
        caught.value.message
    with pytest.raises(OutputTooLarge, match="the run made 31 bytes of outputs"):
        storage.admit_run_outputs(31)


def test_streamed_text_counts_as_a_whole_against_the_node_limit() -> None:
    storage = RunStorage(StorageLimits(max_node_bytes=100, max_run_bytes=1000))
    storage.admit_text("t", "streamed text", 60, 60)
    with pytest.raises(OutputTooLarge, match="120 bytes of streamed text"):
        storage.admit_text("t", "streamed text", 60, 120)


async def test_a_node_whose_outputs_pass_the_node_limit_fails_and_keeps_none() -> None:
    outcome, observer, storage = await run([{"id": "big", "type": "blob",
                                             "size": 65 * KIB}])
    assert outcome.status is RunStatus.FAILED
    assert outcome.error is not None and outcome.error["code"] == "output_too_large"
    assert outcome.error["node_id"] == "big" and "'big'" in outcome.error["message"]
    [node] = observer.nodes
    assert node.status is NodeStatus.FAILED and not node.outputs
    assert storage.used < KIB  # (its inputs)


async def test_output_too_large_is_not_retried_and_on_error_applies() -> None:
    CALLS.clear()
    outcome, observer, _ = await run([
        {"id": "big", "type": "blob", "size": 65 * KIB, "on_error": "continue",
         "retry": {"max_attempts": 3, "backoff_s": 0}},
        {"id": "after", "type": "blob", "size": 1}], edges=[{"source": "big",
                                                              "target": "after"}])
    assert CALLS == ["big", "after"]  # one attempt: the same node makes as much again
    assert outcome.status is RunStatus.SUCCEEDED
    big = observer.nodes[0]
    assert big.status is NodeStatus.FAILED and big.attempts == 1
    assert big.outputs["error"]["code"] == "output_too_large"


async def test_the_node_that_crosses_the_run_total_fails() -> None:
    nodes, edges = chain(6, 50 * KIB)  # each under 64 KiB; five fit in 256 KiB, not six
    outcome, observer, storage = await run(nodes, edges=edges)
    assert outcome.status is RunStatus.FAILED
    assert outcome.error is not None and outcome.error["node_id"] == "n5"
    assert outcome.error["code"] == "output_too_large"
    assert "a run may store" in outcome.error["message"]
    assert [n.status for n in observer.nodes] == [NodeStatus.SUCCEEDED] * 5 + [
        NodeStatus.FAILED]
    assert storage.used <= 256 * KIB


async def test_a_resumed_run_counts_what_its_kept_nodes_hold() -> None:
    outcome, _, _ = await run([{"id": "n", "type": "blob", "size": 50 * KIB}],
                              used=220 * KIB)
    assert outcome.error is not None and outcome.error["code"] == "output_too_large"


async def test_inputs_an_expression_makes_count_and_are_not_kept_when_too_large() -> None:
    outcome, observer, _ = await run([
        {"id": "a", "type": "blob", "size": 40 * KIB},
        {"id": "b", "type": "template", "template": "{{ nodes.a.data ~ nodes.a.data }}"},
    ], edges=[{"source": "a", "target": "b"}])
    assert outcome.error is not None and outcome.error["node_id"] == "b"
    assert outcome.error["code"] == "output_too_large" and "inputs" in outcome.error["message"]
    assert not observer.nodes[-1].inputs


async def test_params_holding_one_big_value_many_times_stop_the_walk_early() -> None:
    # a list of 200 references to a 40 KiB output: 8 MB to write, refused unwritten
    refs = {"x": ["{{ nodes.a.data }}"] * 200}
    began = time.monotonic()
    outcome, _, storage = await run([
        {"id": "a", "type": "blob", "size": 40 * KIB},
        {"id": "b", "type": "code", "code": "def main(**kw):\n    return {}", "inputs": refs},
    ], edges=[{"source": "a", "target": "b"}])
    assert time.monotonic() - began < 5
    assert outcome.error is not None and outcome.error["node_id"] == "b"
    assert "more than" in outcome.error["message"] and "inputs" in outcome.error["message"]
    assert storage.used < 64 * KIB


async def test_a_default_too_large_to_store_is_an_error_in_its_place() -> None:
    outcome, observer, _ = await run([
        {"id": "a", "type": "blob", "size": 40 * KIB},
        {"id": "b", "type": "blob", "size": 70 * KIB, "on_error": "default",
         "default": {"x": "{{ nodes.a.data ~ nodes.a.data }}"}},
    ], edges=[{"source": "a", "target": "b"}])
    assert outcome.status is RunStatus.SUCCEEDED
    assert observer.nodes[-1].outputs["error"]["code"] == "output_too_large"


async def test_a_node_that_streams_too_much_text_fails_before_it_is_sent() -> None:
    outcome, _, storage = await run([{"id": "t", "type": "talk", "parts": 10,
                                      "size": 10 * KIB}])
    assert outcome.error is not None and outcome.error["code"] == "output_too_large"
    assert "streamed text" in outcome.error["message"]
    assert storage.used <= 64 * KIB


async def test_map_results_sharing_one_big_string_stop_at_the_node_limit() -> None:
    # every item's result is the same 40 KiB string: two fit in 64 KiB, 500 never encoded
    began = time.monotonic()
    outcome, _, _ = await run([
        {"id": "a", "type": "blob", "size": 40 * KIB},
        {"id": "each", "type": "map", "items": list(range(500)), "concurrency": 1,
         "nodes": [{"id": "inner", "type": "template", "template": "{{ item }}"}],
         "output": "{{ parent.nodes.a.data }}"}], edges=[{"source": "a", "target": "each"}])
    assert time.monotonic() - began < 5
    assert outcome.error is not None and outcome.error["node_id"] == "each"
    assert outcome.error["code"] == "output_too_large"
    assert "by item 1" in outcome.error["message"]


async def test_map_items_share_the_run_total() -> None:
    outcome, _, _ = await run([{
        "id": "each", "type": "map", "items": list(range(8)), "concurrency": 1,
        "nodes": [{"id": "inner", "type": "blob", "size": 50 * KIB}],
        "output": "{{ nodes.inner.data | length }}"}])
    # each item's outputs fit one node, but eight of them do not fit the run
    assert outcome.status is RunStatus.FAILED
    assert outcome.error is not None and outcome.error["code"] == "output_too_large"
    assert "a run may store" in outcome.error["message"]


async def test_a_plugin_nodes_outputs_are_measured_as_they_are_written() -> None:
    outcome, _, _ = await run([{"id": "p", "type": "shared", "size": KIB, "times": 100}])
    assert outcome.error is not None and outcome.error["code"] == "output_too_large"
    # as orjson writes it: 100 quoted KiB, their commas, and the brackets around
    assert "'p' made 102,710 bytes of outputs" in outcome.error["message"]


async def test_a_number_that_is_not_finite_is_still_refused() -> None:
    outcome, _, _ = await run([{"id": "n", "type": "not_finite"}])
    assert outcome.error is not None and outcome.error["code"] == "invalid_outputs"


async def test_the_runs_outputs_from_expressions_are_bounded_too() -> None:
    nodes = [{"id": "a", "type": "blob", "size": 40 * KIB}]
    definition = {"name": "s", "nodes": nodes,
                  "outputs": {f"k{i}": "{{ nodes.a.data }}" for i in range(1000)}}
    outcome = await Executor(parse_definition(definition, registry=REG), run_id="r",
                             inputs={}, registry=REG,
                             storage=RunStorage(StorageLimits(64 * KIB, 256 * KIB)),
                             services=NodeServices(registry=REG)).execute()
    assert outcome.error is not None and outcome.error["code"] == "output_too_large"
    assert "the run's outputs" in outcome.error["message"]


async def test_outputs_within_the_limits_are_kept_encoded_for_the_store() -> None:
    outcome, observer, storage = await run([{"id": "ok", "type": "blob", "size": 10 * KIB}])
    assert outcome.status is RunStatus.SUCCEEDED
    [node] = observer.nodes
    assert node.encoded_outputs is not None and node.encoded_outputs.value is node.outputs
    assert node.encoded_outputs.size == len('{"data":""}') + 10 * KIB
    assert node.encoded_inputs is not None and node.encoded_inputs.value is node.inputs
    assert storage.used == node.encoded_outputs.size + node.encoded_inputs.size


def test_a_run_streams_at_most_its_text_chunks_and_counts_only_what_it_streams(
        caplog: pytest.LogCaptureFixture) -> None:
    storage = RunStorage(StorageLimits(max_text_chunks=2), run_id="r1")
    assert storage.admit_chunk("a", 10, 10) and storage.admit_chunk("b", 5, 5)
    assert not storage.admit_chunk("a", 10, 20)  # past the limit: not sent, not counted
    assert not storage.admit_chunk("b", 10**9, 10**9)  # (nor held to the node limit)
    assert (storage.used, storage.text_chunks) == (15, 2)
    assert "FLOWRUN_MAX_TEXT_CHUNKS_PER_RUN" in (storage.streaming_stopped or "")
    said = [r.getMessage() for r in caplog.records if "streams no more text" in r.message]
    assert len(said) == 1 and "run r1" in said[0]


def test_a_run_told_to_stop_streaming_streams_nothing_more() -> None:
    storage = RunStorage(run_id="r2")
    assert storage.stop_streaming("a full write queue") and not storage.stop_streaming("x")
    assert not storage.admit_chunk("a", 1, 1) and storage.used == 0
