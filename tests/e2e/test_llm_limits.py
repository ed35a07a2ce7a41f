"""What an LLM server may make a flowrun server hold, through a real server: a reply
is bounded in bytes as decoded (a long line, a gzip bomb), in time as a whole (a drip
of comments), and in the event rows its deltas become (coalesced, capped per run)."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import connect_sse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.e2e.server import Started
from tests.local_server import serve

MiB = 1024 * 1024


def delta(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": {"content": text}}]}).encode() + b"\n\n"


@cache
def gzip_line(size: int) -> bytes:
    """``data: `` and ``size`` bytes of one line, gzip'd (about a thousandth as sent)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    piece = b"a" * MiB
    parts = [packer.compress(b"data: ")] + [packer.compress(piece) for _ in range(size // MiB)]
    return b"".join(parts) + packer.flush(zlib.Z_SYNC_FLUSH)  # (no end: more may follow)


async def long_line() -> AsyncIterator[bytes]:
    yield b"data: "
    for _ in range(64):  # 64 MiB, and never a line end
        yield b"a" * MiB
    await anyio.sleep(20)


async def gzip_bomb() -> AsyncIterator[bytes]:
    yield gzip_line(256 * MiB)
    await anyio.sleep(20)


async def drip() -> AsyncIterator[bytes]:
    for _ in range(100):  # a comment every 0.1 s for 10 s, then a reply
        yield b":\n"
        await anyio.sleep(0.1)
    yield delta("late") + b"data: [DONE]\n\n"


async def tiny() -> AsyncIterator[bytes]:
    for _ in range(50):  # 50,000 deltas of one character
        yield delta("a") * 1000
    yield b"data: [DONE]\n\n"


async def paced() -> AsyncIterator[bytes]:
    for i in range(20):  # 20 deltas far enough apart to be streamed one by one
        yield delta(f"{i},")
        await anyio.sleep(0.08)
    yield b"data: [DONE]\n\n"


REPLIES: dict[str, Callable[[], AsyncIterator[bytes]]] = {
    "longline": long_line, "gzipbomb": gzip_bomb, "drip": drip, "tiny": tiny,
    "paced": paced}


async def completions(request: Request) -> Response:
    model = (await request.json())["model"]
    headers = {"Content-Encoding": "gzip"} if model == "gzipbomb" else {}
    return StreamingResponse(REPLIES[model](), media_type="text/event-stream",
                             headers=headers)


@pytest.fixture(scope="module")
def llm_url() -> Iterator[str]:
    gzip_line(256 * MiB)  # (made before any server is timed)
    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    with serve(app) as url:
        yield f"{url}/v1"


def peak_kib(started: Started) -> int:
    """The server process's peak resident memory so far (VmHWM), in KiB."""
    assert started.server.proc is not None
    status = Path(f"/proc/{started.server.proc.pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


def chat_server(start_server: Callable[..., Started], llm_url: str,
                **env: str) -> Started:
    started = start_server({"FLOWRUN_LLM_BASE_URL": llm_url, "FLOWRUN_LLM_TIMEOUT_S": "5",
                            **{f"FLOWRUN_{k.upper()}": v for k, v in env.items()}})
    definition = {"inputs": {"model": {"type": "string", "required": True}},
                  "nodes": [{"id": "ask", "type": "llm", "prompt": "hi",
                             "model": "{{ inputs.model }}"}]}
    admin = started.server.client(started.server.admin_key())
    assert admin.put("/workflows/chat", json=definition).status_code == 201
    return started


def ask(started: Started, model: str) -> dict[str, Any]:
    resp = started.client.post("/workflows/chat/run-sync", json={"inputs": {"model": model}},
                               params={"timeout": 50}, timeout=55)
    assert resp.status_code == 200, resp.text
    run: dict[str, Any] = resp.json()
    return run


def text_chunks(client: httpx.Client, run_id: str) -> list[str]:
    with connect_sse(client, "GET", f"/runs/{run_id}/events") as source:
        return [json.loads(sse.data)["data"]["text"] for sse in source.iter_sse()
                if sse.event == "text_chunk"]


@pytest.mark.parametrize("model", ["longline", "gzipbomb"])
def test_a_reply_past_the_cap_fails_the_node_and_holds_no_more_than_the_cap(
        start_server: Callable[..., Started], llm_url: str, model: str) -> None:
    started = chat_server(start_server, llm_url, llm_max_response_bytes=str(MiB))
    ask(started, "paced")  # (the first run's own allocations are not the reply's)
    before = peak_kib(started)
    run = ask(started, model)
    assert run["status"] == "failed", run
    # at the cap (the sender holds the line open: llm_timeout would come from its silence)
    assert run["error"]["code"] == "llm_too_large", run["error"]
    assert f"larger than {MiB} bytes" in run["error"]["message"]
    grown = peak_kib(started) - before
    assert grown < 32 * 1024, f"the server's peak grew by {grown // 1024} MiB"


def test_a_drip_of_comments_fails_at_the_deadline(start_server: Callable[..., Started],
                                                  llm_url: str) -> None:
    started = chat_server(start_server, llm_url, llm_deadline_s="1.5")
    begun = time.monotonic()
    run = ask(started, "drip")
    took = time.monotonic() - begun
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "llm_timeout", run["error"]
    assert "within 1.5s" in run["error"]["message"]
    assert 1.4 < took < 9.5, took  # (the drip itself lasts 10 s)


def test_many_tiny_deltas_make_few_events_with_all_the_text(
        start_server: Callable[..., Started], llm_url: str) -> None:
    started = chat_server(start_server, llm_url)
    run = ask(started, "tiny")
    assert run["status"] == "succeeded", run
    assert run["nodes"][0]["outputs"]["text"] == "a" * 50_000
    chunks = text_chunks(started.client, run["id"])
    assert "".join(chunks) == "a" * 50_000
    assert len(chunks) <= 200, len(chunks)  # 50,000 before
    rows = started.server.query("SELECT count(*) FROM events WHERE run_id = ?", (run["id"],))
    assert rows[0][0] <= 210


def test_past_the_runs_text_chunk_cap_the_text_is_in_the_output_only(
        start_server: Callable[..., Started], llm_url: str) -> None:
    started = chat_server(start_server, llm_url, max_text_chunks_per_run="5")
    run = ask(started, "paced")
    assert run["status"] == "succeeded", run
    everything = "".join(f"{i}," for i in range(20))
    assert run["nodes"][0]["outputs"]["text"] == everything
    chunks = text_chunks(started.client, run["id"])
    assert len(chunks) == 5 and everything.startswith("".join(chunks)), chunks
    log = started.server.log.read_text()
    assert log.count("streams no more text") == 1, log
