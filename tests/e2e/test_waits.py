"""Wait nodes over a real server: a run parks on its signal holding no slot, wakes on
the signal (by API key or a one-time URL) or its timeout, across restarts too."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.e2e.server import Started, finished, node_status, wait_for
from tests.eventually import eventually

ONE_SLOT = {"FLOWRUN_MAX_CONCURRENT_RUNS": "1"}


def waiting(client: httpx.Client, run_id: str) -> Any:
    return wait_for(client, run_id, lambda r: r["status"] == "waiting")


def node(run: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(n for n in run["nodes"] if n["id"] == node_id)


def approval(client: httpx.Client, **inputs: Any) -> str:
    answer = client.post("/workflows/approval/run", json={"inputs": {"item": "a", **inputs}})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def events_of(client: httpx.Client, run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    with connect_sse(client, "GET", f"/runs/{run_id}/events") as source:
        return [(int(e.id), e.event, e.json()["data"]) for e in source.iter_sse()]


def test_a_waiting_run_holds_no_slot_and_its_signal_becomes_the_outputs(
        start_server: Callable[..., Started]) -> None:
    _, _, client = start_server(ONE_SLOT)
    run_id = approval(client)
    run = waiting(client, run_id)
    decision = node(run, "decision")
    assert decision["status"] == "waiting"
    assert decision["process_data"]["signal"] == "decision"
    # the only run slot is free: another run goes through while this one waits
    other = client.post("/workflows/hello/run-sync", json={"inputs": {"name": "x"}})
    assert other.status_code == 200 and other.json()["status"] == "succeeded"

    sent = client.post(f"/runs/{run_id}/signal",
                       json={"name": "decision", "data": {"approved": True, "note": "ok"}})
    assert sent.status_code == 200, sent.text
    done = finished(client, run_id)
    assert done["status"] == "succeeded"
    assert done["outputs"] == {"approved": True, "text": "a: approved"}
    assert node(done, "decision")["outputs"] == {"approved": True, "note": "ok"}
    # a second signal of that name, or one after the end, is refused
    again = client.post(f"/runs/{run_id}/signal", json={"name": "decision", "data": {}})
    assert again.status_code == 409 and again.json()["code"] == "conflict"

    events = events_of(client, run_id)
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))  # no gap
    names = [name for _, name, _ in events]
    assert names.index("node_waiting") < names.index("workflow_waiting") < \
        names.index("workflow_resumed") < names.index("workflow_finished")
    parked = next(data for _, name, data in events if name == "workflow_waiting")
    assert parked["waiting"][0]["node_id"] == "decision"


def test_signals_that_do_not_fit_are_refused_clearly(
        start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    run_id = approval(client)
    waiting(client, run_id)
    cases = [({"name": "nope", "data": {}}, 409), ({"name": "decision", "data": [1]}, 400),
             ({"name": "decision", "data": {}, "extra": 1}, 400), ({"data": {}}, 400),
             ({"name": "bad name!", "data": {}}, 400)]
    for body, status in cases:
        answer = client.post(f"/runs/{run_id}/signal", json=body)
        assert answer.status_code == status, (body, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
    # another key's run does not exist for this key
    stranger = server.client(server.create_key())
    assert stranger.post(f"/runs/{run_id}/signal",
                         json={"name": "decision", "data": {}}).status_code == 404
    assert client.get(f"/runs/{run_id}").json()["status"] == "waiting"


def test_the_signal_url_works_once_and_without_a_key(
        start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    run_id = approval(client)
    url = node(waiting(client, run_id), "decision")["process_data"]["signal_url"]
    anonymous = server.client(None)
    assert anonymous.get(f"/runs/{run_id}").status_code == 401  # the URL opens this only
    shown = anonymous.get(url)
    assert shown.status_code == 200
    assert shown.json() | {"expires_at": None} == {
        "run_id": run_id, "workflow": "approval", "node_id": "decision", "title": "decision",
        "signal": "decision", "state": "waiting", "expires_at": None}
    page = anonymous.get(url, headers={"Accept": "text/html"})
    assert "text/html" in page.headers["content-type"] and "<form" in page.text

    sent = anonymous.post(url, json={"data": {"approved": True}})
    assert sent.status_code == 200 and sent.json()["run_id"] == run_id
    assert anonymous.post(url, json={"data": {"approved": False}}).status_code == 409
    assert anonymous.get(url).json()["state"] == "used"
    assert finished(client, run_id)["outputs"]["approved"] is True
    assert anonymous.get("/signals/not-a-token").status_code == 404
    assert anonymous.post("/signals/not-a-token", json={}).status_code == 404


def test_a_timed_out_wait_takes_its_default_or_fails(
        start_server: Callable[..., Started]) -> None:
    _, _, client = start_server()
    run_id = approval(client, hours=0.5 / 3600)  # half a second
    done = finished(client, run_id)
    assert done["status"] == "succeeded"
    assert done["outputs"] == {"approved": False, "text": "a: not approved"}

    gated = client.post("/workflows/gate/run", json={"inputs": {"seconds": 0.5}}).json()["id"]
    failed = finished(client, gated)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "wait_timeout"
    assert node_status(failed, "side") == "succeeded"  # the other branch ran meanwhile


def test_stopping_a_waiting_run_stops_its_wait(start_server: Callable[..., Started]) -> None:
    _, _, client = start_server()
    run_id = approval(client)
    waiting(client, run_id)
    stopped = client.post(f"/runs/{run_id}/stop")
    assert stopped.status_code == 200
    done = finished(client, run_id)
    assert done["status"] == "stopped"
    assert node_status(done, "decision") == "stopped"
    assert client.post(f"/runs/{run_id}/pause").status_code == 409


def test_run_sync_waits_through_a_wait_to_the_end(start_server: Callable[..., Started]) -> None:
    _, _, client = start_server()
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(client.post(
        "/workflows/approval/run-sync?timeout=20", json={"inputs": {"item": "b"}})))
    thread.start()
    runs: list[dict[str, Any]] = eventually(lambda: [
        r for r in client.get("/workflows/approval/runs").json()["runs"]
        if r["status"] == "waiting"], what="the run parked")
    assert client.post(f"/runs/{runs[0]['id']}/signal",
                       json={"name": "decision", "data": {"approved": True}}).status_code == 200
    thread.join(timeout=25)
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json()["outputs"]["approved"] is True


def test_a_waiting_run_survives_a_restart_and_a_timeout_that_passed_meanwhile(
        start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    signalled = approval(client)
    lapsing = approval(client, hours=1.5 / 3600)
    waiting(client, signalled)
    expires_at = node(waiting(client, lapsing), "decision")["process_data"]["expires_at"]
    assert server.stop() == 0
    # let the second wait's timeout pass while down
    eventually(lambda: time.time() > expires_at, interval=0.05, what="the wait's timeout passed")
    server.start()
    assert client.get(f"/runs/{signalled}").json()["status"] == "waiting"
    assert finished(client, lapsing)["outputs"]["approved"] is False  # woken at start
    assert client.post(f"/runs/{signalled}/signal",
                       json={"name": "decision", "data": {"approved": True}}).status_code == 200
    done = finished(client, signalled)
    assert done["status"] == "succeeded" and done["outputs"]["approved"] is True
    events = events_of(client, signalled)
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize(("prefix", "path", "field", "expected"), [
    ("/conductor/api", "/workflow/{id}", "status", "RUNNING"),
    ("/langflow", "/api/v2/workflows?job_id={id}", "status", "in_progress"),
])
def test_each_dialect_shows_a_waiting_run_as_its_nearest_status(
        start_server: Callable[..., Started], prefix: str, path: str, field: str,
        expected: str) -> None:
    server, key, client = start_server()
    run_id = approval(client)
    waiting(client, run_id)
    headers = {"Authorization": f"Bearer {key}", "X-Authorization": key, "x-api-key": key}
    answer = httpx.get(f"{server.url}{prefix}{path.format(id=run_id)}", headers=headers)
    assert answer.status_code in {200, 202}, answer.text
    assert answer.json()[field] == expected
    if prefix == "/conductor/api":
        tasks = {t["referenceTaskName"]: t["status"] for t in answer.json()["tasks"]}
        assert tasks["decision"] == "IN_PROGRESS"


def test_dify_shows_paused_and_its_stream_ends_at_workflow_paused(
        start_server: Callable[..., Started]) -> None:
    server, _, client = start_server(workflow="approval")
    dify = httpx.Client(base_url=f"{server.url}/dify/v1", headers=client.headers, timeout=30)
    server.clients.append(dify)
    body = {"inputs": {"item": "c"}, "response_mode": "streaming", "user": "u"}
    frames = []
    with connect_sse(dify, "POST", "/workflows/run", json=body) as source:
        for event in source.iter_sse():  # the stream ends by itself at the pause
            if event.data:
                frames.append(event.json())
    assert frames[-1]["event"] == "workflow_paused"
    assert frames[-1]["data"]["paused_nodes"] == ["decision"]
    run_id = frames[-1]["workflow_run_id"]
    assert dify.get(f"/workflows/run/{run_id}").json()["status"] == "paused"


def test_a_parent_waits_through_its_child_runs_wait(
        start_server: Callable[..., Started]) -> None:
    _, _, client = start_server()
    parent = client.post("/workflows/asks/run", json={}).json()["id"]
    children: list[dict[str, Any]] = eventually(lambda: [
        r for r in client.get("/workflows/gate/runs").json()["runs"]
        if r["parent_run_id"] == parent and r["status"] == "waiting"], what="the child run parked")
    assert client.get(f"/runs/{parent}").json()["status"] == "running"  # in its child node
    assert client.post(f"/runs/{children[0]['id']}/signal",
                       json={"name": "go", "data": {"word": "yes"}}).status_code == 200
    done = finished(client, parent)
    assert done["status"] == "succeeded" and done["outputs"] == {"said": "after yes"}
