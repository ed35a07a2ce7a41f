"""How ``flowrun serve`` runs under uvicorn: drain on a signal, and bounded connections.

HTTP is parsed by httptools (C) where it is installed: ``make bench`` measured
30-40% more accepted runs per second than with h11 (uvloop, measured too, gave
nothing here, so the loop stays asyncio's). uvicorn has a keep-alive timeout for
idle connections but none for a client that sends a request's headers slowly
(slowloris): both protocols here close a connection whose request headers are
not complete within ``header_timeout_s``. ``limit_concurrency`` answers 503
past ``max_connections``; event streams are bounded per key by the service.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: h11 it is
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

from flowrun.runs.lifecycle import Lifecycle
from flowrun.settings import Settings


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, closing connections that do not finish their headers."""

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
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

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request on this connection gets the same

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)


if HttpToolsProtocol is not None:
    class HeaderTimeoutHttpTools(HttpToolsProtocol):
        """uvicorn's httptools protocol, closing connections that do not finish their
        headers: the clock starts when the connection opens and when each request's
        first byte arrives, and stops when its headers are complete (idle connections
        between requests are uvicorn's keep-alive timeout's)."""

        header_timeout_s = 10.0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer: asyncio.TimerHandle | None = None
            self._awaiting_headers = True
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

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._awaiting_headers = True
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._awaiting_headers = False
            self._disarm_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
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


def server_config(app: Any, settings: Settings, log_level: str) -> uvicorn.Config:
    """uvicorn's settings for flowrun: httptools (else h11) with a header timeout,
    connection limits."""
    base: type = HeaderTimeoutH11 if HttpToolsProtocol is None else HeaderTimeoutHttpTools
    protocol = type(f"Flowrun{base.__name__}", (base,),
                    {"header_timeout_s": settings.header_timeout_s})
    return uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                          http=protocol, loop="asyncio", limit_concurrency=settings.max_connections,
                          timeout_keep_alive=max(1, round(settings.keep_alive_s)),
                          timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 1)
