"""Live events over real SSE: order, resume, races, fan-out, stop, streaming POST, leaks."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.e2e.server import Server, Started, finished, wait_for
from tests.eventually import NotYet, eventually_async

# (the tests that replay from the store also run on PostgreSQL)
ON_BOTH = pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])


def aclient(server: Server, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"},
                             timeout=httpx.Timeout(30, read=60),
                             limits=httpx.Limits(max_connections=1000))


async def collect(client: httpx.AsyncClient, run_id: str, *, after: int | None = None,
                  header: bool = True, limit: int | None = None) -> list[dict[str, Any]]:
    """Read a run's stream until the terminal event (or ``limit`` events)."""
    headers = {"Last-Event-ID": str(after)} if after is not None and header else {}
    url = f"/runs/{run_id}/events" + (f"?after={after}" if after is not None and not header
                                      else "")
    events: list[dict[str, Any]] = []
    with anyio.fail_after(60):
        async with aconnect_sse(client, "GET", url, headers=headers) as source:
            assert source.response.status_code == 200
            async for sse in source.aiter_sse():
                envelope = json.loads(sse.data)
                assert sse.id == str(envelope["seq"]) and sse.event == envelope["event"]
                events.append(envelope)
                if len(events) == limit or envelope["event"] == "workflow_finished":
                    break
    return events


async def submit(client: httpx.AsyncClient, workflow: str, **inputs: Any) -> str:
    resp = await client.post(f"/workflows/{workflow}/run", json={"inputs": inputs})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def assert_complete(events: list[dict[str, Any]], first: int = 1) -> None:
    assert [e["seq"] for e in events] == list(range(first, first + len(events)))
    assert events[-1]["event"] == "workflow_finished"
    assert all(e["event"] != "workflow_finished" for e in events[:-1])


@ON_BOTH
async def test_order_and_completeness(start_server: Callable[..., Started]) -> None:
    server, key, _ = start_server()
    async with aclient(server, key) as client:
        run_id = await submit(client, "wide")
        events = await collect(client, run_id)
    assert_complete(events)
    assert len(events) == 1 + 2 * 20 + 1
    assert events[0]["event"] == "workflow_started"
    position: dict[tuple[str, str], int] = {}
    for i, e in enumerate(events):
        if e["event"] in {"node_started", "node_finished"}:
            position[(e["event"], e["data"]["node_id"])] = i
    nodes = {n for _, n in position}
    assert len(nodes) == 20
    for node in nodes:
        assert position[("node_started", node)] < position[("node_finished", node)]
    finished_event = events[-1]
    assert finished_event["data"]["status"] == "succeeded"
    assert finished_event["data"]["total_steps"] == 20
    assert finished_event["run_id"] == run_id == finished_event["workflow_run_id"]


async def test_finished_run_replays_and_closes(start_server: Callable[..., Started]) -> None:
    server, key, _ = start_server()
    async with aclient(server, key) as client:
        run_id = await submit(client, "hello", name="x")
        finished(server.client(key), run_id)
        began = time.monotonic()
        everything = await collect(client, run_id)
        assert time.monotonic() - began < 2
        assert_complete(everything)
        tail = await collect(client, run_id, after=2, header=False)
        assert tail == everything[2:]
        async with aconnect_sse(client, "GET", f"/runs/{run_id}/events",
                                headers={"Last-Event-ID": str(len(everything))}) as source:
            assert [s async for s in source.aiter_sse()] == []
        bad = await client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "x"})
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "Last-Event-ID"
        other = server.client(server.create_key())
        assert other.get(f"/runs/{run_id}/events").status_code == 404


@ON_BOTH
async def test_resume_with_last_event_id_while_running(
        start_server: Callable[..., Started]) -> None:
    server, key, _ = start_server()
    async with aclient(server, key) as client:
        run_id = await submit(client, "ticker", tick=0.1)
        head = await collect(client, run_id, limit=5)
        assert [e["seq"] for e in head] == [1, 2, 3, 4, 5]
        run = (await client.get(f"/runs/{run_id}")).json()
        assert run["status"] == "running"
        rest = await collect(client, run_id, after=5)
    assert_complete(head + rest)
    assert rest[0]["seq"] == 6 and len(head + rest) == 22


@ON_BOTH
async def test_subscribers_at_random_moments_of_50_runs(
        start_server: Callable[..., Started]) -> None:
    server, key, _ = start_server()
    rng = random.Random(7)
    results: list[list[dict[str, Any]]] = []
    async with aclient(server, key) as client:

        async def one() -> None:
            run_id = await submit(client, "ticker", tick=0.02)
            await anyio.sleep(rng.uniform(0, 0.3))
            results.append(await collect(client, run_id))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
    assert len(results) == 50
    for events in results:
        assert_complete(events)
        assert len(events) == 22


async def test_500_subscribers_on_one_run(start_server: Callable[..., Started]) -> None:
    # one key holding 500 streams: the operator raised the per-key limit for it, and the
    # connections one client (here 127.0.0.1) may hold
    server, key, _ = start_server({"FLOWRUN_MAX_STREAMS_PER_KEY": "600",
                                   "FLOWRUN_MAX_CONNECTIONS_PER_CLIENT": "600"})
    results: list[list[dict[str, Any]]] = []
    async with aclient(server, key) as client:
        run_id = await submit(client, "wide", gate=4)

        async def subscriber() -> None:
            results.append(await collect(client, run_id))

        async with anyio.create_task_group() as tg:
            for _ in range(500):
                tg.start_soon(subscriber)
    assert len(results) == 500
    reference = results[0]
    assert_complete(reference)
    assert all(events == reference for events in results)


@ON_BOTH
async def test_stop_mid_stream_delivers_stopped(start_server: Callable[..., Started]) -> None:
    server, key, _ = start_server()
    async with aclient(server, key) as client:
        run_id = await submit(client, "slow", seconds=60)
        seen: list[dict[str, Any]] = []
        with anyio.fail_after(30):
            async with aconnect_sse(client, "GET", f"/runs/{run_id}/events") as source:
                async for sse in source.aiter_sse():
                    event = json.loads(sse.data)
                    seen.append(event)
                    if event["event"] == "node_started" and event["data"]["node_id"] == "wait":
                        assert (await client.post(f"/runs/{run_id}/stop")).status_code == 200
        assert_complete(seen)
        assert seen[-1]["data"]["status"] == "stopped"
        stopped_nodes = [e for e in seen if e["event"] == "node_finished"
                         and e["data"]["status"] == "stopped"]
        assert [e["data"]["node_id"] for e in stopped_nodes] == ["wait"]


async def test_streaming_post_sends_events_before_the_run_ends(
        start_server: Callable[..., Started]) -> None:
    server, key, _ = start_server()
    arrivals: list[tuple[float, dict[str, Any]]] = []
    async with aclient(server, key) as client:
        with anyio.fail_after(30):
            async with aconnect_sse(client, "POST", "/workflows/streamed/run",
                                    json={"inputs": {"seconds": 1}, "stream": True}) as source:
                assert source.response.status_code == 200
                assert source.response.headers["location"].startswith("/runs/")
                async for sse in source.aiter_sse():
                    arrivals.append((time.monotonic(), json.loads(sse.data)))
    events = [e for _, e in arrivals]
    assert_complete(events)
    chunks = [(t, e["data"]["text"]) for t, e in arrivals if e["event"] == "text_chunk"]
    assert [text for _, text in chunks] == ["hello ", "world", "bye"]
    end = arrivals[-1][0]
    assert end - chunks[0][0] > 0.8  # the first chunks came a whole sleep before the end
    assert chunks[0][1] == "hello " and events[-1]["data"]["status"] == "succeeded"


async def test_streaming_client_leaving_does_not_stop_the_run(
        start_server: Callable[..., Started]) -> None:
    server, key, _ = start_server()
    async with aclient(server, key) as client:
        with anyio.fail_after(30):
            async with aconnect_sse(client, "POST", "/workflows/streamed/run",
                                    json={"inputs": {"seconds": 0.5}, "stream": True}) as source:
                run_id = source.response.headers["x-run-id"]
                async for _ in source.aiter_sse():
                    break
    done = finished(server.client(key), run_id)
    assert done["status"] == "succeeded"


async def test_vanishing_clients_leave_nothing_behind(
        start_server: Callable[..., Started]) -> None:
    server, key, _ = start_server()
    sync = server.client(key)
    baseline = sync.get("/healthz").json()
    async with aclient(server, key) as client:
        run_id = await submit(client, "slow", seconds=60)

        async def vanish() -> None:
            await collect(client, run_id, limit=1)

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(vanish)
    def released() -> dict[str, Any] | NotYet:
        health: dict[str, Any] = sync.get("/healthz").json()
        idle = not health["subscribers"] and health["tasks"] <= baseline["tasks"] + 3
        return health if idle else NotYet(health)

    await eventually_async(released, timeout=20, interval=0.1,
                           what="the vanished streams' subscribers and tasks released")
    assert sync.post(f"/runs/{run_id}/stop").json()["status"] == "stopped"
    wait_for(sync, run_id, lambda r: r["status"] == "stopped")


async def test_ping_keeps_idle_streams_alive(start_server: Callable[..., Started]) -> None:
    server, key, _ = start_server({"FLOWRUN_SSE_PING_S": "0.2"})
    async with aclient(server, key) as client:
        run_id = await submit(client, "slow", seconds=60)
        pings = 0
        with anyio.fail_after(10):
            async with client.stream("GET", f"/runs/{run_id}/events") as resp:
                async for line in resp.aiter_lines():
                    if line.startswith(": ping"):
                        pings += 1
                        if pings == 2:
                            break
        await client.post(f"/runs/{run_id}/stop")
    assert pings == 2
