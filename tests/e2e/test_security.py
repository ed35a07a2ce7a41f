"""Attacks by an ordinary key holder, each against a real server: keys, scopes, bindings.

One server for the module: an admin key, a run key, and a run key bound to ``hello``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Server, finished


@dataclass
class Keys:
    server: Server
    admin: httpx.Client
    runner: httpx.Client
    bound: httpx.Client
    bound_secret: str


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    server = Server(tmp_path_factory.mktemp("security"))
    admin, runner = server.admin_key(), server.create_key()
    bound = server.create_key("--workflow", "hello")
    server.start()
    try:
        yield Keys(server, server.client(admin), server.client(runner), server.client(bound),
                   bound)
    finally:
        server.close()


HELLO = {"nodes": [{"id": "greet", "type": "template", "template": "pwned"}]}


def test_a_run_key_cannot_register_or_overwrite_a_workflow(keys: Keys) -> None:
    for client in (keys.runner, keys.bound):
        resp = client.put("/workflows/hello", json=HELLO)
        assert resp.status_code == 403, resp.text
        assert resp.json()["code"] == "forbidden"
        assert client.put("/workflows/brand-new", json=HELLO).status_code == 403
    run = keys.bound.post("/workflows/hello/run-sync", json={"inputs": {"name": "Ada"}}).json()
    assert run["outputs"] == {"greeting": "Hello, Ada!"}  # the victim's graph is intact
    resp = keys.admin.put("/workflows/admin-made", json=HELLO)
    assert resp.status_code == 201, resp.text


def test_a_bound_key_is_held_to_its_workflow_through_every_api(keys: Keys) -> None:
    client = keys.bound
    assert client.post("/workflows/slow/run", json={"inputs": {}}).status_code == 403
    assert client.post("/workflows/slow/run-sync", json={}).status_code == 403
    assert client.get("/workflows/slow").status_code == 403
    assert client.get("/workflows/slow/runs").status_code == 403
    assert client.get("/workflows/no-such-workflow").status_code == 403  # no existence oracle
    assert [w["name"] for w in client.get("/workflows").json()["workflows"]] == ["hello"]
    dify = client.post("/dify/v1/workflows/slow:1/run",
                       json={"inputs": {}, "user": "u", "response_mode": "async"})
    assert dify.status_code == 404, dify.text
    assert client.post("/conductor/api/workflow/slow", json={}).status_code == 403
    conductor = client.post("/conductor/api/workflow",
                            json={"name": "slow", "input": {"seconds": 0}})
    assert conductor.status_code == 403
    langflow = client.post("/langflow/api/v2/workflows",
                           json={"flow_id": "slow", "mode": "background", "inputs": {}})
    assert langflow.status_code == 403, langflow.text
    assert client.post("/jobs/workflows/slow/run", json={}).status_code == 403
    assert client.post("/jobs/workflows/slow/run-sync", json={}).status_code == 403
    assert client.get("/jobs/workflows/slow/jobs").status_code == 403
    # and its own workflow works through each of them
    assert client.post("/dify/v1/workflows/run", json={
        "inputs": {"name": "A"}, "user": "u", "response_mode": "blocking"}).status_code == 200
    assert client.post("/conductor/api/workflow/hello", json={"name": "A"}).status_code == 200
    assert client.post("/jobs/workflows/hello/run", json={"input": {"name": "A"}}
                       ).status_code == 200


def test_a_bound_key_cannot_reach_another_workflow_through_its_graph(keys: Keys) -> None:
    graph = {"inputs": {"name": "A"},
             "nodes": [{"id": "greet", "type": "workflow", "workflow": "slow",
                        "inputs": {"seconds": 0}}]}
    run = keys.bound.post("/workflows/hello/run-sync", json=graph).json()
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "child_rejected", run["error"]
    assert "may not use 'slow'" in run["error"]["message"]
    mapped = {"inputs": {"name": "A"},
              "nodes": [{"id": "greet", "type": "map", "items": [1], "workflow": "slow",
                         "inputs": {"seconds": 0}}]}
    run = keys.bound.post("/workflows/hello/run-sync", json=mapped).json()
    assert run["status"] == "failed" and "may not use 'slow'" in run["error"]["message"], run


def test_runs_are_private_to_their_key_but_an_admin_sees_all(keys: Keys) -> None:
    run = keys.runner.post("/workflows/hello/run", json={"inputs": {"name": "B"}}).json()
    finished(keys.runner, run["id"])
    assert keys.bound.get(f"/runs/{run['id']}").status_code == 404
    assert keys.bound.post(f"/runs/{run['id']}/stop").status_code == 404
    assert keys.admin.get(f"/runs/{run['id']}").json()["id"] == run["id"]
    listed = keys.admin.get("/workflows/hello/runs", params={"limit": 1000}).json()["runs"]
    assert run["id"] in {r["id"] for r in listed}
    mine = keys.bound.get("/workflows/hello/runs", params={"limit": 1000}).json()["runs"]
    assert run["id"] not in {r["id"] for r in mine}


def test_keys_are_managed_by_admins_only(keys: Keys) -> None:
    assert keys.runner.post("/keys", json={"scope": "admin"}).status_code == 403
    assert keys.runner.get("/keys").status_code == 403
    resp = keys.admin.post("/keys", json={"name": "ci", "scope": "run", "workflows": ["slow"]})
    assert resp.status_code == 201, resp.text
    made = resp.json()
    assert made["scope"] == "run" and made["workflows"] == ["slow"]
    listed = keys.admin.get("/keys").json()["keys"]
    assert made["id"] in {k["id"] for k in listed}
    assert all("key" not in k and "hash" not in k for k in listed)
    fresh = keys.server.client(made["key"])
    assert fresh.get("/workflows").json()["workflows"][0]["name"] == "slow"
    bad = keys.admin.post("/keys", json={"scope": "admin", "workflows": ["slow"]})
    assert bad.status_code == 400
    assert keys.admin.delete(f"/keys/{made['id']}").status_code == 204
    assert fresh.get("/workflows").status_code == 401
    assert keys.admin.delete(f"/keys/{made['id']}").status_code == 404


def test_keys_command_takes_db_before_or_after_the_subcommand(tmp_path: Path) -> None:
    server = Server(tmp_path)
    db = str(server.db)
    for args in (("keys", "--db", db, "create"), ("keys", "create", "--db", db),
                 ("keys", "create", "--scope", "admin", "--db", db)):
        done = server.cli(*args)
        assert done.returncode == 0, done.stderr
    listing = server.cli("keys", "list", "--db", db)
    assert listing.returncode == 0 and listing.stdout.count("active") == 3
    assert listing.stdout.count(" admin ") == 1
