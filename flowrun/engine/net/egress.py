"""Network for code nodes, when the operator allows it: an HTTP proxy behind the SSRF guard.

A sandboxed worker has no network of its own. With ``code_network`` on, the
proxy gives each sandbox a unix socket of its own, bound there as
``/run/egress.sock``; the worker forwards a loopback port to it and points
``HTTP_PROXY``/``HTTPS_PROXY`` there. This proxy accepts ``CONNECT host:port``
(HTTPS and other TLS) and absolute ``http://`` requests, resolves the host once,
refuses it unless every address passes the same policy as the http node
(``netguard.address_allowed``), and connects to the vetted address itself.
Nothing else leaves the sandbox.

Code can reach its socket directly, so the socket is how the proxy tells jobs
apart: each job may hold ``connections_per_job`` connections, and a connection
must send its request head within ``head_timeout_s``. As many again are read up
to their head and answered 503, so code that asks too much learns why; past
those a connection is closed at once. One job's idle connections then cost only
that job, and at most twice its cap in file descriptors.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from flowrun.engine.net.guard import address_allowed, system_resolve
from flowrun.engine.node_services import HttpPolicy

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
_REFUSE_SEND_S = 1.0  # how long a refusal may wait to be written before it is dropped
_ENDS = (OSError, anyio.BrokenResourceError, anyio.EndOfStream, anyio.IncompleteRead,
         anyio.DelimiterNotFound, TimeoutError)


class Refused(Exception):
    """Raised when a proxied request may not go where it asks."""


@dataclass(frozen=True)
class EgressLimits:
    """What one code job may hold of the proxy."""

    connections_per_job: int = 16
    head_timeout_s: float = 2.0


@dataclass
class _Job:
    """One sandbox's socket: the connections it holds or is refusing, and the scope that
    ends them."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    held: set[anyio.abc.SocketStream] = field(default_factory=set)
    refusing: set[anyio.abc.SocketStream] = field(default_factory=set)


class EgressProxy:
    """The proxy, serving one unix socket per sandbox while ``open``'s block lasts."""

    def __init__(self, policy: HttpPolicy, limits: EgressLimits, folder: Path,
                 tg: anyio.abc.TaskGroup) -> None:
        self.policy = policy
        self.limits = limits
        self._folder = folder
        self._tg = tg
        self._jobs: dict[Path, _Job] = {}
        self._names = itertools.count()

    @classmethod
    @asynccontextmanager
    async def open(cls, policy: HttpPolicy, limits: EgressLimits | None = None
                   ) -> AsyncIterator[EgressProxy]:
        """Serve the sandboxes' sockets, from a fresh private folder, while the block lasts."""
        # 0700: a socket is reachable only where it is bound into its sandbox
        folder = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp, "", "flowrun-egress-"))
        try:
            async with anyio.create_task_group() as tg:
                try:
                    yield cls(policy, limits or EgressLimits(), folder, tg)
                finally:
                    tg.cancel_scope.cancel()
        finally:
            await anyio.to_thread.run_sync(shutil.rmtree, folder, True)

    async def attach(self) -> Path:
        """A new socket for one sandbox, served until ``detach``; its path on the host."""
        path = self._folder / f"{next(self._names)}.sock"
        listener = await anyio.create_unix_listener(path)
        try:
            # the sandbox connects as an unprivileged uid, through a bind mount of this file
            await anyio.to_thread.run_sync(os.chmod, path, 0o666)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
            raise
        job = _Job()
        self._jobs[path] = job
        self._tg.start_soon(self._serve, listener, path, job)
        return path

    def detach(self, path: Path) -> None:
        """Stop serving a sandbox's socket and end its connections (its job is over)."""
        job = self._jobs.pop(path, None)
        if job is not None:
            job.scope.cancel()

    async def _serve(self, listener: anyio.abc.SocketListener, path: Path, job: _Job) -> None:
        cap = self.limits.connections_per_job
        try:
            with job.scope:
                async with anyio.create_task_group() as tg:
                    while True:
                        client = await listener.accept()
                        if len(job.held) < cap:
                            job.held.add(client)
                            tg.start_soon(self._handle, client, job)
                        elif len(job.refusing) < cap:
                            job.refusing.add(client)
                            tg.start_soon(self._refuse, client, job)
                        else:
                            await client.aclose()
        finally:
            with anyio.CancelScope(shield=True):
                for client in [*job.held, *job.refusing]:  # a task cancelled unstarted
                    await client.aclose()
                await listener.aclose()
                await anyio.to_thread.run_sync(path.unlink, True)

    async def _handle(self, client: anyio.abc.SocketStream, job: _Job) -> None:
        try:
            async with client:
                await _proxy(client, self.policy, self.limits.head_timeout_s)
        except _ENDS:
            pass
        finally:
            job.held.discard(client)

    async def _refuse(self, client: anyio.abc.SocketStream, job: _Job) -> None:
        """Answer a connection past its job's cap with a 503 once its head is in (closing
        it unread would reset it before the client reads why), and close it."""
        try:
            async with client:
                with anyio.move_on_after(self.limits.head_timeout_s):
                    await BufferedByteReceiveStream(client).receive_until(b"\r\n\r\n",
                                                                          MAX_HEAD_BYTES)
                with anyio.fail_after(_REFUSE_SEND_S):
                    await client.send(_answer(
                        503, "Service Unavailable",
                        f"this code job already holds {self.limits.connections_per_job} "
                        f"connections to flowrun's network proxy"))
        except _ENDS:
            pass
        finally:
            job.refusing.discard(client)


def _answer(status: int, reason: str, text: str) -> bytes:
    body = f"{text}\n".encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def _proxy(client: anyio.abc.SocketStream, policy: HttpPolicy,
                 head_timeout_s: float) -> None:
    reader = BufferedByteReceiveStream(client)
    # a connection that says nothing holds one of its job's slots: not for long
    with anyio.fail_after(head_timeout_s):
        head = await reader.receive_until(b"\r\n\r\n", MAX_HEAD_BYTES)
    request_line, _, rest = head.partition(b"\r\n")
    try:
        method, target, version = request_line.decode("latin-1").split(" ")
        host, port, forward = _target(method, target, version, rest)
        address = await _vetted(host, port, policy)
    except (Refused, ValueError) as exc:
        with anyio.fail_after(policy.timeout_s):
            await client.send(_answer(403, "Forbidden",
                                      f"blocked by flowrun's network policy: {exc}"))
        return
    with anyio.fail_after(policy.timeout_s):
        upstream = await anyio.connect_tcp(address, port)
    async with upstream:
        if forward is None:
            await client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            await upstream.send(forward)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_pipe, reader, upstream, None, policy.timeout_s, tg)
            tg.start_soon(_pipe, upstream, client, policy.max_response_bytes,
                          policy.timeout_s, tg)


def _target(method: str, target: str, version: str, rest: bytes
            ) -> tuple[str, int, bytes | None]:
    """(host, port, request head to send upstream, or None for a CONNECT tunnel)."""
    if method == "CONNECT":
        parts = urlsplit(f"//{target}")
        if parts.hostname is None or parts.port is None:
            raise Refused(f"CONNECT needs host:port, not {target!r}")
        return parts.hostname, parts.port, None
    parts = urlsplit(target)
    if parts.scheme != "http" or not parts.hostname:
        raise Refused("only CONNECT and absolute http:// requests are proxied")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = [line for line in rest.split(b"\r\n") if line and not
               line.lower().startswith((b"proxy-", b"connection:"))]
    head = b"\r\n".join([f"{method} {path} {version}".encode("latin-1"), *headers,
                         b"Connection: close", b"", b""])
    return parts.hostname, parts.port or 80, head


async def _vetted(host: str, port: int, policy: HttpPolicy) -> str:
    if not host or not 0 < port < 65536:
        raise Refused(f"bad target {host!r}:{port}")
    try:
        with anyio.fail_after(policy.timeout_s):
            addresses = await system_resolve(host, port)
    except OSError as exc:
        raise Refused(f"cannot resolve {host}: {exc}") from None
    if not addresses:
        raise Refused(f"cannot resolve {host}")
    for address in addresses:
        if not address_allowed(address, policy):
            raise Refused(f"{host} resolves to {address}, a private, loopback or link-local "
                          f"address")
    return addresses[0]


async def _pipe(source: anyio.abc.ByteReceiveStream, sink: anyio.abc.ByteSendStream,
                cap: int | None, idle_s: float, tg: anyio.abc.TaskGroup) -> None:
    """Copy until either side ends (or ``cap`` bytes), then end the whole exchange."""
    sent = 0
    try:
        while True:
            with anyio.fail_after(idle_s):
                chunk = await source.receive()
            sent += len(chunk)
            if cap is not None and sent > cap:
                break
            await sink.send(chunk)
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
            OSError, TimeoutError):
        pass
    finally:
        tg.cancel_scope.cancel()
