"""Node types through a real server: child runs, code isolation, map events, overrides,
LLM token totals, and custom nodes from an entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.e2e.server import ROOT, Started, finished, node_status, wait_for
from tests.engine.test_llm_node import APP as FAKE_LLM
from tests.eventually import eventually
from tests.local_server import serve


def events_of(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    with connect_sse(client, "GET", f"/runs/{run_id}/events") as source:
        return [json.loads(sse.data) for sse in source.iter_sse()]


def test_workflow_node_runs_a_visible_child(start_server: Callable[..., Started],
                                            tmp_path: Path) -> None:
    server, _, client = start_server({"FLOWRUN_MAX_CONCURRENT_RUNS": "1"})
    log = tmp_path / "child.log"
    run = client.post("/workflows/parent/run-sync",
                      json={"inputs": {"file": str(log)}}).json()
    assert run["status"] == "succeeded", run
    assert run["outputs"] == {"report": {"text": "child said child-last"}}
    child_id = run["nodes"][0]["process_data"]["child_run_id"]
    child = client.get(f"/runs/{child_id}").json()
    assert child["parent_run_id"] == run["id"] and child["workflow"] == "counted"
    assert child["status"] == "succeeded"
    assert log.read_text().split() == ["child-first", "child-last"]


def child_of(client: httpx.Client, parent_id: str) -> dict[str, Any]:
    """The one child run of a parent, once it exists (polled with a deadline)."""
    def appeared() -> dict[str, Any] | None:
        children: list[dict[str, Any]] = [
            r for r in client.get("/workflows/counted/runs").json()["runs"]
            if r["parent_run_id"] == parent_id]
        assert len(children) <= 1, children
        return children[0] if children else None

    child: dict[str, Any] = eventually(appeared, what=f"a child run of {parent_id}")
    return child


def test_stopping_the_parent_stops_the_child(start_server: Callable[..., Started],
                                             tmp_path: Path) -> None:
    server, _, client = start_server()
    run = client.post("/workflows/parent/run", json={
        "inputs": {"file": str(tmp_path / "c.log"), "seconds": 60}}).json()
    child = child_of(client, run["id"])
    wait_for(client, child["id"], lambda r: node_status(r, "wait") == "running")
    assert client.post(f"/runs/{run['id']}/stop").json()["status"] == "stopped"
    assert finished(client, child["id"])["status"] == "stopped"


def test_a_resumed_parent_reattaches_to_its_child(start_server: Callable[..., Started],
                                                  tmp_path: Path) -> None:
    server, _, client = start_server()
    log = tmp_path / "c.log"
    run = client.post("/workflows/parent/run", json={
        "inputs": {"file": str(log), "seconds": 1.5}}).json()
    child = child_of(client, run["id"])
    wait_for(client, child["id"], lambda r: node_status(r, "wait") == "running")
    server.kill()
    server.start()
    assert finished(client, run["id"], timeout=20)["status"] == "succeeded"
    assert child_of(client, run["id"])["id"] == child["id"]
    assert log.read_text().split() == ["child-first", "child-last"]


def test_code_cannot_read_the_servers_secrets(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server({"FLOWRUN_TEST_SECRET": "hunter2"})
    run = client.post("/workflows/peek/run-sync", json={}).json()
    assert run["status"] == "succeeded", run
    seen = run["outputs"]["py"]
    assert "hunter2" not in json.dumps(seen)
    assert seen["parent"] in {"PermissionError", "FileNotFoundError"}
    assert set(seen["env"]) <= {"PATH", "LANG", "PYTHONIOENCODING", "LC_CTYPE", "PWD"}


def test_map_iterations_report_their_index(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    run = client.post("/workflows/mapped/run-sync",
                      json={"inputs": {"words": ["a", "b", "c", "d"]}}).json()
    assert run["outputs"] == {"each": {"results": ["0:A", "1:B", "2:C", "3:D"]}}
    events = events_of(client, run["id"])
    inner = [e for e in events if e["data"].get("iteration_id") == "each"]
    assert sorted(e["data"]["iteration_index"] for e in inner
                  if e["event"] == "node_started") == [0, 1, 2, 3]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_dot_keys_and_overrides_change_params_for_one_run(
        start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    dotted = client.post("/workflows/hello/run-sync", json={
        "inputs": {"name": "Ann", "greet.template": "Hey {{ inputs.name }}"}}).json()
    assert dotted["outputs"] == {"greeting": "Hey Ann"}
    assert dotted["inputs"] == {"name": "Ann"}
    plain = client.post("/workflows/hello/run-sync", json={"inputs": {"name": "Ann"}}).json()
    assert plain["outputs"] == {"greeting": "Hello, Ann!"}
    bad = client.post("/workflows/hello/run", json={
        "inputs": {"name": "Ann", "greet.tempalte": "x"}})
    assert bad.status_code == 400 and "unknown param 'tempalte'" in bad.json()["detail"]


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[str]:
    with serve(FAKE_LLM) as url:
        yield f"{url}/v1"


def test_llm_tokens_add_up_in_the_run(start_server: Callable[..., Started],
                                      fake_llm: str) -> None:
    server, _, client = start_server({"FLOWRUN_LLM_BASE_URL": fake_llm,
                                            "FLOWRUN_LLM_API_KEY": "sk-local"})
    definition = {"nodes": [{"id": "ask", "type": "llm", "prompt": "hi"},
                            {"id": "more", "type": "llm", "prompt": "again", "model": "plain"}],
                  "edges": [{"source": "ask", "target": "more"}]}
    admin = server.client(server.admin_key())
    assert admin.put("/workflows/chat", json=definition).status_code == 201
    run = client.post("/workflows/chat/run-sync", json={}).json()
    assert run["status"] == "succeeded", run
    events = events_of(client, run["id"])
    chunks = [e["data"]["text"] for e in events if e["event"] == "text_chunk"]
    # (deltas that come close together may share an event: the text is the same)
    assert "".join(chunks) == "Hello worldplain answer" and chunks[0] == "Hel"
    assert chunks[-1] == "plain answer"
    assert events[-1]["data"]["total_tokens"] == 15


def test_custom_nodes_from_an_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "shoutpkg").mkdir(parents=True)
    (site / "shoutpkg" / "__init__.py").write_text(
        "async def shout(ctx, *, text: str) -> dict:\n"
        "    ctx.log('shouting')\n"
        "    await ctx.emit_text(text.upper())\n"
        "    return {'text': text.upper(), 'node': ctx.node_id}\n")
    dist = site / "shoutpkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shoutpkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[flowrun.nodes]\nshout = shoutpkg:shout\n")
    workflow = tmp_path / "loud.yaml"
    workflow.write_text("name: loud\nnodes:\n  - {id: s, type: shout, text: hey}\n")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    out = subprocess.run([sys.executable, "-m", "flowrun", "run", str(workflow)], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "HEY" in out.stdout and '"node": "s"' in out.stdout


def test_example_pipeline_end_to_end(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    text = "one two three four five six seven eight nine ten " * 3
    run = client.post("/workflows/report-pipeline/run-sync", json={"inputs": {"text": text}})
    body = run.json()
    assert run.status_code == 200 and body["status"] == "succeeded", body
    assert body["outputs"] == {"long": {"text": "A long text. 30 words (10 unique); "
                                                "longest: eight, seven"}}
    assert node_status(body, "short") == "skipped"
    lengths = client.post("/workflows/word-lengths/run-sync",
                          json={"inputs": {"words": ["ab", "cde"]}}).json()
    assert lengths["outputs"] == {"lengths": ["#0 ab=2", "#1 cde=3"]}


def test_a_node_two_edges_of_one_branch_lead_to_runs_once(
        start_server: Callable[..., Started], tmp_path: Path) -> None:
    """A Dify export's shape: both branches of an if_else lead to one node, which runs
    (and has its side effect) once, with one node_started event."""
    server, _, client = start_server()
    log = tmp_path / "both.log"
    run = client.post("/workflows/counted/run-sync", json={
        "inputs": {"file": str(log)},
        "nodes": [{"id": "check", "type": "if_else", "condition": "{{ 1 > 0 }}"},
                  {"id": "both", "type": "count", "file": "{{ inputs.file }}",
                   "label": "ran"}],
        "edges": [{"source": "check", "target": "both", "branch": "true"},
                  {"source": "check", "target": "both", "branch": "false"}]}).json()
    assert run["status"] == "succeeded", run
    assert [n["id"] for n in run["nodes"]] == ["check", "both"]
    assert log.read_text().split() == ["ran"]
    started = [e for e in events_of(client, run["id"])
               if e["event"] == "node_started" and e["data"]["node_id"] == "both"]
    assert len(started) == 1
