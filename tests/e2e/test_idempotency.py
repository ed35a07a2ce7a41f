"""Idempotency keys over a real server: strategies, fingerprints, scope, races, TTL."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.e2e.server import Started, finished, wait_for
from tests.eventually import eventually

# (the strategies that read and write keys in the accept's transaction, the race and
# the sweep also run on PostgreSQL)
ON_BOTH = pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])

HELLO = {"inputs": {"name": "idem"}}


def keyed(key: str, on_conflict: str | None = None, header: str = "Idempotency-Key"
          ) -> dict[str, str]:
    headers = {header: key}
    if on_conflict:
        headers["X-On-Conflict"] = on_conflict
    return headers


@ON_BOTH
def test_return_existing_replays_the_run(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    first = client.post("/workflows/hello/run", json=HELLO, headers=keyed("k1"))
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    again = client.post("/workflows/hello/run", json=HELLO,
                        headers=keyed("k1", header="X-Idempotency-key"))
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["idempotency_key"] == "k1"
    assert len(client.get("/workflows/hello/runs").json()["runs"]) == 1


def test_same_key_different_body_is_422(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    run_id = client.post("/workflows/hello/run", json=HELLO, headers=keyed("k")).json()["id"]
    other = client.post("/workflows/hello/run", json={"inputs": {"name": "else"}},
                        headers=keyed("k"))
    assert other.status_code == 422
    body = other.json()
    assert body["code"] == "idempotency_key_reused" and body["run_id"] == run_id
    # A different trace id or response mode is not a different request.
    same = client.post("/workflows/hello/run-sync", json={**HELLO, "trace_id": "t-2"},
                       headers=keyed("k"))
    assert same.status_code == 200 and same.json()["id"] == run_id
    assert len(client.get("/workflows/hello/runs").json()["runs"]) == 1


def test_scope_is_per_api_key_and_workflow(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    other_key = server.client(server.create_key())
    a = client.post("/workflows/hello/run", json=HELLO, headers=keyed("shared")).json()
    b = other_key.post("/workflows/hello/run", json=HELLO, headers=keyed("shared"))
    c = client.post("/workflows/fanout/run", json={}, headers=keyed("shared"))
    assert b.status_code == 202 and c.status_code == 202
    assert len({a["id"], b.json()["id"], c.json()["id"]}) == 3


def test_fail_strategy_conflicts_with_any_existing_run(
        start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    run = client.post("/workflows/hello/run-sync", json=HELLO, headers=keyed("f", "FAIL")).json()
    assert run["status"] == "succeeded"
    again = client.post("/workflows/hello/run", json=HELLO, headers=keyed("f", "FAIL"))
    assert again.status_code == 409
    assert again.json()["code"] == "idempotency_conflict" and again.json()["run_id"] == run["id"]


@ON_BOTH
def test_fail_on_running(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    body = {"inputs": {"seconds": 0.5}}
    first = client.post("/workflows/slow/run", json=body, headers=keyed("r", "FAIL_ON_RUNNING"))
    assert first.status_code == 202
    busy = client.post("/workflows/slow/run", json=body, headers=keyed("r", "FAIL_ON_RUNNING"))
    assert busy.status_code == 409 and busy.json()["run_status"] in {"queued", "running"}
    finished(client, first.json()["id"])
    second = client.post("/workflows/slow/run", json=body,
                         headers=keyed("r", "FAIL_ON_RUNNING"))
    assert second.status_code == 202 and second.json()["id"] != first.json()["id"]
    now = client.post("/workflows/slow/run", json=body, headers=keyed("r"))
    assert now.status_code == 200 and now.json()["id"] == second.json()["id"]


def test_run_sync_with_a_key(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    body = {"inputs": {"seconds": 1}}
    started = client.post("/workflows/slow/run", json=body, headers=keyed("s")).json()
    began = time.monotonic()
    waited = client.post("/workflows/slow/run-sync", json=body, headers=keyed("s"))
    assert waited.status_code == 200 and waited.json()["id"] == started["id"]
    assert waited.json()["status"] == "succeeded" and time.monotonic() - began > 0.3
    began = time.monotonic()
    replay = client.post("/workflows/slow/run-sync", json=body, headers=keyed("s"))
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert time.monotonic() - began < 0.5
    long = {"inputs": {"seconds": 30}}
    client.post("/workflows/slow/run", json=long, headers=keyed("long"))
    timed = client.post("/workflows/slow/run-sync?timeout=0.5", json=long, headers=keyed("long"))
    assert timed.status_code == 408 and timed.json()["status"] == "running"
    client.post(f"/runs/{timed.json()['run_id']}/stop")


@ON_BOTH
async def test_hundred_concurrent_duplicates_make_one_run(
        start_server: Callable[..., Started]) -> None:
    server, key, client = start_server()
    answers: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                 headers={"Authorization": f"Bearer {key}"},
                                 limits=httpx.Limits(max_connections=200)) as aclient:

        async def post() -> None:
            answers.append(await aclient.post("/workflows/hello/run", json=HELLO,
                                              headers=keyed("race")))

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(post)
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * 99 + [202]
    assert len({r.json()["id"] for r in answers}) == 1
    assert len(client.get("/workflows/hello/runs").json()["runs"]) == 1


async def test_streaming_with_a_replayed_key(start_server: Callable[..., Started]) -> None:
    server, key, client = start_server()
    run = client.post("/workflows/hello/run-sync", json=HELLO, headers=keyed("st")).json()
    async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                 headers={"Authorization": f"Bearer {key}"}) as aclient:
        async with aconnect_sse(aclient, "POST", "/workflows/hello/run",
                                json={**HELLO, "stream": True}, headers=keyed("st")) as source:
            assert source.response.headers["idempotent-replayed"] == "true"
            events = [json.loads(s.data) async for s in source.aiter_sse()]
    assert {e["run_id"] for e in events} == {run["id"]}
    assert events[-1]["event"] == "workflow_finished"


@ON_BOTH
def test_keys_expire_after_the_ttl(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server({"FLOWRUN_IDEMPOTENCY_TTL_S": "1",
                                               "FLOWRUN_SWEEP_INTERVAL_S": "0.2"})
    first = client.post("/workflows/hello/run-sync", json=HELLO, headers=keyed("ttl")).json()
    assert client.post("/workflows/hello/run", json=HELLO,
                       headers=keyed("ttl")).status_code == 200

    def keys_left() -> int:
        return int(server.query("SELECT COUNT(*) FROM idempotency_keys")[0][0])

    eventually(lambda: not keys_left(), timeout=10, interval=0.1,
               what="the sweep removed the expired key")
    fresh = client.post("/workflows/hello/run", json=HELLO, headers=keyed("ttl"))
    assert fresh.status_code == 202 and fresh.json()["id"] != first["id"]
    wait_for(client, fresh.json()["id"], lambda r: r["status"] == "succeeded")


def test_bad_idempotency_headers(start_server: Callable[..., Started]) -> None:
    server, _, client = start_server()
    bogus = client.post("/workflows/hello/run", json=HELLO, headers=keyed("k", "MAYBE"))
    assert bogus.status_code == 400 and bogus.json()["errors"][0]["field"] == "X-On-Conflict"
    too_long = client.post("/workflows/hello/run", json=HELLO, headers=keyed("x" * 300))
    assert too_long.status_code == 400
    assert too_long.json()["errors"][0]["field"] == "Idempotency-Key"
    assert client.get("/workflows/hello/runs").json()["runs"] == []


