"""How ``flowrun serve`` sets up its process."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from flowrun.cli.serving import tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_server_collects_old_generations_rarely_and_never_its_startup_objects(
        restored_gc: None) -> None:
    young, middle, old = gc.get_threshold()
    tune_gc()
    assert gc.get_freeze_count() > 0  # start-up objects are out of every collection
    assert gc.get_threshold() == (young, 100, 100)
    assert middle < 100 and old < 100  # (the defaults it raises)


async def test_connections_to_the_serve_socket_send_without_delay() -> None:
    """Each accepted connection has TCP_NODELAY: without it a response written in two
    parts waits for the client's delayed ACK (~40 ms per kept-alive request)."""
    import asyncio
    import socket

    from flowrun.cli.main import _listening_socket

    sock = _listening_socket("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            conn = transport.get_extra_info("socket")
            accepted.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    try:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        assert await asyncio.wait_for(accepted, 5) != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
