"""Flow control over a real server: the per-key run rate limit."""

from __future__ import annotations

import math
from collections.abc import Callable

from tests.e2e.server import Started

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
