"""How ``flowrun serve`` runs under uvicorn: drain on a signal, and bounded connections.

HTTP is parsed by httptools (C) where it is installed: ``make bench`` measured
30-40% more accepted runs per second than with h11 (uvloop, measured too, gave
nothing here, so the loop stays asyncio's). uvicorn bounds idle keep-alive
connections and the number of connections, and nothing else a client can hold,
so both protocols here add what a client must not be able to do for ever:
- send a request's headers slowly (slowloris): a connection whose headers are not
  complete within ``header_timeout_s`` is closed;
- send its body slowly, or never: from the headers until the whole body the clock
  is ``body_timeout_s``, and no byte that arrives resets it; past it the client gets
  408 (if nothing was answered yet) and the connection closes;
- keep a connection after an answer sent before its body was read (a 401, 413 or
  429 refuses a request without reading it): that answer says ``Connection: close``
  and the connection closes, rather than waiting, kept alive, for the rest;
- hold every connection: each client (an IPv4 address, an IPv6 /64) may open
  ``connections_per_client``; past it a new one is answered 503 and closed before
  it counts, so the others still get theirs of ``max_connections`` (past which
  uvicorn's ``limit_concurrency`` answers 503);
- queue requests without reading the answers (HTTP/1.1 pipelining): uvicorn's
  httptools protocol parses every pipelined request it has read and queues a cycle
  for each, so a socket that writes requests and never reads grew the server by
  gigabytes; past ``max_pipelined`` queued requests the connection closes. (h11
  parses one request at a time and stops reading while it is answered.)
Event streams are bounded per key by the service.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_remote_addr

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: h11 it is
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

from flowrun.cli.connections import REFUSED, TIMED_OUT, ClientTally, client_of
from flowrun.runs.lifecycle import Lifecycle
from flowrun.settings import Settings

logger = logging.getLogger("flowrun.serving")

_CLOSE = (b"connection", b"close")


class _Guard:
    """What both protocols add to uvicorn's: the per-client cap, the body clock, and
    ``Connection: close`` on an answer sent before its request's body was read.

    Each protocol says when a request's body is still coming (``_body_incomplete``);
    the clock starts when it first is, and only its end stops it.
    """

    header_timeout_s = 10.0
    body_timeout_s = 10.0
    max_pipelined = 16
    clients: ClientTally | None = None  # one per server (server_config); None: no cap

    # uvicorn's protocol has these
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    app: Any
    cycle: Any

    def _guard_setup(self) -> None:
        self._body_timer: asyncio.TimerHandle | None = None
        self._client: str | None = None
        self._counted = False
        self._refused = False
        self._inner_app = self.app
        self.app = self._closing_early

    def _admit(self, transport: asyncio.Transport) -> bool:
        """Count this connection against its client's cap, or refuse it."""
        if self.clients is None:
            return True
        address = get_remote_addr(transport)
        client = client_of(address[0] if address else None)
        if self.clients.admit(client):
            self._client, self._counted = client, True
            return True
        self._refused = True
        transport.write(REFUSED)
        transport.close()
        return False

    def _release(self) -> None:
        if self._counted and self.clients is not None:
            self._counted = False
            self.clients.release(self._client)

    def _body_incomplete(self) -> bool:
        """Whether the request being answered is still sending its body."""
        raise NotImplementedError

    def _watch_body(self) -> None:
        """Start the body clock when a body begins to be awaited, stop it when whole."""
        if not self._body_incomplete():
            self._disarm_body_timer()
        elif self._body_timer is None and not self.transport.is_closing():
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timeout)

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timeout(self) -> None:
        self._body_timer = None
        if not self._body_incomplete() or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None:
            if not cycle.response_started:
                self.transport.write(TIMED_OUT)
            # the application's receive() now says the client left, its answer is dropped
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    async def _closing_early(self, scope: Any, receive: Any, send: Any) -> None:
        """The application, its answer saying ``Connection: close`` when it starts
        while the request's body is still coming (uvicorn then closes after it)."""
        async def closing_send(message: Any) -> None:
            if message["type"] == "http.response.start" and self.cycle is not None \
                    and self.cycle.scope is scope and self._body_incomplete():
                message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
            await send(message)

        await self._inner_app(scope, receive, closing_send)


class HeaderTimeoutH11(_Guard, H11Protocol):
    """uvicorn's h11 protocol, with flowrun's connection bounds (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard_setup()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        if not self._admit(transport):
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _header_timeout(self) -> None:
        self._header_timer = None
        # IDLE: the current request's headers have not all arrived.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def _body_incomplete(self) -> bool:
        return self.conn.their_state is h11.SEND_BODY

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_body()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request on this connection gets the same
            self._watch_body()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._disarm_body_timer()
        self._release()
        super().connection_lost(exc)


if HttpToolsProtocol is not None:
    class HeaderTimeoutHttpTools(_Guard, HttpToolsProtocol):
        """uvicorn's httptools protocol, with flowrun's connection bounds (see the
        module). The header clock starts when the connection opens and when each
        request's first byte arrives, and stops when its headers are complete (idle
        connections between requests are uvicorn's keep-alive timeout's)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._guard_setup()
            self._header_timer: asyncio.TimerHandle | None = None
            self._awaiting_headers = True
            self._reading_body = False  # between a request's headers and its end
            self._flooded = False  # past max_pipelined: closing, nothing more is parsed

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if not self._admit(transport):
                return
            super().connection_made(transport)
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout_s,
                                                          self._header_timeout)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self._awaiting_headers and not self.transport.is_closing():
                self.transport.close()

        def _body_incomplete(self) -> bool:
            # a body the parser is in whose request waits in the pipeline is not awaited
            # yet: its clock starts when its turn comes (on_response_complete)
            return self._reading_body and not self.pipeline

        def data_received(self, data: bytes) -> None:
            if self._flooded:
                return
            super().data_received(data)
            self._watch_body()

        def on_message_begin(self) -> None:
            if self._flooded:
                return
            super().on_message_begin()
            self._awaiting_headers = True
            self._arm_header_timer()

        def on_url(self, url: bytes) -> None:
            if not self._flooded:
                super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            if not self._flooded:
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self._flooded or self._pipeline_full():
                return
            self._awaiting_headers = False
            self._disarm_header_timer()
            super().on_headers_complete()
            self._reading_body = True

        def _pipeline_full(self) -> bool:
            """Close, and parse nothing more, when this request would queue behind
            ``max_pipelined`` others: the client is not reading its answers."""
            busy = self.cycle is not None and not self.cycle.response_complete
            if not busy or len(self.pipeline) < self.max_pipelined:
                return False
            self._flooded = True
            self.transport.close()
            return True

        def on_body(self, body: bytes) -> None:
            if not self._flooded:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._flooded:
                return
            self._reading_body = False
            self._disarm_body_timer()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch_body()  # a queued request whose body is still coming: its turn

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                return
            self._disarm_header_timer()
            self._disarm_body_timer()
            self._release()
            super().connection_lost(exc)


class DrainingServer(uvicorn.Server):
    """uvicorn, draining flowrun on the first shutdown signal before it stops listening.

    uvicorn closes its listening socket as soon as it decides to exit, so new
    clients would see "connection refused". On the first SIGTERM/SIGINT flowrun
    drains while uvicorn goes on serving: new runs get 503 + Retry-After,
    ``/healthz`` turns 503, reads and streams still work, and running runs get
    ``shutdown_grace_s``. Once they are done, or the grace is over, uvicorn
    exits as usual (its lifespan shutdown leaves the rest to resume). A second
    signal exits at once.
    """

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self.flowrun_app = app
        self._drain: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        running = self.flowrun_app.state.flowrun.instance
        lifecycle: Lifecycle | None = None if running is None else running.lifecycle
        if lifecycle is None or self._drain is not None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)  # re-raised after the shutdown, as uvicorn does
        loop.call_soon_threadsafe(self._begin, lifecycle)

    def _begin(self, lifecycle: Lifecycle) -> None:
        lifecycle.begin_drain()
        self._drain = asyncio.ensure_future(self._exit_when_drained(lifecycle))

    async def _exit_when_drained(self, lifecycle: Lifecycle) -> None:
        await lifecycle.wait_for_runs(self.flowrun_app.state.flowrun.settings.shutdown_grace_s)
        self.should_exit = True

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.cancel()
        await super().shutdown(sockets)


def tune_gc() -> None:
    """Make the cyclic garbage collector fit a server with thousands of runs in flight.

    Each run in flight holds a few hundred objects (its task, records, payloads);
    with thousands in flight, CPython's default thresholds start a full collection
    that walks all of them every few thousand runs: a profile of a 3,000-run burst
    spent about 40% of the event loop's time there (~150 ms per collection). So:
    what exists after start-up is frozen out of collections for good, and the older
    generations are collected ten times less often. Nearly all of flowrun's garbage
    is freed by reference counting; cycles among young objects are still collected
    at once. Only ``flowrun serve`` does this: an application embedding flowrun owns
    its interpreter's settings.
    """
    gc.collect()
    gc.freeze()
    young, _, _ = gc.get_threshold()
    gc.set_threshold(young, 100, 100)


def protocol_class(settings: Settings) -> type:
    """The HTTP protocol for one server: httptools (else h11) with ``settings``' bounds
    and its own tally of connections per client."""
    base: type = HeaderTimeoutH11 if HttpToolsProtocol is None else HeaderTimeoutHttpTools
    return type(f"Flowrun{base.__name__}", (base,),
                {"header_timeout_s": settings.header_timeout_s,
                 "body_timeout_s": settings.body_timeout_s,
                 "max_pipelined": settings.max_pipelined_requests,
                 "clients": ClientTally(settings.connections_per_client)})


def announce_connections(settings: Settings) -> None:
    """Say at start what a client may hold; one client allowed every connection is the
    operator's choice (a reverse proxy on the same host is one client), and a warning."""
    logger.info("connections: at most %d, %d per client; headers within %g s, a body "
                "within %g s", settings.max_connections, settings.connections_per_client,
                settings.header_timeout_s, settings.body_timeout_s)
    if settings.connections_per_client >= settings.max_connections:
        logger.warning("connections: one client may hold all %d "
                       "(FLOWRUN_MAX_CONNECTIONS_PER_CLIENT): a single client can make the "
                       "server refuse everyone else", settings.max_connections)


def server_config(app: Any, settings: Settings, log_level: str) -> uvicorn.Config:
    """uvicorn's settings for flowrun: httptools (else h11) with flowrun's connection
    bounds (see the module), connection limits."""
    announce_connections(settings)
    return uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                          http=protocol_class(settings), loop="asyncio", ws="none",
                          limit_concurrency=settings.max_connections,
                          timeout_keep_alive=max(1, round(settings.keep_alive_s)),
                          timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 1)
