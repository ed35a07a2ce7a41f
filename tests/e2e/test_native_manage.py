"""The native API manages what the dialects could: runs across workflows, deleting runs
and workflow versions, YAML definitions, pause/resume/retry/restart."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Started, finished, node_status, wait_for

# (each test on SQLite and on PostgreSQL)
pytestmark = pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])

YAML = {"content-type": "application/yaml"}
NAPPER = """\
name: napper
inputs:
  seconds: {type: number, default: 0.05}
nodes:
  - {id: nap, type: sleep, seconds: "{{ inputs.seconds }}"}
"""


def admin_client(started: Started) -> httpx.Client:
    client = httpx.Client(base_url=started.server.url, timeout=30,
                          headers={"Authorization": f"Bearer {started.server.admin_key()}"})
    started.server.clients.append(client)
    return client


def ids(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [r["id"] for r in resp.json()["runs"]]


def test_runs_across_workflows_filtered_paged_and_deleted(
        start_server: Callable[..., Started]) -> None:
    started = start_server()
    client, admin = started.client, admin_client(started)
    hello = client.post("/workflows/hello/run", json={"inputs": {"name": "a"}}).json()["id"]
    finished(client, hello)
    slow = client.post("/workflows/slow/run", json={"inputs": {"seconds": 60}}).json()["id"]
    wait_for(client, slow, lambda r: node_status(r, "wait") == "running")

    assert ids(client.get("/runs")) == [slow, hello]  # every workflow, newest first
    assert ids(client.get("/runs", params={"workflow": "hello"})) == [hello]
    assert ids(client.get("/runs", params={"status": "running"})) == [slow]
    page = client.get("/runs", params={"limit": 1}).json()
    assert [r["id"] for r in page["runs"]] == [slow] and page["next_cursor"]
    assert ids(client.get("/runs", params={"limit": 1, "cursor": page["next_cursor"]})) == [
        hello]
    other = httpx.Client(base_url=started.server.url,
                         headers={"Authorization": f"Bearer {started.server.create_key()}"})
    started.server.clients.append(other)
    assert ids(other.get("/runs")) == []  # a run key sees its own runs only
    assert ids(admin.get("/runs")) == [slow, hello]
    bad = client.get("/runs", params={"status": "done"})
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "status"

    assert client.delete(f"/runs/{hello}").status_code == 403  # admin only
    live = admin.delete(f"/runs/{slow}")
    assert live.status_code == 409 and "stop it" in live.json()["detail"]
    assert client.post(f"/runs/{slow}/stop").json()["status"] == "stopped"
    assert admin.delete(f"/runs/{slow}").status_code == 204
    assert client.get(f"/runs/{slow}").status_code == 404
    assert client.get(f"/runs/{slow}/events").status_code == 404
    assert admin.delete(f"/runs/{slow}").status_code == 404
    assert ids(client.get("/runs")) == [hello]


def test_yaml_definitions_versions_and_deleting_a_workflow(
        start_server: Callable[..., Started]) -> None:
    started = start_server()
    client, admin = started.client, admin_client(started)
    created = admin.put("/workflows/napper", content=NAPPER, headers=YAML)
    assert created.status_code == 201 and created.json()["version"] == 1
    changed = NAPPER.replace("0.05", "0.1")
    assert admin.put("/workflows/napper", content=changed,
                     headers={"content-type": "text/yaml; charset=utf-8"}).json()["version"] == 2
    versions = client.get("/workflows/napper/versions").json()["versions"]
    assert [v["version"] for v in versions] == [1, 2] and versions[0]["created_at"] > 0

    bomb = "a: &x [1, 2]\nb: [*x, *x]\n"
    refused = admin.put("/workflows/napper", content=bomb, headers=YAML)
    assert refused.status_code == 400 and "alias" in refused.json()["detail"]
    broken = admin.put("/workflows/napper", content="name: [unclosed", headers=YAML)
    assert broken.status_code == 400 and broken.json()["detail"].startswith("malformed YAML")
    assert client.put("/workflows/napper", content=NAPPER, headers=YAML).status_code == 403

    assert admin.delete("/workflows/napper", params={"version": 2}).status_code == 204
    assert client.get("/workflows/napper").json()["version"] == 1
    assert client.get("/workflows/napper", params={"version": 2}).status_code == 404
    run = client.post("/workflows/napper/run", json={"inputs": {"seconds": 60}}).json()
    wait_for(client, run["id"], lambda r: r["status"] == "running")
    busy = admin.delete("/workflows/napper")
    assert busy.status_code == 409 and "live" in busy.json()["detail"]
    assert client.delete("/workflows/napper").status_code == 403
    client.post(f"/runs/{run['id']}/stop")
    assert admin.delete("/workflows/napper").status_code == 204
    assert client.get("/workflows/napper").status_code == 404
    assert "napper" not in [w["name"] for w in client.get("/workflows").json()["workflows"]]
    assert client.get(f"/runs/{run['id']}").json()["status"] == "stopped"  # runs stay
    # A version number is never given twice.
    assert admin.put("/workflows/napper", content=NAPPER, headers=YAML).json()["version"] == 3


def test_pause_resume_retry_and_restart(start_server: Callable[..., Started],
                                        tmp_path: Path) -> None:
    client = start_server().client
    run = client.post("/workflows/ticker/run", json={"inputs": {"tick": 0.2}}).json()["id"]
    wait_for(client, run, lambda r: node_status(r, "t1") == "running")
    paused = client.post(f"/runs/{run}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    held = wait_for(client, run, lambda r: all(n["status"] != "running" for n in r["nodes"]))
    assert held["status"] == "paused" and node_status(held, "t10") is None
    resumed = client.post(f"/runs/{run}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "running"
    assert finished(client, run)["status"] == "succeeded"
    assert client.post(f"/runs/{run}/pause").status_code == 409
    assert client.post(f"/runs/{run}/resume").status_code == 409

    log, marker = tmp_path / "count.log", tmp_path / "marker"
    flaky = client.post("/workflows/fail-once/run", json={
        "inputs": {"file": str(log), "marker": str(marker)}}).json()["id"]
    assert finished(client, flaky)["status"] == "failed"
    marker.write_text("ok")
    retried = client.post(f"/runs/{flaky}/retry")
    assert retried.status_code == 202 and retried.json()["id"] == flaky
    done: dict[str, Any] = finished(client, flaky)
    assert done["status"] == "succeeded" and log.read_text().split() == ["first", "last"]
    assert client.post(f"/runs/{flaky}/retry").status_code == 409  # nothing failed
    assert client.post(f"/runs/{flaky}/restart").status_code == 202
    assert finished(client, flaky)["status"] == "succeeded"
    assert log.read_text().split() == ["first", "last", "first", "last"]

    # From a chosen node: the nodes before it keep their outputs and do not run again.
    again = client.post(f"/runs/{flaky}/retry", json={"from_node": "gate"})
    assert again.status_code == 202
    assert finished(client, flaky)["status"] == "succeeded"
    assert log.read_text().split() == ["first", "last", "first", "last", "last"]
    unknown = client.post(f"/runs/{flaky}/retry", json={"from_node": "nope"})
    assert unknown.status_code == 400 and unknown.json()["errors"][0]["field"] == "from_node"

    # Two retries at once queue the run once: the other is told so (the run takes two
    # ticks, far longer than the two requests).
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(
            lambda _: client.post(f"/runs/{run}/retry", json={"from_node": "t9"}), range(2)))
    assert sorted(a.status_code for a in answers) == [202, 409]
    again_done = finished(client, run)
    assert again_done["status"] == "succeeded"
    assert [n["attempts"] for n in again_done["nodes"] if n["id"] == "t10"] == [1]


def test_rerun_from_a_node_makes_a_new_run_that_reuses_the_nodes_before_it(
        start_server: Callable[..., Started], tmp_path: Path) -> None:
    server, key, client = start_server()
    log, marker = tmp_path / "count.log", tmp_path / "marker"
    inputs = {"file": str(log), "marker": str(marker)}
    original = client.post("/workflows/fail-once/run", json={"inputs": inputs}).json()["id"]
    assert finished(client, original)["status"] == "failed"
    marker.write_text("ok")
    server.stop()  # the original is read back from the store after a restart
    server.start()

    resp = client.post(f"/runs/{original}/rerun", json={"from_node": "gate"})
    assert resp.status_code == 202, resp.text
    rerun = resp.json()
    assert rerun["rerun_of"] == original and rerun["id"] != original
    assert resp.headers["location"] == f"/runs/{rerun['id']}"
    done = finished(client, rerun["id"])
    assert done["status"] == "succeeded"
    nodes = {n["id"]: n for n in done["nodes"]}
    assert nodes["first"]["process_data"]["reused_from"] == original  # kept, not run
    assert "reused_from" not in (nodes["gate"]["process_data"] or {})
    assert log.read_text().split() == ["first", "last"]  # first ran once, in the original
    assert client.get(f"/runs/{original}").json()["status"] == "failed"  # left as it was

    other = {**inputs, "file": str(tmp_path / "other.log")}
    stale = client.post(f"/runs/{original}/rerun", json={"from_node": "gate", "inputs": other})
    assert stale.status_code == 400 and "first" in stale.json()["detail"]
    fresh = client.post(f"/runs/{original}/rerun", json={"from_node": "first", "inputs": other})
    assert fresh.status_code == 202
    assert finished(client, fresh.json()["id"])["status"] == "succeeded"
    assert (tmp_path / "other.log").read_text().split() == ["first", "last"]

    assert client.post(f"/runs/{original}/rerun",
                       json={"from_node": "nope"}).status_code == 400
    slow = client.post("/workflows/slow/run", json={"inputs": {"seconds": 60}}).json()["id"]
    wait_for(client, slow, lambda r: r["status"] == "running")
    assert client.post(f"/runs/{slow}/rerun", json={"from_node": "wait"}).status_code == 409
    client.post(f"/runs/{slow}/stop")
