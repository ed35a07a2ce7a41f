"""``flowrun serve --db postgresql://…``: one process on PostgreSQL, end to end.

Submit, run-sync, events (live and replayed, no gap), idempotency replay, stop, a
SIGKILL mid-run and a restart that resumes from the last finished node (several
processes: test_cluster.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.e2e.server import Started, finished, node_status, wait_for


@pytest.fixture
def store_kind() -> str:
    return "postgres"


def stream(client: httpx.Client, run_id: str, after: int | None = None) -> list[Any]:
    """A run's events until the terminal one, from the start or after ``after``."""
    headers = {"Last-Event-ID": str(after)} if after is not None else {}
    events: list[Any] = []
    with connect_sse(client, "GET", f"/runs/{run_id}/events", headers=headers) as source:
        assert source.response.status_code == 200
        for sse in source.iter_sse():
            envelope = json.loads(sse.data)
            assert sse.id == str(envelope["seq"])
            events.append(envelope)
            if envelope["event"] == "workflow_finished":
                break
    return events


def test_the_run_apis_on_postgresql(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    assert server.target.startswith("postgresql://")

    accepted = client.post("/workflows/hello/run", json={"inputs": {"name": "pg"}})
    assert accepted.status_code == 202, accepted.text
    assert finished(client, accepted.json()["id"])["outputs"] == {"greeting": "Hello, pg!"}

    done = client.post("/workflows/hello/run-sync", json={"inputs": {"name": "sync"}})
    assert done.status_code == 200 and done.json()["status"] == "succeeded"
    assert done.json()["nodes"][0]["outputs"] == {"text": "Hello, sync!"}

    wide = client.post("/workflows/wide/run", json={"inputs": {}}).json()["id"]
    live = stream(client, wide)  # followed while it runs
    assert [e["seq"] for e in live] == list(range(1, len(live) + 1))
    assert len(live) == 1 + 2 * 20 + 1 and live[-1]["data"]["status"] == "succeeded"
    assert stream(client, wide, after=5) == live[5:]  # a replay: the rest, exactly once

    first = client.post("/workflows/hello/run", json={"inputs": {"name": "k"}},
                        headers={"Idempotency-Key": "once"})
    again = client.post("/workflows/hello/run", json={"inputs": {"name": "k"}},
                        headers={"Idempotency-Key": "once"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    reused = client.post("/workflows/hello/run", json={"inputs": {"name": "other"}},
                         headers={"Idempotency-Key": "once"})
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"

    slow = client.post("/workflows/slow/run", json={"inputs": {"seconds": 30}}).json()["id"]
    wait_for(client, slow, lambda r: node_status(r, "wait") == "running")
    stopped = client.post(f"/runs/{slow}/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"

    # the jobs API's numeric job id is the run's identity number
    [(num,)] = server.query("SELECT num FROM runs WHERE id = ?", (slow,))
    assert isinstance(num, int) and num >= 1


def test_sigkill_mid_run_resumes_from_the_last_finished_node(
        start_server: Callable[..., Started], tmp_path: Path) -> None:
    server, _, client = start_server()
    log = tmp_path / "count.log"
    run_id = client.post("/workflows/counted/run", json={
        "inputs": {"file": str(log), "label": "c", "seconds": 2}}).json()["id"]
    wait_for(client, run_id, lambda r: node_status(r, "wait") == "running")
    server.kill()
    server.start()
    run = finished(client, run_id)
    assert run["status"] == "succeeded"
    assert log.read_text().split() == ["c-first", "c-last"]  # first ran once, not again
    names = [e["event"] for e in stream(client, run_id)]
    assert names.count("workflow_resumed") == 1 and names[-1] == "workflow_finished"
    seqs = [seq for (seq,) in server.query(
        "SELECT seq FROM events WHERE run_id = ? ORDER BY seq", (run_id,))]
    assert seqs == list(range(1, len(seqs) + 1))
