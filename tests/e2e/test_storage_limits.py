"""What one key's runs may store, against a real server: a large output is stored once
and every client still sees it whole."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
from httpx_sse import connect_sse

from flowrun.client import Client
from tests.e2e.server import Server, Started

KIB = 1024
# A code node that returns ``size`` characters: its inputs are tiny, its outputs not.
BULKY: dict[str, Any] = {
    "inputs": {"size": {"type": "integer"}},
    "nodes": [{"id": "make", "type": "code",
              "code": "def main(size):\n    return {'text': 'x' * size}",
              "inputs": {"size": "{{ inputs.size }}"}}]}


def sse_events(client: httpx.Client, method: str, url: str,
               **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
    """(id, frame) of every event a stream sends until it closes."""
    with connect_sse(client, method, url, **kwargs) as source:
        if source.response.status_code != 200:
            raise AssertionError(f"{url}: {source.response.status_code} "
                                 f"{source.response.read().decode()}")
        return [(sse.id, json.loads(sse.data)) for sse in source.iter_sse() if sse.data]


def stored_bytes(server: Server, run_id: str) -> dict[str, int]:
    """Characters of JSON the run's rows hold, by table."""
    [(events,)] = server.query("SELECT SUM(LENGTH(data)) FROM events WHERE run_id = ?",
                               (run_id,))
    [(nodes,)] = server.query("SELECT SUM(LENGTH(inputs) + LENGTH(outputs)) "
                              "FROM node_executions WHERE run_id = ?", (run_id,))
    [(runs,)] = server.query("SELECT LENGTH(outputs) FROM runs WHERE id = ?", (run_id,))
    return {"events": int(events or 0), "nodes": int(nodes or 0), "runs": int(runs or 0)}


def test_a_large_output_is_stored_once_and_every_client_still_sees_it(
        start_server: Callable[..., Started]) -> None:
    server, key, client = start_server(workflow="bulky")  # a Dify app key too
    admin = server.client(server.admin_key())
    assert admin.put("/workflows/bulky", json=BULKY).status_code == 201
    size = 600 * KIB
    live = sse_events(client, "POST", "/workflows/bulky/run",
                      json={"inputs": {"size": size}, "stream": True, "user": "ann"})
    run_id = live[0][1]["run_id"]
    [finished] = [frame for _, frame in live if frame["event"] == "node_finished"]
    assert finished["data"]["outputs"] == {"text": "x" * size}

    held = stored_bytes(server, run_id)
    assert held["nodes"] > size and held["runs"] > size  # the node's row, the run's outputs
    assert held["events"] < 16 * KIB, held  # and no event holds them again

    # every way a client reads the run back sees what the live stream showed
    assert sse_events(client, "GET", f"/runs/{run_id}/events") == live
    assert sse_events(client, "GET", f"/runs/{run_id}/events",
                      headers={"Last-Event-ID": "2"}) == live[2:]
    assert sse_events(client, "GET", f"/runs/{run_id}/events?after=3") == live[3:]
    run = client.get(f"/runs/{run_id}").json()
    assert run["nodes"][0]["outputs"] == {"text": "x" * size}
    assert run["outputs"] == {"make": {"text": "x" * size}}
    with Client(server.url, key) as python_client:
        replayed = [(str(e.seq), e.data) for e in python_client.events(run_id)]
    assert replayed == [(seq, frame["data"]) for seq, frame in live]
    frames = sse_events(client, "GET", f"/dify/v1/workflow/{run_id}/events?user=ann")
    [dify_finished] = [f for _, f in frames if f["event"] == "node_finished"]
    assert dify_finished["data"]["outputs"] == {"text": "x" * size}
    [dify_end] = [f for _, f in frames if f["event"] == "workflow_finished"]
    assert dify_end["data"]["outputs"] == {"make": {"text": "x" * size}}


def database_bytes(server: Server) -> int:
    """The SQLite file and its WAL, as they are on disk now."""
    return sum(p.stat().st_size for p in (server.db, server.db.with_name("flowrun.db-wal"))
               if p.exists())


def test_an_output_over_the_cap_fails_its_node_and_is_never_stored(
        start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    admin = server.client(server.admin_key())
    assert admin.put("/workflows/bulky", json=BULKY).status_code == 201
    before = database_bytes(server)
    size = 8 * 1024 * KIB - KIB  # about what a code node may return (its sandbox's cap)
    for _ in range(3):
        run = client.post("/workflows/bulky/run-sync", json={"inputs": {"size": size}}).json()
        assert run["status"] == "failed", run
        assert run["error"]["code"] == "output_too_large", run["error"]
        assert run["error"]["node_id"] == "make"
        message = run["error"]["message"]
        assert "'make'" in message and f"{size + 11:,} bytes" in message
        assert "at most 1,048,576 bytes (FLOWRUN_MAX_NODE_OUTPUT_BYTES)" in message
        [node] = run["nodes"]
        assert node["status"] == "failed" and node["attempts"] == 1 and not node["outputs"]
        assert sum(stored_bytes(server, run["id"]).values()) < 16 * KIB
    assert database_bytes(server) - before < 2 * 1024 * KIB  # not 3 x 8 MiB (x 2)


def test_nodes_under_the_cap_that_pass_the_run_total_together_fail_at_the_crossing_one(
        start_server: Callable[..., Started]) -> None:
    server, _, client = start_server({"FLOWRUN_MAX_NODE_OUTPUT_BYTES": "100000",
                                      "FLOWRUN_MAX_RUN_OUTPUT_BYTES": "350000"})
    admin = server.client(server.admin_key())
    ids = [f"n{i}" for i in range(6)]
    chain = {"inputs": {"size": {"type": "integer"}},
             "nodes": [{**BULKY["nodes"][0], "id": node_id} for node_id in ids],
             "edges": [{"source": a, "target": b} for a, b in zip(ids, ids[1:], strict=False)]}
    assert admin.put("/workflows/chain", json=chain).status_code == 201
    # each stores about 80 kB: four fit in 350 kB, the fifth does not
    run = client.post("/workflows/chain/run-sync", json={"inputs": {"size": 80_000}}).json()
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "output_too_large" and run["error"]["node_id"] == "n4"
    assert "350,000 bytes a run may store (FLOWRUN_MAX_RUN_OUTPUT_BYTES)" in \
        run["error"]["message"]
    statuses = {n["id"]: n["status"] for n in run["nodes"]}
    assert statuses == {"n0": "succeeded", "n1": "succeeded", "n2": "succeeded",
                        "n3": "succeeded", "n4": "failed"}
    assert sum(stored_bytes(server, run["id"]).values()) < 350_000
