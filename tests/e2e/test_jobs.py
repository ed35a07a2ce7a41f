"""The jobs dialect: the seed's run / run-sync / 408 / polling / stream contract."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.e2e.server import Dialect, Started
from tests.eventually import eventually

# (numeric job ids are run numbers: also on PostgreSQL)
ON_BOTH = pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])


@pytest.fixture
def dialect() -> Dialect:
    """The jobs API, under /jobs."""
    return Dialect("/jobs")


@ON_BOTH
def test_run_answers_a_pending_job(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    resp = client.post("/workflows/slow/run", json={})
    assert resp.status_code == 200
    body = resp.json()
    assert body["success"] is True
    job = body["data"]
    assert isinstance(job["id"], int) and job["status"] == "pending"
    assert re.fullmatch(r"job-slow-\d{13}", job["slug"])
    assert isinstance(job["workflowId"], int)
    by_number = client.post(f"/workflows/{job['workflowId']}/run", json={"input": {"seconds": 0}})
    assert by_number.json()["data"]["workflowName"] == "slow"
    latest = client.get(f"/workflows/{job['workflowId']}/latest-job").json()
    assert latest["success"] and latest["data"]["id"] == by_number.json()["data"]["id"]
    listed = client.get("/workflows/slow/jobs").json()["data"]
    assert [j["id"] for j in listed] == [by_number.json()["data"]["id"], job["id"]]


@ON_BOTH
def test_run_sync_returns_the_completed_job(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    resp = client.post("/workflows/branching/run-sync",
                       json={"timeout": 120, "input": {"n": 42}})
    assert resp.status_code == 200
    job = resp.json()["data"]
    assert resp.json()["success"] is True and job["status"] == "completed"
    nodes = {n["id"]: n["data"] for n in job["nodes"]}
    assert nodes["big"] == {"isExecuted": True, "outputs": {"text": "42 is big"}, "errors": [],
                            "status": "succeeded"}
    assert nodes["small"]["isExecuted"] is False and nodes["small"]["errors"] == []
    assert set(nodes) == {"check", "big", "small", "route", "fast", "careful", "fallback",
                          "done"}


def test_run_sync_timeout_is_408_and_the_job_goes_on(
        start_server: Callable[..., Started]) -> None:
    client = start_server().client
    began = time.monotonic()
    resp = client.post("/workflows/slow/run-sync", json={"timeout": 1, "input": {"seconds": 2}})
    assert resp.status_code == 408 and time.monotonic() - began < 1.8
    body = resp.json()
    assert body["success"] is False
    assert body["message"] == ("Job execution timeout: the job is still running but exceeded "
                               "the wait time.")
    data = body["data"]
    assert set(data) == {"job_id", "slug", "status", "timeout", "elapsed_seconds"}
    assert data["status"] in {"pending", "running"} and data["timeout"] == 1
    assert 0.9 < data["elapsed_seconds"] < 1.8
    eventually(lambda: client.get("/workflows/slow/latest-job").json()["data"]["status"]
               == "completed", interval=0.05, what="the job completed")
    too_long = client.post("/workflows/slow/run-sync", json={"timeout": 601})
    assert too_long.status_code == 400 and too_long.json()["success"] is False


def test_graph_override_and_failures_on_the_node(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    override = {"nodes": [{"id": "a", "type": "template", "template": "one"},
                          {"id": "b", "type": "template", "template": "{{ nodes.a.text }}!"}],
                "edges": [{"source": "a", "target": "b"}], "input": {"name": "x"}}
    job = client.post("/workflows/hello/run-sync", json=override).json()["data"]
    assert [n["id"] for n in job["nodes"]] == ["a", "b"]
    assert job["nodes"][1]["data"]["outputs"] == {"text": "one!"}
    stored = client.post("/workflows/hello/run-sync", json={"input": {"name": "x"}}).json()
    assert [n["id"] for n in stored["data"]["nodes"]] == ["greet"]
    failing = {"nodes": [{"id": "ok", "type": "template", "template": "fine"},
                         {"id": "bad", "type": "template", "template": "{{ [][1] }}"}],
               "edges": [{"source": "ok", "target": "bad"}], "input": {"name": "x"}}
    failed = client.post("/workflows/hello/run-sync", json=failing).json()
    assert failed["success"] is False and failed["data"]["status"] == "failed"
    nodes = {n["id"]: n["data"] for n in failed["data"]["nodes"]}
    assert nodes["ok"]["errors"] == [] and len(nodes["bad"]["errors"]) == 1
    assert "no element 1" in nodes["bad"]["errors"][0]
    cycle = client.post("/workflows/hello/run", json={
        "nodes": override["nodes"], "edges": [{"source": "a", "target": "b"},
                                              {"source": "b", "target": "a"}]})
    assert cycle.status_code == 400 and "cycle" in cycle.json()["message"]


def test_stream_init_update_done(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    job = client.post("/workflows/slow/run", json={"input": {"seconds": 0.3}}).json()["data"]
    with connect_sse(client, "GET", f"/jobs/{job['id']}/stream") as source:
        frames: list[dict[str, Any]] = [json.loads(sse.data) for sse in source.iter_sse()]
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "init" and kinds[-1] == "done" and "update" in kinds
    assert frames[0]["job"]["id"] == job["id"]
    assert frames[-1]["status"] == "completed"
    assert frames[-1]["result"] == {"end": {"text": "woke up after 0.3s"}}
    assert client.get("/jobs/999999/stream").status_code == 404


def test_errors(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    missing = client.post("/workflows/nope/run", json={})
    assert missing.status_code == 404 and missing.json()["success"] is False
    assert client.post("/workflows/9999/run", json={}).status_code == 404
    anonymous = httpx.post(f"{server.url}/jobs/workflows/hello/run", json={})
    assert anonymous.status_code == 401 and anonymous.json()["success"] is False
    bad = client.post("/workflows/hello/run", json={"input": {"name": 5}})
    assert bad.status_code == 400 and "inputs.name" in bad.json()["message"]
