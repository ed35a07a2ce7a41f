"""The Dify dialect: the seed document's requests and answers, and two published clients."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.e2e.clients import run_client
from tests.e2e.server import Dialect, Started, node_status
from tests.eventually import NotYet, eventually


@pytest.fixture
def dialect() -> Dialect:
    """Dify's API; its keys are app keys, bound to one workflow."""
    return Dialect("/dify/v1", workflow="streamed")


def test_blocking_run_has_the_documented_shape(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    resp = client.post("/workflows/run", json={"inputs": {"seconds": 0.1},
                                               "response_mode": "blocking", "user": "abc-123"})
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"task_id", "workflow_run_id", "data"}
    data = body["data"]
    assert set(data) >= {"id", "workflow_id", "status", "outputs", "error", "elapsed_time",
                         "total_tokens", "total_steps", "created_at", "finished_at"}
    assert data["id"] == body["workflow_run_id"] == body["task_id"]
    assert data["status"] == "succeeded" and data["workflow_id"] == "streamed:1"
    assert data["outputs"] == {"bye": {"text": "bye"}} and data["error"] is None
    assert data["total_steps"] == 3 and isinstance(data["total_tokens"], int)
    assert isinstance(data["created_at"], int) and isinstance(data["finished_at"], int)
    assert data["elapsed_time"] >= 0.1


def test_streaming_frames(start_server: Callable[..., Started]) -> None:
    client = start_server({"FLOWRUN_SSE_PING_S": "0.2"}).client
    frames: list[dict[str, Any]] = []
    pings = 0
    with client.stream("POST", "/workflows/run", json={
            "inputs": {"seconds": 0.5}, "response_mode": "streaming", "user": "abc-123"},
            headers={"Accept": "text/event-stream"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line == "event: ping":
                pings += 1
            elif line.startswith("data: "):
                frames.append(json.loads(line[6:]))
    assert pings >= 1
    names = [f["event"] for f in frames]
    assert names[0] == "workflow_started" and names[-1] == "workflow_finished"
    assert names.count("text_chunk") == 3
    run_id = frames[0]["workflow_run_id"]
    assert all(f["task_id"] == run_id and f["workflow_run_id"] == run_id for f in frames)
    started = frames[0]["data"]
    assert started["id"] == run_id and started["workflow_id"] == "streamed:1"
    assert isinstance(started["created_at"], int)
    node_started = next(f["data"] for f in frames if f["event"] == "node_started")
    assert set(node_started) >= {"id", "node_id", "node_type", "title", "index",
                                 "predecessor_node_id", "inputs", "created_at"}
    chunk = next(f["data"] for f in frames if f["event"] == "text_chunk")
    assert chunk == {"text": "hello ", "from_variable_selector": ["hello", "text"]}
    node_finished = next(f["data"] for f in frames if f["event"] == "node_finished")
    assert set(node_finished) >= {"id", "node_id", "node_type", "title", "index",
                                  "predecessor_node_id", "inputs", "process_data", "outputs",
                                  "status", "error", "elapsed_time", "execution_metadata",
                                  "created_at"}
    finished = frames[-1]["data"]
    assert set(finished) >= {"id", "workflow_id", "status", "outputs", "error", "elapsed_time",
                             "total_tokens", "total_steps", "created_at", "finished_at"}
    assert finished["status"] == "succeeded" and finished["total_steps"] == 3


def test_async_mode_and_idempotency(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    body = {"inputs": {"seconds": 0.2}, "response_mode": "async", "user": "abc-123"}
    first = client.post("/workflows/run", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202
    accepted = first.json()
    assert accepted["task_id"] == accepted["workflow_run_id"] == accepted["data"]["id"]
    assert accepted["data"]["status"] == "scheduled"
    assert accepted["data"]["workflow_id"] == "streamed:1"
    assert isinstance(accepted["data"]["created_at"], int)
    again = client.post("/workflows/run", json=body, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200 and again.json() == accepted
    too_long = client.post("/workflows/run", json=body, headers={"Idempotency-Key": "x" * 65})
    assert too_long.status_code == 400 and too_long.json()["code"] == "invalid_param"
    run_id = accepted["workflow_run_id"]
    def succeeded() -> dict[str, Any] | NotYet:
        detail: dict[str, Any] = client.get(f"/workflows/run/{run_id}").json()
        if detail["status"] == "succeeded":
            return detail
        assert detail["status"] in {"scheduled", "running"}, detail
        return NotYet(detail)

    detail = eventually(succeeded, interval=0.05, what=f"run {run_id} succeeded")
    assert set(detail) == {"id", "workflow_id", "status", "inputs", "outputs", "error",
                           "total_steps", "total_tokens", "created_at", "finished_at",
                           "elapsed_time"}
    assert json.loads(detail["inputs"]) == {"seconds": 0.2}


def test_run_a_specific_version(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    for workflow_id in ("streamed:1", "1"):
        resp = client.post(f"/workflows/{workflow_id}/run",
                           json={"inputs": {"seconds": 0}, "user": "u"})
        assert resp.status_code == 200 and resp.json()["data"]["workflow_id"] == "streamed:1"
    missing = client.post("/workflows/streamed:9/run", json={"inputs": {}, "user": "u"})
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    other = client.post("/workflows/hello:1/run", json={"inputs": {}, "user": "u"})
    assert other.status_code == 404


def test_stop_really_stops(start_server: Callable[..., Started]) -> None:
    client = start_server(workflow="slow").client
    run = client.post("/workflows/run", json={"inputs": {"seconds": 60},
                                              "response_mode": "async", "user": "u"}).json()
    run_id = run["task_id"]
    eventually(lambda: client.get(f"/workflows/run/{run_id}").json()["status"] == "running",
               what=f"run {run_id} running")
    no_user = client.post(f"/workflows/tasks/{run_id}/stop", json={})
    assert no_user.status_code == 400 and no_user.json()["code"] == "invalid_param"
    stopped = client.post(f"/workflows/tasks/{run_id}/stop", json={"user": "u"})
    assert stopped.status_code == 200 and stopped.json() == {"result": "success"}
    detail = client.get(f"/workflows/run/{run_id}").json()
    assert detail["status"] == "stopped"


def test_events_reattach_with_last_event_id(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    run = client.post("/workflows/run", json={"inputs": {"seconds": 0.2}, "user": "ann"}).json()
    run_id = run["workflow_run_id"]
    with connect_sse(client, "GET", f"/workflow/{run_id}/events?user=ann") as source:
        everything = [(sse.id, json.loads(sse.data)) for sse in source.iter_sse()]
    assert everything[-1][1]["event"] == "workflow_finished"
    with connect_sse(client, "GET", f"/workflow/{run_id}/events?user=ann",
                     headers={"Last-Event-ID": "3"}) as source:
        rest = [(sse.id, json.loads(sse.data)) for sse in source.iter_sse()]
    assert rest == everything[3:]
    other_user = client.get(f"/workflow/{run_id}/events?user=bob")
    assert other_user.status_code == 404
    assert client.get(f"/workflows/run/{run_id}?user=bob").status_code == 404


def test_errors_use_difys_envelope(start_server: Callable[..., Started]) -> None:
    server, key, client = start_server()
    no_user = client.post("/workflows/run", json={"inputs": {}})
    assert no_user.status_code == 400
    assert set(no_user.json()) == {"status", "code", "message"}
    assert no_user.json()["code"] == "invalid_param"
    bad_input = client.post("/workflows/run", json={"inputs": {"seconds": "x"}, "user": "u"})
    assert bad_input.status_code == 400 and "inputs.seconds" in bad_input.json()["message"]
    anonymous = httpx.post(f"{server.url}/dify/v1/workflows/run",
                           json={"inputs": {}, "user": "u"})
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"
    unknown = client.get("/workflows/run/no-such-run")
    assert unknown.status_code == 404 and unknown.json() == {
        "status": 404, "code": "not_found", "message": "run 'no-such-run' not found"}
    unbound = httpx.post(f"{server.url}/dify/v1/workflows/run",
                         headers={"Authorization": f"Bearer {server.create_key()}"},
                         json={"inputs": {}, "user": "u"})
    assert unbound.status_code == 400


DIFY_PYTHON_SDK = """
import json, sys, httpx
from dify_client import WorkflowClient
url, key = sys.argv[1], sys.argv[2]
client = WorkflowClient(key, base_url=url, max_retries=0)
out = {}
done = client.run({"seconds": 0.1}, response_mode="blocking", user="alice")
out["blocking"] = done.json()
out["result"] = client.get_result(out["blocking"]["workflow_run_id"]).json()
long = httpx.post(url + "/workflows/run", headers={"Authorization": "Bearer " + key},
                  json={"inputs": {"seconds": 60}, "response_mode": "async", "user": "alice"})
task = long.json()["task_id"]
import time
deadline = time.time() + 15
while client.get_result(task).json()["status"] != "running" and time.time() < deadline:
    time.sleep(0.05)
out["stop"] = client.stop(task, "alice").json()
out["after_stop"] = client.get_result(task).json()
print(json.dumps(out))
"""


def test_dify_python_sdk(start_server: Callable[..., Started]) -> None:
    server, key, _ = start_server(workflow="slow")
    out = run_client("dify-python-sdk", DIFY_PYTHON_SDK, f"{server.url}/dify/v1", key)
    assert out["blocking"]["data"]["status"] == "succeeded"
    assert out["result"]["status"] == "succeeded"
    assert out["result"]["outputs"] == {"end": {"text": "woke up after 0.1s"}}
    assert out["stop"] == {"result": "success"}
    assert out["after_stop"]["status"] == "stopped"


DIFY_CLIENT_PYTHON = """
import json, sys, time
from dify_client import Client, models
url, key = sys.argv[1], sys.argv[2]
client = Client(api_key=key, api_base=url)
out = {}
blocking = client.run_workflows(models.WorkflowsRunRequest(
    inputs={"seconds": 0.1}, response_mode=models.ResponseMode.BLOCKING, user="bob"),
    timeout=60)
out["blocking"] = {"task_id": blocking.task_id, "status": str(blocking.data.status),
                   "outputs": blocking.data.outputs}
arrivals = []
for event in client.run_workflows(models.WorkflowsRunRequest(
        inputs={"seconds": 1}, response_mode=models.ResponseMode.STREAMING, user="bob"),
        timeout=60):
    arrivals.append((time.monotonic(), str(event.event)))
out["stream"] = [name for _, name in arrivals]
out["spread"] = arrivals[-1][0] - arrivals[0][0]
def field(data, name):  # the client gives models or, for some events, plain dicts
    return data.get(name) if isinstance(data, dict) else getattr(data, name, None)
seen = []
for event in client.run_workflows(models.WorkflowsRunRequest(
        inputs={"seconds": 60}, response_mode=models.ResponseMode.STREAMING, user="bob"),
        timeout=60):
    seen.append(str(event.event))
    if str(event.event) == "node_started" and field(event.data, "node_id") == "pause":
        stop = client.stop_workflows(event.task_id, models.StopRequest(user="bob"))
        out["stop"] = stop.result
    if str(event.event) == "workflow_finished":
        out["final_status"] = str(field(event.data, "status"))
out["mid_stream"] = seen
print(json.dumps(out))
"""


def test_dify_client_python(start_server: Callable[..., Started]) -> None:
    server, key, _ = start_server()
    out = run_client("dify-client-python", DIFY_CLIENT_PYTHON, f"{server.url}/dify/v1", key)
    assert out["blocking"]["status"] == "succeeded"
    assert out["blocking"]["outputs"] == {"bye": {"text": "bye"}}
    assert out["stream"][0] == "workflow_started" and out["stream"][-1] == "workflow_finished"
    assert out["stream"].count("text_chunk") == 3
    assert out["spread"] > 0.8  # frames arrived while the run went on, not all at once
    assert out["stop"] == "success" and out["final_status"] == "stopped"
    assert out["mid_stream"][-1] == "workflow_finished"


def test_one_run_many_views(start_server: Callable[..., Started]) -> None:
    server, key, client = start_server()
    run = client.post("/workflows/run", json={"inputs": {"seconds": 0}, "user": "u"}).json()
    native = httpx.get(f"{server.url}/runs/{run['workflow_run_id']}",
                       headers={"Authorization": f"Bearer {key}"}).json()
    assert native["status"] == "succeeded" and native["user"] == "u"
    assert node_status(native, "bye") == "succeeded"
