"""End to end over a real uvicorn process: runs, run-sync, stop, priority, limits, auth."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Server, Started, finished, node_status, wait_for
from tests.eventually import eventually

# (the tests that read runs by key and resume them also run on PostgreSQL)
ON_BOTH = pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])


def test_async_run_then_poll(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    resp = client.post("/workflows/hello/run", json={"inputs": {"name": "Ada"}})
    assert resp.status_code == 202
    run = resp.json()
    assert resp.headers["location"] == f"/runs/{run['id']}"
    assert run["status"] == "queued" and run["workflow"] == "hello" and run["version"] == 1
    done = finished(client, run["id"])
    assert done["status"] == "succeeded"
    assert done["outputs"] == {"greeting": "Hello, Ada!"}
    assert [(n["id"], n["status"], n["attempts"]) for n in done["nodes"]] == [
        ("greet", "succeeded", 1)]
    assert done["steps"] == 1 and done["elapsed_s"] >= 0


def test_run_sync_returns_the_finished_run(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    resp = client.post("/workflows/fanout/run-sync", json={"inputs": {"topic": "x"},
                                                            "correlation_id": "c-1"})
    assert resp.status_code == 200
    run = resp.json()
    assert run["status"] == "succeeded" and run["correlation_id"] == "c-1"
    assert run["outputs"] == {"join": {"text": "a slept 0.2, b slept 0.2, c said X"}}
    assert {n["id"] for n in run["nodes"]} == {"start", "a", "b", "c", "join"}


def test_run_sync_timeout_is_408_and_the_run_goes_on(
        start_server: Callable[..., Started]) -> None:
    client = start_server().client
    began = time.monotonic()
    resp = client.post("/workflows/slow/run-sync?timeout=1", json={"inputs": {"seconds": 2}})
    elapsed = time.monotonic() - began
    assert resp.status_code == 408
    assert elapsed < 1.5
    body = resp.json()
    assert body["status"] == "running" and body["timeout"] == 1
    assert 0.9 <= body["elapsed_s"] < 1.5
    done = finished(client, body["run_id"])
    assert done["status"] == "succeeded"


def test_stop_a_running_run(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    run = client.post("/workflows/slow/run", json={"inputs": {"seconds": 60}}).json()
    wait_for(client, run["id"], lambda r: node_status(r, "wait") == "running")
    began = time.monotonic()
    resp = client.post(f"/runs/{run['id']}/stop")
    assert resp.status_code == 200
    assert time.monotonic() - began < 2
    stopped = resp.json()
    assert stopped["status"] == "stopped"
    assert node_status(stopped, "begin") == "succeeded"
    assert node_status(stopped, "wait") == "stopped"
    assert node_status(stopped, "end") is None
    assert httpx.get(f"{server.url}/healthz").json()["running"] == 0
    # stopping a finished run returns it as it is
    again = client.post(f"/runs/{run['id']}/stop")
    assert again.status_code == 200 and again.json()["status"] == "stopped"


def test_stop_a_queued_run(start_server: Callable[..., Started]) -> None:
    client = start_server({"FLOWRUN_MAX_CONCURRENT_RUNS": "1"}).client
    blocker = client.post("/workflows/slow/run", json={"inputs": {"seconds": 60}}).json()
    queued = client.post("/workflows/hello/run", json={"inputs": {"name": "q"}}).json()
    stopped = client.post(f"/runs/{queued['id']}/stop").json()
    assert stopped["status"] == "stopped" and stopped["nodes"] == []
    assert client.post(f"/runs/{blocker['id']}/stop").json()["status"] == "stopped"


def test_priority_order_with_one_slot(start_server: Callable[..., Started],
                                      tmp_path: Path) -> None:
    client = start_server({"FLOWRUN_MAX_CONCURRENT_RUNS": "1"}).client
    log = tmp_path / "order.log"
    blocker = client.post("/workflows/counted/run", json={
        "inputs": {"file": str(log), "label": "blocker", "seconds": 0.5}}).json()
    wait_for(client, blocker["id"], lambda r: r["status"] == "running")
    ids = []
    for label, priority in [("p0a", 0), ("p5a", 5), ("p0b", 0), ("p9", 9), ("p5b", 5)]:
        resp = client.post("/workflows/counted/run", json={
            "inputs": {"file": str(log), "label": label}, "priority": priority})
        assert resp.status_code == 202 and resp.json()["priority"] == priority
        ids.append(resp.json()["id"])
    for run_id in ids:
        assert finished(client, run_id)["status"] == "succeeded"
    firsts = [line.split("-")[0] for line in log.read_text().split() if line.endswith("-first")]
    assert firsts == ["blocker", "p9", "p5a", "p5b", "p0a", "p0b"]


def test_full_queue_is_429_and_writes_nothing(start_server: Callable[..., Started]) -> None:
    client = start_server({"FLOWRUN_MAX_CONCURRENT_RUNS": "1",
                           "FLOWRUN_MAX_QUEUED": "2"}).client
    blocker = client.post("/workflows/slow/run", json={"inputs": {"seconds": 60}}).json()
    wait_for(client, blocker["id"], lambda r: r["status"] == "running")
    for _ in range(2):
        assert client.post("/workflows/slow/run", json={}).status_code == 202
    resp = client.post("/workflows/slow/run", json={})
    assert resp.status_code == 429
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["code"] == "queue_full" and int(resp.headers["retry-after"]) >= 1
    assert len(client.get("/workflows/slow/runs").json()["runs"]) == 3


@ON_BOTH
def test_auth_and_run_ownership(server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    key_a, key_b = server.create_key(), server.create_key()
    server.start()
    anonymous = server.client(None)
    resp = anonymous.post("/workflows/hello/run", json={"inputs": {"name": "x"}})
    assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"
    assert server.client("fr_wrong").get("/workflows").status_code == 401
    assert anonymous.get("/healthz").status_code == 200
    a = server.client(key_a)
    b = server.client(key_b)
    via_header = httpx.post(f"{server.url}/workflows/hello/run", headers={"x-api-key": key_a},
                            json={"inputs": {"name": "x"}})
    assert via_header.status_code == 202
    run = a.post("/workflows/hello/run-sync", json={"inputs": {"name": "x"}}).json()
    assert b.get(f"/runs/{run['id']}").status_code == 404
    assert b.get(f"/runs/{run['id']}").json()["code"] == "run_not_found"
    assert b.post(f"/runs/{run['id']}/stop").status_code == 404
    assert b.get("/workflows/hello/runs").json()["runs"] == []
    assert len(a.get("/workflows/hello/runs").json()["runs"]) == 2
    revoked = server.cli("keys", "--db", server.target, "revoke", key_b[:10])
    assert revoked.returncode == 0
    eventually(lambda: b.get("/workflows").status_code == 401,  # a key is cached for 5 s
               timeout=10, interval=0.1, what="the revoked key refused")


@ON_BOTH
def test_restart_mid_run_resumes_without_rerunning_nodes(
        start_server: Callable[..., Started], tmp_path: Path) -> None:
    server, _, client = start_server()
    log = tmp_path / "count.log"
    run = client.post("/workflows/counted/run", json={
        "inputs": {"file": str(log), "label": "r", "seconds": 1.5}}).json()
    wait_for(client, run["id"], lambda r: node_status(r, "wait") == "running")
    server.kill()
    server.start()
    done = finished(client, run["id"], timeout=20)
    assert done["status"] == "succeeded"
    assert log.read_text().split() == ["r-first", "r-last"]
    assert [n["id"] for n in done["nodes"]] == ["first", "wait", "last"]


def test_queued_runs_survive_a_kill(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server({"FLOWRUN_MAX_CONCURRENT_RUNS": "1"})
    blocker = client.post("/workflows/slow/run", json={"inputs": {"seconds": 60}}).json()
    queued = [client.post("/workflows/hello/run", json={"inputs": {"name": str(i)}}).json()
              for i in range(5)]
    server.kill()
    server.start()
    client.post(f"/runs/{blocker['id']}/stop")
    for run in queued:
        assert finished(client, run["id"])["status"] == "succeeded"


def test_new_database_gets_a_printed_key_once(server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    server.start()
    server.stop()
    printed = [w for w in server.log.read_text().split() if w.startswith("fr_")]
    assert len(printed) == 1
    server.start()
    client = server.client(printed[0])
    assert client.get("/workflows").status_code == 200
    assert [w for w in server.log.read_text().split() if w.startswith("fr_")] == printed


def test_sigterm_exits_cleanly_and_the_run_resumes(start_server: Callable[..., Started],
                                                    tmp_path: Path) -> None:
    server, _, client = start_server()
    log = tmp_path / "count.log"
    run = client.post("/workflows/counted/run", json={
        "inputs": {"file": str(log), "label": "t", "seconds": 1}}).json()
    wait_for(client, run["id"], lambda r: node_status(r, "wait") == "running")
    assert server.stop() == 0
    server.start()
    assert finished(client, run["id"])["status"] == "succeeded"
    assert log.read_text().split() == ["t-first", "t-last"]
