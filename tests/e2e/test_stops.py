"""Stops over a real server: a stop answered with a live status is kept on the run's
row, so the run ends stopped however it is queued, parked or woken afterwards.

Each race is held open on purpose rather than hoped for: the database is locked
while the run parks (its park and the stop's record queue behind the lock, in that
order), or the store is left as a restart or a signal leaves it between its commit
and the run's enqueue (queued, no task), and the server is restarted to enqueue it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.e2e.server import Server, Started, finished, wait_for

TERMINAL = {"succeeded", "failed", "stopped", "timed_out"}
SLEEP_THEN_WAIT = {
    "nodes": [{"id": "a", "type": "sleep", "seconds": 0.5},
              {"id": "w", "type": "wait", "signal": "go", "timeout_s": 3600},
              {"id": "c", "type": "template", "template": "done"}],
    "edges": [{"source": "a", "target": "w"}, {"source": "w", "target": "c"}]}


def wait_log(server: Server, text: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log.read_text():
        assert time.monotonic() < deadline, f"{text!r} never logged"
        time.sleep(0.02)


def stop_in_background(client: httpx.Client, run_id: str) -> tuple[threading.Thread,
                                                                      list[Any]]:
    answers: list[Any] = []
    thread = threading.Thread(
        target=lambda: answers.append(client.post(f"/runs/{run_id}/stop")), daemon=True)
    thread.start()
    return thread, answers


def test_a_stop_while_the_run_parks_ends_it_stopped(
        start_server: Callable[..., Started]) -> None:
    server, _, client = start_server({"FLOWRUN_SQLITE_BUSY_TIMEOUT_MS": "30000"},
                                     "--log-level", "info")
    run_id = client.post("/workflows/gate/run", json={"inputs": {}, **SLEEP_THEN_WAIT}
                         ).json()["id"]
    wait_for(client, run_id, lambda r: any(n["id"] == "a" and n["status"] == "running"
                                           for n in r["nodes"]))
    blocker = sqlite3.connect(server.db, isolation_level=None, timeout=5)
    blocker.execute("BEGIN EXCLUSIVE")  # the park (and the stop's record) wait for it
    try:
        wait_log(server, f"run {run_id}: parking")  # its executor returned "waiting"
        thread, answers = stop_in_background(client, run_id)
        wait_log(server, f"run {run_id}: stop asked")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    thread.join(timeout=30)
    assert answers and answers[0].status_code == 200
    assert answers[0].json()["status"] == "stopped", answers[0].json()
    client.post(f"/runs/{run_id}/signal", json={"name": "go", "data": {"word": "w"}})
    assert finished(client, run_id)["status"] == "stopped"


def test_a_stop_after_a_restart_committed_is_kept_until_the_run_is_queued(
        start_server: Callable[..., Started]) -> None:
    server, _, client = start_server({"FLOWRUN_STOP_WAIT_S": "0.5"})
    run = client.post("/workflows/hello/run-sync", json={"inputs": {"name": "x"}}).json()
    assert run["status"] == "succeeded"
    with sqlite3.connect(server.db, isolation_level=None) as db:  # as reset_run leaves it
        db.execute("UPDATE runs SET status = 'queued', outputs = NULL, finished_at = NULL, "
                   "started_at = NULL, steps = 0, stop_reason = NULL WHERE id = ?",
                   (run["id"],))
        db.execute("DELETE FROM node_executions WHERE run_id = ?", (run["id"],))
    answer = client.post(f"/runs/{run['id']}/stop")
    assert answer.status_code == 200
    if answer.json()["status"] not in TERMINAL:  # then it must be recorded
        server.stop()
        server.start()
        client = server.client(server.create_key("--scope", "admin"))
    assert finished(client, run["id"])["status"] == "stopped"


def test_a_stop_racing_a_signal_is_kept_until_the_run_is_queued(
        start_server: Callable[..., Started]) -> None:
    server, _, client = start_server({"FLOWRUN_STOP_WAIT_S": "0.5"})
    run_id = client.post("/workflows/gate/run", json={"inputs": {}}).json()["id"]
    wait_for(client, run_id, lambda r: r["status"] == "waiting")
    with sqlite3.connect(server.db, isolation_level=None) as db:  # as wake_run leaves it
        db.execute("UPDATE runs SET status = 'queued', wake_at = NULL WHERE id = ?",
                   (run_id,))
    signalled = client.post(f"/runs/{run_id}/signal", json={"name": "go", "data": {"word": "w"}})
    assert signalled.status_code == 200, signalled.text
    answer = client.post(f"/runs/{run_id}/stop")
    assert answer.status_code == 200
    if answer.json()["status"] not in TERMINAL:
        server.stop()
        server.start()
        client = server.client(server.create_key("--scope", "admin"))
    assert finished(client, run_id)["status"] == "stopped"
