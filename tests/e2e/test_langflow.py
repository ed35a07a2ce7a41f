"""The Langflow v2 dialect: the seed's requests and answers, resume, stop, langflow-sdk."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.e2e.clients import run_client
from tests.e2e.server import Dialect, Started
from tests.eventually import NotYet, eventually

FLOW = "flow_67ccd2be17f0819081ff3bb2cf6508e60bb6a6b452d3795b"
SEED_INPUTS = {"ChatInput-abc.input_type": "chat", "ChatInput-abc.input_value": "what is 2+2",
               "ChatInput-abc.session_id": "session-123"}


@pytest.fixture
def dialect() -> Dialect:
    """Langflow's API: the key goes in x-api-key; sync runs may take a while."""
    return Dialect("/langflow", auth_header="x-api-key", auth_scheme="", timeout=60)


def test_seed_sync_request(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    resp = client.post("/api/v2/workflows", json={"flow_id": FLOW, "background": False,
                                                  "inputs": SEED_INPUTS})
    assert resp.status_code == 200
    body = resp.json()
    assert body["flow_id"] == FLOW and body["object"] == "response"
    assert isinstance(body["job_id"], str) and isinstance(body["created_at"], int)
    assert body["status"] == "completed" and body["errors"] == []
    assert body["inputs"] == {**SEED_INPUTS, "delay": 0}
    assert body["outputs"] == {"ChatOutput-xyz": {
        "type": "message", "component_id": "ChatOutput-xyz", "status": "completed",
        "content": "2 + 2 equals 4.", "metadata": body["outputs"]["ChatOutput-xyz"]["metadata"]}}


def test_seed_background_status_and_stop(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    resp = client.post("/api/v2/workflows", json={
        "flow_id": FLOW, "background": True, "stream": False,
        "inputs": {**SEED_INPUTS, "ChatInput-abc.input_value": "Process this in the background",
                   "delay": 0.3}})
    assert resp.status_code == 200
    job = resp.json()
    assert set(job) >= {"job_id", "created_timestamp", "status", "errors"}
    assert job["status"] == "queued" and job["errors"] == [] and job["object"] == "job"
    assert job["links"] == {"status": f"/langflow/api/v2/workflows?job_id={job['job_id']}",
                            "events": f"/langflow/api/v2/workflows/{job['job_id']}/events",
                            "stop": "/langflow/api/v2/workflows/stop"}
    def ended() -> dict[str, Any] | NotYet:
        status: dict[str, Any] = client.get("/api/v2/workflows",
                                            params={"job_id": job["job_id"]}).json()
        return NotYet(status) if status.get("status") in {"queued", "in_progress"} else status

    status = eventually(ended, interval=0.05, what=f"job {job['job_id']} ended")
    assert status["object"] == "response" and status["status"] == "completed"
    assert status["outputs"]["ChatOutput-xyz"]["content"] == "Processing complete..."
    stop = client.post("/api/v2/workflows/stop", json={"job_id": job["job_id"]}).json()
    assert stop == {"job_id": job["job_id"],
                    "message": f"Job {job['job_id']} already finished (completed)."}
    long = client.post("/api/v2/workflows", json={"flow_id": FLOW, "mode": "background",
                                                  "inputs": {"delay": 60}}).json()
    stopped = client.post("/api/v2/workflows/stop", json={"job_id": long["job_id"]}).json()
    assert stopped == {"job_id": long["job_id"],
                       "message": f"Job {long['job_id']} cancelled successfully."}
    after = client.get("/api/v2/workflows", params={"job_id": long["job_id"]}).json()
    assert after["status"] == "cancelled"


def test_tweaks_and_graph_data(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    body = client.post("/api/v2/workflows", json={
        "flow_id": FLOW, "mode": "sync",
        "tweaks": {"ChatInput-abc": {"input_value": "2+2?"}}}).json()
    assert body["outputs"]["ChatOutput-xyz"]["content"] == "2 + 2 equals 4."
    component_dict = client.post("/api/v2/workflows", json={
        "flow_id": FLOW, "inputs": {"ChatInput-abc": {"input_value": "2+2"}}}).json()
    assert component_dict["outputs"]["ChatOutput-xyz"]["content"] == "2 + 2 equals 4."
    data = {"nodes": [{"id": "only", "type": "template", "template": "replaced"}], "edges": []}
    replaced = client.post("/api/v2/workflows", json={"flow_id": FLOW, "data": data}).json()
    assert replaced["outputs"] == {"only": {"type": "message", "component_id": "only",
                                            "status": "completed", "content": "replaced",
                                            "metadata": replaced["outputs"]["only"]["metadata"]}}


def test_stream_and_resume(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    with connect_sse(client, "POST", "/api/v2/workflows", json={
            "flow_id": FLOW, "stream": True, "inputs": {"delay": 0.2}}) as source:
        frames = [(sse.id, sse.event, json.loads(sse.data)) for sse in source.iter_sse()]
    assert [f[0] for f in frames] == [str(i) for i in range(len(frames))]
    assert frames[0][1] == "start" and frames[-1][1] == "end"
    assert all(f[2]["event"] == f[1] for f in frames)
    job_id = frames[0][2]["data"]["id"]
    with connect_sse(client, "GET", f"/api/v2/workflows/{job_id}/events",
                     headers={"Last-Event-ID": "2"}) as source:
        rest = [(sse.id, sse.event, json.loads(sse.data)) for sse in source.iter_sse()]
    assert rest == frames[3:]
    with connect_sse(client, "GET", "/api/v2/workflows",
                     params={"job_id": job_id, "stream": "true", "sequence_id": "4"}) as source:
        tail = [(sse.id, sse.event, json.loads(sse.data)) for sse in source.iter_sse()]
    assert tail == frames[5:]


def test_errors(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()

    def detail(resp: httpx.Response) -> dict[str, Any]:
        body = resp.json()
        assert set(body) == {"detail"} and {"error", "code", "message"} <= set(body["detail"])
        return dict(body["detail"])

    missing_flow = client.post("/api/v2/workflows", json={"flow_id": "nope"})
    assert missing_flow.status_code == 404 and detail(missing_flow)["code"] == "FLOW_NOT_FOUND"
    assert detail(missing_flow)["message"] == ("Flow 'nope' does not exist. Verify the flow_id "
                                               "and try again.")
    no_job = client.get("/api/v2/workflows")
    assert no_job.status_code == 400 and detail(no_job)["code"] == "MISSING_PARAMETER"
    unknown = client.get("/api/v2/workflows", params={"job_id": "x"})
    assert unknown.status_code == 404 and detail(unknown)["code"] == "JOB_NOT_FOUND"
    both = client.post("/api/v2/workflows", json={"flow_id": FLOW, "background": True,
                                                  "stream": True})
    assert both.status_code == 400
    anonymous = httpx.post(f"{server.url}/langflow/api/v2/workflows", json={"flow_id": FLOW})
    assert anonymous.status_code == 401 and detail(anonymous)["code"] == "UNAUTHORIZED"
    bad_tweak = client.post("/api/v2/workflows", json={
        "flow_id": FLOW, "inputs": {"ChatInput-abc.colour": "red"}})
    assert bad_tweak.status_code == 400 and detail(bad_tweak)["code"] == "INVALID_FLOW_DATA"
    failed = client.post("/api/v2/workflows", json={
        "flow_id": FLOW, "data": {"nodes": [{"id": "x", "type": "template",
                                             "template": "{{ [][1] }}"}], "edges": []}})
    body = failed.json()
    assert failed.status_code == 200 and body["status"] == "failed"
    assert body["errors"][0]["code"] == "EXECUTION_ERROR"
    job = client.get("/api/v2/workflows", params={"job_id": body["job_id"]})
    assert job.status_code == 500 and detail(job)["code"] == "JOB_FAILED"


def test_background_idempotency_key(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    request = {"flow_id": FLOW, "mode": "background", "idempotency_key": "once",
               "inputs": {"delay": 0.2}}
    first = client.post("/api/v2/workflows", json=request).json()
    assert client.post("/api/v2/workflows", json=request).json()["job_id"] == first["job_id"]


LANGFLOW_SDK = """
import json, sys
from langflow_sdk.client import Client
url, key, flow = sys.argv[1], sys.argv[2], sys.argv[3]
with Client(url, api_key=key) as client:
    sent = client._request("POST", "/api/v2/workflows", json={
        "flow_id": flow, "background": False,
        "inputs": {"ChatInput-abc.input_value": "what is 2+2"}})
    body = sent.json()
    status = client._request("GET", "/api/v2/workflows", params={"job_id": body["job_id"]})
    try:
        Client(url, api_key="fr_wrong")._request("POST", "/api/v2/workflows",
                                                 json={"flow_id": "x"})
        denied = None
    except Exception as exc:
        denied = type(exc).__name__
print(json.dumps({"run": body, "status": status.json(), "denied": denied}))
"""


def test_langflow_sdk_reaches_the_api(start_server: Callable[..., Started]) -> None:
    server, key, _ = start_server()
    out = run_client("langflow-sdk", LANGFLOW_SDK, f"{server.url}/langflow", key, FLOW)
    assert out["run"]["status"] == "completed"
    assert out["run"]["outputs"]["ChatOutput-xyz"]["content"] == "2 + 2 equals 4."
    assert out["status"]["status"] == "completed"
    assert out["denied"] == "LangflowAuthError"
