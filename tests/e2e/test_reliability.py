"""Races and faults through a real server: stops while a child starts, a long full disk,
values that cannot be stored, inputs named like dict methods."""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.server import Server, finished, wait_for
from tests.e2e.test_durability import db_status, small_disk, wait_log
from tests.eventually import NotYet, eventually

__all__ = ["small_disk"]  # the fixture, used here too


def child_runs(admin: httpx.Client, parents: set[str]) -> list[dict[str, Any]]:
    runs = admin.get("/workflows/counted/runs", params={"limit": 1000}).json()["runs"]
    return [r for r in runs if r["parent_run_id"] in parents]


def test_stopping_parents_while_they_start_children_strands_no_child(
        server_factory: Callable[..., Server], tmp_path: Path) -> None:
    server = server_factory()
    admin = server.client(server.admin_key())
    server.start()
    rng = random.Random(7)
    parents = set()
    for i in range(60):
        run = admin.post("/workflows/parent/run", json={
            "inputs": {"file": str(tmp_path / f"c{i}.log"), "seconds": 2}}).json()
        parents.add(run["id"])
        time.sleep(rng.uniform(0, 0.03))
        assert admin.post(f"/runs/{run['id']}/stop").status_code == 200
    for run_id in parents:
        assert finished(admin, run_id)["status"] in {"stopped", "succeeded"}
    def settled() -> list[dict[str, Any]] | NotYet:
        children = child_runs(admin, parents)
        live = [c for c in children if c["status"] in {"queued", "running"}]
        return NotYet(live[:3]) if live else children

    children = eventually(settled, timeout=30, interval=0.1, what="no stranded child")
    stopped = {r for r in parents if admin.get(f"/runs/{r}").json()["status"] == "stopped"}
    for child in children:
        if child["parent_run_id"] in stopped:
            assert child["status"] == "stopped", child
    assert server.client(None).get("/healthz").json()["queued"] == 0


def test_a_long_full_disk_does_not_fail_parents_whose_children_succeeded(
        server_factory: Callable[..., Server], small_disk: Path, tmp_path: Path) -> None:
    server = server_factory({"FLOWRUN_FINAL_WRITE_TIMEOUT_S": "1"})
    server.db = small_disk / "flowrun.db"
    admin = server.client(server.admin_key())
    server.start("--log-level", "info")
    ids = [admin.post("/workflows/parent/run", json={
        "inputs": {"file": str(tmp_path / f"p{i}.log"), "seconds": 1.5}}).json()["id"]
        for i in range(4)]
    eventually(lambda: len([c for c in child_runs(admin, set(ids))
                            if c["status"] == "running"]) >= 4,
               interval=0.05, what="the children started")
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)
    # Each child finishes while nothing can be written, and its final write outlasts
    # the final-write timeout: the parents must carry on from what the children did.
    wait_log(server, "but the store is failing", timeout=30)
    def four_logged() -> bool | NotYet:
        log = server.log.read_text()
        return log.count("but the store is failing") >= 4 or NotYet(log[-2000:])

    eventually(four_logged, timeout=30, interval=0.1, what="four children's final writes")
    filler.unlink()
    for run_id in ids:
        run = finished(admin, run_id, timeout=60)
        assert run["status"] == "succeeded", run["error"]
    for child in child_runs(admin, set(ids)):
        assert finished(admin, child["id"], timeout=30)["status"] == "succeeded"


def events_of(client: httpx.Client, run_id: str) -> list[int]:
    text = client.get(f"/runs/{run_id}/events").text
    return [int(line[3:]) for line in text.splitlines() if line.startswith("id:")]


def test_inputs_named_like_dict_methods_and_unstorable_values(
        server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    admin = server.client(server.admin_key())
    server.start()
    definition = {
        "inputs": {"items": {"type": "array"}, "keys": {"type": "string"},
                   "values": {"type": "object"}, "get": {"type": "integer"},
                   "update": {"type": "boolean"}},
        "nodes": [{"id": "t", "type": "template",
                   "template": "{{ inputs['items'] | length }} {{ inputs.items | length }} "
                               "{{ inputs.keys }} {{ inputs.values.a }} {{ inputs.get + 1 }} "
                               "{{ inputs.update }}"}]}
    assert admin.put("/workflows/methods", json=definition).status_code == 201
    run = admin.post("/workflows/methods/run-sync", json={"inputs": {
        "items": [1, 2, 3], "keys": "k", "values": {"a": "A"}, "get": 41,
        "update": True}}).json()
    assert run["status"] == "succeeded", run["error"]
    assert run["outputs"] == {"t": {"text": "3 3 k A 42 True"}}
    for value in ("{{ namespace() }}", "{{ inputs.values.copy }}", "{{ cycler(1, 2) }}"):
        graph = {"inputs": {"items": [], "keys": "", "values": {}, "get": 0, "update": False},
                 "nodes": [{"id": "t", "type": "template", "template": value}]}
        run = admin.post("/workflows/methods/run-sync", json=graph).json()
        assert run["status"] == "failed", run
        assert run["error"]["code"] == "expression_error", run["error"]
        assert "cannot be stored as JSON" in run["error"]["message"]
        node = run["nodes"][0]
        assert node["id"] == "t" and node["status"] == "failed"  # the node row is stored
        seqs = events_of(admin, run["id"])
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 4
    wait_for(admin, run["id"], lambda r: r["status"] == "failed")


def test_a_drain_answers_503_on_new_connections_and_lets_late_children_run(
        server_factory: Callable[..., Server], tmp_path: Path) -> None:
    server = server_factory({"FLOWRUN_SHUTDOWN_GRACE_S": "20"})
    admin = server.client(server.admin_key())
    server.start("--log-level", "info")
    late_parent = {"inputs": {"file": {"type": "string", "required": True}},
                   "nodes": [{"id": "pause", "type": "sleep", "seconds": 0.5},
                             {"id": "child", "type": "workflow", "workflow": "counted",
                              "inputs": {"file": "{{ inputs.file }}", "seconds": 0.3}}],
                   "edges": [{"source": "pause", "target": "child"}]}
    assert admin.put("/workflows/late-parent", json=late_parent).status_code == 201
    run = admin.post("/workflows/late-parent/run",
                     json={"inputs": {"file": str(tmp_path / "late.log")}}).json()
    wait_for(admin, run["id"], lambda r: r["status"] == "running")
    began = time.monotonic()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    wait_log(server, "draining: no new runs are accepted")
    with httpx.Client(base_url=server.url, timeout=10,
                      headers=dict(admin.headers)) as fresh:  # a brand-new connection
        refused = fresh.post("/workflows/hello/run", json={"inputs": {"name": "late"}})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert fresh.get("/healthz").status_code == 503
        assert fresh.get(f"/runs/{run['id']}").status_code == 200  # reads still work
    assert server.proc.wait(timeout=20) == 0
    assert time.monotonic() - began < 10, "the drain waited out its grace"
    assert db_status(server, run["id"]) == "succeeded"


def test_clients_that_vanish_mid_stream_leave_no_log_noise(
        server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    key = server.create_key()
    server.start("--log-level", "info")
    client = server.client(key)
    graph = {"inputs": {"name": "x"}, "nodes": [
        {"id": "greet", "type": "map", "items": list(range(400)), "concurrency": 32,
         "nodes": [{"id": "t", "type": "template", "template": "{{ item }}" + "x" * 2000}],
         "output": "{{ nodes.t.text }}"}]}
    run = client.post("/workflows/hello/run-sync", json=graph).json()
    request = (f"GET /runs/{run['id']}/events HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: Bearer {key}\r\n\r\n").encode()
    for _ in range(40):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(request)
        sock.recv(4096)  # the replay has begun
        sock.close()  # with a reset, in the middle of it
    assert client.get("/healthz").json()["subscribers"] >= 0
    eventually(lambda: not client.get("/healthz").json()["subscribers"], timeout=10,
               interval=0.05, what="no subscriber left")
    log = server.log.read_text()
    assert "socket.send() raised exception" not in log
    assert "Unknown child process" not in log


def test_a_child_left_unfinished_under_an_ended_parent_stops_after_a_restart(
        server_factory: Callable[..., Server], tmp_path: Path) -> None:
    server = server_factory()
    admin = server.client(server.admin_key())
    server.start()
    parent = admin.post("/workflows/parent/run", json={
        "inputs": {"file": str(tmp_path / "orphan.log"), "seconds": 30}}).json()
    def running() -> list[dict[str, Any]] | NotYet:
        children = child_runs(admin, {parent["id"]})
        return children if children and children[0]["status"] == "running" \
            else NotYet(children)

    children = eventually(running, interval=0.05, what="the child running")
    server.kill()
    with sqlite3.connect(server.db) as conn:  # the parent ended; its child did not
        conn.execute("UPDATE runs SET status = 'stopped' WHERE id = ?", (parent["id"],))
    server.start()
    child = finished(admin, children[0]["id"], timeout=10)
    assert child["status"] == "stopped", child
    assert "has ended" in child["error"]["message"]
