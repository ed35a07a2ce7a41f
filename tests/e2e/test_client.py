"""flowrun.client against a real server: calls, typed errors, events with reconnect."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import httpx
import pytest

from flowrun.client import AsyncClient, Client, ClientError, RunSyncTimeout
from tests.e2e.server import ROOT, Server, wait_for


class CuttingTransport(httpx.BaseTransport):
    """Cuts the first event stream after a few bytes, like a dropped connection."""

    def __init__(self, cut_after: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.cut_after = cut_after
        self.streams = 0
        self.last_event_ids: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not request.url.path.endswith("/events"):
            return response
        self.streams += 1
        self.last_event_ids.append(request.headers.get("last-event-id"))
        if self.streams > 1:
            return response
        budget = self.cut_after
        stream = response.stream
        assert isinstance(stream, httpx.SyncByteStream)  # the sync transport's
        original = stream  # narrowed, so the class below sees a SyncByteStream

        class Cut(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                nonlocal budget
                for chunk in original:
                    if budget <= 0:
                        raise httpx.RemoteProtocolError("connection cut by the test")
                    budget -= 1
                    yield chunk

            def close(self) -> None:
                original.close()

        return httpx.Response(response.status_code, headers=response.headers, stream=Cut(),
                              request=request)


@pytest.fixture
def served(server_factory: Callable[..., Server]) -> tuple[Server, str]:
    server = server_factory()
    key = server.create_key()
    server.start()
    return server, key


def test_client_calls_and_errors(served: tuple[Server, str]) -> None:
    server, key = served
    with Client(server.url, key) as client:
        run = client.submit("hello", {"name": "c"}, correlation_id="k")
        done = client.run_sync("hello", {"name": "d"})
        assert done["outputs"] == {"greeting": "Hello, d!"}
        assert client.get(run["id"])["correlation_id"] == "k"
        assert len(client.list("hello", limit=10)["runs"]) == 2
        with pytest.raises(RunSyncTimeout) as slow:
            client.run_sync("slow", {"seconds": 5}, timeout=0.3)
        assert client.stop(slow.value.run_id)["status"] == "stopped"
        with pytest.raises(ClientError) as bad:
            client.submit("hello", {"name": 1})
        assert bad.value.status == 400 and bad.value.code == "invalid_param"
        with pytest.raises(ClientError) as missing:
            list(client.events("nope"))
        assert missing.value.status == 404


def test_events_reconnect_with_last_seen_id(served: tuple[Server, str]) -> None:
    server, key = served
    transport = CuttingTransport(cut_after=3)
    with Client(server.url, key, transport=transport) as client:
        run = client.submit("ticker", {"tick": 0.05})
        events = list(client.events(run["id"]))
    assert [e.seq for e in events] == list(range(1, 23))
    assert events[-1].terminal and events[-1].data["status"] == "succeeded"
    assert transport.streams == 2
    assert transport.last_event_ids[0] == "0" and int(transport.last_event_ids[1] or 0) >= 1


async def test_async_client(served: tuple[Server, str]) -> None:
    server, key = served
    async with AsyncClient(server.url, key) as client:
        run = await client.submit("streamed", {"seconds": 0.2})
        kinds = [e.event async for e in client.events(run["id"])]
        assert kinds.count("text_chunk") == 3 and kinds[-1] == "workflow_finished"
        assert (await client.get(run["id"]))["status"] == "succeeded"


def test_flowrun_events_prints_live_progress(served: tuple[Server, str]) -> None:
    server, key = served
    client = server.client(key)
    run = client.post("/workflows/streamed/run", json={"inputs": {"seconds": 0.3}}).json()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWRUN_API_KEY": key}
    out = subprocess.run([sys.executable, "-m", "flowrun", "events", run["id"], "--url",
                          server.url], capture_output=True, text=True, timeout=60, env=env,
                         check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"run {run['id']} of streamed")
    assert "  ▶ hello (emit)" in lines and "hello world" in lines
    assert any(line.startswith("  ✓ pause succeeded in 0.3") for line in lines)
    assert any(line.startswith("succeeded in") for line in lines)
    wait_for(client, run["id"], lambda r: r["status"] == "succeeded")
