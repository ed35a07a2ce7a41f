"""The Conductor dialect: the seed's start call, run control, idempotency, conductor-python."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.e2e.clients import run_client
from tests.e2e.server import Dialect, Server, Started
from tests.eventually import NotYet, eventually

TERMINAL = {"COMPLETED", "FAILED", "TIMED_OUT", "TERMINATED"}


@pytest.fixture
def dialect() -> Dialect:
    """Conductor's API: the key goes in X-Authorization, without a scheme."""
    return Dialect("/conductor/api", auth_header="X-Authorization", auth_scheme="")


def start(client: httpx.Client, name: str, body: dict[str, Any] | None = None,
          **params: Any) -> str:
    resp = client.post(f"/workflow/{name}", json=body or {}, params=params,
                       headers={"Accept": "text/plain"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return resp.text


def reached(client: httpx.Client, run_id: str, check: Callable[[dict[str, Any]], bool],
            timeout: float = 15) -> dict[str, Any]:
    """The workflow ``run_id`` once ``check`` holds of it."""
    def seen() -> dict[str, Any] | NotYet:
        workflow: dict[str, Any] = client.get(f"/workflow/{run_id}").json()
        return workflow if check(workflow) else NotYet(workflow)

    return eventually(seen, timeout=timeout, what=f"workflow {run_id} in the expected state")


def test_seed_start_by_name_answers_the_id_as_text(
        start_server: Callable[..., Started]) -> None:
    client = start_server().client
    run_id = start(client, "hello", {"name": "someValue"}, priority=0)
    assert len(run_id) == 36 and run_id.count("-") == 4
    done = reached(client, run_id, lambda w: w["status"] in TERMINAL)
    assert done["status"] == "COMPLETED"
    assert done["output"] == {"greeting": "Hello, someValue!"}
    missing = client.post("/workflow/DemoWorkflow", json={"input1": "someValue"})
    assert missing.status_code == 404
    body = missing.json()
    assert body["status"] == 404 and body["code"] == "NOT_FOUND" and body["message"]


def test_workflow_json_and_status(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    run_id = start(client, "branching", {"n": 3}, correlationId="c-9", priority=7, version=1)
    workflow = reached(client, run_id, lambda w: w["status"] in TERMINAL)
    for field in ("workflowId", "workflowName", "workflowVersion", "correlationId", "status",
                  "startTime", "endTime", "input", "output", "priority",
                  "reasonForIncompletion", "tasks", "createTime", "updateTime"):
        assert field in workflow, field
    assert workflow["workflowId"] == run_id and workflow["workflowName"] == "branching"
    assert workflow["workflowVersion"] == 1 and workflow["correlationId"] == "c-9"
    assert workflow["priority"] == 7 and workflow["input"] == {"n": 3, "mode": "fast"}
    assert workflow["endTime"] >= workflow["startTime"] > 1_700_000_000_000
    tasks = {t["referenceTaskName"]: t for t in workflow["tasks"]}
    assert tasks["check"]["status"] == "COMPLETED" and tasks["big"]["status"] == "SKIPPED"
    assert tasks["check"]["workflowInstanceId"] == run_id
    without = client.get(f"/workflow/{run_id}", params={"includeTasks": "false"}).json()
    assert without["tasks"] == []
    status = client.get(f"/workflow/{run_id}/status", params={"includeOutput": "true"}).json()
    assert status == {"workflowId": run_id, "correlationId": "c-9", "status": "COMPLETED",
                      "output": workflow["output"]}
    assert client.get("/workflow/no-such-id").status_code == 404


def test_start_workflow_request_and_idempotency(
        start_server: Callable[..., Started]) -> None:
    client = start_server().client
    request = {"name": "slow", "input": {"seconds": 30}, "correlationId": "x", "priority": 3,
               "idempotencyKey": "order-1", "idempotencyStrategy": "RETURN_EXISTING"}
    first = client.post("/workflow", json=request)
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain")
    assert client.post("/workflow", json=request).text == first.text
    fail = client.post("/workflow", json={**request, "idempotencyStrategy": "FAIL"})
    assert fail.status_code == 409 and fail.json()["code"] == "CONFLICT"
    running = client.post("/workflow", json={**request,
                                             "idempotencyStrategy": "FAIL_ON_RUNNING"})
    assert running.status_code == 409
    headers = {"X-Idempotency-key": "h-1"}
    no_strategy = client.post("/workflow/hello", json={"name": "a"}, headers=headers)
    assert no_strategy.status_code == 400 and no_strategy.json()["code"] == "INVALID_INPUT"
    headers["X-on-conflict"] = "RETURN_EXISTING"
    one = client.post("/workflow/hello", json={"name": "a"}, headers=headers).text
    assert client.post("/workflow/hello", json={"name": "a"}, headers=headers).text == one
    client.delete(f"/workflow/{first.text}")


async def test_hundred_concurrent_starts_with_one_key(
        start_server: Callable[..., Started]) -> None:
    server, key, _ = start_server()
    answers: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=f"{server.url}/conductor/api", timeout=30,
                                 headers={"X-Authorization": key},
                                 limits=httpx.Limits(max_connections=200)) as aclient:

        async def one() -> None:
            answers.append(await aclient.post(
                "/workflow/hello", json={"name": "race"},
                headers={"X-Idempotency-key": "same", "X-on-conflict": "RETURN_EXISTING"}))

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(one)
        native = (await aclient.get(f"{server.url}/workflows/hello/runs",
                                    headers={"Authorization": f"Bearer {key}"})).json()["runs"]
    assert {r.status_code for r in answers} == {200}
    assert len({r.text for r in answers}) == 1
    assert len(native) == 1 and native[0]["id"] == answers[0].text


def test_terminate(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    run_id = start(client, "slow", {"seconds": 60})
    reached(client, run_id, lambda w: any(t["referenceTaskName"] == "wait" for t in w["tasks"]))
    resp = client.request("DELETE", f"/workflow/{run_id}", params={"reason": "no longer needed"},
                          json={})
    assert resp.status_code == 200
    workflow = client.get(f"/workflow/{run_id}").json()
    assert workflow["status"] == "TERMINATED"
    assert workflow["reasonForIncompletion"] == "no longer needed"
    assert {t["referenceTaskName"]: t["status"] for t in workflow["tasks"]}["wait"] == "CANCELED"
    assert client.delete(f"/workflow/{run_id}").status_code == 200  # already terminated
    done = start(client, "hello", {"name": "x"})
    reached(client, done, lambda w: w["status"] == "COMPLETED")
    conflict = client.delete(f"/workflow/{done}")
    assert conflict.status_code == 409 and "COMPLETED" in conflict.json()["message"]


def test_pause_holds_before_the_next_node_and_resume_goes_on(
        start_server: Callable[..., Started]) -> None:
    client = start_server().client
    run_id = start(client, "ticker", {"tick": 0.3})
    reached(client, run_id, lambda w: len(w["tasks"]) >= 1)
    assert client.put(f"/workflow/{run_id}/pause").status_code == 200
    paused = reached(client, run_id, lambda w: w["status"] == "PAUSED" and all(
        t["status"] != "IN_PROGRESS" for t in w["tasks"]))
    held = len(paused["tasks"])
    time.sleep(0.7)  # longer than two ticks: a run that was not held would move on
    assert len(client.get(f"/workflow/{run_id}").json()["tasks"]) == held
    assert client.put(f"/workflow/{run_id}/pause").status_code == 200  # no-op
    assert client.put(f"/workflow/{run_id}/resume").status_code == 200
    done = reached(client, run_id, lambda w: w["status"] in TERMINAL, timeout=20)
    assert done["status"] == "COMPLETED" and len(done["tasks"]) == 10
    assert client.put(f"/workflow/{run_id}/pause").status_code == 409
    assert client.put(f"/workflow/{run_id}/resume").status_code == 409


def test_retry_reuses_succeeded_tasks_and_restart_runs_all(
        start_server: Callable[..., Started], tmp_path: Path) -> None:
    client = start_server().client
    log, marker = tmp_path / "count.log", tmp_path / "marker"
    run_id = start(client, "fail-once", {"file": str(log), "marker": str(marker)})
    failed = reached(client, run_id, lambda w: w["status"] in TERMINAL)
    assert failed["status"] == "FAILED" and "marker missing" in failed["reasonForIncompletion"]
    assert failed["failedReferenceTaskNames"] == ["gate"]
    marker.write_text("ok")
    assert client.post(f"/workflow/{run_id}/retry").status_code == 204
    done = reached(client, run_id, lambda w: w["status"] in TERMINAL)
    assert done["status"] == "COMPLETED" and done["workflowId"] == run_id
    assert log.read_text().split() == ["first", "last"]  # first was not run again
    assert client.post(f"/workflow/{run_id}/retry").status_code == 409
    assert client.post(f"/workflow/{run_id}/restart").status_code == 204
    again = reached(client, run_id, lambda w: w["status"] in TERMINAL)
    assert again["status"] == "COMPLETED"
    assert log.read_text().split() == ["first", "last", "first", "last"]


def test_execute_waits_and_answers_a_signal_response(
        start_server: Callable[..., Started]) -> None:
    client = start_server().client
    resp = client.post("/workflow/execute/hello/1", params={"requestId": "r-1"},
                       json={"input": {"name": "sync"}, "correlationId": "c"})
    assert resp.status_code == 200
    signal = resp.json()
    for field in ("responseType", "targetWorkflowId", "targetWorkflowStatus", "requestId",
                  "workflowId", "correlationId", "input", "output", "priority", "variables",
                  "tasks", "createdBy", "createTime", "status", "updateTime"):
        assert field in signal, field
    assert signal["responseType"] == "TARGET_WORKFLOW" and signal["requestId"] == "r-1"
    assert signal["status"] == signal["targetWorkflowStatus"] == "COMPLETED"
    assert signal["output"] == {"greeting": "Hello, sync!"} and not signal["signalTimeout"]
    began = time.monotonic()
    slow = client.post("/workflow/execute/slow/0", params={"waitForSeconds": 1},
                       json={"input": {"seconds": 30}}).json()
    assert time.monotonic() - began < 2.5
    assert slow["status"] == "RUNNING" and slow["signalTimeout"] is True
    client.delete(f"/workflow/{slow['workflowId']}")
    bad = client.post("/workflow/execute/hello/latest", json={"input": {"name": "x"}})
    assert bad.status_code == 400 and bad.json()["code"] == "INVALID_INPUT"


def test_token_endpoint(server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    key_id, secret = server.create_key_with_id()
    server.start()
    url = f"{server.url}/conductor/api/token"
    ok = httpx.post(url, json={"keyId": key_id, "keySecret": secret})
    assert ok.status_code == 200 and ok.json() == {"token": secret}
    assert httpx.post(url, json={"keyId": key_id, "keySecret": "fr_wrong"}).status_code == 401
    assert httpx.post(url, json={"keyId": "other", "keySecret": secret}).status_code == 401
    assert httpx.post(f"{server.url}/conductor/api/workflow/hello",
                      json={}).status_code == 401


CONDUCTOR_PYTHON = """
import json, sys, time
from conductor.client.configuration.configuration import Configuration
from conductor.client.configuration.settings.authentication_settings import (
    AuthenticationSettings)
from conductor.client.http.models.start_workflow_request import StartWorkflowRequest
from conductor.client.orkes_clients import OrkesClients
url, key_id, secret = sys.argv[1], sys.argv[2], sys.argv[3]
auth = AuthenticationSettings(key_id=key_id, key_secret=secret) if key_id else None
workflows = OrkesClients(Configuration(server_api_url=url, authentication_settings=auth)
                         ).get_workflow_client()
out = {}
def until(run_id, done):
    deadline = time.time() + 20
    while True:
        wf = workflows.get_workflow(run_id, include_tasks=True)
        if wf is not None and done(wf.status):
            return wf
        assert time.time() < deadline, wf
        time.sleep(0.05)
by_name = workflows.start_workflow_by_name("hello", {"name": "py"})
wf = until(by_name, lambda s: s == "COMPLETED")
out["by_name"] = {"id": wf.workflow_id, "status": wf.status, "output": wf.output,
                  "tasks": [(t.reference_task_name, t.status) for t in wf.tasks]}
request = StartWorkflowRequest(name="slow", input={"seconds": 30}, correlation_id="corr-1",
                               priority=5)
long_id = workflows.start_workflow(request)
wf = until(long_id, lambda s: s == "RUNNING")
out["running"] = {"status": wf.status, "correlation": wf.correlation_id, "priority": wf.priority}
workflows.terminate_workflow(long_id, reason="enough")
wf = until(long_id, lambda s: s == "TERMINATED")
out["terminated"] = {"status": wf.status, "reason": wf.reason_for_incompletion}
print(json.dumps(out))
"""


def check_conductor_python(out: dict[str, Any]) -> None:
    assert out["by_name"]["status"] == "COMPLETED"
    assert out["by_name"]["output"] == {"greeting": "Hello, py!"}
    assert out["by_name"]["tasks"] == [["greet", "COMPLETED"]]
    assert out["running"] == {"status": "RUNNING", "correlation": "corr-1", "priority": 5}
    assert out["terminated"] == {"status": "TERMINATED", "reason": "enough"}


def test_conductor_python_with_token_auth(server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    key_id, secret = server.create_key_with_id()
    server.start()
    out = run_client("conductor-python", CONDUCTOR_PYTHON, f"{server.url}/conductor/api",
                     key_id, secret)
    check_conductor_python(out)


def test_conductor_python_in_open_mode(server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    server.start("--no-auth")
    assert httpx.post(f"{server.url}/conductor/api/token", json={}).status_code == 404
    out = run_client("conductor-python", CONDUCTOR_PYTHON, f"{server.url}/conductor/api", "", "")
    check_conductor_python(out)
