"""Flow control over a real server: the per-key run rate limit, concurrency keys."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.server import Started, finished, wait_for

HELLO = {"inputs": {"name": "rate"}}
LIMITED = {"FLOWRUN_RUN_RATE_PER_KEY": "0.2", "FLOWRUN_RUN_BURST_PER_KEY": "3"}


def test_a_burst_past_the_limit_gets_429_and_creates_nothing(
        start_server: Callable[..., Started]) -> None:
    server, _, client = start_server(LIMITED)
    answers = [client.post("/workflows/hello/run", json=HELLO) for _ in range(5)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429, 429]
    refused = answers[3]
    assert refused.json()["code"] == "too_many_requests"
    # the next token is 1/0.2 = 5 s away (less the time the burst took), rounded up
    assert 1 <= int(refused.headers["Retry-After"]) <= math.ceil(1 / 0.2)
    # every way of starting a run spends from the same bucket
    assert client.post("/workflows/hello/run-sync", json=HELLO).status_code == 429
    created = client.get("/workflows/hello/runs").json()["runs"]
    assert sorted(r["id"] for r in created) == sorted(a.json()["id"] for a in answers[:3])

    other = server.client(server.create_key())  # another key is not affected
    assert other.post("/workflows/hello/run", json=HELLO).status_code == 202
    assert client.post("/workflows/hello/run", json=HELLO).status_code == 429
    assert len(client.get("/workflows/hello/runs").json()["runs"]) == 3


def test_a_retry_with_its_idempotency_key_is_answered_even_past_the_limit(
        start_server: Callable[..., Started]) -> None:
    _, _, client = start_server(LIMITED)
    first = [client.post("/workflows/hello/run", json=HELLO,
                         headers={"Idempotency-Key": f"k{i}"}) for i in range(3)]
    assert [a.status_code for a in first] == [202, 202, 202]
    # the bucket is empty: a retry of an accepted request gets its run, a new one 429
    again = client.post("/workflows/hello/run", json=HELLO, headers={"Idempotency-Key": "k0"})
    assert again.status_code == 200 and again.json()["id"] == first[0].json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    fresh = client.post("/workflows/hello/run", json=HELLO, headers={"Idempotency-Key": "k9"})
    assert fresh.status_code == 429
    # the same key with another body is still that key's conflict, not a new run
    other = client.post("/workflows/hello/run", json={"inputs": {"name": "else"}},
                        headers={"Idempotency-Key": "k1"})
    assert other.status_code in {409, 422} and other.json()["code"] != "too_many_requests"
    assert len(client.get("/workflows/hello/runs").json()["runs"]) == 3


def keyed(file: Path, group: str, label: str, seconds: float = 0.3) -> dict[str, Any]:
    return {"inputs": {"file": str(file), "group": group, "label": label,
                       "seconds": seconds}}


def test_runs_of_a_saturated_key_wait_in_order_and_others_go_on(
        start_server: Callable[..., Started], tmp_path: Path) -> None:
    _, _, client = start_server()
    log = tmp_path / "a.log"
    ids = [client.post("/workflows/keyed/run", json=keyed(log, "a", f"a{i}")).json()["id"]
           for i in range(4)]
    # a run of another group is not held behind the queued runs of group a
    other = client.post("/workflows/keyed/run",
                        json=keyed(tmp_path / "b.log", "b", "b0", 0.0)).json()["id"]
    assert finished(client, other)["status"] == "succeeded"
    assert [client.get(f"/runs/{i}").json()["status"] for i in ids[2:]] == ["queued"] * 2
    for run_id in ids:
        assert finished(client, run_id)["status"] == "succeeded"
    # one at a time, in the order they came: each starts after the one before ended
    assert log.read_text().split() == [f"a{i}-{end}" for i in range(4)
                                       for end in ("first", "last")]


def test_queued_runs_of_a_saturated_key_start_in_order_after_a_restart(
        start_server: Callable[..., Started], tmp_path: Path) -> None:
    server, _, client = start_server()
    log = tmp_path / "a.log"
    ids = [client.post("/workflows/keyed/run", json=keyed(log, "a", f"a{i}", 1.0)
                       ).json()["id"] for i in range(3)]
    wait_for(client, ids[0], lambda run: run["status"] == "running")
    server.kill()
    server.start()
    for run_id in ids:
        assert finished(client, run_id)["status"] == "succeeded"
    lines = log.read_text().split()
    # a0 ran its first node before the kill, and again on resume; then a1, then a2
    assert [line for line in lines if line != "a0-first"] == [
        "a0-last", "a1-first", "a1-last", "a2-first", "a2-last"]
    assert lines.index("a0-last") < lines.index("a1-first")
