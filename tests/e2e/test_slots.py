"""Run slots shared between API keys over a real server: one key's runs at its cap
(at the highest priority) or paused do not keep another key's run from starting."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.e2e.server import Started, wait_for

SLOW = {"inputs": {"seconds": 30}}
ON_BOTH = pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])


def running(client: httpx.Client, run_id: str) -> None:
    wait_for(client, run_id, lambda r: r["status"] == "running")


@ON_BOTH
def test_a_key_at_its_cap_cannot_delay_another_keys_run(
        start_server: Callable[..., Started]) -> None:
    server, _, a = start_server({"FLOWRUN_MAX_CONCURRENT_RUNS": "4",
                                 "FLOWRUN_MAX_RUNNING_PER_KEY": "2"})
    b = server.client(server.create_key())
    runs = [a.post("/workflows/slow/run", json={**SLOW, "priority": 99}).json()["id"]
            for _ in range(6)]
    running(a, runs[0])
    running(a, runs[1])
    answer = b.post("/workflows/hello/run-sync?timeout=10", json={"inputs": {"name": "b"}})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "succeeded"
    statuses = [a.get(f"/runs/{run_id}").json()["status"] for run_id in runs]
    assert statuses.count("running") == 2  # A holds its cap, no more


@ON_BOTH
def test_paused_runs_do_not_hold_slots(start_server: Callable[..., Started]) -> None:
    server, _, a = start_server({"FLOWRUN_MAX_CONCURRENT_RUNS": "4"})  # (4 per key)
    b = server.client(server.create_key())
    runs = [a.post("/workflows/slow/run", json=SLOW).json()["id"] for _ in range(4)]
    for run_id in runs:
        running(a, run_id)
        assert a.post(f"/runs/{run_id}/pause").json()["status"] == "paused"
    answer = b.post("/workflows/hello/run-sync?timeout=10", json={"inputs": {"name": "b"}})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "succeeded"
    resumed = a.post(f"/runs/{runs[0]}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "running"


def test_a_run_scoped_key_may_not_set_a_priority_over_the_ceiling(
        start_server: Callable[..., Started]) -> None:
    server, _, run_key = start_server({"FLOWRUN_RUN_KEY_MAX_PRIORITY": "50"})
    admin = server.client(server.admin_key())
    refused = run_key.post("/workflows/hello/run", json={"inputs": {"name": "x"},
                                                         "priority": 51})
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["errors"] == [{"field": "priority", "message": "must be 0-50"}]
    assert run_key.post("/workflows/hello/run", json={"inputs": {"name": "x"},
                                                      "priority": 50}).status_code == 202
    assert admin.post("/workflows/hello/run", json={"inputs": {"name": "x"},
                                                    "priority": 99}).status_code == 202
