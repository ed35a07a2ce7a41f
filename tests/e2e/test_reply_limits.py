"""What a web server an http node calls may make a flowrun server hold, through a real
server: a gzip bomb is counted as it inflates, so the node fails at the cap and the
server holds no more than about the cap."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.e2e.server import Started
from tests.e2e.test_llm_limits import MiB, gzip_line, peak_kib
from tests.local_server import serve


async def bomb(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield gzip_line(256 * MiB)  # 256 MiB inflated, about 256 KiB as sent
        await anyio.sleep(20)

    return StreamingResponse(body(), media_type="text/plain",
                             headers={"Content-Encoding": "gzip"})


async def small(request: Request) -> Response:
    return Response("ok")


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    gzip_line(256 * MiB)  # (made before any server is timed)
    app = Starlette(routes=[Route("/bomb", bomb), Route("/small", small)])
    with serve(app) as url:
        yield url


def test_a_gzip_bomb_fails_the_http_node_at_the_cap_and_holds_no_more(
        start_server: Callable[..., Started], site: str) -> None:
    started = start_server({"FLOWRUN_HTTP_ALLOWED_NETWORKS": "127.0.0.1/32",
                            "FLOWRUN_HTTP_MAX_RESPONSE_BYTES": str(MiB)})
    definition = {"inputs": {"path": {"type": "string", "required": True}},
                  "nodes": [{"id": "get", "type": "http", "method": "GET",
                             "url": site + "{{ inputs.path }}"}]}
    admin = started.server.client(started.server.admin_key())
    assert admin.put("/workflows/fetch", json=definition).status_code == 201

    def fetch(path: str) -> dict[str, object]:
        resp = started.client.post("/workflows/fetch/run-sync", json={"inputs": {"path": path}},
                                   params={"timeout": 50}, timeout=55)
        assert resp.status_code == 200, resp.text
        run: dict[str, object] = resp.json()
        return run

    assert fetch("/small")["status"] == "succeeded"  # (its allocations are not the bomb's)
    before = peak_kib(started)
    run = fetch("/bomb")
    assert run["status"] == "failed", run
    error = run["error"]
    assert isinstance(error, dict) and error["code"] == "http_too_large", error
    grown = peak_kib(started) - before
    assert grown < 32 * 1024, f"the server's peak grew by {grown // 1024} MiB"
