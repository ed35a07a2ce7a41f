"""The native API manages what the dialects could: runs across workflows, deleting runs
and workflow versions, YAML definitions, pause/resume/retry/restart."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.server import Started, finished, node_status, wait_for

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

    # Two retries at once queue the run once: the other is told so.
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(
            lambda _: client.post(f"/runs/{flaky}/retry", json={"from_node": "last"}),
            range(2)))
    assert sorted(a.status_code for a in answers) == [202, 409]
    assert finished(client, flaky)["status"] == "succeeded"
    assert log.read_text().split() == ["first", "last", "first", "last", "last", "last"]
