"""Executor: ordering, concurrency, branches, retries, error modes, timeouts, stop."""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from flowrun.engine.executor import Executor
from flowrun.engine.nodes import NodeContext, registry
from flowrun.errors import NodeFailure
from flowrun.language.definitions import parse_definition
from flowrun.records import NodeRecord, NodeStatus, RunStatus

REG = registry.copy()
CALLS: dict[str, int] = {}


async def flaky(ctx: NodeContext, *, key: str, failures: int) -> dict[str, Any]:
    CALLS[key] = CALLS.get(key, 0) + 1
    if CALLS[key] <= failures:
        raise NodeFailure(f"failure {CALLS[key]}")
    return {"calls": CALLS[key]}


async def boom(ctx: NodeContext) -> dict[str, Any]:
    raise RuntimeError("kaboom")


async def chatty(ctx: NodeContext, *, parts: list[str]) -> dict[str, Any]:
    for p in parts:
        await ctx.emit_text(p)
    return {"text": "".join(parts)}


REG.register("flaky", flaky)
REG.register("boom", boom)
REG.register("chatty", chatty)


class Recorder:
    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.started: dict[str, anyio.Event] = {}
        self.retries: list[dict[str, Any]] = []
        self.chunks: list[str] = []

    def started_event(self, node_id: str) -> anyio.Event:
        return self.started.setdefault(node_id, anyio.Event())

    async def node_started(self, node: NodeRecord, predecessor: str | None) -> None:
        self.log.append(("started", node.node_id))
        self.started_event(node.node_id).set()

    async def node_retry(self, node: NodeRecord, error: dict[str, Any]) -> None:
        self.retries.append(error)

    async def node_finished(self, node: NodeRecord) -> None:
        self.log.append((node.status.value, node.node_id))

    async def node_skipped(self, node: NodeRecord) -> None:
        self.log.append(("skipped", node.node_id))

    async def node_waiting(self, node: NodeRecord) -> None:
        self.log.append(("waiting", node.node_id))

    async def text_chunk(self, node_id: str, text: str) -> None:
        self.chunks.append(text)


def definition(nodes: list[dict[str, Any]], edges: list[dict[str, Any]] | None = None,
               **extra: Any) -> Any:
    return parse_definition({"name": "t", "nodes": nodes, "edges": edges or [], **extra},
                            registry=REG)


def chain(*ids: str) -> list[dict[str, str]]:
    return [{"source": a, "target": b} for a, b in zip(ids, ids[1:], strict=False)]


async def run(defn: Any, inputs: dict[str, Any] | None = None, **kw: Any) -> Any:
    return await Executor(defn, run_id="r1", inputs=inputs or {}, registry=REG, **kw).execute()


async def test_chain_runs_in_order_and_passes_outputs() -> None:
    rec = Recorder()
    defn = definition([
        {"id": "a", "type": "template", "template": "{{ inputs.x }}"},
        {"id": "b", "type": "template", "template": "{{ nodes.a.text }}-b"},
        {"id": "c", "type": "template", "template": "{{ nodes.b.text }}-c"},
    ], chain("a", "b", "c"))
    out = await run(defn, {"x": "a"}, observer=rec)
    assert out.status is RunStatus.SUCCEEDED
    assert out.outputs == {"c": {"text": "a-b-c"}}
    assert [n for _, n in rec.log] == ["a", "a", "b", "b", "c", "c"]
    assert [n.index for n in out.nodes] == [1, 2, 3]


async def test_whole_expression_keeps_type_and_outputs_mapping() -> None:
    defn = definition([{"id": "a", "type": "sleep", "seconds": "{{ inputs.s }}"}],
                      outputs={"slept": "{{ nodes.a.slept }}", "label": "s={{ inputs.s }}"})
    out = await run(defn, {"s": 0.01})
    assert out.outputs == {"slept": 0.01, "label": "s=0.01"}


async def test_independent_branches_run_concurrently() -> None:
    defn = definition([
        {"id": "s1", "type": "sleep", "seconds": 0.5},
        {"id": "s2", "type": "sleep", "seconds": 0.5},
        {"id": "join", "type": "template", "template": "done"},
    ], [{"source": "s1", "target": "join"}, {"source": "s2", "target": "join"}])
    started = time.perf_counter()
    out = await run(defn)
    assert out.status is RunStatus.SUCCEEDED
    assert time.perf_counter() - started < 0.9  # one after the other would take 1.0 s


async def test_branch_not_taken_skips_downstream_but_join_runs() -> None:
    defn = definition([
        {"id": "check", "type": "if_else", "condition": "{{ inputs.n > 10 }}"},
        {"id": "yes", "type": "template", "template": "big"},
        {"id": "yes2", "type": "template", "template": "bigger"},
        {"id": "no", "type": "template", "template": "small"},
        {"id": "join", "type": "template", "template": "joined"},
    ], [{"source": "check", "target": "yes", "branch": "true"},
        {"source": "yes", "target": "yes2"},
        {"source": "check", "target": "no", "branch": "false"},
        {"source": "yes2", "target": "join"}, {"source": "no", "target": "join"}])
    out = await run(defn, {"n": 3})
    status = {n.node_id: n.status for n in out.nodes}
    assert status == {"check": NodeStatus.SUCCEEDED, "yes": NodeStatus.SKIPPED,
                      "yes2": NodeStatus.SKIPPED, "no": NodeStatus.SUCCEEDED,
                      "join": NodeStatus.SUCCEEDED}
    assert out.steps == 3


async def test_switch_takes_matching_case_or_default() -> None:
    nodes: list[dict[str, Any]] = [{"id": "sw", "type": "switch", "value": "{{ inputs.v }}",
              "cases": {"a": "x", "b": "y"}},
             {"id": "A", "type": "template", "template": "A"},
             {"id": "B", "type": "template", "template": "B"},
             {"id": "D", "type": "template", "template": "D"}]
    edges = [{"source": "sw", "target": "A", "branch": "a"},
             {"source": "sw", "target": "B", "branch": "b"},
             {"source": "sw", "target": "D", "branch": "default"}]
    for value, ran in (("y", "B"), ("zzz", "D")):
        out = await run(definition(nodes, edges), {"v": value})
        done = {n.node_id for n in out.nodes if n.status is NodeStatus.SUCCEEDED}
        assert done == {"sw", ran}


async def test_retry_until_success_reports_each_retry() -> None:
    rec = Recorder()
    defn = definition([{"id": "f", "type": "flaky", "key": "retry-ok", "failures": 2,
                        "retry": {"max_attempts": 3, "backoff_s": 0.01}}])
    out = await run(defn, observer=rec)
    assert out.status is RunStatus.SUCCEEDED
    assert out.nodes[0].attempts == 3
    assert out.nodes[0].outputs == {"calls": 3}
    assert [r["message"] for r in rec.retries] == ["failure 1", "failure 2"]


async def test_retry_exhausted_fails_the_run_naming_the_node() -> None:
    defn = definition([{"id": "f", "type": "flaky", "key": "retry-fail", "failures": 5,
                        "retry": {"max_attempts": 2}}])
    out = await run(defn)
    assert out.status is RunStatus.FAILED
    assert out.error == {"code": "node_failed", "message": "failure 2", "node_id": "f"}


async def test_on_error_fail_cancels_running_siblings() -> None:
    defn = definition([{"id": "bad", "type": "boom"},
                       {"id": "slow", "type": "sleep", "seconds": 5}])
    started = time.perf_counter()
    out = await run(defn)
    assert time.perf_counter() - started < 1
    assert out.status is RunStatus.FAILED
    assert out.error["node_id"] == "bad"
    assert "RuntimeError: kaboom" in out.error["message"]
    assert {n.node_id: n.status for n in out.nodes}["slow"] is NodeStatus.STOPPED


async def test_on_error_continue_records_error_and_goes_on() -> None:
    defn = definition([{"id": "bad", "type": "boom", "on_error": "continue"},
                       {"id": "after", "type": "template",
                        "template": "{{ nodes.bad.error.message }}"}], chain("bad", "after"))
    out = await run(defn)
    assert out.status is RunStatus.SUCCEEDED
    by_id = {n.node_id: n for n in out.nodes}
    assert by_id["bad"].status is NodeStatus.FAILED
    assert by_id["after"].outputs == {"text": "RuntimeError: kaboom"}


async def test_on_error_default_uses_default_outputs() -> None:
    defn = definition([{"id": "bad", "type": "boom", "on_error": "default",
                        "default": {"text": "fallback"}},
                       {"id": "after", "type": "template", "template": "{{ nodes.bad.text }}"}],
                      chain("bad", "after"))
    out = await run(defn)
    assert out.status is RunStatus.SUCCEEDED
    assert out.outputs == {"after": {"text": "fallback"}}


async def test_node_timeout_fails_the_node() -> None:
    defn = definition([{"id": "s", "type": "sleep", "seconds": 5, "timeout": 0.1}])
    started = time.perf_counter()
    out = await run(defn)
    assert time.perf_counter() - started < 1
    assert out.status is RunStatus.FAILED
    assert out.error["code"] == "node_timeout"


async def test_run_deadline_times_out() -> None:
    defn = definition([{"id": "s", "type": "sleep", "seconds": 5}], timeout=0.2)
    started = time.perf_counter()
    out = await run(defn)
    assert time.perf_counter() - started < 1
    assert out.status is RunStatus.TIMED_OUT
    assert out.error["code"] == "run_timeout"
    assert out.nodes[0].status is NodeStatus.STOPPED


async def test_stop_during_sleep_cancels_it() -> None:
    rec = Recorder()
    defn = definition([{"id": "a", "type": "template", "template": "x"},
                       {"id": "s", "type": "sleep", "seconds": 30},
                       {"id": "after", "type": "template", "template": "never"}],
                      chain("a", "s", "after"))
    executor = Executor(defn, run_id="r", inputs={}, registry=REG, observer=rec)
    result = []
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        async def go() -> None:
            result.append(await executor.execute())
        tg.start_soon(go)
        with anyio.fail_after(5):
            await rec.started_event("s").wait()
        executor.stop()
    assert time.perf_counter() - started < 2
    out = result[0]
    assert out.status is RunStatus.STOPPED
    status = {n.node_id: n.status for n in out.nodes}
    assert status == {"a": NodeStatus.SUCCEEDED, "s": NodeStatus.STOPPED}
    assert ("stopped", "s") in rec.log


async def test_outside_cancellation_records_nothing_final() -> None:
    rec = Recorder()
    defn = definition([{"id": "s", "type": "sleep", "seconds": 30}])
    executor = Executor(defn, run_id="r", inputs={}, registry=REG, observer=rec)
    async with anyio.create_task_group() as tg:
        tg.start_soon(executor.execute)
        with anyio.fail_after(5):
            await rec.started_event("s").wait()
        tg.cancel_scope.cancel()
    assert rec.log == [("started", "s")]


async def test_undefined_expression_fails_the_node_clearly() -> None:
    defn = definition([{"id": "t", "type": "template", "template": "{{ inputs.nope }}"}])
    out = await run(defn)
    assert out.status is RunStatus.FAILED
    assert out.error["code"] == "expression_error"
    assert "nope" in out.error["message"] and out.error["node_id"] == "t"


async def test_wrong_param_type_after_evaluation_fails_the_node() -> None:
    defn = definition([{"id": "s", "type": "sleep", "seconds": "{{ inputs.s }}"}])
    out = await run(defn, {"s": "soon"})
    assert out.status is RunStatus.FAILED
    assert out.error["code"] == "invalid_params" and "seconds" in out.error["message"]


async def test_constrained_param_types_hold_after_evaluation() -> None:
    # sleep's seconds is NonNegativeFloat: the constraint is kept, not only the float.
    defn = definition([{"id": "s", "type": "sleep", "seconds": "{{ inputs.s }}"}])
    out = await run(defn, {"s": -5})
    assert out.status is RunStatus.FAILED
    assert out.error["code"] == "invalid_params" and "greater than or equal to 0" in \
        out.error["message"]


async def test_prior_succeeded_nodes_are_not_run_again() -> None:
    CALLS.pop("resume", None)
    defn = definition([{"id": "once", "type": "flaky", "key": "resume", "failures": 0},
                       {"id": "next", "type": "template", "template": "{{ nodes.once.calls }}"}],
                      chain("once", "next"))
    prior = NodeRecord("r1", "once", "flaky", "once", 1, NodeStatus.SUCCEEDED,
                       outputs={"calls": 41})
    out = await run(defn, prior_nodes={"once": prior})
    assert "resume" not in CALLS
    assert out.outputs == {"next": {"text": "41"}}
    assert {n.node_id: n.index for n in out.nodes} == {"once": 1, "next": 2}


async def test_custom_node_streams_text() -> None:
    rec = Recorder()
    defn = definition([{"id": "c", "type": "chatty", "parts": ["he", "llo"]}])
    out = await run(defn, observer=rec)
    assert rec.chunks == ["he", "llo"] and out.outputs == {"c": {"text": "hello"}}


@pytest.mark.parametrize("bad_output", [{"x": object()}])
async def test_non_json_outputs_fail_the_node(bad_output: dict[str, Any]) -> None:
    async def weird(ctx: NodeContext) -> dict[str, Any]:
        return bad_output

    reg = REG.copy()
    reg.register("weird", weird)
    defn = parse_definition({"name": "t", "nodes": [{"id": "w", "type": "weird"}]}, registry=reg)
    out = await Executor(defn, run_id="r", inputs={}, registry=reg).execute()
    assert out.status is RunStatus.FAILED and out.error is not None
    assert out.error["code"] == "invalid_outputs"


WAITS: list[dict[str, Any]] = [
    {"id": "a", "type": "template", "template": "a"},
    {"id": "w", "type": "wait", "signal": "go", "timeout_s": 60},
    {"id": "b", "type": "template", "template": "b {{ nodes.w.word }}"},
    {"id": "side", "type": "template", "template": "side"},
]


async def test_a_wait_parks_the_run_once_every_other_branch_is_done() -> None:
    rec = Recorder()
    ex = Executor(definition(WAITS, chain("a", "w", "b")), run_id="r1", inputs={},
                  registry=REG, observer=rec)
    out = await ex.execute()
    assert out.status is RunStatus.WAITING and out.outputs is None
    assert ("waiting", "w") in rec.log and ("succeeded", "side") in rec.log
    assert "b" not in {n for _, n in rec.log}
    waited = {n.node_id: n for n in out.nodes}["w"]
    assert waited.status is NodeStatus.WAITING
    assert waited.process_data["signal"] == "go"
    assert waited.process_data["expires_at"] == pytest.approx(time.time() + 60, abs=5)
    assert waited.process_data["signal_url"].startswith("/signals/")
    assert set(ex.waiting) == {"w"}


async def test_a_received_signal_is_the_wait_nodes_outputs() -> None:
    out = await run(definition(WAITS, chain("a", "w", "b")), signals={"go": {"word": "now"}})
    assert out.status is RunStatus.SUCCEEDED
    assert out.outputs == {"b": {"text": "b now"}, "side": {"text": "side"}}


async def test_a_wait_past_its_timeout_fails_or_takes_the_nodes_default() -> None:
    long_ago = {"w": time.time() - 61}
    out = await run(definition(WAITS, chain("a", "w", "b")), waiting_since=long_ago)
    assert out.status is RunStatus.FAILED and out.error is not None
    assert out.error["code"] == "wait_timeout"
    defaulted = [WAITS[0], {**WAITS[1], "on_error": "default", "default": {"word": "late"}},
                 *WAITS[2:]]
    out = await run(definition(defaulted, chain("a", "w", "b")), waiting_since=long_ago)
    assert out.status is RunStatus.SUCCEEDED and out.outputs is not None
    assert out.outputs["b"] == {"text": "b late"}


async def test_a_sub_graph_cannot_park_its_run() -> None:
    out = await run(definition(WAITS[1:2]), suspendable=False)
    assert out.status is RunStatus.FAILED and out.error is not None
    assert out.error["code"] == "wait_unsupported"


async def counted(ctx: NodeContext, *, key: str) -> dict[str, Any]:
    CALLS[key] = CALLS.get(key, 0) + 1
    await anyio.lowlevel.checkpoint()  # a real node awaits: the other edge resolves meanwhile
    return {"calls": CALLS[key]}


REG.register("counted", counted)


def runs_of(rec: Recorder, node_id: str) -> int:
    return sum(1 for what, node in rec.log if what == "started" and node == node_id)


@pytest.mark.parametrize("n", [3, 30])
async def test_a_node_both_branches_of_an_if_else_lead_to_runs_once(n: int) -> None:
    key = f"both-if-{n}"
    CALLS.pop(key, None)
    rec = Recorder()
    defn = definition([
        {"id": "check", "type": "if_else", "condition": "{{ inputs.n > 10 }}"},
        {"id": "both", "type": "counted", "key": key},
    ], [{"source": "check", "target": "both", "branch": "true"},
        {"source": "check", "target": "both", "branch": "false"}])
    out = await run(defn, {"n": n}, observer=rec)
    assert out.status is RunStatus.SUCCEEDED
    assert CALLS[key] == 1 and runs_of(rec, "both") == 1
    assert [n.node_id for n in out.nodes] == ["check", "both"]


async def test_a_node_every_case_of_a_switch_leads_to_runs_once() -> None:
    CALLS.pop("both-switch", None)
    rec = Recorder()
    defn = definition([
        {"id": "sw", "type": "switch", "value": "{{ inputs.v }}", "cases": {"a": "x", "b": "y"}},
        {"id": "after", "type": "counted", "key": "both-switch"},
    ], [{"source": "sw", "target": "after", "branch": branch}
        for branch in ("a", "b", "default")])
    out = await run(defn, {"v": "y"}, observer=rec)
    assert out.status is RunStatus.SUCCEEDED
    assert CALLS["both-switch"] == 1 and runs_of(rec, "after") == 1


async def test_a_join_after_parallel_branches_runs_once() -> None:
    CALLS.pop("join-once", None)
    rec = Recorder()
    defn = definition([
        {"id": "fork", "type": "template", "template": "go"},
        {"id": "b", "type": "sleep", "seconds": 0.01},
        {"id": "c", "type": "sleep", "seconds": 0.01},
        {"id": "join", "type": "counted", "key": "join-once"},
    ], [{"source": "fork", "target": "b"}, {"source": "fork", "target": "c"},
        {"source": "b", "target": "join"}, {"source": "c", "target": "join"},
        {"source": "fork", "target": "join"}, {"source": "fork", "target": "join"}])
    out = await run(defn, observer=rec)
    assert out.status is RunStatus.SUCCEEDED
    assert CALLS["join-once"] == 1 and runs_of(rec, "join") == 1


async def test_a_resumed_run_runs_a_node_two_edges_lead_to_once() -> None:
    CALLS.pop("both-resumed", None)
    rec = Recorder()
    defn = definition([
        {"id": "check", "type": "if_else", "condition": "{{ inputs.n > 10 }}"},
        {"id": "both", "type": "counted", "key": "both-resumed"},
        {"id": "last", "type": "template", "template": "{{ nodes.both.calls }}"},
    ], [{"source": "check", "target": "both", "branch": "true"},
        {"source": "check", "target": "both", "branch": "false"},
        {"source": "both", "target": "last"}])
    prior = NodeRecord("r1", "check", "if_else", "check", 1, NodeStatus.SUCCEEDED,
                       outputs={"result": False}, branch="false")
    out = await run(defn, {"n": 3}, observer=rec, prior_nodes={"check": prior})
    assert out.status is RunStatus.SUCCEEDED
    assert CALLS["both-resumed"] == 1 and runs_of(rec, "both") == 1
    assert out.outputs == {"last": {"text": "1"}}
