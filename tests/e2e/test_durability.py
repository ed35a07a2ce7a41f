"""Graceful shutdown, retention and database faults against a real server process."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server, Started, finished, node_status, wait_for
from tests.eventually import eventually


def db_status(server: Server, run_id: str) -> str:
    return str(server.query("SELECT status FROM runs WHERE id = ?", (run_id,))[0][0])


def wait_log(server: Server, text: str, timeout: float = 10) -> None:
    eventually(lambda: text in server.log.read_text(), timeout=timeout, what=f"{text!r} logged")


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_sigterm_drains_then_exits_0_and_the_rest_resumes(
        start_server: Callable[..., Started], tmp_path: Path) -> None:
    server, key, client = start_server({"FLOWRUN_SHUTDOWN_GRACE_S": "2",
                                                 "FLOWRUN_MAX_CONCURRENT_RUNS": "2"},
                                "--log-level", "info")
    log = tmp_path / "short.log"
    short = client.post("/workflows/counted/run", json={
        "inputs": {"file": str(log), "label": "short", "seconds": 0.8}}).json()
    long = client.post("/workflows/slow/run", json={"inputs": {"seconds": 30}}).json()
    queued = client.post("/workflows/hello/run", json={"inputs": {"name": "q"}}).json()
    wait_for(client, long["id"], lambda r: node_status(r, "wait") == "running")
    wait_for(client, short["id"], lambda r: r["status"] == "running")

    waiter: dict[str, Any] = {}

    def run_sync_waiter() -> None:
        with httpx.Client(base_url=server.url, timeout=60,
                          headers={"Authorization": f"Bearer {key}"}) as c:
            began = time.monotonic()
            resp = c.post("/workflows/slow/run-sync", json={"inputs": {"seconds": 30}},
                          headers={"Idempotency-Key": "w"})
            waiter.update(status=resp.status_code, body=resp.json(),
                          retry=resp.headers.get("retry-after"),
                          elapsed=time.monotonic() - began)

    thread = threading.Thread(target=run_sync_waiter)
    thread.start()
    # its run accepted (queued: both slots are taken)
    eventually(lambda: server.query("SELECT id FROM runs WHERE idempotency_key = ?", ("w",)),
               what="the run-sync's run accepted")
    body = json.dumps({"inputs": {"name": "late"}}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(b"POST /workflows/hello/run HTTP/1.1\r\nHost: x\r\n"
                    b"Authorization: Bearer " + key.encode() + b"\r\n"
                    b"Content-Type: application/json\r\nContent-Length: "
                    + str(len(body)).encode() + b"\r\n\r\n")
        # let the server read the headers before the signal (a connection whose request has
        # not begun is closed at shutdown); nothing outside the server shows that moment
        time.sleep(0.2)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        wait_log(server, "draining: no new runs are accepted")
        raw.sendall(body)
        chunks = []
        while chunk := raw.recv(65536):  # the server closes the connection after answering
            chunks.append(chunk)
        answer = b"".join(chunks).decode()
    status_line, _, rest = answer.partition("\r\n")
    assert " 503 " in status_line, answer
    assert "retry-after: 5" in rest.lower() and '"code":"unavailable"' in answer
    assert server.proc.wait(timeout=15) == 0
    thread.join(timeout=15)
    assert waiter["status"] == 503 and waiter["retry"] == "5"
    assert 1.5 < waiter["elapsed"] < 6
    assert db_status(server, short["id"]) == "succeeded"
    assert db_status(server, long["id"]) == "running"
    assert db_status(server, queued["id"]) == "queued"

    server.start()
    assert finished(client, queued["id"])["status"] == "succeeded"
    resumed = wait_for(client, long["id"], lambda r: node_status(r, "wait") == "running")
    assert resumed["status"] == "running"
    assert client.post(f"/runs/{long['id']}/stop").json()["status"] == "stopped"
    assert log.read_text().split() == ["short-first", "short-last"]


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_retention_deletes_old_finished_runs(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server({"FLOWRUN_RUN_RETENTION_S": "1",
                                               "FLOWRUN_SWEEP_INTERVAL_S": "0.2"})
    old = client.post("/workflows/hello/run-sync", json={"inputs": {"name": "old"}},
                      headers={"Idempotency-Key": "old"}).json()
    running = client.post("/workflows/slow/run", json={"inputs": {"seconds": 30}}).json()
    eventually(lambda: client.get(f"/runs/{old['id']}").status_code == 404, timeout=10,
               interval=0.1, what="the old run deleted")
    for table in ("events", "node_executions", "idempotency_keys"):
        assert server.query(f"SELECT COUNT(*) FROM {table} WHERE run_id = ?",
                            (old["id"],))[0][0] == 0
    assert client.get(f"/runs/{running['id']}").json()["status"] == "running"
    assert client.post(f"/runs/{running['id']}/stop").status_code == 200


def test_finished_runs_are_deleted_after_30_days_by_default_and_the_log_says_so(
        start_server: Callable[..., Started]) -> None:
    server, _, client = start_server({"FLOWRUN_SWEEP_INTERVAL_S": "0.2"}, "--log-level", "info")
    wait_log(server, "retention: finished runs are deleted 30 days after they end")
    month = client.post("/workflows/hello/run-sync", json={"inputs": {"name": "a"}}).json()
    weeks = client.post("/workflows/hello/run-sync", json={"inputs": {"name": "b"}}).json()
    with sqlite3.connect(server.db, timeout=10) as conn:  # as if they ended that long ago
        for run, days in ((month, 31), (weeks, 29)):
            conn.execute("UPDATE runs SET finished_at = ? WHERE id = ?",
                         (time.time() - days * 86_400, run["id"]))
    eventually(lambda: client.get(f"/runs/{month['id']}").status_code == 404, timeout=10,
               interval=0.1, what="the run over 30 days old deleted")
    assert client.get(f"/runs/{weeks['id']}").status_code == 200


def test_keeping_finished_runs_for_ever_is_an_opt_in_the_log_warns_about(
        start_server: Callable[..., Started]) -> None:
    server, _, _ = start_server({"FLOWRUN_RUN_RETENTION_S": "0"})  # (warnings are logged)
    wait_log(server, "retention: off (FLOWRUN_RUN_RETENTION_S=0): finished runs are kept "
                     "for ever")


def test_a_locked_database_is_503_then_recovers(start_server: Callable[..., Started],
                                                tmp_path: Path) -> None:
    server, _, client = start_server({"FLOWRUN_SQLITE_BUSY_TIMEOUT_MS": "300"},
                              "--log-level", "info")
    log = tmp_path / "locked.log"
    during = client.post("/workflows/counted/run", json={
        "inputs": {"file": str(log), "label": "during", "seconds": 1}}).json()
    wait_for(client, during["id"], lambda r: node_status(r, "wait") == "running")
    blocker = sqlite3.connect(server.db, isolation_level=None, timeout=5)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        resp = client.post("/workflows/hello/run", json={"inputs": {"name": "x"}})
        assert resp.status_code == 503
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["code"] == "unavailable" and "locked" in resp.json()["detail"]
        wait_log(server, "store write failed")
        # the running run reaches its last node while the lock is held
        eventually(lambda: "during-last" in log.read_text().split(),
                   what="the run's last node done")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    ok = client.post("/workflows/hello/run-sync", json={"inputs": {"name": "x"}})
    assert ok.status_code == 200 and ok.json()["status"] == "succeeded"
    done = finished(client, during["id"])
    assert done["status"] == "succeeded"
    runs = client.get("/workflows/hello/runs").json()["runs"]
    assert len(runs) == 1  # the refused request left nothing behind
    wait_log(server, "store writes recovered")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs, so the disk really fills up (needs mount rights, as in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_503_then_recovers(server_factory: Callable[..., Server],
                                          small_disk: Path) -> None:
    server = server_factory()
    server.db = small_disk / "flowrun.db"
    key = server.create_key()
    server.start("--log-level", "info")
    client = server.client(key)
    assert client.post("/workflows/hello/run-sync",
                       json={"inputs": {"name": "before"}}).status_code == 200
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)  # until ENOSPC: the disk is full
    except OSError:
        pass
    finally:
        os.close(fd)
    refused = 0
    for i in range(20):  # the WAL may absorb a few writes before it needs a new page
        resp = client.post("/workflows/hello/run", json={"inputs": {"name": f"full{i}"}})
        if resp.status_code == 503:
            refused += 1
            assert resp.json()["code"] == "unavailable"
            break
    assert refused, "the full disk never refused a write"
    wait_log(server, "store write failed")
    filler.unlink()
    ok = client.post("/workflows/hello/run-sync", json={"inputs": {"name": "after"}})
    assert ok.status_code == 200 and ok.json()["status"] == "succeeded"
    names = {r["inputs"]["name"] for r in client.get("/workflows/hello/runs?limit=100")
             .json()["runs"]}
    for run in client.get("/workflows/hello/runs?limit=100").json()["runs"]:
        assert finished(client, run["id"])["status"] == "succeeded"
    assert "before" in names and "after" in names
