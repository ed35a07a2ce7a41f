"""Bindings and caps against a real server: a re-run holds the key's binding, a child
run re-run by itself is an ordinary run for every cap, and a key is bound only to
registered workflows (the API as the CLI)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.server import Server, finished, wait_for


def child_of(run: dict[str, Any]) -> str:
    return str(run["nodes"][0]["process_data"]["child_run_id"])


def test_a_bound_key_cannot_rerun_a_child_of_another_workflow(
        server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    bound = server.create_key("--workflow", "report-pipeline")
    server.start()
    client = server.client(bound)
    run = client.post("/workflows/report-pipeline/run-sync",
                      json={"inputs": {"text": "one two three"}}).json()
    assert run["status"] == "succeeded", run
    child = child_of(run)
    assert client.get(f"/runs/{child}").json()["workflow"] == "text-stats"  # its own tree
    assert client.post("/workflows/text-stats/run", json={
        "inputs": {"text": "x"}}).status_code == 403
    attempts = [("POST", f"/runs/{child}/rerun",
                 {"from_node": "stats", "inputs": {"text": "attacker's", "top": 1}}),
                ("POST", f"/runs/{child}/restart", None),
                ("POST", f"/runs/{child}/retry", None),
                ("POST", f"/runs/{child}/retry", {"from_node": "report"}),
                ("POST", f"/conductor/api/workflow/{child}/restart", None),
                ("POST", f"/conductor/api/workflow/{child}/retry", None)]
    for method, path, body in attempts:
        resp = client.request(method, path, json=body)
        assert resp.status_code == 403, (path, resp.text)
        assert "may not use 'text-stats'" in resp.text, resp.text
    listed = server.client(server.admin_key()).get("/workflows/text-stats/runs").json()
    assert [r["id"] for r in listed["runs"]] == [child]  # no run of it was started
    assert client.get(f"/runs/{child}").json()["status"] == "succeeded"
    # its own workflow's runs it re-runs as before
    assert client.post(f"/runs/{run['id']}/restart").status_code == 202
    assert finished(client, run["id"], timeout=30)["status"] == "succeeded"


def running_count(client: httpx.Client) -> int:
    return int(client.get("/healthz").json()["running"])


def test_restarted_child_runs_are_held_to_the_concurrency_cap(
        server_factory: Callable[..., Server], tmp_path: Path) -> None:
    server = server_factory({"FLOWRUN_MAX_CONCURRENT_RUNS": "2"})
    key = server.create_key()
    server.start()
    client = server.client(key)
    parents = [client.post("/workflows/parent/run", json={
        "inputs": {"file": str(tmp_path / f"c{i}.log"), "seconds": 0.2}}).json()
        for i in range(4)]
    children = [child_of(finished(client, p["id"], timeout=30)) for p in parents]
    hogs = [client.post("/workflows/slow/run", json={"inputs": {"seconds": 60}}).json()
            for _ in range(2)]
    for hog in hogs:
        wait_for(client, hog["id"], lambda r: r["status"] == "running")
    for child in children:
        assert client.post(f"/runs/{child}/restart").status_code == 202
    # Each restarted child is an ordinary run now: it queues behind the two that run.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert running_count(client) == 2
        statuses = {client.get(f"/runs/{c}").json()["status"] for c in children}
        assert statuses == {"queued"}, statuses
        time.sleep(0.05)
    for hog in hogs:
        client.post(f"/runs/{hog['id']}/stop")
    for child in children:
        assert finished(client, child, timeout=30)["status"] == "succeeded"


def test_a_child_of_a_live_parent_is_not_rerun_and_a_rerun_child_survives_a_restart(
        server_factory: Callable[..., Server], tmp_path: Path) -> None:
    server = server_factory()
    key = server.create_key()
    server.start()
    client = server.client(key)
    log = tmp_path / "c.log"
    parent = client.post("/workflows/parent/run", json={
        "inputs": {"file": str(log), "seconds": 0},
        "nodes": [{"id": "child", "type": "workflow", "workflow": "counted",
                   "inputs": {"file": "{{ inputs.file }}", "seconds": 1.5}},
                  {"id": "hold", "type": "sleep", "seconds": 60}],
        "edges": [{"source": "child", "target": "hold"}]}).json()
    run = wait_for(client, parent["id"], lambda r: r["nodes"] and
                   r["nodes"][0]["status"] == "succeeded", timeout=30)
    child = child_of(run)
    refused = client.post(f"/runs/{child}/restart")
    assert refused.status_code == 409, refused.text
    assert parent["id"] in refused.json()["detail"]
    client.post(f"/runs/{parent['id']}/stop")
    assert finished(client, parent["id"])["status"] == "stopped"
    # Its parent has ended: the restart runs it as its own root, also after a crash.
    assert client.post(f"/runs/{child}/restart").status_code == 202
    wait_for(client, child, lambda r: any(n["id"] == "wait" and n["status"] == "running"
                                          for n in r["nodes"]), timeout=30)
    server.kill()
    server.start()
    done = finished(client, child, timeout=30)
    assert done["status"] == "succeeded", done
    assert done["parent_run_id"] == parent["id"]  # still shown as its parent's


def test_the_api_binds_a_key_only_to_registered_workflows_as_the_cli_does(
        server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    admin = server.admin_key()
    server.start()
    client = server.client(admin)
    refused = client.post("/keys", json={"scope": "run", "workflows": ["hello", "nosuchwf"]})
    assert refused.status_code == 400, refused.text
    problem = refused.json()
    assert problem["code"] == "invalid_param" and "'nosuchwf'" in problem["detail"]
    assert problem["errors"] == [{"field": "workflows", "message": "'nosuchwf' is not registered"}]
    assert len(client.get("/keys").json()["keys"]) == 1  # nothing was made
    made = client.post("/keys", json={"scope": "run", "workflows": ["hello"]})
    assert made.status_code == 201, made.text
    forced = client.post("/keys", json={"scope": "run", "workflows": ["nosuchwf"],
                                        "allow_unknown_workflows": True})
    assert forced.status_code == 201 and forced.json()["workflows"] == ["nosuchwf"]
