"""Network for code nodes, when the operator allows it: an HTTP proxy behind the SSRF guard.

A sandboxed worker has no network of its own. With ``code_network`` on, the
server listens on a unix socket that is bound into each sandbox; the worker
forwards a loopback port to it and points ``HTTP_PROXY``/``HTTPS_PROXY`` there.
This proxy accepts ``CONNECT host:port`` (HTTPS and other TLS) and absolute
``http://`` requests, resolves the host once, refuses it unless every address
passes the same policy as the http node (``netguard.address_allowed``), and
connects to the vetted address itself. Nothing else leaves the sandbox.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from flowrun.engine.netguard import address_allowed, system_resolve
from flowrun.engine.node_services import HttpPolicy

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
MAX_CONNECTIONS = 64


class Refused(Exception):
    """Raised when a proxied request may not go where it asks."""


@asynccontextmanager
async def egress_proxy(policy: HttpPolicy) -> AsyncIterator[Path]:
    """Serve the proxy on a fresh unix socket while the block lasts; yields its path."""
    # 0700: the socket is reachable only where it is bound into a sandbox
    folder = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp, "", "flowrun-egress-"))
    path = folder / "egress.sock"
    listener = await anyio.create_unix_listener(path)
    # sandboxes connect as an unprivileged uid, through a bind mount of this one file
    await anyio.to_thread.run_sync(os.chmod, path, 0o666)
    limiter = anyio.CapacityLimiter(MAX_CONNECTIONS)

    async def handle(client: anyio.abc.SocketStream) -> None:
        async with limiter, client:
            try:
                await _proxy(client, policy)
            except (OSError, anyio.BrokenResourceError, anyio.EndOfStream,
                    anyio.IncompleteRead, anyio.DelimiterNotFound, TimeoutError):
                pass

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle, tg)
            try:
                yield path
            finally:
                tg.cancel_scope.cancel()
    finally:
        await listener.aclose()
        await anyio.to_thread.run_sync(shutil.rmtree, folder, True)


async def _proxy(client: anyio.abc.SocketStream, policy: HttpPolicy) -> None:
    reader = BufferedByteReceiveStream(client)
    with anyio.fail_after(policy.timeout_s):
        head = await reader.receive_until(b"\r\n\r\n", MAX_HEAD_BYTES)
    request_line, _, rest = head.partition(b"\r\n")
    try:
        method, target, version = request_line.decode("latin-1").split(" ")
        host, port, forward = _target(method, target, version, rest)
        address = await _vetted(host, port, policy)
    except (Refused, ValueError) as exc:
        body = f"blocked by flowrun's network policy: {exc}\n".encode()
        await client.send(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                          b"Connection: close\r\nContent-Length: " +
                          str(len(body)).encode() + b"\r\n\r\n" + body)
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
