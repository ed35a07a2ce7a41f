"""The code nodes' network proxy: a socket per job, a cap per job, a short head timeout."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.abc
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from flowrun.engine.net.egress import EgressLimits, EgressProxy
from flowrun.engine.node_services import HttpPolicy
from tests.eventually import eventually_async
from tests.local_server import serve


async def ok(request: Request) -> Response:
    return PlainTextResponse("fetched")


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(Starlette(routes=[Route("/ok", ok)])) as url:
        yield url


POLICY = HttpPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),), timeout_s=10)


async def read_all(stream: anyio.abc.SocketStream) -> bytes:
    data = b""
    with anyio.fail_after(10):
        while True:
            try:
                data += await stream.receive()
            except anyio.EndOfStream:
                return data


async def fetch(socket: Path, url: str) -> bytes:
    """One proxied GET through a sandbox's socket, as the worker's forwarder sends it."""
    async with await anyio.connect_unix(socket) as stream:
        await stream.send(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        return await read_all(stream)


async def test_a_job_past_its_cap_is_refused_while_another_job_is_served(base_url: str) -> None:
    async with EgressProxy.open(POLICY, EgressLimits(connections_per_job=4,
                                                     head_timeout_s=30)) as proxy:
        hog, other = await proxy.attach(), await proxy.attach()
        idle = [await anyio.connect_unix(hog) for _ in range(4)]  # its whole cap, silent
        try:
            for _ in range(4):  # past the cap: told why as soon as the request is in
                refused = await fetch(hog, f"{base_url}/ok")
                assert refused.startswith(b"HTTP/1.1 503 ")
                assert b"already holds 4 connections" in refused
            began = time.monotonic()
            answer = await fetch(other, f"{base_url}/ok")
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"fetched")
            assert time.monotonic() - began < 5  # not behind the hog's idle connections
            idle += [await anyio.connect_unix(hog) for _ in range(4)]  # refusals pending
            async with await anyio.connect_unix(hog) as beyond:  # past both: closed at once
                try:
                    assert await read_all(beyond) == b""
                except anyio.BrokenResourceError:
                    pass  # or reset: either way at once, not after the head timeout
        finally:
            for stream in idle:
                await stream.aclose()
        # its idle connections closed, the hog is served again
        async def served() -> bool:
            return (await fetch(hog, f"{base_url}/ok")).startswith(b"HTTP/1.1 200 ")

        await eventually_async(served, timeout=10, interval=0.01,
                               what="the hog served once its closed connections are gone")


async def test_a_connection_that_sends_no_request_head_is_closed_soon() -> None:
    async with EgressProxy.open(POLICY, EgressLimits(head_timeout_s=0.5)) as proxy:
        socket = await proxy.attach()
        async with await anyio.connect_unix(socket) as silent, \
                await anyio.connect_unix(socket) as slow:
            await slow.send(b"GET http://127.0.0.1/ HTTP/1.1\r\nX-Slow: ")  # never finished
            began = time.monotonic()
            assert await read_all(silent) == b"" and await read_all(slow) == b""
            assert time.monotonic() - began < 5  # the head timeout, not the policy's 10 s


async def test_a_detached_socket_is_gone_with_its_connections() -> None:
    async with EgressProxy.open(POLICY) as proxy:
        socket = await proxy.attach()
        async with await anyio.connect_unix(socket) as stream:
            await stream.send(b"GET http://127.0.0.1:9/ HTTP/1.1\r\n")  # half a head
            proxy.detach(socket)
            try:
                assert await read_all(stream) == b""
            except anyio.BrokenResourceError:
                pass  # reset, when the proxy had not read what was sent
        await eventually_async(lambda: not socket.exists(), timeout=10, interval=0.01,
                               what="the socket file removed")
        with pytest.raises(OSError):
            await anyio.connect_unix(socket)
    assert not socket.parent.exists()  # the proxy's folder goes with it
