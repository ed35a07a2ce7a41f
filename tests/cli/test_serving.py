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


def test_a_client_is_an_ipv4_address_or_an_ipv6_64_and_a_socket_path_is_none() -> None:
    from flowrun.cli.connections import client_of

    assert client_of("127.0.0.1") == "127.0.0.1"
    assert client_of("::ffff:127.0.0.2") == "127.0.0.2"  # IPv4 on a dual-stack socket
    assert client_of("::1") == "::/64"
    assert client_of("") is None and client_of(None) is None
    assert client_of("/run/flowrun.sock") is None


def test_the_tally_refuses_past_the_cap_per_client_and_gives_places_back(
        caplog: pytest.LogCaptureFixture) -> None:
    from flowrun.cli.connections import ClientTally

    tally = ClientTally(2, log_every_s=3600)
    assert tally.admit("127.0.0.1") and tally.admit("127.0.0.1")
    assert not tally.admit("127.0.0.1") and not tally.admit("127.0.0.1")
    assert tally.admit("127.0.0.2")  # another client has its own
    assert tally.admit(None)  # not an IP: no cap
    tally.release("127.0.0.1")
    assert tally.admit("127.0.0.1")
    for _ in range(2):
        tally.release("127.0.0.1")
    tally.release("127.0.0.1")  # once too often: nothing goes negative
    assert "127.0.0.1" not in tally.open
    refusals = [r for r in caplog.records if "FLOWRUN_MAX_CONNECTIONS_PER_CLIENT" in r.message]
    assert len(refusals) == 1  # logged once per interval, however many


def test_the_start_warns_when_one_client_may_take_every_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    from flowrun.cli.serving import announce_connections
    from flowrun.settings import Settings

    announce_connections(Settings())
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    announce_connections(Settings(max_connections=10, max_connections_per_client=10))
    assert [r for r in caplog.records if r.levelname == "WARNING"
            and "one client may hold all 10" in r.message]


def test_the_client_tells_a_slow_body_408_from_run_syncs() -> None:
    import httpx

    from flowrun.client import Client, ClientError, RunSyncTimeout

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(408, json={"code": "request_timeout", "detail": "too slow"})

    client = Client("http://127.0.0.1:1", transport=httpx.MockTransport(answer))
    with pytest.raises(ClientError) as caught:
        client.run_sync("hello", {"name": "x"})
    assert not isinstance(caught.value, RunSyncTimeout)
    assert caught.value.code == "request_timeout"
