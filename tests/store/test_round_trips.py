"""A regression guard that is not a timed test: database-thread round trips per run.

What bounds throughput is hand-offs to the database threads, not SQL. These
budgets are what the one-batch-per-trip writer gives today (reads, write
batches, and the statements those batches run); a change that adds round trips
or writes to the hot path fails here, whatever the machine's speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from flowrun import Settings, create_app
from flowrun.features import waits
from flowrun.features.callbacks import book as callbacks
from flowrun.features.schedules import book as schedules
from tests.eventually import eventually

THREE = {"inputs": {"x": {"type": "string", "default": "x"}},
         "nodes": [{"id": "a", "type": "template", "template": "{{ inputs.x }}a"},
                   {"id": "b", "type": "template", "template": "{{ nodes.a.text }}b"},
                   {"id": "c", "type": "template", "template": "{{ nodes.b.text }}c"}],
         "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "c"}]}
RUNS = 40
# A 3-node run-sync, one at a time: the accept's commit (BEGIN, INSERT, COMMIT), then
# the run's progress and final status in one commit (progress lingers for it: BEGIN,
# two UPDATEs of the run, one merged INSERT each of node rows and events, COMMIT),
# then the answer's read of the run and its nodes (one round trip, one snapshot).
# Measured: 1 read, 2 batches, 10 statements; a slow machine may split a run's
# progress from its final status now and then (one batch and a few statements more).
RUN_SYNC_BUDGET = {"read": 1, "write": 2.5, "statement": 12}
# a 202 with the run left queued: the definition is known, so no read; one commit
ACCEPT_BUDGET = {"read": 0, "write": 1, "statement": 3}


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    # The loops that look at the store once a second (callbacks, schedules, waits) look
    # once at start, then sleep: on a slow machine their looks would count as the runs'.
    for loop in (callbacks, schedules, waits):
        monkeypatch.setattr(loop, "TICK_S", 3600.0)
    settings = Settings(db_path=tmp_path / "t.db", auth_enabled=False, max_concurrent_runs=1)
    with TestClient(create_app(settings)) as c:
        assert c.put("/workflows/three", json=THREE).status_code == 201
        assert c.put("/workflows/block", json={
            "nodes": [{"id": "s", "type": "sleep", "seconds": 60}]}).status_code == 201
        yield c


def trips(client: TestClient) -> dict[str, int]:
    app = client.app
    assert isinstance(app, Starlette)
    return dict(app.state.flowrun.instance.service.store.round_trips())


def per_run(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    return {kind: (after[kind] - before[kind]) / RUNS for kind in after}


def test_a_three_node_run_sync_stays_within_its_round_trip_budget(client: TestClient) -> None:
    assert client.post("/workflows/three/run-sync", json={}).json()["status"] == "succeeded"
    before = trips(client)
    for _ in range(RUNS):
        assert client.post("/workflows/three/run-sync", json={}).json()["status"] == \
            "succeeded"
    spent = per_run(before, trips(client))
    assert all(spent[k] <= RUN_SYNC_BUDGET[k] for k in spent), spent


def test_an_accept_is_one_write_of_one_statement_and_no_read(client: TestClient) -> None:
    blocker = client.post("/workflows/block/run", json={}).json()  # holds the only slot
    eventually(lambda: any(n["status"] == "running"
                           for n in client.get(f"/runs/{blocker['id']}").json()["nodes"]),
               timeout=10, interval=0.01, what="the blocking run's node running")
    assert client.post("/workflows/three/run", json={}).status_code == 202
    before = trips(client)
    for _ in range(RUNS):
        assert client.post("/workflows/three/run", json={}).status_code == 202
    spent = per_run(before, trips(client))
    assert all(spent[k] <= ACCEPT_BUDGET[k] for k in spent), spent
    client.post(f"/runs/{blocker['id']}/stop")
