"""One run, every view: started through any API, seen the same through all of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server
from tests.eventually import NotYet, eventually

# The same state in each vocabulary.
RUNNING = {"native": "running", "dify": "running", "conductor": "RUNNING",
           "langflow": "in_progress", "jobs": "running"}
DONE = {"native": "succeeded", "dify": "succeeded", "conductor": "COMPLETED",
        "langflow": "completed", "jobs": "completed"}


class Views:
    def __init__(self, server: Server, key: str) -> None:
        self.http = httpx.Client(base_url=server.url, timeout=30, headers={
            "Authorization": f"Bearer {key}", "x-api-key": key, "X-Authorization": key})
        server.clients.append(self.http)

    def start(self, via: str) -> str:
        inputs = {"seconds": 0.6}
        if via == "native":
            return str(self.http.post("/workflows/slow/run", json={"inputs": inputs}).json()["id"])
        if via == "dify":
            return str(self.http.post("/dify/v1/workflows/run", json={
                "inputs": inputs, "user": "u", "response_mode": "async"}).json()["task_id"])
        if via == "conductor":
            return self.http.post("/conductor/api/workflow/slow", json=inputs).text
        if via == "langflow":
            return str(self.http.post("/langflow/api/v2/workflows", json={
                "flow_id": "slow", "mode": "background", "inputs": inputs}).json()["job_id"])
        job = self.http.post("/jobs/workflows/slow/run", json={"input": inputs}).json()
        return str(job["data"]["runId"])

    def statuses(self, run_id: str) -> dict[str, Any]:
        native = self.http.get(f"/runs/{run_id}").json()
        jobs = self.http.get("/jobs/workflows/slow/jobs", params={"limit": 200}).json()["data"]
        langflow = self.http.get("/langflow/api/v2/workflows", params={"job_id": run_id}).json()
        return {
            "native": native["status"],
            "dify": self.http.get(f"/dify/v1/workflows/run/{run_id}").json()["status"],
            "conductor": self.http.get(f"/conductor/api/workflow/{run_id}").json()["status"],
            "langflow": langflow["status"],
            "jobs": next(j["status"] for j in jobs if j["runId"] == run_id),
        }


@pytest.mark.parametrize("via", ["native", "dify", "conductor", "langflow", "jobs"])
def test_a_run_looks_the_same_from_every_api(server_factory: Callable[..., Server],
                                             via: str) -> None:
    server = server_factory()
    key = server.create_key_with_id("--workflow", "slow")[1]
    server.start()
    views = Views(server, key)
    run_id = views.start(via)
    def running() -> dict[str, Any] | NotYet:  # a snapshot taken while the run was running
        seen = views.statuses(run_id)
        still = views.http.get(f"/runs/{run_id}").json()["status"]
        if seen["native"] == "running" and still == "running":
            return seen
        assert seen["native"] in {"queued", "running"}, seen
        return NotYet(seen)

    assert eventually(running, what="every view of a running run") == RUNNING

    def succeeded() -> dict[str, Any] | NotYet:
        seen = views.statuses(run_id)
        return seen if seen["native"] == "succeeded" else NotYet(seen)

    seen = eventually(succeeded, interval=0.05, what="every view of the run succeeded")
    assert seen == DONE


def test_a_dialect_at_the_root(server_factory: Callable[..., Server]) -> None:
    server = server_factory({"FLOWRUN_ROOT_DIALECT": "dify"})
    key = server.create_key_with_id("--workflow", "hello")[1]
    server.start()
    headers = {"Authorization": f"Bearer {key}"}
    run = httpx.post(f"{server.url}/workflows/run", headers=headers,
                     json={"inputs": {"name": "root"}, "user": "u"}).json()
    assert run["data"]["outputs"] == {"greeting": "Hello, root!"}
    native = httpx.get(f"{server.url}/native/runs/{run['workflow_run_id']}", headers=headers)
    assert native.json()["status"] == "succeeded"
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/conductor/api/workflow/{run['workflow_run_id']}",
                     headers={"X-Authorization": key}).json()["status"] == "COMPLETED"
